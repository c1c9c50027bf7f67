/**
 * Two PeerEngines over real UDP sockets (the native UdpSocket) on 127.0.0.1 and ::1, each
 * behind its own PeerIo with its own ports, and an in-memory listener table. Raw test
 * peers use node:dgram.
 */
import dgram from 'node:dgram';
import { readFileSync } from 'node:fs';
import { afterEach, describe, expect, it } from 'vitest';
import { parseIp } from '../../src/codec/sockaddr.js';
import { PM_MSG_ACC, PM_MSG_REJ, PM_MSG_REQ, decodePeerMessage, encodePeerMessage } from '../../src/codec/wire.js';
import { MemoryLogger } from '../../src/core/log.js';
import type { PeerEvents, QueryOutcome, RemoteInfo } from '../../src/core/peer-api.js';
import type { PeerTiming } from '../../src/core/peer.js';
import { PEER_SOCKET_BUFFER_BYTES, PeerIo, type PeerIoOptions } from '../../src/io/udp.js';
import { native, type UdpBatch, type UdpSocket, type UdpSocketConstructor, type UdpSocketOptions } from '../../src/native/index.js';
import { TestListeners } from '../support/listeners.js';
import { keepInfo, keepOutcome } from '../support/events.js';

class Events implements PeerEvents {
  done = new Map<number, { outcome: QueryOutcome; ms: number }>();
  infos: RemoteInfo[] = [];
  private waiters: (() => void)[] = [];
  started = new Map<number, number>();
  queryDone(id: number, outcome: QueryOutcome): void {
    this.done.set(id, { outcome: keepOutcome(outcome), ms: performance.now() - (this.started.get(id) ?? 0) });
    for (const w of this.waiters.splice(0)) w();
  }
  remoteInfo(info: RemoteInfo): void {
    this.infos.push(keepInfo(info));
  }
  async waitFor(n: number, timeoutMs = 15_000): Promise<void> {
    const end = Date.now() + timeoutMs;
    while (this.done.size < n) {
      if (Date.now() > end) throw new Error(`only ${this.done.size}/${n} queries done`);
      await new Promise<void>((r) => {
        this.waiters.push(r);
        setTimeout(r, 50);
      });
    }
  }
}

interface Host {
  io: PeerIo;
  events: Events;
  listeners: TestListeners;
  log: MemoryLogger;
  port: number;
}

const open: PeerIo[] = [];
afterEach(async () => {
  await Promise.all(open.splice(0).map((io) => io.close()));
});

async function host(extra: Partial<PeerIoOptions> = {}): Promise<Host> {
  const events = new Events();
  const listeners = new TestListeners();
  const log = new MemoryLogger(false);
  const io = new PeerIo({ events, lookup: listeners, log, port: 0, ...extra });
  open.push(io);
  const st = await io.start();
  return { io, events, listeners, log, port: st.port };
}

async function pair(timing?: Partial<PeerTiming>): Promise<[Host, Host]> {
  const a = await host({ timing });
  const b = await host({ timing });
  a.io.setPeerPort(b.port);
  b.io.setPeerPort(a.port);
  return [a, b];
}

function ipv6Usable(): boolean {
  try {
    return readFileSync('/proc/sys/net/ipv6/conf/lo/disable_ipv6', 'utf8').trim() === '0';
  } catch {
    return false;
  }
}

/** What one socket did: datagrams per send() call, datagrams per receive batch. */
interface SocketLog {
  opts: UdpSocketOptions;
  sends: number[];
  batches: number[];
}

/** The real native UdpSocket, with its send() calls and receive batches counted. */
function countingUdp(logs: SocketLog[]): UdpSocketConstructor {
  return function (opts: UdpSocketOptions, onBatch: (b: UdpBatch) => void, onError: (e: Error) => void): UdpSocket {
    const log: SocketLog = { opts, sends: [], batches: [] };
    logs.push(log);
    const s = new native.UdpSocket(
      opts,
      (b) => {
        if (b.count > 0) log.batches.push(b.count);
        onBatch(b);
      },
      onError,
    );
    return {
      get port() {
        return s.port;
      },
      get rcvbufBytes() {
        return s.rcvbufBytes;
      },
      get sndbufBytes() {
        return s.sndbufBytes;
      },
      send(d, a, p, sc) {
        log.sends.push(d.length);
        return s.send(d, a, p, sc);
      },
      stats: () => s.stats(),
      close: () => s.close(),
    };
  } as unknown as UdpSocketConstructor;
}

