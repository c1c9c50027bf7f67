/** reservePorts / closeFds / releaseFds and the port pool: real binds on the wildcard address, no listen(). */
import { spawnSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import net from 'node:net';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { Worker } from 'node:worker_threads';
import { afterEach, describe, expect, it } from 'vitest';
import { native, type PortPoolStats } from '../../src/native/index.js';

const AF_INET = 2;
const AF_INET6 = 10;
const EADDRINUSE = 98;
const EAFNOSUPPORT = 97;

const EMFILE = 24;
const DEFAULT_SPARES = 64;

const held: number[] = [];
afterEach(() => {
  native.closeFds(Int32Array.from(held.splice(0)));
  native.configurePortPool({ spares: DEFAULT_SPARES });
});

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** Polls `cond` every few ms for up to `ms`; false if it never held. */
async function waitFor(cond: () => boolean, ms = 1000): Promise<boolean> {
  const deadline = Date.now() + ms;
  while (!cond()) {
    if (Date.now() >= deadline) return false;
    await sleep(2);
  }
  return true;
}

/** A plain bind of `port` through the addon, closed at once: 0 or the errno. */
function bindOnce(port: number, family = AF_INET): number {
  const r = native.reservePorts(Uint8Array.of(family), Uint16Array.of(port));
  if (r.errnos[0] === 0) native.closeFds(Int32Array.of(r.fds[0]!));
  return r.errnos[0]!;
}

/** A port nobody holds right now (the kernel's pick, released again). */
function freePort(family = AF_INET): number {
  const r = native.reservePorts(Uint8Array.of(family), Uint16Array.of(0));
  expect(r.errnos[0]).toBe(0);
  native.closeFds(Int32Array.of(r.fds[0]!));
  return r.ports[0]!;
}

function reserve(families: number[], ports: number[]) {
  const r = native.reservePorts(Uint8Array.from(families), Uint16Array.from(ports));
  for (const fd of r.fds) if (fd >= 0) held.push(fd);
  return r;
}

/** listen() on `port` with Node's own net module: resolves to the error code or 'ok'. */
function tryListen(port: number, host: string): Promise<string> {
  return new Promise((resolve) => {
    const srv = net.createServer();
    srv.once('error', (e: NodeJS.ErrnoException) => resolve(e.code ?? 'error'));
    srv.listen({ port, host, exclusive: true }, () => srv.close(() => resolve('ok')));
  });
}

/** connect() to 127.0.0.1:port: resolves to the error code or 'connected'. */
function tryConnect(port: number): Promise<string> {
  return new Promise((resolve) => {
    const c = net.connect({ port, host: '127.0.0.1' });
    c.once('connect', () => {
      c.destroy();
      resolve('connected');
    });
    c.once('error', (e: NodeJS.ErrnoException) => resolve(e.code ?? 'error'));
  });
}

describe('reservePorts', () => {
  it('holds a kernel-chosen IPv4 port until closeFds', async () => {
    const r = reserve([AF_INET], [0]);
    expect(r.errnos[0]).toBe(0);
    expect(r.fds[0]).toBeGreaterThanOrEqual(0);
    const port = r.ports[0]!;
    const [low, high] = readFileSync('/proc/sys/net/ipv4/ip_local_port_range', 'utf8').trim().split(/\s+/).map(Number);
    expect(port).toBeGreaterThanOrEqual(low!);
    expect(port).toBeLessThanOrEqual(high!);
    expect(await tryListen(port, '0.0.0.0')).toBe('EADDRINUSE');
    expect(await tryListen(port, '127.0.0.1')).toBe('EADDRINUSE');
    // Bound, not listening: nobody accepts connections there.
    expect(await tryConnect(port)).toBe('ECONNREFUSED');
    expect(native.closeFds(Int32Array.from([r.fds[0]!]))).toBe(1);
    held.length = 0;
    expect(await tryListen(port, '0.0.0.0')).toBe('ok');
  });

  it('an IPv6 reservation (no IPV6_V6ONLY) also blocks the IPv4 port', async (ctx) => {
    const r = reserve([AF_INET6], [0]);
    expect(r.errnos[0]).toBe(0);
    const port = r.ports[0]!;
    expect(await tryListen(port, '::')).toBe('EADDRINUSE');
    const v6only = readFileSync('/proc/sys/net/ipv6/bindv6only', 'utf8').trim();
    if (v6only !== '0') {
      console.log(`skipped the IPv4 half: net.ipv6.bindv6only=${v6only}`);
      ctx.skip();
    }
    expect(await tryListen(port, '0.0.0.0')).toBe('EADDRINUSE');
    expect(reserve([AF_INET], [port]).errnos[0]).toBe(EADDRINUSE);
  });

  it('binds explicit ports; a second reservation of a held port fails with EADDRINUSE', () => {
    // Find two free ports, release them, then take them explicitly.
    const probe = native.reservePorts(Uint8Array.from([AF_INET, AF_INET6]), Uint16Array.from([0, 0]));
    expect(native.closeFds(probe.fds)).toBe(2);
    const [p4, p6] = [probe.ports[0]!, probe.ports[1]!];
    const r = reserve([AF_INET, AF_INET6], [p4, p6]);
    expect(Array.from(r.errnos)).toEqual([0, 0]);
    expect(Array.from(r.ports)).toEqual([p4, p6]);
    const again = reserve([AF_INET, AF_INET6, AF_INET6, AF_INET], [p4, p6, p4, p6]);
    expect(Array.from(again.errnos)).toEqual([EADDRINUSE, EADDRINUSE, EADDRINUSE, EADDRINUSE]);
    expect(Array.from(again.fds)).toEqual([-1, -1, -1, -1]);
    expect(Array.from(again.ports)).toEqual([0, 0, 0, 0]);
  });

  it('answers each item on its own (bad family -> EAFNOSUPPORT)', () => {
    const r = reserve([AF_INET, 7, AF_INET6, 1, AF_INET], [0, 0, 0, 0, 0]);
    expect(Array.from(r.errnos)).toEqual([0, EAFNOSUPPORT, 0, EAFNOSUPPORT, 0]);
    expect(r.fds[1]).toBe(-1);
    expect(r.fds[3]).toBe(-1);
    const ports = [r.ports[0]!, r.ports[2]!, r.ports[4]!];
    expect(new Set(ports).size).toBe(3);
    expect(native.reservePorts(new Uint8Array(0), new Uint16Array(0)).fds).toHaveLength(0);
  });

  it('reserves many ports in one call', () => {
    const n = 200;
    const r = reserve(Array.from({ length: n }, (_, i) => (i % 2 ? AF_INET6 : AF_INET)), new Array(n).fill(0));
    expect(r.errnos.every((e) => e === 0)).toBe(true);
    expect(new Set(r.ports).size).toBe(n);
    expect(native.closeFds(Int32Array.from(held.splice(0)))).toBe(n);
  });

  it('validates its arguments with TypeError', () => {
    const bad: [unknown, unknown][] = [
      [[2], Uint16Array.from([0])],
      [Uint8Array.from([2]), [0]],
      [Uint8Array.from([2]), Uint16Array.from([0, 0])],
      [Uint16Array.from([2]), Uint16Array.from([0])],
    ];
    for (const [f, p] of bad) expect(() => native.reservePorts(f as any, p as any)).toThrow(TypeError);
  });
});

describe('closeFds', () => {
  it('skips negative fds and counts failures out', async () => {
    // With the pool on, its thread may make a spare socket at any moment and get the
    // number just closed; with it off (and its last refill batch over) nothing else in
    // this process opens fds, so the second close sees EBADF.
    native.configurePortPool({ spares: 0 });
    await sleep(50);
    const r = native.reservePorts(Uint8Array.from([AF_INET]), Uint16Array.from([0]));
    const fd = r.fds[0]!;
    expect(native.closeFds(Int32Array.from([-1, fd, -5]))).toBe(1);
    expect(native.closeFds(Int32Array.from([fd]))).toBe(0); // already closed: EBADF
    expect(() => native.closeFds([1] as any)).toThrow(TypeError);
  });
});

describe('port pool', () => {
  const stats = (): PortPoolStats => native.portPoolStats();

  it('serves reservations from spare sockets once a family has been reserved', async () => {
    // Empty the pool first: the next reservation of each family is then a miss, which
    // arms its refill up to the target (refills start below half, not below full).
    native.configurePortPool({ spares: 0 });
    native.configurePortPool({ spares: 8 });
    reserve([AF_INET, AF_INET6], [0, 0]);
    expect(await waitFor(() => stats().sparesV4 === 8 && stats().sparesV6 === 8), JSON.stringify(stats())).toBe(true);
    const before = stats();
    const [p4, p6] = [freePort(AF_INET), freePort(AF_INET6)];
    const [q4, q6] = [before.spareHits, stats().spareHits];
    expect(q6 - q4).toBe(2); // freePort itself took two spares
    const r = reserve([AF_INET, AF_INET6, AF_INET, AF_INET6], [p4, p6, 0, 0]);
    const after = stats();
    expect(Array.from(r.errnos)).toEqual([0, 0, 0, 0]);
    expect(after.spareHits - q6).toBe(4);
    expect(after.spareMisses).toBe(before.spareMisses);
    expect(r.ports[0]).toBe(p4);
    expect(r.ports[1]).toBe(p6);
    const [low, high] = readFileSync('/proc/sys/net/ipv4/ip_local_port_range', 'utf8').trim().split(/\s+/).map(Number);
    for (const p of [r.ports[2]!, r.ports[3]!]) {
      expect(p).toBeGreaterThanOrEqual(low!);
      expect(p).toBeLessThanOrEqual(high!);
    }
    // Each fd really holds its port: another bind of it fails, and after the close it works.
    for (let i = 0; i < 4; i++) {
      const fam = i % 2 ? AF_INET6 : AF_INET;
      expect(r.fds[i]).toBeGreaterThanOrEqual(0);
      expect(bindOnce(r.ports[i]!, fam), `port ${r.ports[i]} (family ${fam})`).toBe(EADDRINUSE);
      expect(await tryListen(r.ports[i]!, fam === AF_INET ? '0.0.0.0' : '::')).toBe('EADDRINUSE');
    }
    expect(native.closeFds(Int32Array.from(held.splice(0)))).toBe(r.fds.length + 2);
    for (let i = 0; i < 4; i++) expect(bindOnce(r.ports[i]!, i % 2 ? AF_INET6 : AF_INET)).toBe(0);
    // The pool refills below half: back to full after the burst.
    expect(await waitFor(() => stats().sparesV4 === 8 && stats().sparesV6 === 8), JSON.stringify(stats())).toBe(true);
    expect(stats().created).toBeGreaterThan(before.created);
  });

  it('keeps a socket whose bind failed as a spare (no socket() per failed probe)', async () => {
    native.configurePortPool({ spares: 0 });
    native.configurePortPool({ spares: 8 });
    const busy = reserve([AF_INET], [0]).ports[0]!; // a miss: arms the refill
    expect(await waitFor(() => stats().sparesV4 === 8)).toBe(true);
    // Full: the thread is idle now, and taking one spare (8 -> 7) does not re-arm it.
    const before = stats();
    const r = reserve(new Array(20).fill(AF_INET), new Array(20).fill(busy));
    expect(Array.from(r.errnos)).toEqual(new Array(20).fill(EADDRINUSE));
    expect(Array.from(r.fds)).toEqual(new Array(20).fill(-1));
    const after = stats();
    expect(after.spareHits - before.spareHits).toBe(20);
    expect(after.sparesV4).toBe(8); // each one taken, bind failed, put back
    expect(after.created).toBe(before.created);
    // ...and it still binds normally afterwards.
    const ok = reserve([AF_INET], [0]);
    expect(ok.errnos[0]).toBe(0);
    expect(bindOnce(ok.ports[0]!)).toBe(EADDRINUSE);
  });

  it('releaseFds closes on the background thread: the port comes free', async () => {
    const r = native.reservePorts(Uint8Array.of(AF_INET, AF_INET6), Uint16Array.of(0, 0));
    expect(Array.from(r.errnos)).toEqual([0, 0]);
    const before = stats();
    expect(native.releaseFds(Int32Array.of(-1, r.fds[0]!, -7, r.fds[1]!))).toBe(2);
    expect(await waitFor(() => bindOnce(r.ports[0]!) === 0 && bindOnce(r.ports[1]!, AF_INET6) === 0)).toBe(true);
    expect(await waitFor(() => stats().pendingClose === 0)).toBe(true);
    expect(stats().asyncClosed - before.asyncClosed).toBe(2);
    expect(native.releaseFds(new Int32Array(0))).toBe(0);
  });

  it('releases many ports in order, and all of them come free', async () => {
    const n = 500;
    const r = native.reservePorts(Uint8Array.from({ length: n }, (_, i) => (i % 2 ? AF_INET6 : AF_INET)), new Uint16Array(n));
    expect(r.errnos.every((e) => e === 0)).toBe(true);
    const before = stats();
    for (let i = 0; i < n; i += 50) expect(native.releaseFds(r.fds.subarray(i, i + 50))).toBe(50);
    expect(await waitFor(() => stats().pendingClose === 0)).toBe(true);
    expect(stats().asyncClosed - before.asyncClosed).toBe(n);
    for (let i = 0; i < n; i++) expect(bindOnce(r.ports[i]!, i % 2 ? AF_INET6 : AF_INET), `port ${r.ports[i]}`).toBe(0);
  });

  it('spares: 0 turns it off: no spares, every socket made by the caller, releaseFds synchronous', () => {
    reserve([AF_INET, AF_INET6], [0, 0]);
    native.configurePortPool({ spares: 0 });
    const before = stats();
    expect(before).toMatchObject({ sparesV4: 0, sparesV6: 0, target: 0 });
    const r = native.reservePorts(Uint8Array.of(AF_INET, AF_INET6, AF_INET), Uint16Array.of(0, 0, 0));
    expect(Array.from(r.errnos)).toEqual([0, 0, 0]);
    for (let i = 0; i < 3; i++) expect(bindOnce(r.ports[i]!, i === 1 ? AF_INET6 : AF_INET)).toBe(EADDRINUSE);
    expect(native.releaseFds(r.fds)).toBe(3);
    // Closed before releaseFds returned.
    for (let i = 0; i < 3; i++) expect(bindOnce(r.ports[i]!, i === 1 ? AF_INET6 : AF_INET)).toBe(0);
    const after = stats();
    expect(after.spareHits).toBe(before.spareHits);
    expect(after.spareMisses).toBe(before.spareMisses);
    expect(after.asyncClosed).toBe(before.asyncClosed);
    expect(after).toMatchObject({ sparesV4: 0, sparesV6: 0, pendingClose: 0 });
  });

  it('lowering spares closes the surplus at once', async () => {
    native.configurePortPool({ spares: 0 });
    native.configurePortPool({ spares: 16 });
    reserve([AF_INET], [0]);
    expect(await waitFor(() => stats().sparesV4 === 16)).toBe(true);
    native.configurePortPool({ spares: 4 });
    expect(stats()).toMatchObject({ sparesV4: 4, target: 4 });
  });

  it('validates its arguments with TypeError', () => {
    const msg = 'options.spares must be an integer in [0, 4096]';
    expect(() => native.configurePortPool({ spares: -1 })).toThrow(new TypeError(msg));
    expect(() => native.configurePortPool({ spares: 1.5 })).toThrow(new TypeError(msg));
    expect(() => native.configurePortPool({ spares: 4097 })).toThrow(new TypeError(msg));
    expect(() => native.configurePortPool({ spares: '8' } as any)).toThrow(new TypeError(msg));
    expect(() => native.configurePortPool({} as any)).toThrow(new TypeError(msg));
    const call = 'configurePortPool(options: { spares: number })';
    expect(() => (native.configurePortPool as any)()).toThrow(new TypeError(call));
    expect(() => native.configurePortPool(8 as any)).toThrow(new TypeError(call));
    expect(() => native.releaseFds([3] as any)).toThrow(new TypeError('releaseFds(fds: Int32Array)'));
    expect(() => native.releaseFds(Uint32Array.of(3) as any)).toThrow(new TypeError('releaseFds(fds: Int32Array)'));
    expect(stats().target).toBe(DEFAULT_SPARES); // unchanged by the failed calls
  });

  it('is shared safely with worker threads', async () => {
    const root = join(dirname(fileURLToPath(import.meta.url)), '..', '..');
    const body = `
      const { createRequire } = require('node:module');
      const n = createRequire(${JSON.stringify(join(root, 'package.json'))})('bindings')('iwpm_native');
      const { parentPort } = require('node:worker_threads');
      const ports = [];
      for (let k = 0; k < 50; k++) {
        const r = n.reservePorts(Uint8Array.of(2, 10, 2, 10), new Uint16Array(4));
        if (!r.errnos.every((e) => e === 0)) throw new Error('reservation failed: ' + r.errnos);
        ports.push(...r.ports);
        n.releaseFds(r.fds);
      }
      parentPort.postMessage(ports);
    `;
    const workers = [0, 1].map(
      () =>
        new Promise<number[]>((resolve, reject) => {
          const w = new Worker(body, { eval: true });
          let ports: number[] = [];
          w.on('message', (m: number[]) => (ports = m));
          w.on('error', reject);
          w.on('exit', (code) => (code === 0 ? resolve(ports) : reject(new Error(`worker exit ${code}`))));
        }),
    );
    // The main thread uses the same pool meanwhile.
    const mine: number[] = [];
    for (let k = 0; k < 50; k++) {
      const r = native.reservePorts(Uint8Array.of(AF_INET, AF_INET6), new Uint16Array(2));
      expect(Array.from(r.errnos)).toEqual([0, 0]);
      mine.push(...r.ports);
      native.releaseFds(r.fds);
      await sleep(0);
    }
    const all = [...(await Promise.all(workers)).flat(), ...mine];
    expect(all).toHaveLength(2 * 200 + 100);
    expect(await waitFor(() => stats().pendingClose === 0)).toBe(true);
    // Every port came free again, and the pool still works after the Workers are gone.
    for (const p of new Set(all)) expect(bindOnce(p), `port ${p}`).toBe(0);
    expect(reserve([AF_INET6, AF_INET], [0, 0]).errnos.every((e) => e === 0)).toBe(true);
  });

  it('never causes an EMFILE the pool-less code would not have', () => {
    // A child under a low RLIMIT_NOFILE with full spares of both families reserves
    // AF_INET ports until EMFILE; it must get exactly as many as with the pool off.
    const root = join(dirname(fileURLToPath(import.meta.url)), '..', '..');
    const script = `
      const { createRequire } = require('node:module');
      const n = createRequire(${JSON.stringify(join(root, 'package.json'))})('bindings')('iwpm_native');
      const spares = Number(process.argv[1]);
      n.configurePortPool({ spares });
      const warm = n.reservePorts(Uint8Array.of(2, 10), Uint16Array.of(0, 0));
      n.closeFds(warm.fds);
      const until = Date.now() + 2000;
      const full = () => { const s = n.portPoolStats(); return s.sparesV4 === spares && s.sparesV6 === spares; };
      (function wait() {
        if (!full() && Date.now() < until) return setTimeout(wait, 2);
        let count = 0, errno = 0;
        for (;;) {
          const r = n.reservePorts(Uint8Array.of(2), Uint16Array.of(0));
          if (r.errnos[0] !== 0) { errno = r.errnos[0]; break; }
          count++;
        }
        console.log(JSON.stringify({ count, errno, full: spares === 0 || full(), stats: n.portPoolStats() }));
      })();
    `;
    const run = (spares: number) => {
      const r = spawnSync('sh', ['-c', 'ulimit -n 400 && exec "$0" "$@"', process.execPath, '-e', script, String(spares)], {
        encoding: 'utf8',
      });
      expect(r.status, r.stderr).toBe(0);
      return JSON.parse(r.stdout.trim().split('\n').pop()!) as { count: number; errno: number; stats: PortPoolStats };
    };
    const off = run(0);
    const on = run(64);
    expect(off.errno).toBe(EMFILE);
    expect(on.errno).toBe(EMFILE);
    expect(on.stats.spareHits, JSON.stringify(on.stats)).toBeGreaterThanOrEqual(64);
    expect(on.count, `pool on: ${JSON.stringify(on)}\npool off: ${JSON.stringify(off)}`).toBe(off.count);
  });
});
