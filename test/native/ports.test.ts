/** reservePorts / closeFds: real binds on the wildcard address, no listen(). */
import { readFileSync } from 'node:fs';
import net from 'node:net';
import { afterEach, describe, expect, it } from 'vitest';
import { native } from '../../src/native/index.js';

const AF_INET = 2;
const AF_INET6 = 10;
const EADDRINUSE = 98;
const EAFNOSUPPORT = 97;

const held: number[] = [];
afterEach(() => {
  native.closeFds(Int32Array.from(held.splice(0)));
});

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
  it('skips negative fds and counts failures out', () => {
    const r = native.reservePorts(Uint8Array.from([AF_INET]), Uint16Array.from([0]));
    const fd = r.fds[0]!;
    expect(native.closeFds(Int32Array.from([-1, fd, -5]))).toBe(1);
    expect(native.closeFds(Int32Array.from([fd]))).toBe(0); // already closed: EBADF
    expect(() => native.closeFds([1] as any)).toThrow(TypeError);
  });
});
