/** Process helpers: fd limits, fd table growth, AF_UNIX datagrams (sd_notify), getpid. */
import { spawn, spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { native } from '../../src/native/index.js';

const ENOENT = 2;
const ECONNREFUSED = 111;

describe('raiseNofileLimit / pregrowFdTable / getpid', () => {
  it('raises the soft fd limit to the hard one', () => {
    const { soft, hard } = native.raiseNofileLimit();
    expect(soft).toBe(hard);
    expect(soft === -1 || soft >= 1024).toBe(true);
  });

  it('grows the fd table and closes the descriptor it used', () => {
    const fd = native.pregrowFdTable(4096);
    expect(fd).toBeGreaterThanOrEqual(4095);
    expect(existsSync(`/proc/self/fd/${fd}`)).toBe(false);
  });

  it('bounds the request by the soft limit', () => {
    const { soft } = native.raiseNofileLimit();
    if (soft === -1) return;
    const fd = native.pregrowFdTable(1e9);
    expect(fd).toBe(soft - 1);
  });

  it('validates count', () => {
    for (const bad of [0, -1, 1.5, 'x', undefined]) expect(() => native.pregrowFdTable(bad as any)).toThrow(TypeError);
  });

  it('getpid() is our pid', () => {
    expect(native.getpid()).toBe(process.pid);
  });
});

const dir = mkdtempSync(join(tmpdir(), 'iwpm-native-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

const hasPython = spawnSync('python3', ['-c', 'pass']).status === 0;

/**
 * A python3 AF_UNIX SOCK_DGRAM receiver bound to `addr` (leading '@' = abstract);
 * prints "ready", then the first datagram it receives, then exits.
 */
function pythonReceiver(addr: string): Promise<{ ready: Promise<void>; received: Promise<string> }> {
  const code = [
    'import socket, sys',
    'a = sys.argv[1]',
    "a = '\\0' + a[1:] if a.startswith('@') else a",
    's = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)',
    's.bind(a)',
    "print('ready', flush=True)",
    's.settimeout(10)',
    "sys.stdout.write(s.recv(4096).decode()); sys.stdout.flush()",
  ].join('\n');
  const p = spawn('python3', ['-c', code, addr], { stdio: ['ignore', 'pipe', 'inherit'] });
  let out = '';
  let readyResolve!: () => void;
  const ready = new Promise<void>((r) => (readyResolve = r));
  p.stdout.on('data', (d) => {
    out += d;
    if (out.startsWith('ready\n')) readyResolve();
  });
  const received = new Promise<string>((resolve, reject) => {
    p.on('exit', (code) => (code === 0 ? resolve(out.slice('ready\n'.length)) : reject(new Error(`python exit ${code}`))));
  });
  return Promise.resolve({ ready, received });
}

describe('unixDatagramSend', () => {
  it('returns -ENOENT for a path where nothing is bound', () => {
    expect(native.unixDatagramSend(join(dir, 'nothing'), Buffer.from('READY=1'))).toBe(-ENOENT);
  });

  it('returns -ECONNREFUSED for an abstract name nobody holds', () => {
    expect(native.unixDatagramSend(`@iwpm-test-nobody-${process.pid}`, Buffer.from('READY=1'))).toBe(-ECONNREFUSED);
  });

  it('rejects bad arguments', () => {
    expect(native.unixDatagramSend('', Buffer.from('x'))).toBe(-22);
    expect(native.unixDatagramSend('/' + 'x'.repeat(200), Buffer.from('x'))).toBe(-36);
    expect(() => native.unixDatagramSend(1 as any, Buffer.from('x'))).toThrow(TypeError);
    expect(() => native.unixDatagramSend('/x', 'x' as any)).toThrow(TypeError);
  });

  for (const kind of ['path', 'abstract'] as const) {
    it(`delivers a datagram to a ${kind} AF_UNIX socket`, async (ctx) => {
      if (!hasPython) {
        console.log('skipped: python3 is needed to bind an AF_UNIX datagram socket');
        ctx.skip();
      }
      const addr = kind === 'path' ? join(dir, 'notify.sock') : `@iwpm-test-notify-${process.pid}`;
      const { ready, received } = await pythonReceiver(addr);
      await ready;
      expect(native.unixDatagramSend(addr, Buffer.from('READY=1\nSTATUS=ok'))).toBe(0);
      expect(await received).toBe('READY=1\nSTATUS=ok');
    });
  }
});