const sum = (a: number[]): number => a.reduce((x, y) => x + y, 0);

const families = [
  { name: 'IPv4', lo: '127.0.0.1', wild: '0.0.0.0' },
  { name: 'IPv6', lo: '::1', wild: '::' },
];

describe('PeerIo: two engines over real UDP', () => {
  it('opens both families with large buffers and no SO_REUSEADDR', async () => {
    const a = await host();
    const st = await a.io.start();
    expect(st.ipv4).toBe(true);
    if (ipv6Usable()) expect(st.ipv6).toBe(true);
    const rmemMax = Number(readFileSync('/proc/sys/net/core/rmem_max', 'utf8'));
    // Linux reports twice the value set, capped at rmem_max
    expect(st.recvBufferBytes).toBeGreaterThanOrEqual(Math.min(PEER_SOCKET_BUFFER_BYTES, rmemMax));
    // the same port cannot be bound a second time (no reuse)
    await expect(host({ port: a.port })).rejects.toMatchObject({ code: 'EADDRINUSE' });
  });

  for (const f of families) {
    it(`${f.name}: QUERY -> REQ -> ACC -> accepted with the mapped wire address, REMOTE_INFO on the listener`, async () => {
      if (f.name === 'IPv6' && !ipv6Usable()) {
        console.log('skipped: IPv6 disabled on loopback');
        return;
      }
      const [a, b] = await pair();
      b.listeners.add(f.wild, 5000, 33333, 2);
      b.listeners.add(f.lo, 5001, 33334, 3);
      a.io.startQuery({ id: 1, local: parseIp(f.lo, 40000), mapped: parseIp(f.lo, 40001), remote: parseIp(f.lo, 5000) });
      a.io.startQuery({ id: 2, local: parseIp(f.lo, 40002), mapped: parseIp(f.lo, 40003), remote: parseIp(f.lo, 5001) });
      a.io.startQuery({ id: 3, local: parseIp(f.lo, 40004), mapped: parseIp(f.lo, 40005), remote: parseIp(f.lo, 5999) });
      await a.events.waitFor(3);
      expect(a.events.done.get(1)!.outcome).toEqual({ kind: 'accepted', mappedRemote: parseIp(f.lo, 33333) });
      expect(a.events.done.get(2)!.outcome).toEqual({ kind: 'accepted', mappedRemote: parseIp(f.lo, 33334) });
      expect(a.events.done.get(3)!.outcome).toEqual({ kind: 'rejected' });
      // REMOTE_INFO: owner client, the connecting peer's real and mapped addresses
      expect(b.events.infos).toHaveLength(2);
      const byClient = new Map(b.events.infos.map((i) => [i.ownerClient, i]));
      expect(byClient.get(2)!.remote).toEqual(parseIp(f.lo, 40000));
      expect(byClient.get(2)!.mappedRemote).toEqual(parseIp(f.lo, 40001));
      expect(byClient.get(3)!.remote).toEqual(parseIp(f.lo, 40002));
      // ACKs arrive and stop the ACC retransmission
      await new Promise((r) => setTimeout(r, 100));
      const sb = b.io.stats();
      expect(sb.acceptsCompleted).toBe(2);
      expect(sb.liveAccepts).toBe(0);
      expect(sb.txRej).toBe(1);
      expect(a.io.stats()).toMatchObject({ txAck: 2, queriesAccepted: 2, queriesRejected: 1, liveQueries: 0 });
    });
  }

  it('both directions at once', async () => {
    const [a, b] = await pair();
    a.listeners.add('127.0.0.1', 7000, 17000);
    b.listeners.add('0.0.0.0', 5000, 15000);
    a.io.startQuery({ id: 1, local: parseIp('127.0.0.1', 40000), mapped: parseIp('127.0.0.1', 40001), remote: parseIp('127.0.0.1', 5000) });
    b.io.startQuery({ id: 1, local: parseIp('127.0.0.1', 41000), mapped: parseIp('127.0.0.1', 41001), remote: parseIp('127.0.0.1', 7000) });
    await Promise.all([a.events.waitFor(1), b.events.waitFor(1)]);
    expect(a.events.done.get(1)!.outcome).toEqual({ kind: 'accepted', mappedRemote: parseIp('127.0.0.1', 15000) });
    expect(b.events.done.get(1)!.outcome).toEqual({ kind: 'accepted', mappedRemote: parseIp('127.0.0.1', 17000) });
    expect(a.events.infos.map((i) => i.remote.port)).toEqual([41000]);
    expect(b.events.infos.map((i) => i.remote.port)).toEqual([40000]);
  });

  it('a burst of 256 (and 2048) outstanding queries loses nothing on loopback: no retransmission needed', async () => {
    // Retransmission far away: every REQ, ACC and ACK must get through the first time.
    const [a, b] = await pair({ reqFirstRetransmitMs: 7_000, accFirstRetransmitMs: 7_000, queryGiveUpMs: 7_500 });
    b.listeners.add('0.0.0.0', 5000, 33333);
    for (const n of [256, 2048]) {
      const base = a.events.done.size;
      const t0 = performance.now();
      for (let i = 0; i < n; i++) {
        const id = base + i;
        a.events.started.set(id, t0);
        a.io.startQuery({ id, local: parseIp('127.0.0.1', 10000 + id), mapped: parseIp('127.0.0.1', 20000 + id), remote: parseIp('127.0.0.1', 5000) });
      }
      await a.events.waitFor(base + n, 10_000);
      const outcomes = [...a.events.done.values()].slice(base);
      expect(outcomes.every((d) => d.outcome.kind === 'accepted')).toBe(true);
      console.log(`burst ${n}: all answered in ${(performance.now() - t0).toFixed(1)} ms`);
    }
    await new Promise((r) => setTimeout(r, 200));
    expect(a.io.stats().txReqRetransmit).toBe(0);
    expect(b.io.stats()).toMatchObject({ txAccRetransmit: 0, reqDuplicate: 0, acceptsCompleted: 256 + 2048, liveAccepts: 0 });
    expect(b.events.infos).toHaveLength(256 + 2048);
    expect(a.io.stats().udpSendErrors).toBe(0);
  });

  it('batches: a burst of queries leaves in one sendmmsg; each receive batch is answered with one send per socket', async () => {
    const logsA: SocketLog[] = [];
    const logsB: SocketLog[] = [];
    const timing = { reqFirstRetransmitMs: 7_000, accFirstRetransmitMs: 7_000, queryGiveUpMs: 7_500 };
    const a = await host({ timing, udp: countingUdp(logsA), ipv6: 'off' });
    const b = await host({ timing, udp: countingUdp(logsB), ipv6: 'off' });
    a.io.setPeerPort(b.port);
    b.listeners.add('0.0.0.0', 5000, 33333);
    const n = 256;
    for (let id = 0; id < n; id++) {
      a.io.startQuery({ id, local: parseIp('127.0.0.1', 10000 + id), mapped: parseIp('127.0.0.1', 20000 + id), remote: parseIp('127.0.0.1', 5000) });
    }
    await a.events.waitFor(n, 10_000);
    await new Promise((r) => setTimeout(r, 100)); // the last ACKs
    const [aServer, aClient] = logsA;
    const [bServer, bClient] = logsB;
    // all 256 REQs in one call (collected until the end of the current callback)
    expect(aClient!.sends[0]).toBe(n);
    expect(sum(aClient!.sends)).toBe(2 * n); // REQs, then the ACKs
    // B: one ACC send per receive batch of REQs (and nothing on its client socket)
    expect(sum(bServer!.batches)).toBe(2 * n); // REQs and ACKs
    expect(sum(bServer!.sends)).toBe(n);
    expect(bServer!.sends.length).toBeLessThanOrEqual(bServer!.batches.length);
    expect(bClient!.sends).toEqual([]);
    // A: one ACK send per receive batch of ACCs
    expect(aClient!.sends.length - 1).toBeLessThanOrEqual(aClient!.batches.length);
    expect(aServer!.sends).toEqual([]);
    expect(a.io.stats()).toMatchObject({ queriesAccepted: n, txReqRetransmit: 0, udpSent: 2 * n, udpSendErrors: 0 });
    expect(b.io.stats()).toMatchObject({ acceptsCompleted: n, txAccRetransmit: 0, udpReceived: 2 * n });
    console.log(`batches: A client sends ${JSON.stringify(aClient!.sends)}, B server receive batches ${bServer!.batches.length}, sends ${bServer!.sends.length}`);
  });

  it('the batch hook wraps every receive batch and tick that delivers events', async () => {
    let depth = 0;
    let wrapped = 0;
    let outside = 0;
    const a = await host({
      batch: (fn) => {
        depth++;
        wrapped++;
        try {
          fn();
        } finally {
          depth--;
        }
      },
    });
    const b = await host();
    a.io.setPeerPort(b.port);
    b.listeners.add('0.0.0.0', 5000, 33333);
    // count outcomes delivered outside the hook
    const orig = a.events.queryDone.bind(a.events);
    a.events.queryDone = (id, o) => {
      if (depth === 0) outside++;
      orig(id, o);
    };
    for (let id = 0; id < 20; id++) {
      a.io.startQuery({ id, local: parseIp('127.0.0.1', 10000 + id), mapped: parseIp('127.0.0.1', 20000 + id), remote: parseIp('127.0.0.1', id < 10 ? 5000 : 5999) });
    }
    a.io.startQuery({ id: 99, local: parseIp('::1', 1), mapped: parseIp('::1', 2), remote: parseIp('127.0.0.1', 5000) }); // mixed: failed at the next tick
    await a.events.waitFor(21);
    expect(outside).toBe(0);
    expect(wrapped).toBeGreaterThan(0);
    expect([...a.events.done.values()].filter((d) => d.outcome.kind === 'accepted')).toHaveLength(10);
  });

  for (const f of families) {
    it(`${f.name}: nobody on the peer's port (ICMP port unreachable): its queries fail at once, not at the give-up`, async () => {
      if (f.name === 'IPv6' && !ipv6Usable()) {
        console.log('skipped: IPv6 disabled on loopback');
        return;
      }
      const a = await host(); // default give-up: 8 s
      // a port nobody listens on
      const tmp = dgram.createSocket(f.name === 'IPv4' ? 'udp4' : 'udp6');
      await new Promise<void>((r) => tmp.bind(0, f.lo, () => r()));
      const deadPort = tmp.address().port;
      await new Promise<void>((r) => tmp.close(() => r()));
      a.io.setPeerPort(deadPort);
      const t0 = performance.now();
      for (let id = 1; id <= 3; id++) {
        a.io.startQuery({ id, local: parseIp(f.lo, 40000 + id), mapped: parseIp(f.lo, 41000 + id), remote: parseIp(f.lo, 5000) });
      }
      await a.events.waitFor(3, 5_000);
      const ms = performance.now() - t0;
      for (const d of a.events.done.values()) {
        expect(d.outcome.kind).toBe('failed');
        if (d.outcome.kind === 'failed') expect(d.outcome.reason).toMatch(/ICMP port unreachable/);
      }
      expect(ms).toBeLessThan(1_000);
      expect(a.io.stats()).toMatchObject({ queriesUnreachable: 3, liveQueries: 0 });
      expect(a.io.stats().icmpPortUnreachable).toBeGreaterThanOrEqual(1);
      expect(a.log.has(/unreachable/, 'warn')).toBe(true);
      console.log(`${f.name}: 3 queries to a closed port failed after ${ms.toFixed(1)} ms`);
    });
  }

  it('a REQ the kernel refuses for good (broadcast: EACCES) fails its query at once; the error names that datagram, not its neighbours', async () => {
    const [a, b] = await pair();
    b.listeners.add('0.0.0.0', 5000, 33333);
    const q = (id: number, remote: string) => ({ id, local: parseIp('127.0.0.1', 40000 + id), mapped: parseIp('127.0.0.1', 41000 + id), remote: parseIp(remote, 5000) });
    // one sendmmsg: the middle datagram fails (no SO_BROADCAST), the others go out
    a.io.startQuery(q(1, '127.0.0.1'));
    a.io.startQuery(q(2, '127.255.255.255'));
    a.io.startQuery(q(3, '127.0.0.1'));
    const t0 = performance.now();
    await a.events.waitFor(3, 5_000);
    expect(performance.now() - t0).toBeLessThan(1_000);
    expect(a.events.done.get(1)!.outcome.kind).toBe('accepted');
    expect(a.events.done.get(3)!.outcome.kind).toBe('accepted');
    expect(a.events.done.get(2)!.outcome).toEqual({ kind: 'failed', reason: `127.255.255.255:${b.port}: send failed: EACCES` });
    expect(a.log.has(new RegExp(`UDP send to 127\\.255\\.255\\.255:${b.port} failed`), 'warn')).toBe(true);
    expect(a.io.stats()).toMatchObject({ queriesUnreachable: 1, queriesAccepted: 2, liveQueries: 0 });
  });

  it('a silent peer: timeout before the configured give-up, nothing left behind', async () => {
    const a = await host({ timing: { queryGiveUpMs: 800 } });
    // a bound socket that never answers
    const sink = dgram.createSocket('udp4');
    await new Promise<void>((r) => sink.bind(0, '127.0.0.1', () => r()));
    let received = 0;
    sink.on('message', () => received++);
    a.io.setPeerPort(sink.address().port);
    const t0 = performance.now();
    a.io.startQuery({ id: 1, local: parseIp('127.0.0.1', 40000), mapped: parseIp('127.0.0.1', 40001), remote: parseIp('127.0.0.1', 5000) });
    await a.events.waitFor(1);
    const ms = performance.now() - t0;
    sink.close();
    expect(a.events.done.get(1)!.outcome).toEqual({ kind: 'timeout' });
    expect(ms).toBeGreaterThanOrEqual(790);
    expect(ms).toBeLessThan(1500);
    expect(received).toBeGreaterThanOrEqual(4); // 0, 150, 375, 712
    expect(a.io.stats().liveQueries).toBe(0);
  });

  it('replies leave from the socket the request came in on; malformed datagrams are dropped and counted', async () => {
    const b = await host();
    b.listeners.add('0.0.0.0', 5000, 33333);
    const raw = dgram.createSocket('udp4');
    await new Promise<void>((r) => raw.bind(0, '127.0.0.1', () => r()));
    const replies: { msg: Buffer; port: number }[] = [];
    raw.on('message', (msg, rinfo) => replies.push({ msg, port: rinfo.port }));
    const send = (bytes: Buffer) => new Promise<void>((r) => raw.send(bytes, b.port, '127.0.0.1', () => r()));
    await send(Buffer.from('hello'));
    await send(Buffer.alloc(48, 0x07)); // IP version 7
    await send(Buffer.concat([Buffer.from([0x04]), Buffer.alloc(47)])); // 48-byte REQ
    const req = encodePeerMessage({
      type: PM_MSG_REQ,
      ipVersion: 4,
      pmtime: 3,
      mappedCpPort: 40001,
      apPort: 5000,
      cpPort: 40000,
      assocHandle: 0x1122334455667788n,
      cpIp: parseIp('127.0.0.1').ip,
      apIp: parseIp('127.0.0.1').ip,
      mappedCpIp: parseIp('127.0.0.1').ip,
    });
    await send(req);
    const unknown = Buffer.from(req);
    unknown.writeUInt16BE(6000, 4);
    await send(unknown);
    const end = Date.now() + 2000;
    while (replies.length < 2 && Date.now() < end) await new Promise((r) => setTimeout(r, 10));
    raw.close();
    expect(replies.length).toBeGreaterThanOrEqual(2);
    for (const r of replies) expect(r.port).toBe(b.port); // from the server socket
    const types = replies.map((r) => {
      const d = decodePeerMessage(r.msg);
      return d.ok ? d.msg.type : -1;
    });
    expect(types).toContain(PM_MSG_ACC);
    expect(types).toContain(PM_MSG_REJ);
    const acc = replies.find((r) => r.msg[0] === 0x14)!.msg;
    expect(acc.length).toBe(48);
    expect(acc[1]).toBe(3); // pmtime echoed
    expect(acc.readUInt16BE(4)).toBe(33333);
    expect(acc.readBigUInt64BE(8)).toBe(0x1122334455667788n);
    expect(b.io.stats().rxMalformed).toMatchObject({ length: 1, ipVersion: 1, reqLength: 1 });
  });

  it('IPv6 unavailable: starts on IPv4 only, says so, IPv6 queries fail at once', async () => {
    const a = await host({ ipv6Disabled: () => true });
    expect(a.io.stats()).toMatchObject({ ipv4: true, ipv6: false });
    expect(a.log.has(/IPv6 is disabled.*IPv4 only/, 'warn')).toBe(true);
    a.io.startQuery({ id: 1, local: parseIp('::1', 40000), mapped: parseIp('::1', 40001), remote: parseIp('::1', 5000) });
    await a.events.waitFor(1, 1000);
    expect(a.events.done.get(1)!.outcome.kind).toBe('failed');
  });

  it('close() releases the ports and stops the timer', async () => {
    const a = await host();
    a.io.startQuery({ id: 1, local: parseIp('127.0.0.1', 40000), mapped: parseIp('127.0.0.1', 40001), remote: parseIp('127.0.0.1', 5000) });
    await a.io.close();
    const again = await host({ port: a.port });
    expect(again.port).toBe(a.port);
  });
});
