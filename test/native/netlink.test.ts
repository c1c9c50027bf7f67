/** NetlinkSocket on real NETLINK_USERSOCK sockets (no kernel module needed). */
import { readdirSync } from 'node:fs';
import { afterEach, describe, expect, it } from 'vitest';
import { closeAll, Endpoint, native, NETLINK_USERSOCK, numbered, seqOf, settle, waitFor } from './helpers.js';

afterEach(closeAll);

/** A port id nobody holds: autobind hands out negative (high-bit) ids, we pick a small odd one. */
const NOBODY = 0x7ff0_0001;

describe('NetlinkSocket: open', () => {
  it('autobinds, reports the port id and the receive buffer option', () => {
    const a = new Endpoint({ rcvbufBytes: 1 << 20 });
    expect(a.portId).toBeGreaterThan(0);
    expect(a.sock.rcvbufOption).toBe('SO_RCVBUFFORCE'); // we are root
    expect(a.sock.rcvbufBytes).toBe(2 << 20); // the kernel doubles the request
    const b = new Endpoint();
    expect(b.sock.rcvbufOption).toBe('default');
    expect(b.sock.rcvbufBytes).toBeGreaterThan(0);
    expect(b.portId).not.toBe(a.portId);
  });

  it('binds an explicit port id; a taken one throws EADDRINUSE from bind', () => {
    const a = new Endpoint({ portId: 0x4000_1234 });
    expect(a.portId).toBe(0x4000_1234);
    let err: any;
    try {
      new Endpoint({ portId: 0x4000_1234 });
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(Error);
    expect(err).toMatchObject({ errno: 98, code: 'EADDRINUSE', syscall: 'bind' });
  });

  it('throws a SystemError-shaped error for an unsupported protocol (NETLINK_RDMA here)', (ctx) => {
    let err: any;
    try {
      const s = new native.NetlinkSocket({ protocol: 20, portId: 0, groups: 0, rcvbufBytes: 0 }, () => {}, () => {});
      s.close();
    } catch (e) {
      err = e;
    }
    if (!err) {
      console.log('skipped: this kernel has NETLINK_RDMA, so the open succeeded');
      ctx.skip();
    }
    expect(err).toMatchObject({ errno: 93, code: 'EPROTONOSUPPORT', syscall: 'socket' });
  });

  it('validates its arguments with TypeError', () => {
    const ok = { protocol: NETLINK_USERSOCK, portId: 0, groups: 0, rcvbufBytes: 0 };
    const f = () => {};
    const make = (o: any, a: any = f, b: any = f) => () => new native.NetlinkSocket(o, a, b);
    expect(make(undefined)).toThrow(TypeError);
    expect(make(ok, 1)).toThrow(TypeError);
    expect(make({ ...ok, protocol: 'x' })).toThrow(TypeError);
    expect(make({ ...ok, portId: -1 })).toThrow(TypeError);
    expect(make({ ...ok, groups: 1.5 })).toThrow(TypeError);
    expect(make({ ...ok, batchSize: 0 })).toThrow(TypeError);
    expect(make({ ...ok, slotBytes: 1 << 30 })).toThrow(TypeError);
    const a = new Endpoint();
    expect(() => a.sock.send('x' as any)).toThrow(TypeError);
    expect(() => a.sock.send(['x'] as any)).toThrow(TypeError);
    expect(() => a.sock.send([Buffer.alloc(1)], -1)).toThrow(TypeError);
  });
});

describe('NetlinkSocket: datagrams', () => {
  it('exchanges unicast datagrams and reports the sender port id', async () => {
    const a = new Endpoint();
    const b = new Endpoint();
    expect(a.sock.send([Buffer.from('hello b')], b.portId)).toBe(1);
    expect(b.sock.send([Buffer.from('hello a'), Buffer.from('again')], a.portId)).toBe(2);
    await waitFor(() => b.msgs.length === 1 && a.msgs.length === 2);
    expect(b.msgs[0]).toEqual({ data: Buffer.from('hello b'), sender: a.portId, groups: 0, truncated: false });
    expect(a.msgs.map((m) => m.data.toString())).toEqual(['hello a', 'again']);
    expect(a.msgs.every((m) => m.sender === b.portId)).toBe(true);
    expect(a.sock.stats()).toMatchObject({ sent: 1, received: 2, queued: 0, sendErrors: 0 });
  });

  it('sends exactly the bytes of Buffer/Uint8Array views (offsets honoured)', async () => {
    const a = new Endpoint();
    const b = new Endpoint();
    const big = Buffer.from('0123456789abcdef');
    const views = [big.subarray(3, 8), new Uint8Array(big.buffer, big.byteOffset + 10, 3)];
    expect(a.sock.send(views, b.portId)).toBe(2);
    await waitFor(() => b.msgs.length === 2);
    expect(b.msgs.map((m) => m.data.toString())).toEqual(['34567', 'abc']);
  });

  it('delivers many datagrams from one send() in order, in batches', async () => {
    const N = 1000;
    const a = new Endpoint();
    const b = new Endpoint({ rcvbufBytes: 16 << 20, batchSize: 64 });
    expect(a.sock.send(Array.from({ length: N }, (_, i) => numbered(i, 100)), b.portId)).toBe(N);
    await waitFor(() => b.msgs.length === N);
    expect(b.msgs.map(seqOf)).toEqual(Array.from({ length: N }, (_, i) => i));
    expect(b.msgs.every((m) => m.sender === a.portId && m.data.length === 100)).toBe(true);
    expect(Math.max(...b.batchCounts)).toBe(64); // bounded batches, several datagrams per call
    expect(b.batchCounts.length).toBeLessThan(N);
    await settle();
    expect(b.msgs.length).toBe(N);
    expect(b.sock.stats()).toMatchObject({ received: N, overruns: 0, recvErrors: 0, truncated: 0 });
  });

  it('multicasts to a group bitmask; the sender also gets ECONNREFUSED for the unicast part to port 0', async () => {
    const member = new Endpoint({ groups: 2 }); // bitmask 0x2 = group 2
    const other = new Endpoint(); // not a member
    const sender = new Endpoint();
    expect(sender.sock.send([Buffer.from('REG_PID?')], 0, 2)).toBe(0);
    await waitFor(() => member.msgs.length === 1);
    expect(member.msgs[0]).toEqual({ data: Buffer.from('REG_PID?'), sender: sender.portId, groups: 2, truncated: false });
    // NETLINK_USERSOCK has no kernel socket at port id 0: the broadcast went out, the unicast did not.
    expect(sender.sendErrors).toHaveLength(1);
    expect(sender.sendErrors[0]).toMatchObject({ errno: 111, code: 'ECONNREFUSED', index: 0 });
    // Unicasting the multicast to one's own port id avoids the error (and loops a copy back).
    expect(sender.sock.send([Buffer.from('again')], sender.portId, 2)).toBe(1);
    await waitFor(() => member.msgs.length === 2 && sender.msgs.length === 1);
    expect(sender.msgs[0]!.data.toString()).toBe('again');
    await settle();
    expect(other.msgs).toHaveLength(0);
  });

  it('joins a group with addMembership', async () => {
    const m = new Endpoint();
    m.sock.addMembership(3); // group 3 = bitmask 0x4
    const s = new Endpoint();
    s.sock.send([Buffer.from('g3')], s.portId, 1 << 2);
    await waitFor(() => m.msgs.length === 1);
    expect(m.msgs[0]).toMatchObject({ sender: s.portId, groups: 4 });
    expect(() => m.sock.addMembership(0)).toThrow(expect.objectContaining({ code: 'EINVAL', syscall: 'setsockopt' }));
  });

  it('flags datagrams longer than slotBytes as truncated', async () => {
    const r = new Endpoint({ slotBytes: 16 });
    const s = new Endpoint();
    const big = Buffer.from(Array.from({ length: 100 }, (_, i) => i));
    s.sock.send([big, Buffer.from('short')], r.portId);
    await waitFor(() => r.msgs.length === 2);
    expect(r.msgs[0]).toMatchObject({ truncated: true, data: big.subarray(0, 16) });
    expect(r.msgs[1]).toMatchObject({ truncated: false, data: Buffer.from('short') });
    expect(r.sock.stats().truncated).toBe(1);
  });

  it('reports ECONNREFUSED per datagram through onError and carries on', async () => {
    const s = new Endpoint();
    const r = new Endpoint();
    expect(s.sock.send([Buffer.from('a'), Buffer.from('b'), Buffer.from('c')], NOBODY)).toBe(0);
    // Reported synchronously, one error per datagram, with its index.
    expect(s.sendErrors.map((e) => [e.errno, e.code, e.syscall, e.index])).toEqual([
      [111, 'ECONNREFUSED', 'sendmmsg', 0],
      [111, 'ECONNREFUSED', 'sendmmsg', 1],
      [111, 'ECONNREFUSED', 'sendmmsg', 2],
    ]);
    expect(s.sendErrors[0]).toBeInstanceOf(Error);
    expect(s.sock.stats()).toMatchObject({ sent: 0, sendErrors: 3, queued: 0 });
    expect(s.sock.send([Buffer.from('ok')], r.portId)).toBe(1);
    await waitFor(() => r.msgs.length === 1);
  });

  it('reports an overrun (ENOBUFS) when a small queue is flooded, and keeps working', async () => {
    const victim = new Endpoint({ groups: 2, rcvbufBytes: 4096 });
    const flooder = new Endpoint({ rcvbufBytes: 16 << 20 });
    // Broadcasts to a full member are dropped and flag the member's socket
    // (user-to-user unicasts would block the sender instead).
    const N = 200;
    expect(flooder.sock.send(Array.from({ length: N }, (_, i) => numbered(i, 1000)), flooder.portId, 2)).toBe(N);
    await waitFor(() => victim.overruns > 0, 5000, 'an overrun');
    await waitFor(() => flooder.msgs.length === N);
    expect(victim.sock.stats().overruns).toBeGreaterThanOrEqual(1);
    expect(victim.msgs.length).toBeGreaterThan(0);
    expect(victim.msgs.length).toBeLessThan(N);
    // Whatever got through is in order.
    const seqs = victim.msgs.map(seqOf);
    expect(seqs).toEqual([...seqs].sort((x, y) => x - y));
    // Still polling: a later datagram arrives.
    const before = victim.msgs.length;
    const other = new Endpoint();
    other.sock.send([Buffer.from('after')], victim.portId);
    await waitFor(() => victim.msgs.length === before + 1);
    expect(victim.msgs.at(-1)!.data.toString()).toBe('after');
    expect(victim.recvErrors).toEqual([]);
  });

  it('queues what a full receiver refuses (EAGAIN) and delivers all of it, in order', async () => {
    const r = new Endpoint({ rcvbufBytes: 4096 });
    const s = new Endpoint();
    const N = 300;
    const first = s.sock.send(Array.from({ length: N }, (_, i) => numbered(i, 500)), r.portId);
    expect(first).toBeGreaterThan(0);
    expect(first).toBeLessThan(N);
    expect(s.sock.stats().queued).toBe(N - first);
    // Later sends queue behind the earlier ones.
    expect(s.sock.send([numbered(N, 500), numbered(N + 1, 500)], r.portId)).toBe(0);
    expect(s.sock.stats().queued).toBe(N + 2 - first);
    await waitFor(() => r.msgs.length === N + 2, 10_000, 'all datagrams');
    expect(r.msgs.map(seqOf)).toEqual(Array.from({ length: N + 2 }, (_, i) => i));
    expect(s.sock.stats()).toMatchObject({ sent: N + 2, queued: 0, sendErrors: 0 });
    expect(r.sock.stats().overruns).toBe(0);
    expect(s.sendErrors).toEqual([]);
  });
});

describe('NetlinkSocket: lifetime', () => {
  it('close() is idempotent; send/addMembership after close throw EBADF', () => {
    const a = new Endpoint();
    a.sock.close();
    a.sock.close();
    expect(() => a.sock.send([Buffer.from('x')], 1)).toThrow(expect.objectContaining({ code: 'EBADF' }));
    expect(() => a.sock.addMembership(2)).toThrow(expect.objectContaining({ code: 'EBADF' }));
    expect(a.sock.stats().sent).toBe(0);
  });

  it('may be closed from inside its own onBatch callback', async () => {
    const r = new Endpoint();
    let calls = 0;
    r.onBatch = () => {
      calls++;
      r.sock.close();
    };
    const s = new Endpoint();
    s.sock.send([Buffer.from('1')], r.portId);
    await waitFor(() => calls === 1);
    await settle();
    expect(calls).toBe(1);
  });

  it('releases its fd on close (no leak over many sockets)', async () => {
    const count = () => readdirSync('/proc/self/fd').length;
    const base = count();
    for (let i = 0; i < 500; i++) {
      const s = new native.NetlinkSocket(
        { protocol: NETLINK_USERSOCK, portId: 0, groups: 0, rcvbufBytes: 0, batchSize: 4, slotBytes: 1024 },
        () => {},
        () => {},
      );
      s.close();
    }
    await settle(20);
    expect(count()).toBeLessThanOrEqual(base);
  });
});
