/** UdpSocket on real UDP sockets over loopback (127.0.0.1 and ::1). */
import { spawnSync } from 'node:child_process';
import dgram from 'node:dgram';
import { mkdtempSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { networkInterfaces, tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { Worker } from 'node:worker_threads';
import { afterEach, describe, expect, it } from 'vitest';
import { native, type UdpBatch, type UdpSocket, type UdpSocketOptions } from '../../src/native/index.js';
import { settle, waitFor } from './helpers.js';

const root = join(dirname(fileURLToPath(import.meta.url)), '..', '..');
/** CommonJS prelude for child processes: `n` = the addon, loaded through `bindings`. */
const addonPrelude = `const n = require(${JSON.stringify(join(root, 'node_modules', 'bindings'))})({ bindings: 'iwpm_native', module_root: ${JSON.stringify(root)} });\n`;

// --- helpers -------------------------------------------------------------------

interface Datagram {
  data: Buffer;
  addr: string;
  port: number;
  scopeId: number;
  truncated: boolean;
}

interface RecvError {
  errno: number;
  addr: string;
  port: number;
}

type SendError = Error & { errno?: number; code?: string; syscall?: string; index?: number };

/** Text form of a 16-byte address slot: dotted quad for family 4, compressed hex groups for 6. */
function addrText(b: Buffer, family: 4 | 6): string {
  if (family === 4) return `${b[0]}.${b[1]}.${b[2]}.${b[3]}`;
  const groups: string[] = [];
  for (let i = 0; i < 16; i += 2) groups.push(b.readUInt16BE(i).toString(16));
  return groups.join(':').replace(/(^|:)0(:0)+(:|$)/, '::');
}

/** 16-byte address slot from text (IPv4 dotted quad, or IPv6 with at most one '::'). */
function addrBytes(text: string): Buffer {
  const b = Buffer.alloc(16);
  if (!text.includes(':')) {
    text.split('.').forEach((x, i) => (b[i] = Number(x)));
    return b;
  }
  const [head, tail] = text.split('::') as [string, string | undefined];
  const hs = head ? head.split(':') : [];
  const ts = tail ? tail.split(':') : [];
  const all = [...hs, ...Array(8 - hs.length - ts.length).fill('0'), ...ts];
  all.forEach((g, i) => b.writeUInt16BE(parseInt(g, 16), 2 * i));
  return b;
}

/** A UdpSocket that records everything it receives and every error it reports. */
class Endpoint {
  readonly sock: UdpSocket;
  readonly family: 4 | 6;
  readonly msgs: Datagram[] = [];
  readonly batchCounts: number[] = [];
  readonly recvErrors: RecvError[] = [];
  readonly sendErrors: SendError[] = [];
  onBatch?: (b: UdpBatch) => void;

  constructor(opts: Partial<UdpSocketOptions> & { family: 4 | 6 }) {
    this.family = opts.family;
    this.sock = new native.UdpSocket(
      { port: 0, address: opts.family === 4 ? '127.0.0.1' : '::1', ...opts },
      (b) => {
        this.batchCounts.push(b.count);
        for (let i = 0; i < b.count; i++) {
          this.msgs.push({
            data: Buffer.from(b.data.subarray(b.offsets[i]!, b.offsets[i]! + b.lengths[i]!)),
            addr: addrText(b.srcAddrs.subarray(16 * i, 16 * i + 16), this.family),
            port: b.srcPorts[i]!,
            scopeId: b.scopeIds[i]!,
            truncated: b.truncated[i] === 1,
          });
        }
        b.errors.forEach((errno, i) =>
          this.recvErrors.push({
            errno,
            addr: addrText(b.errorAddrs.subarray(16 * i, 16 * i + 16), this.family),
            port: b.errorPorts[i]!,
          }),
        );
        this.onBatch?.(b);
      },
      (e) => this.sendErrors.push(e),
    );
    open.push(this);
  }

  get port(): number {
    return this.sock.port;
  }

  /** Send each datagram to the matching [address, port]. */
  sendTo(datagrams: Uint8Array[], dests: [string, number][]): number {
    const addrs = Buffer.concat(dests.map(([a]) => addrBytes(a)));
    return this.sock.send(datagrams, addrs, Uint16Array.from(dests.map(([, p]) => p)));
  }

  /** Send all datagrams to one [address, port]. */
  sendAll(datagrams: Uint8Array[], addr: string, port: number): number {
    return this.sendTo(
      datagrams,
      datagrams.map(() => [addr, port]),
    );
  }
}

const open: Endpoint[] = [];
afterEach(() => {
  for (const e of open.splice(0)) e.sock.close();
});

/** A loopback port nobody listens on (bound, read back, closed). */
function closedPort(family: 4 | 6): number {
  const s = new native.UdpSocket({ family, port: 0, address: family === 4 ? '127.0.0.1' : '::1' }, () => {}, () => {});
  const port = s.port;
  s.close();
  return port;
}

/** Whether [::1] can be bound here; prints why not. */
const ipv6 = (() => {
  try {
    const s = new native.UdpSocket({ family: 6, port: 0, address: '::1' }, () => {}, () => {});
    s.close();
    return true;
  } catch (e) {
    console.log(`IPv6 tests skipped: cannot bind [::1] (${(e as Error).message})`);
    return false;
  }
})();

/** Datagram `seq` of sender `who`: 1-byte sender id + 4-byte big-endian sequence + filler. */
function tagged(who: number, seq: number, size = 64): Buffer {
  const b = Buffer.alloc(size, seq & 0xff);
  b[0] = who;
  b.writeUInt32BE(seq, 1);
  return b;
}

function errorOf(f: () => unknown): any {
  try {
    f();
  } catch (e) {
    return e;
  }
  return undefined;
}

/**
 * Runs `code` (CommonJS, `n` = the addon) in a child node in a fresh network
 * namespace (it disappears with the child) after the shell commands `setup`.
 */
function inNetns(setup: string, code: string) {
  return spawnSync('unshare', ['-n', 'sh', '-c', `${setup} && exec "$0" -e "$1"`, process.execPath, addonPrelude + code], {
    encoding: 'utf8',
    timeout: 20_000,
  });
}

// --- tests ---------------------------------------------------------------------

describe('UdpSocket: open', () => {
  it('binds an ephemeral port and reports the buffer sizes (FORCE options as root)', () => {
    const a = new Endpoint({ family: 4, rcvbufBytes: 1 << 20, sndbufBytes: 512 << 10 });
    expect(a.port).toBeGreaterThan(0);
    expect(a.sock.rcvbufBytes).toBe(2 << 20); // the kernel doubles the request
    expect(a.sock.sndbufBytes).toBe(1 << 20);
    const b = new Endpoint({ family: 4, address: undefined });
    expect(b.port).toBeGreaterThan(0);
    expect(b.port).not.toBe(a.port);
    expect(b.sock.rcvbufBytes).toBeGreaterThan(0);
    expect(b.sock.sndbufBytes).toBeGreaterThan(0);
  });

  it('throws EADDRINUSE (errno, code, syscall "bind") for a second bind of the same port', () => {
    const a = new Endpoint({ family: 4, address: '0.0.0.0' });
    const err = errorOf(() => new Endpoint({ family: 4, address: '0.0.0.0', port: a.port }));
    expect(err).toBeInstanceOf(Error);
    expect(err).toMatchObject({ errno: 98, code: 'EADDRINUSE', syscall: 'bind' });
    expect(err.message).toBe('bind EADDRINUSE: Address already in use');
    // No SO_REUSEADDR: a specific address on the wildcard's port is taken too.
    expect(errorOf(() => new Endpoint({ family: 4, port: a.port }))).toMatchObject({ code: 'EADDRINUSE' });
  });

  it.runIf(ipv6)('v6Only=true lets a udp4 socket bind the same port; v6Only=false does not', () => {
    const v6 = new Endpoint({ family: 6, address: '::' }); // v6Only defaults to true
    const v4 = new Endpoint({ family: 4, address: '0.0.0.0', port: v6.port });
    expect(v4.port).toBe(v6.port);
    expect(errorOf(() => new Endpoint({ family: 6, address: '::', port: v6.port }))).toMatchObject({
      errno: 98,
      code: 'EADDRINUSE',
      syscall: 'bind',
    });
    const dual = new Endpoint({ family: 6, address: '::', v6Only: false });
    expect(errorOf(() => new Endpoint({ family: 4, address: '0.0.0.0', port: dual.port }))).toMatchObject({
      code: 'EADDRINUSE',
    });
  });

  it('throws errno-shaped errors from bind for an address not on this host', () => {
    expect(errorOf(() => new Endpoint({ family: 4, address: '203.0.113.77' }))).toMatchObject({
      errno: 99,
      code: 'EADDRNOTAVAIL',
      syscall: 'bind',
    });
  });

  it('IPv6 disabled by sysctl: binding [::1] fails with EADDRNOTAVAIL from bind (netns)', (ctx) => {
    const r = inNetns(
      'ip link set lo up && sysctl -qw net.ipv6.conf.all.disable_ipv6=1',
      `try { new n.UdpSocket({ family: 6, port: 0, address: '::1' }, () => {}, () => {}); console.log('{}'); }
       catch (e) { console.log(JSON.stringify({ errno: e.errno, code: e.code, syscall: e.syscall })); }`,
    );
    if (r.error || r.status !== 0) {
      console.log(`skipped: cannot run in a netns with IPv6 disabled (needs root, unshare, sysctl): ${r.error?.message ?? r.stderr.trim()}`);
      ctx.skip();
    }
    expect(JSON.parse(r.stdout)).toEqual({ errno: 99, code: 'EADDRNOTAVAIL', syscall: 'bind' });
  });

  it('no IPv6 in the kernel (ipv6.disable=1): EAFNOSUPPORT from socket (simulated with an LD_PRELOAD socket())', (ctx) => {
    // This kernel has IPv6; a kernel booted with ipv6.disable=1 answers socket(AF_INET6)
    // with EAFNOSUPPORT. Inject exactly that answer and check what JS gets.
    const dir = mkdtempSync(join(tmpdir(), 'iwpm-noipv6-'));
    try {
      writeFileSync(
        join(dir, 'noipv6.c'),
        `#define _GNU_SOURCE
         #include <dlfcn.h>
         #include <errno.h>
         #include <sys/socket.h>
         int socket(int domain, int type, int protocol) {
           int (*real)(int, int, int) = (int (*)(int, int, int))dlsym(RTLD_NEXT, "socket");
           if (domain == AF_INET6) { errno = EAFNOSUPPORT; return -1; }
           return real(domain, type, protocol);
         }`,
      );
      const cc = spawnSync('cc', ['-shared', '-fPIC', '-o', join(dir, 'noipv6.so'), join(dir, 'noipv6.c'), '-ldl'], {
        encoding: 'utf8',
      });
      if (cc.error || cc.status !== 0) {
        console.log(`skipped: no C compiler for the LD_PRELOAD shim: ${cc.error?.message ?? cc.stderr.trim()}`);
        ctx.skip();
      }
      const r = spawnSync(
        process.execPath,
        [
          '-e',
          `${addonPrelude}
           const v4 = new n.UdpSocket({ family: 4, port: 0 }, () => {}, () => {}); v4.close();
           try { new n.UdpSocket({ family: 6, port: 0 }, () => {}, () => {}); console.log('{}'); }
           catch (e) { console.log(JSON.stringify({ errno: e.errno, code: e.code, syscall: e.syscall, message: e.message })); }`,
        ],
        { encoding: 'utf8', env: { ...process.env, LD_PRELOAD: join(dir, 'noipv6.so') } },
      );
      expect(r.stderr).toBe('');
      expect(JSON.parse(r.stdout)).toEqual({
        errno: 97,
        code: 'EAFNOSUPPORT',
        syscall: 'socket',
        message: 'socket EAFNOSUPPORT: Address family not supported by protocol',
      });
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('validates its arguments with TypeError', () => {
    const f = () => {};
    const make = (o: any, a: any = f, b: any = f) => () => new native.UdpSocket(o, a, b);
    const ok = { family: 4, port: 0, address: '127.0.0.1' };
    expect(() => make(ok)().close()).not.toThrow();
    expect(make(undefined)).toThrow(TypeError);
    expect(make(ok, 1)).toThrow(TypeError);
    expect(make(ok, f, null)).toThrow(TypeError);
    expect(make({ ...ok, family: 5 })).toThrow(TypeError);
    expect(make({ ...ok, family: '4' })).toThrow(TypeError);
    expect(make({ port: 0 })).toThrow(TypeError);
    expect(make({ ...ok, port: 65536 })).toThrow(TypeError);
    expect(make({ ...ok, port: -1 })).toThrow(TypeError);
    expect(make({ family: 4 })).toThrow(TypeError); // port is required
    expect(make({ ...ok, address: 'localhost' })).toThrow(TypeError);
    expect(make({ ...ok, address: '::1' })).toThrow(TypeError); // not IPv4
    expect(make({ ...ok, address: 7 })).toThrow(TypeError);
    expect(make({ family: 6, port: 0, address: '127.0.0.1' })).toThrow(TypeError);
    expect(make({ family: 6, port: 0, address: 'fe80::1%no-such-if0' })).toThrow(TypeError);
    expect(make({ ...ok, v6Only: 1 })).toThrow(TypeError);
    expect(make({ ...ok, rcvbufBytes: -1 })).toThrow(TypeError);
    expect(make({ ...ok, sndbufBytes: 1.5 })).toThrow(TypeError);
    expect(make({ ...ok, batchSize: 0 })).toThrow(TypeError);
    expect(make({ ...ok, batchSize: 1025 })).toThrow(TypeError);
    expect(make({ ...ok, slotBytes: 65537 })).toThrow(TypeError);

    const a = new Endpoint({ family: 4 });
    const addrs = addrBytes('127.0.0.1');
    const ports = Uint16Array.of(a.port);
    const one = [Buffer.from('x')];
    expect(() => a.sock.send('x' as any, addrs, ports)).toThrow(TypeError);
    expect(() => (a.sock.send as any)(one)).toThrow(TypeError);
    expect(() => a.sock.send(['x'] as any, addrs, ports)).toThrow(TypeError);
    expect(() => a.sock.send(one, Buffer.alloc(15), ports)).toThrow(TypeError); // < 16 bytes per datagram
    expect(() => a.sock.send(one, [127, 0, 0, 1] as any, ports)).toThrow(TypeError);
    expect(() => a.sock.send(one, addrs, new Uint16Array(0))).toThrow(TypeError); // too short
    expect(() => a.sock.send(one, addrs, Uint32Array.of(a.port) as any)).toThrow(TypeError);
    expect(() => a.sock.send(one, addrs, ports, new Uint32Array(0))).toThrow(TypeError);
    expect(() => a.sock.send(one, addrs, ports, [0] as any)).toThrow(TypeError);
    expect(a.sock.stats().sent).toBe(0);
  });
});

describe('UdpSocket: datagrams', () => {
  it('exchanges IPv4 datagrams and reports the source address and port', async () => {
    const a = new Endpoint({ family: 4 });
    const b = new Endpoint({ family: 4, address: '0.0.0.0' });
    expect(a.sendAll([Buffer.from('hello b')], '127.0.0.1', b.port)).toBe(1);
    await waitFor(() => b.msgs.length === 1);
    expect(b.msgs[0]).toEqual({ data: Buffer.from('hello b'), addr: '127.0.0.1', port: a.port, scopeId: 0, truncated: false });
    // Reply to where it came from.
    const { addr, port } = b.msgs[0]!;
    expect(b.sendAll([Buffer.from('hello a'), Buffer.from('again')], addr, port)).toBe(2);
    await waitFor(() => a.msgs.length === 2);
    expect(a.msgs.map((m) => m.data.toString())).toEqual(['hello a', 'again']);
    expect(a.msgs.every((m) => m.addr === '127.0.0.1' && m.port === b.port)).toBe(true);
    expect(a.sock.stats()).toEqual({ received: 2, sent: 1, queued: 0, recvErrors: 0, sendErrors: 0, truncated: 0 });
    expect(b.sock.stats()).toEqual({ received: 1, sent: 2, queued: 0, recvErrors: 0, sendErrors: 0, truncated: 0 });
  });

  it.runIf(ipv6)('exchanges IPv6 datagrams over [::1] with source address, port and scope id', async () => {
    const a = new Endpoint({ family: 6 });
    const b = new Endpoint({ family: 6, address: '::' });
    expect(a.sendAll([Buffer.from('v6 hello')], '::1', b.port)).toBe(1);
    await waitFor(() => b.msgs.length === 1);
    expect(b.msgs[0]).toEqual({ data: Buffer.from('v6 hello'), addr: '::1', port: a.port, scopeId: 0, truncated: false });
    const scopes = Uint32Array.of(0, 0);
    expect(b.sock.send([Buffer.from('r1'), Buffer.from('r2')], Buffer.concat([addrBytes('::1'), addrBytes('::1')]), Uint16Array.of(a.port, a.port), scopes)).toBe(2);
    await waitFor(() => a.msgs.length === 2);
    expect(a.msgs.map((m) => [m.data.toString(), m.addr, m.port])).toEqual([
      ['r1', '::1', b.port],
      ['r2', '::1', b.port],
    ]);
  });

  it.runIf(ipv6)('a dual-stack socket (v6Only=false) talks to IPv4 through v4-mapped addresses', async () => {
    const dual = new Endpoint({ family: 6, address: '::', v6Only: false });
    const v4 = new Endpoint({ family: 4 });
    v4.sendAll([Buffer.from('from v4')], '127.0.0.1', dual.port);
    await waitFor(() => dual.msgs.length === 1);
    expect(dual.msgs[0]).toMatchObject({ addr: '::ffff:7f00:1', port: v4.port });
    expect(dual.sendAll([Buffer.from('to v4')], '::ffff:7f00:1', v4.port)).toBe(1);
    await waitFor(() => v4.msgs.length === 1);
    expect(v4.msgs[0]).toMatchObject({ data: Buffer.from('to v4'), addr: '127.0.0.1', port: dual.port });
  });

  const linkLocal = Object.entries(networkInterfaces())
    .flatMap(([name, list]) => (list ?? []).map((i) => ({ name, ...i })))
    .find((i) => i.family === 'IPv6' && !i.internal && i.address.startsWith('fe80:') && (i.scopeid ?? 0) > 0);

  it('binds a link-local address with a %scope and reports/uses scope ids', async (ctx) => {
    if (!ipv6 || !linkLocal) {
      console.log('skipped: no interface with an IPv6 link-local address here');
      ctx.skip();
    }
    const { name, address, scopeid } = linkLocal!;
    const a = new Endpoint({ family: 6, address: `${address}%${name}` });
    const b = new Endpoint({ family: 6, address: `${address}%${scopeid}` });
    const send = (from: Endpoint, to: Endpoint, text: string, scope: number) =>
      from.sock.send([Buffer.from(text)], addrBytes(address), Uint16Array.of(to.port), Uint32Array.of(scope));
    expect(send(a, b, 'over the link', scopeid!)).toBe(1);
    await waitFor(() => b.msgs.length === 1);
    expect(b.msgs[0]).toMatchObject({ data: Buffer.from('over the link'), port: a.port, scopeId: scopeid });
    expect(addrBytes(b.msgs[0]!.addr)).toEqual(addrBytes(address));
    expect(send(b, a, 'back', b.msgs[0]!.scopeId)).toBe(1);
    await waitFor(() => a.msgs.length === 1);
    expect(a.msgs[0]).toMatchObject({ data: Buffer.from('back'), port: b.port, scopeId: scopeid });
  });

  it('sends exactly the bytes of Buffer/Uint8Array views (offsets honoured), and 0 datagrams', async () => {
    const a = new Endpoint({ family: 4 });
    const b = new Endpoint({ family: 4 });
    const big = Buffer.from('0123456789abcdef');
    const views = [big.subarray(3, 8), new Uint8Array(big.buffer, big.byteOffset + 10, 3), Buffer.alloc(0)];
    expect(a.sendAll(views, '127.0.0.1', b.port)).toBe(3);
    await waitFor(() => b.msgs.length === 3);
    expect(b.msgs.map((m) => m.data.toString())).toEqual(['34567', 'abc', '']);
    // Sending nothing is fine and does nothing; addrs/ports may be longer than needed.
    expect(a.sock.send([], Buffer.alloc(0), new Uint16Array(0))).toBe(0);
    expect(a.sock.send([], addrBytes('127.0.0.1'), Uint16Array.of(b.port))).toBe(0);
    await settle();
    expect(b.msgs).toHaveLength(3);
    expect(a.sock.stats()).toMatchObject({ sent: 3, queued: 0, sendErrors: 0 });
    expect(a.sendErrors).toEqual([]);
  });

  it('delivers a burst of 1000 datagrams from one send(), per-datagram destinations and sources, in batches', async () => {
    const N = 1000;
    const r1 = new Endpoint({ family: 4, rcvbufBytes: 8 << 20, batchSize: 64 });
    const r2 = new Endpoint({ family: 4, rcvbufBytes: 8 << 20, batchSize: 64 });
    const s1 = new Endpoint({ family: 4 });
    const s2 = new Endpoint({ family: 4 });
    // s1: one send() of N datagrams alternating between r1 and r2; s2: one send() of N to r1.
    const dests = Array.from({ length: N }, (_, i): [string, number] => ['127.0.0.1', i % 2 ? r2.port : r1.port]);
    expect(s1.sendTo(Array.from({ length: N }, (_, i) => tagged(1, i, 100)), dests)).toBe(N);
    expect(s2.sendAll(Array.from({ length: N }, (_, i) => tagged(2, i, 200)), '127.0.0.1', r1.port)).toBe(N);
    await waitFor(() => r1.msgs.length === N + N / 2 && r2.msgs.length === N / 2, 10_000, 'the burst');

    const senderPort = [0, s1.port, s2.port];
    for (const m of [...r1.msgs, ...r2.msgs]) {
      expect(m.addr).toBe('127.0.0.1');
      expect(m.port).toBe(senderPort[m.data[0]!]); // the source matches the sender tagged inside
      expect(m.data.length).toBe(m.data[0] === 1 ? 100 : 200);
    }
    const seqs = (r: Endpoint, who: number) => r.msgs.filter((m) => m.data[0] === who).map((m) => m.data.readUInt32BE(1));
    const evens = Array.from({ length: N / 2 }, (_, i) => 2 * i);
    expect(seqs(r1, 1)).toEqual(evens);
    expect(seqs(r2, 1)).toEqual(evens.map((i) => i + 1));
    expect(seqs(r1, 2)).toEqual(Array.from({ length: N }, (_, i) => i));

    // Batching: bounded by batchSize, and far fewer onBatch calls than datagrams.
    expect(Math.max(...r1.batchCounts)).toBe(64);
    expect(r1.batchCounts.length).toBeLessThan((N + N / 2) / 8);
    await settle();
    expect(r1.msgs.length).toBe(N + N / 2);
    expect(r1.sock.stats()).toEqual({ received: N + N / 2, sent: 0, queued: 0, recvErrors: 0, sendErrors: 0, truncated: 0 });
    expect(s1.sock.stats()).toMatchObject({ sent: N, queued: 0, sendErrors: 0 });
  });

  it('flags datagrams longer than slotBytes as truncated', async () => {
    const r = new Endpoint({ family: 4, slotBytes: 16 });
    const s = new Endpoint({ family: 4 });
    const big = Buffer.from(Array.from({ length: 100 }, (_, i) => i));
    s.sendAll([big, Buffer.from('short'), Buffer.alloc(16, 7)], '127.0.0.1', r.port);
    await waitFor(() => r.msgs.length === 3);
    expect(r.msgs[0]).toMatchObject({ truncated: true, data: big.subarray(0, 16), port: s.port });
    expect(r.msgs[1]).toMatchObject({ truncated: false, data: Buffer.from('short') });
    expect(r.msgs[2]).toMatchObject({ truncated: false, data: Buffer.alloc(16, 7) });
    expect(r.sock.stats().truncated).toBe(1);
  });

  for (const family of [4, 6] as const) {
    it.runIf(family === 4 || ipv6)(
      `reports ICMP port unreachable as ECONNREFUSED with its destination, and keeps working (IPv${family})`,
      async () => {
        const lo = family === 4 ? '127.0.0.1' : '::1';
        const nobody = closedPort(family);
        const a = new Endpoint({ family });
        const b = new Endpoint({ family });
        // The ICMP answer comes back at once on loopback and sets the socket error,
        // which the kernel hands to the next send: that datagram must still go out.
        expect(a.sendAll([Buffer.from('anyone?')], lo, nobody)).toBe(1);
        expect(a.sendAll([Buffer.from('to b')], lo, b.port)).toBe(1);
        // In one call, with a dead destination in the middle.
        expect(
          a.sendTo(
            [Buffer.from('b1'), Buffer.from('nobody'), Buffer.from('b2')],
            [
              [lo, b.port],
              [lo, nobody],
              [lo, b.port],
            ],
          ),
        ).toBe(3);
        await waitFor(() => a.recvErrors.length === 2 && b.msgs.length === 3);
        expect(a.recvErrors).toEqual([
          { errno: -111, addr: lo, port: nobody },
          { errno: -111, addr: lo, port: nobody },
        ]);
        expect(a.sendErrors).toEqual([]);
        expect(b.msgs.map((m) => m.data.toString())).toEqual(['to b', 'b1', 'b2']);
        // Still receiving.
        b.sendAll([Buffer.from('back')], lo, a.port);
        await waitFor(() => a.msgs.length === 1);
        expect(a.msgs[0]).toMatchObject({ data: Buffer.from('back'), port: b.port });
        await settle();
        expect(a.recvErrors).toHaveLength(2);
        expect(a.sock.stats()).toEqual({ received: 1, sent: 5, queued: 0, recvErrors: 2, sendErrors: 0, truncated: 0 });
      },
    );
  }

  it('reports hard per-datagram send errors through onError with the index, and sends the rest', async () => {
    const a = new Endpoint({ family: 4 });
    const b = new Endpoint({ family: 4 });
    const n = a.sendTo(
      [Buffer.from('1'), Buffer.from('port 0'), Buffer.from('broadcast'), Buffer.from('off-host'), Buffer.from('2')],
      [
        ['127.0.0.1', b.port],
        ['127.0.0.1', 0], // EINVAL
        ['127.255.255.255', b.port], // EACCES: broadcast without SO_BROADCAST
        ['198.51.100.1', 9], // EINVAL: a loopback source cannot reach it
        ['127.0.0.1', b.port],
      ],
    );
    expect(n).toBe(2);
    // Reported synchronously, in order.
    expect(a.sendErrors.map((e) => [e.errno, e.code, e.syscall, e.index])).toEqual([
      [22, 'EINVAL', 'sendmmsg', 1],
      [13, 'EACCES', 'sendmmsg', 2],
      [22, 'EINVAL', 'sendmmsg', 3],
    ]);
    expect(a.sendErrors[0]).toBeInstanceOf(Error);
    expect(a.sock.stats()).toMatchObject({ sent: 2, sendErrors: 3, queued: 0 });
    await waitFor(() => b.msgs.length === 2);
    expect(b.msgs.map((m) => m.data.toString())).toEqual(['1', '2']);
  });

  it('reports ENETUNREACH, EHOSTUNREACH and EACCES from routing per datagram (netns with unreachable/prohibit routes)', (ctx) => {
    const r = inNetns(
      'ip link set lo up && ip route add unreachable 203.0.113.0/24 && ip route add prohibit 192.0.2.0/24' +
        ' && ip -6 route add unreachable 2001:db8:1::/48',
      `const out = { errors: [], recv: [] };
       const a = new n.UdpSocket({ family: 4, port: 0 }, (b) => out.recv.push(b.count, ...b.errors), (e) => out.errors.push([4, e.code, e.index]));
       const b = new n.UdpSocket({ family: 6, port: 0 }, () => {}, (e) => out.errors.push([6, e.code, e.index]));
       const v4 = Buffer.alloc(64);
       [0xc6336401, 0xcb007101, 0xc0000201, 0x7f000001].forEach((x, i) => v4.writeUInt32BE(x, 16 * i));
       out.sent4 = a.send([1, 2, 3, 4].map((i) => Buffer.from([i])), v4, Uint16Array.of(9, 9, 9, a.port));
       const v6 = Buffer.alloc(32);
       v6.writeUInt32BE(0x20010db8, 0);     // 2001:db8::1 (no route at all)
       v6.writeUInt16BE(1, 14);
       v6.writeUInt32BE(0x20010db8, 16);    // 2001:db8:1::1 (unreachable route)
       v6.writeUInt16BE(1, 20);
       v6.writeUInt16BE(1, 30);
       out.sent6 = b.send([Buffer.from('x'), Buffer.from('y')], v6, Uint16Array.of(9, 9));
       const t0 = Date.now();
       const iv = setInterval(() => {
         if (out.recv.length === 0 && Date.now() - t0 < 5000) return;
         clearInterval(iv);
         out.stats = a.stats();
         console.log(JSON.stringify(out));
         a.close();
         b.close();
       }, 5);`,
    );
    if (r.error || r.status !== 0) {
      console.log(`skipped: cannot run in a netns with extra routes (needs root, unshare, ip): ${r.error?.message ?? r.stderr.trim()}`);
      ctx.skip();
    }
    expect(JSON.parse(r.stdout)).toEqual({
      sent4: 1,
      sent6: 0,
      errors: [
        [4, 'ENETUNREACH', 0], // 198.51.100.1: no route in this netns
        [4, 'EHOSTUNREACH', 1], // 203.0.113.1: unreachable route
        [4, 'EACCES', 2], // 192.0.2.1: prohibit route
        [6, 'ENETUNREACH', 0],
        [6, 'EHOSTUNREACH', 1],
      ],
      recv: [1], // the datagram to itself, after the failed ones
      stats: { received: 1, sent: 1, queued: 0, recvErrors: 0, sendErrors: 3, truncated: 0 },
    });
  });

  it('queues what the kernel refuses (EAGAIN, ENOBUFS) and delivers all of it in order (netns with a slow lo)', (ctx) => {
    // A private network namespace whose loopback is rate limited by a tbf qdisc:
    // packets wait in the qdisc (charged to the sender: EAGAIN with a small send
    // buffer) or are dropped by it when its queue is full (ENOBUFS, reported thanks
    // to IP_RECVERR). The netns disappears with the child process.
    const child = `
      const N = 300;
      const got = [], errors = [];
      const r = new n.UdpSocket({ family: 4, port: 0, address: '127.0.0.1', rcvbufBytes: 8 << 20 }, (b) => {
        for (let i = 0; i < b.count; i++) got.push(b.data.readUInt32BE(b.offsets[i]));
      }, () => {});
      const s = new n.UdpSocket({ family: 4, port: 0, address: '127.0.0.1', sndbufBytes: SNDBUF }, (b) => errors.push(...b.errors), (e) => errors.push(e.code));
      const dg = (i) => { const b = Buffer.alloc(1000); b.writeUInt32BE(i); return b; };
      const addrs = Buffer.alloc(16 * (N + 2));
      for (let i = 0; i < N + 2; i++) addrs.writeUInt32BE(0x7f000001, 16 * i);
      const ports = new Uint16Array(N + 2).fill(r.port);
      const first = s.send(Array.from({ length: N }, (_, i) => dg(i)), addrs, ports);
      const queued = s.stats().queued;
      const second = s.send([dg(N), dg(N + 1)], addrs, ports);
      const queued2 = s.stats().queued;
      const t0 = Date.now();
      const iv = setInterval(() => {
        if (got.length < N + 2 && Date.now() - t0 < 10000) return;
        clearInterval(iv);
        console.log(JSON.stringify({ first, queued, second, queued2, got, errors, stats: s.stats() }));
        r.close();
        s.close();
      }, 5);`;
    const run = (qdisc: string, sndbuf: number) =>
      inNetns(`ip link set lo up && tc qdisc add dev lo root ${qdisc}`, `const SNDBUF = ${sndbuf};\n${child}`);
    const probe = inNetns('ip link set lo up && tc qdisc add dev lo root tbf rate 20mbit burst 16kb limit 1mb', '');
    if (probe.error || probe.status !== 0) {
      console.log(`skipped: no netns with a tbf qdisc here (needs root, unshare, tc): ${probe.error?.message ?? probe.stderr.trim()}`);
      ctx.skip();
    }
    const N = 300;
    for (const [qdisc, sndbuf, why] of [
      // 32 KiB of send buffer fills long before the qdisc's 1 MB queue: EAGAIN.
      ['tbf rate 20mbit burst 16kb limit 1mb', 16384, 'EAGAIN'],
      // 8 MiB of send buffer cannot fill with N datagrams; the qdisc's 20 kB queue does: ENOBUFS.
      ['tbf rate 20mbit burst 16kb limit 20kb', 4 << 20, 'ENOBUFS'],
    ] as const) {
      const r = run(qdisc, sndbuf);
      expect(r.stderr, why).toBe('');
      const out = JSON.parse(r.stdout);
      expect(out.first, why).toBeGreaterThan(0);
      expect(out.first, why).toBeLessThan(N);
      expect(out.queued, why).toBe(N - out.first);
      expect(out.second, why).toBe(0); // behind the queue
      expect(out.queued2, why).toBe(N + 2 - out.first);
      expect(out.got, why).toEqual(Array.from({ length: N + 2 }, (_, i) => i));
      expect(out.errors, why).toEqual([]);
      expect(out.stats, why).toMatchObject({ sent: N + 2, queued: 0, sendErrors: 0 });
    }
  });
});

describe('UdpSocket: lifetime', () => {
  it('close() is idempotent; send after close throws EBADF', () => {
    const a = new Endpoint({ family: 4 });
    const port = a.port;
    a.sock.close();
    a.sock.close();
    expect(() => a.sendAll([Buffer.from('x')], '127.0.0.1', 9)).toThrow(expect.objectContaining({ code: 'EBADF', errno: 9 }));
    expect(a.sock.stats().sent).toBe(0);
    expect(a.sock.port).toBe(port);
    // The port is free again.
    const b = new Endpoint({ family: 4, port });
    expect(b.port).toBe(port);
  });

  it('may be closed from inside its own onBatch callback', async () => {
    const r = new Endpoint({ family: 4 });
    let calls = 0;
    r.onBatch = () => {
      calls++;
      r.sock.close();
    };
    const s = new Endpoint({ family: 4 });
    s.sendAll([Buffer.from('1')], '127.0.0.1', r.port);
    await waitFor(() => calls === 1);
    s.sendAll([Buffer.from('2')], '127.0.0.1', r.port);
    await settle();
    expect(calls).toBe(1);
  });

  it('releases its fd on close (no leak over many sockets)', async () => {
    const count = () => readdirSync('/proc/self/fd').length;
    const base = count();
    for (let i = 0; i < 500; i++) {
      const s = new native.UdpSocket({ family: 4, port: 0, address: '127.0.0.1', batchSize: 4, slotBytes: 512 }, () => {}, () => {});
      s.close();
    }
    await settle(20);
    expect(count()).toBeLessThanOrEqual(base);
  });

  it('works in a worker_threads Worker, which then exits by itself; terminate() with open sockets is clean', async () => {
    const prelude = `
      const { createRequire } = require('node:module');
      const n = createRequire(${JSON.stringify(join(root, 'package.json'))})('bindings')('iwpm_native');
      const { parentPort } = require('node:worker_threads');
      const lo = Buffer.alloc(16); lo[0] = 127; lo[3] = 1;`;
    const run = (body: string) =>
      new Promise<{ messages: unknown[]; code: number }>((resolve, reject) => {
        const w = new Worker(`${prelude}\n${body}`, { eval: true });
        const messages: unknown[] = [];
        w.on('message', (m) => messages.push(m));
        w.on('error', reject);
        w.on('exit', (code) => resolve({ messages, code }));
      });
    const { messages, code } = await run(`
      const a = new n.UdpSocket({ family: 4, port: 0, address: '127.0.0.1' }, () => {}, () => {});
      const b = new n.UdpSocket({ family: 4, port: 0, address: '127.0.0.1' }, (batch) => {
        parentPort.postMessage({ text: batch.data.toString(), src: batch.srcPorts[0], a: a.port });
        a.close();
        b.close();
      }, () => {});
      a.send([Buffer.from('from a worker')], lo, Uint16Array.of(b.port));`);
    expect(code).toBe(0);
    expect(messages).toEqual([{ text: 'from a worker', src: expect.any(Number), a: expect.any(Number) }]);
    const m = messages[0] as { src: number; a: number };
    expect(m.src).toBe(m.a);

    const w = new Worker(
      `${prelude}
      const socks = [0, 1].map(() => new n.UdpSocket({ family: 4, port: 0, address: '127.0.0.1' }, () => {}, () => {}));
      socks[0].send([Buffer.from('x')], lo, Uint16Array.of(socks[1].port));
      parentPort.postMessage(socks.map((s) => s.port));`,
      { eval: true },
    );
    const ports = (await new Promise((r) => w.once('message', r))) as number[];
    expect(await w.terminate()).toBe(1);
    // The worker's sockets are gone: their ports can be bound again here.
    for (const port of ports) expect(new Endpoint({ family: 4, port }).port).toBe(port);

    const exited = await run(`
      const s = new n.UdpSocket({ family: 4, port: 0, address: '127.0.0.1' }, () => {}, () => {});
      s.send([Buffer.from('x')], lo, Uint16Array.of(s.port));
      process.exit(3);`);
    expect(exited.code).toBe(3);
  });

  it('lets a process exit with sockets still open (env cleanup hook)', () => {
    const r = spawnSync(
      process.execPath,
      [
        '-e',
        `${addonPrelude}
         const a = new n.UdpSocket({ family: 4, port: 0 }, () => {}, () => {});
         const lo = Buffer.alloc(16); lo[0] = 127; lo[3] = 1;
         a.send([Buffer.from('x')], lo, Uint16Array.of(a.port));
         setTimeout(() => process.exit(0), 20);`,
      ],
      { encoding: 'utf8' },
    );
    expect(r.stderr).toBe('');
    expect(r.status).toBe(0);
  });
});

describe('UdpSocket: throughput (printed, not asserted)', () => {
  it('measures ping-pong and one-way burst datagrams/s on loopback', async () => {
    const lo = addrBytes('127.0.0.1');
    const MS = 500;

    // Ping-pong with a window of W datagrams in flight: every datagram received is
    // answered at once, both sides batch whatever each wakeup brings.
    const pingPong = async (W: number) => {
      let count = 0;
      let running = true;
      const addrs = Buffer.alloc(16 * 1024);
      for (let i = 0; i < 1024; i++) lo.copy(addrs, 16 * i);
      const ports = (p: number) => new Uint16Array(1024).fill(p);
      let pa: Uint16Array;
      let pb: Uint16Array;
      const echo = (self: () => UdpSocket, dest: () => Uint16Array) => (b: UdpBatch) => {
        count += b.count;
        if (!running) return;
        const out: Buffer[] = [];
        for (let i = 0; i < b.count; i++) out.push(b.data.subarray(b.offsets[i]!, b.offsets[i]! + b.lengths[i]!));
        self().send(out, addrs, dest());
      };
      const opts = { family: 4 as const, port: 0, address: '127.0.0.1', rcvbufBytes: 4 << 20 };
      const A: UdpSocket = new native.UdpSocket(opts, echo(() => A, () => pb), () => {});
      const B: UdpSocket = new native.UdpSocket(opts, echo(() => B, () => pa), () => {});
      pa = ports(A.port);
      pb = ports(B.port);
      A.send(Array.from({ length: W }, () => Buffer.alloc(64)), addrs, pb);
      const t0 = performance.now();
      await new Promise((r) => setTimeout(r, MS));
      running = false;
      const rate = count / ((performance.now() - t0) / 1000);
      A.close();
      B.close();
      return rate;
    };

    // One-way: bursts of 1000 datagrams from one socket to another, a new burst
    // whenever fewer than 1000 are in flight (both ends share this thread).
    const oneWay = async () => {
      let got = 0;
      let sent = 0;
      let running = true;
      const burst = Array.from({ length: 1000 }, () => Buffer.alloc(64));
      const addrs = Buffer.alloc(16 * 1000);
      for (let i = 0; i < 1000; i++) lo.copy(addrs, 16 * i);
      let ports: Uint16Array;
      const s = new native.UdpSocket({ family: 4, port: 0, address: '127.0.0.1' }, () => {}, () => {});
      const pump = () => {
        while (running && sent - got < 1000) sent += s.send(burst, addrs, ports);
      };
      const r = new native.UdpSocket(
        { family: 4, port: 0, address: '127.0.0.1', rcvbufBytes: 4 << 20, batchSize: 256 },
        (b) => {
          got += b.count;
          pump();
        },
        () => {},
      );
      ports = new Uint16Array(1000).fill(r.port);
      const t0 = performance.now();
      pump();
      await new Promise((res) => setTimeout(res, MS));
      running = false;
      const secs = (performance.now() - t0) / 1000;
      const received = got;
      await settle(20);
      r.close();
      s.close();
      return { received: received / secs, lost: sent - got };
    };

    // node:dgram for comparison: the same window-W ping-pong, one callback and one send per datagram.
    const dgramPingPong = async (W: number) => {
      let count = 0;
      let running = true;
      const A = dgram.createSocket('udp4');
      const B = dgram.createSocket('udp4');
      await Promise.all([A, B].map((s) => new Promise<void>((r) => s.bind(0, '127.0.0.1', () => r()))));
      const echo = (self: dgram.Socket, to: dgram.Socket) => (msg: Buffer) => {
        count++;
        if (running) self.send(msg, to.address().port, '127.0.0.1');
      };
      A.on('message', echo(A, B));
      B.on('message', echo(B, A));
      for (let i = 0; i < W; i++) A.send(Buffer.alloc(64), B.address().port, '127.0.0.1');
      const t0 = performance.now();
      await new Promise((r) => setTimeout(r, MS));
      running = false;
      const rate = count / ((performance.now() - t0) / 1000);
      A.close();
      B.close();
      return rate;
    };

    const k = (x: number) => `${Math.round(x / 1000)}k`;
    const lines = [
      `UdpSocket ping-pong, 1 in flight:  ${k(await pingPong(1))} datagrams/s (both directions, one process)`,
      `UdpSocket ping-pong, 64 in flight: ${k(await pingPong(64))} datagrams/s`,
    ];
    const ow = await oneWay();
    lines.push(`UdpSocket one-way, bursts of 1000 in one send(): ${k(ow.received)} datagrams/s received (lost ${ow.lost})`);
    lines.push(`node:dgram ping-pong, 64 in flight: ${k(await dgramPingPong(64))} datagrams/s`);
    console.log(lines.join('\n'));
  });
});
