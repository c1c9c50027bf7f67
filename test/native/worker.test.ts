/**
 * The addon has no mutable statics and registers env cleanup hooks, so it loads
 * in worker_threads and tears down cleanly when an environment goes away.
 */
import { spawnSync } from 'node:child_process';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { Worker } from 'node:worker_threads';
import { describe, expect, it } from 'vitest';
import { native } from '../../src/native/index.js';

const root = join(dirname(fileURLToPath(import.meta.url)), '..', '..');

/** CommonJS prelude for eval'd code: `n` = the addon, loaded through `bindings`. */
const prelude = `
  const { createRequire } = require('node:module');
  const n = createRequire(${JSON.stringify(join(root, 'package.json'))})('bindings')('iwpm_native');
  const open = (onBatch) => new n.NetlinkSocket({ protocol: 2, portId: 0, groups: 0, rcvbufBytes: 0 }, onBatch, () => {});
`;

function runWorker(body: string): Promise<{ messages: unknown[]; code: number }> {
  return new Promise((resolve, reject) => {
    const w = new Worker(`${prelude}\nconst { parentPort } = require('node:worker_threads');\n${body}`, { eval: true });
    const messages: unknown[] = [];
    w.on('message', (m) => messages.push(m));
    w.on('error', reject);
    w.on('exit', (code) => resolve({ messages, code }));
  });
}

describe('addon in worker_threads', () => {
  it('opens, uses and closes sockets inside a Worker, which then exits by itself', async () => {
    const { messages, code } = await runWorker(`
      const a = open(() => {});
      const b = open((batch) => {
        parentPort.postMessage({ text: batch.data.toString(), sender: batch.senders[0], a: a.portId });
        a.close();
        b.close();
      });
      a.send([Buffer.from('from a worker')], b.portId);
    `);
    expect(code).toBe(0);
    expect(messages).toHaveLength(1);
    const m = messages[0] as { text: string; sender: number; a: number };
    expect(m.text).toBe('from a worker');
    expect(m.sender).toBe(m.a);
  });

  it('cleans up sockets left open when a Worker calls process.exit()', async () => {
    const { messages, code } = await runWorker(`
      const a = open(() => {});
      a.send([Buffer.from('queued?')], a.portId);
      parentPort.postMessage(a.portId);
      process.exit(3);
    `);
    expect(code).toBe(3);
    expect(messages).toHaveLength(1);
  });

  it('survives terminate() of a Worker with open, polling sockets', async () => {
    const w = new Worker(
      `${prelude}
      const socks = [open(() => {}), open(() => {})];
      require('node:worker_threads').parentPort.postMessage('open');`,
      { eval: true },
    );
    await new Promise((r) => w.once('message', r));
    expect(await w.terminate()).toBe(1);
    // The main thread's addon instance is unaffected.
    const s = new native.NetlinkSocket({ protocol: 2, portId: 0, groups: 0, rcvbufBytes: 0 }, () => {}, () => {});
    expect(s.portId).toBeGreaterThan(0);
    s.close();
  });

  it('turns a throw in onBatch into an uncaughtException and keeps polling', () => {
    const body = `
      process.on('uncaughtException', (e) => console.log('uncaught ' + e.message));
      let k = 0;
      const b = open(() => {
        k++;
        process.nextTick(() => console.log('tick ' + k));
        if (k === 1) throw new Error('boom');
        console.log('batch ' + k);
        a.close();
        b.close();
      });
      const a = open(() => {});
      a.send([Buffer.from('1')], b.portId);
      setTimeout(() => a.send([Buffer.from('2')], b.portId), 20);`;
    const r = spawnSync(process.execPath, ['-e', prelude + body], { encoding: 'utf8' });
    expect(r.status).toBe(0);
    expect(r.stdout.trim().split('\n')).toEqual(['uncaught boom', 'tick 1', 'batch 2', 'tick 2']);
  });

  it('lets a process exit with sockets still open (env cleanup hook)', () => {
    const r = spawnSync(
      process.execPath,
      ['-e', `${prelude}; const a = open(() => {}); const b = open(() => {}); a.send([Buffer.from('x')], b.portId); setTimeout(() => process.exit(0), 20);`],
      { encoding: 'utf8' },
    );
    expect(r.stderr).toBe('');
    expect(r.status).toBe(0);
  });
});
