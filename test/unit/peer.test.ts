import { describe, expect, it } from 'vitest';
import { AF_INET, AF_INET6, type SockAddr, decodeSockaddr, parseIp } from '../../src/codec/sockaddr.js';
import {
  PM_MSG_ACC,
  PM_MSG_ACK,
  PM_MSG_REJ,
  PM_MSG_REQ,
  type PeerMessage,
  asReply,
  decodePeerMessage,
  encodePeerMessage,
} from '../../src/codec/wire.js';
import { MemoryLogger } from '../../src/core/log.js';
import type { PeerEvents, QueryOutcome, RemoteInfo } from '../../src/core/peer-api.js';
import {
  DEFAULT_PEER_TIMING,
  KERNEL_WAIT_MS,
  type PeerEndpoint,
  PeerEngine,
  type PeerEngineDeps,
  RawEndpoint,
} from '../../src/core/peer.js';
import { TestListeners } from '../support/listeners.js';
import { keepInfo, keepOutcome } from '../support/events.js';

// ---------------------------------------------------------------------------
// Harness

function mulberry32(seed: number): () => number {
  let s = seed >>> 0;
  return () => {
    s = (s + 0x6d2b79f5) >>> 0;
    let t = s;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

function rng64(seed: number): () => bigint {
  const r = mulberry32(seed);
  return () => (BigInt(Math.floor(r() * 2 ** 32)) << 32n) | BigInt(Math.floor(r() * 2 ** 32));
}

/** PeerEngineDeps.randomHandle from a source of 64-bit values: high half, low half. */
function halves(next: () => bigint): (out: Uint32Array) => void {
  return (out) => {
    const v = BigInt.asUintN(64, next());
    out[0] = Number(v >> 32n);
    out[1] = Number(v & 0xffffffffn);
  };
}

/** An endpoint's fields as plain data (REQ destinations are objects whose `ip` text is a getter). */
function endpointFields(e: PeerEndpoint): PeerEndpoint {
  const f: PeerEndpoint = { family: e.family, ip: e.ip, port: e.port };
  if (e.scopeId) f.scopeId = e.scopeId;
  if (e.raw !== undefined) f.raw = e.raw;
  return f;
}

interface Sent {
  at: number;
  dest: PeerEndpoint;
  bytes: Buffer;
  via: number | undefined;
  msg: PeerMessage;
}

class Recorder implements PeerEvents {
  done: { at: number; id: number; outcome: QueryOutcome }[] = [];
  infos: RemoteInfo[] = [];
  constructor(private readonly clock: { t: number }) {}
  queryDone(id: number, outcome: QueryOutcome): void {
    this.done.push({ at: this.clock.t, id, outcome: keepOutcome(outcome) });
  }
  remoteInfo(info: RemoteInfo): void {
    this.infos.push(keepInfo(info));
  }
}

/** One engine with a fake clock; what it sends is recorded. */
function single(opts: Partial<PeerEngineDeps> = {}) {
  const clock = { t: 1000 };
  const sent: Sent[] = [];
  const events = new Recorder(clock);
  const listeners = new TestListeners();
  const log = new MemoryLogger(false);
  const engine = new PeerEngine({
    now: () => clock.t,
    randomHandle: halves(rng64(7)),
    send: (dest, bytes, via) => {
      const d = decodePeerMessage(bytes);
      if (!d.ok) throw new Error('engine sent an undecodable datagram');
      sent.push({ at: clock.t, dest, bytes, via, msg: d.msg });
      return true;
    },
    events,
    lookup: listeners,
    log,
    ...opts,
  });
  /** Advance the clock to `t`, ticking at every deadline on the way (like io does). */
  const runUntil = (t: number): void => {
    for (;;) {
      const d = engine.nextDeadline();
      if (d === undefined || d > t) break;
      clock.t = Math.max(clock.t, d);
      engine.tick(clock.t);
    }
    clock.t = t;
    engine.tick(t);
  };
  return { clock, sent, events, listeners, engine, runUntil, log };
}

const A_IP = '192.168.1.10';
const B_IP = '192.168.1.20';
const query = (id: number, localPort = 40000, mappedPort = 40001, remote = `${B_IP}`, remotePort = 5000, localIp = A_IP) => ({
  id,
  local: parseIp(localIp, localPort),
  mapped: parseIp(localIp, mappedPort),
  remote: parseIp(remote, remotePort),
});
const peerB: PeerEndpoint = { family: 4, ip: B_IP, port: 3935 };
const peerA: PeerEndpoint = { family: 4, ip: A_IP, port: 50000 };

function reqFrom(handle: bigint, over: Partial<PeerMessage> = {}): Buffer {
  return encodePeerMessage({
    type: PM_MSG_REQ,
    ipVersion: 4,
    pmtime: 0,
    mappedCpPort: 40001,
    apPort: 5000,
    cpPort: 40000,
    assocHandle: handle,
    cpIp: parseIp(A_IP).ip,
    apIp: parseIp(B_IP).ip,
    mappedCpIp: parseIp(A_IP).ip,
    ...over,
  } as PeerMessage);
}

// ---------------------------------------------------------------------------

describe('PeerEngine: connecting side', () => {
  it('QUERY -> REQ to remote-IP:3935 with the spec layout, ACC -> accepted + ACK to the ACC source', () => {
    const h = single({ randomHandle: halves(() => 0x0000561234567890n) });
    h.engine.startQuery(query(1));
    expect(h.sent).toHaveLength(1);
    const req = h.sent[0]!;
    expect(endpointFields(req.dest)).toEqual({ family: 4, ip: B_IP, port: 3935, raw: parseIp(B_IP).ip });
    expect(req.via).toBeUndefined(); // the client socket
    // exactly the spec §5.3 REQ
    expect(req.bytes.toString('hex')).toBe(
      '04009c4113889c400000561234567890' +
        'c0a8010a000000000000000000000000' +
        'c0a80114000000000000000000000000' +
        'c0a8010a000000000000000000000000',
    );
    // B answers (from 3935) with the spec ACC, pmtime 9 to check the echo
    const acc = asReply(req.msg, PM_MSG_ACC, { apPort: 33333 });
    acc.pmtime = 9;
    h.clock.t += 3;
    h.engine.receive(encodePeerMessage(acc), peerB, 1);
    expect(h.events.done).toHaveLength(1);
    const { id, outcome } = h.events.done[0]!;
    expect(id).toBe(1);
    expect(outcome.kind).toBe('accepted');
    if (outcome.kind === 'accepted') {
      expect(outcome.mappedRemote).toEqual({ ...parseIp(B_IP, 33333) });
    }
    const ack = h.sent[1]!;
    expect(ack.dest).toEqual(peerB);
    expect(ack.via).toBe(1);
    expect(ack.msg).toEqual({ ...acc, type: PM_MSG_ACK });
    expect(ack.bytes[0]).toBe(0x24);
    expect(ack.bytes[1]).toBe(9); // pmtime echoed
    // no retransmission afterwards
    h.runUntil(h.clock.t + 12_000);
    expect(h.sent.filter((s) => s.msg.type === PM_MSG_REQ)).toHaveLength(1);
    expect(h.engine.stats().liveQueries).toBe(0);
  });

  it('a retransmitted ACC is ACKed again (tracker), with no second outcome', () => {
    const h = single();
    h.engine.startQuery(query(1));
    const acc = encodePeerMessage(asReply(h.sent[0]!.msg, PM_MSG_ACC, { apPort: 33333 }));
    h.engine.receive(acc, peerB, 1);
    h.clock.t += 1000;
    h.engine.receive(acc, peerB, 1);
    h.clock.t += 1000;
    h.engine.receive(acc, peerB, 1);
    expect(h.events.done).toHaveLength(1);
    expect(h.sent.filter((s) => s.msg.type === PM_MSG_ACK)).toHaveLength(3);
    expect(h.engine.stats().accDuplicate).toBe(2);
    // tracker expires after ackTrackerMs without duplicates; a later ACC is stale
    h.runUntil(h.clock.t + DEFAULT_PEER_TIMING.ackTrackerMs + DEFAULT_PEER_TIMING.housekeepingMs + 1);
    h.engine.receive(acc, peerB, 1);
    expect(h.sent.filter((s) => s.msg.type === PM_MSG_ACK)).toHaveLength(3);
    expect(h.engine.stats().accStale).toBe(1);
    expect(h.engine.stats().ackTrackers).toBe(0);
  });

  it('REJ -> rejected; later ACC/REJ for it are ignored', () => {
    const h = single();
    h.engine.startQuery(query(5));
    const rej = encodePeerMessage(asReply(h.sent[0]!.msg, PM_MSG_REJ));
    h.engine.receive(rej, peerB, 1);
    expect(h.events.done).toEqual([{ at: h.clock.t, id: 5, outcome: { kind: 'rejected' } }]);
    h.engine.receive(rej, peerB, 1);
    h.engine.receive(encodePeerMessage(asReply(h.sent[0]!.msg, PM_MSG_ACC, { apPort: 1 })), peerB, 1);
    expect(h.events.done).toHaveLength(1);
    expect(h.sent).toHaveLength(1); // no ACK for a stale ACC, nothing for a REJ
    expect(h.engine.stats()).toMatchObject({ rejStale: 1, accStale: 1, queriesRejected: 1 });
  });

  it('ACC/REJ with the right handle but another connecting address are ignored', () => {
    const h = single();
    h.engine.startQuery(query(1));
    const req = h.sent[0]!.msg;
    h.engine.receive(encodePeerMessage({ ...asReply(req, PM_MSG_ACC), cpPort: 40002 }), peerB, 1);
    h.engine.receive(encodePeerMessage({ ...asReply(req, PM_MSG_REJ), cpIp: parseIp('192.168.1.11').ip }), peerB, 1);
    const v6 = asReply(req, PM_MSG_REJ);
    h.engine.receive(encodePeerMessage({ ...v6, ipVersion: 6, cpIp: Buffer.alloc(16), apIp: Buffer.alloc(16) }), peerB, 1);
    expect(h.events.done).toHaveLength(0);
    expect(h.engine.stats()).toMatchObject({ accStale: 1, rejStale: 2, liveQueries: 1 });
  });

  it('retransmits with backoff while unanswered and times out before the kernel 10 s', () => {
    const h = single();
    h.engine.startQuery(query(1));
    h.runUntil(h.clock.t + 20_000);
    const reqs = h.sent.filter((s) => s.msg.type === PM_MSG_REQ);
    const times = reqs.map((s) => s.at - 1000);
    // first retransmission after 150 ms, then growing intervals up to 250 ms
    expect(times.slice(0, 5)).toEqual([0, 150, 375, 625, 875]);
    for (let i = 1; i < times.length; i++) {
      const gap = times[i]! - times[i - 1]!;
      expect(gap).toBeGreaterThanOrEqual(150);
      expect(gap).toBeLessThanOrEqual(250);
    }
    expect(reqs.length).toBeGreaterThanOrEqual(30);
    // every copy is byte-identical (same handle: a retransmission, not a new request)
    for (const r of reqs) expect(r.bytes.equals(reqs[0]!.bytes)).toBe(true);
    expect(h.events.done).toHaveLength(1);
    const d = h.events.done[0]!;
    expect(d.outcome).toEqual({ kind: 'timeout' });
    expect(d.at - 1000).toBe(DEFAULT_PEER_TIMING.queryGiveUpMs);
    expect(d.at - 1000).toBeLessThan(KERNEL_WAIT_MS);
    expect(Math.max(...times)).toBeLessThan(DEFAULT_PEER_TIMING.queryGiveUpMs);
    // a late ACC after the give-up is ignored
    h.engine.receive(encodePeerMessage(asReply(reqs[0]!.msg, PM_MSG_ACC)), peerB, 1);
    expect(h.events.done).toHaveLength(1);
  });

  it('the first retransmission timeout follows the measured round trip (Karn: retransmitted queries are not sampled)', () => {
    const h = single();
    expect(h.engine.stats().rtoMs).toBe(DEFAULT_PEER_TIMING.reqFirstRetransmitMs);
    // a peer answering after 50 or 140 ms (jittery, but always before the 150 ms timer)
    for (let i = 0; i < 40; i++) {
      h.engine.startQuery(query(i, 1000 + i));
      const req = h.sent[h.sent.length - 1]!.msg;
      h.clock.t += i % 2 ? 140 : 50;
      h.engine.receive(encodePeerMessage(asReply(req, PM_MSG_ACC, { apPort: 9 })), peerB, 1);
    }
    const { srttMs, rtoMs } = h.engine.stats();
    expect(srttMs).toBeGreaterThan(60);
    expect(srttMs).toBeLessThan(130);
    expect(rtoMs).toBeGreaterThan(200);
    expect(rtoMs).toBeLessThanOrEqual(DEFAULT_PEER_TIMING.reqMaxRtoMs);
    expect(h.engine.stats().txReqRetransmit).toBe(0);
    // a new unanswered query waits that long before its first retransmission
    const before = h.sent.length;
    const t0 = h.clock.t;
    h.engine.startQuery(query(99, 2000));
    h.runUntil(t0 + rtoMs - 1);
    expect(h.sent.length).toBe(before + 1);
    h.runUntil(t0 + rtoMs);
    expect(h.sent.length).toBe(before + 2);
    // answers to retransmitted queries do not change the estimate
    h.clock.t += 3000;
    h.engine.receive(encodePeerMessage(asReply(h.sent[before]!.msg, PM_MSG_ACC)), peerB, 1);
    expect(h.engine.stats().srttMs).toBe(srttMs);
  });

  it('give-up time is configurable and must stay below the kernel wait', () => {
    const h = single({ timing: { queryGiveUpMs: 2_000, reqFirstRetransmitMs: 100, reqBackoff: 1, reqMaxIntervalMs: 100 } });
    h.engine.startQuery(query(1));
    h.runUntil(h.clock.t + 5_000);
    expect(h.events.done[0]).toMatchObject({ at: 3_000, outcome: { kind: 'timeout' } });
    expect(h.sent.length).toBe(20); // 0, 100, ..., 1900
    expect(() => single({ timing: { queryGiveUpMs: KERNEL_WAIT_MS } })).toThrow(RangeError);
    expect(() => single({ timing: { queryGiveUpMs: 0 } })).toThrow(RangeError);
  });

  it('cancelQuery drops the query: no outcome, no retransmission, later ACC stale', () => {
    const h = single();
    h.engine.startQuery(query(1));
    h.engine.cancelQuery(1);
    h.runUntil(h.clock.t + 10_000);
    expect(h.sent).toHaveLength(1);
    expect(h.events.done).toHaveLength(0);
    h.engine.receive(encodePeerMessage(asReply(h.sent[0]!.msg, PM_MSG_ACC)), peerB, 1);
    expect(h.events.done).toHaveLength(0);
    expect(h.engine.stats()).toMatchObject({ queriesCancelled: 1, accStale: 1 });
  });

  it('cannot send (no socket for the family) -> failed, delivered at the next tick, not inside startQuery', () => {
    const h = single({ send: () => false });
    h.engine.startQuery(query(1, 40000, 40001, '2001:db8::1', 5000, '2001:db8::2'));
    expect(h.events.done).toHaveLength(0);
    expect(h.engine.nextDeadline()).toBe(h.clock.t);
    h.engine.tick(h.clock.t);
    expect(h.events.done).toHaveLength(1);
    expect(h.events.done[0]!.outcome.kind).toBe('failed');
    expect(h.engine.stats().liveQueries).toBe(0);
  });

  it('destinationFailed (ICMP port unreachable): the queries to that IP and port fail at the next tick, others go on', () => {
    const h = single();
    h.engine.startQuery(query(1)); // to B_IP:3935
    h.engine.startQuery(query(2, 40002, 40003)); // to B_IP:3935
    h.engine.startQuery(query(3, 40004, 40005, '192.168.1.30')); // another host
    const reqs = h.sent.slice();
    const addr = Buffer.alloc(32);
    parseIp(B_IP).ip.copy(addr, 16); // the address may sit anywhere in the buffer
    expect(h.engine.destinationFailed(4, addr, 16, 9999, 'refused')).toBe(0); // other port: nothing
    expect(h.engine.destinationFailed(6, addr, 16, 3935, 'refused')).toBe(0); // other family: nothing
    expect(h.engine.destinationFailed(4, addr, 16, 3935, 'ICMP port unreachable')).toBe(2);
    expect(h.events.done).toHaveLength(0); // not from inside the call
    expect(h.engine.nextDeadline()).toBe(h.clock.t);
    h.engine.tick(h.clock.t);
    expect(h.events.done.map((d) => d.id).sort()).toEqual([1, 2]);
    for (const d of h.events.done) {
      expect(d.outcome).toEqual({ kind: 'failed', reason: `${B_IP}:3935: ICMP port unreachable` });
    }
    expect(h.engine.stats()).toMatchObject({ liveQueries: 1, queriesFailed: 2, queriesUnreachable: 2 });
    // a late ACC for a failed query is stale; the third query still completes
    h.engine.receive(encodePeerMessage(asReply(reqs[0]!.msg, PM_MSG_ACC)), peerB, 1);
    h.engine.receive(encodePeerMessage(asReply(reqs[2]!.msg, PM_MSG_ACC)), { family: 4, ip: '192.168.1.30', port: 3935 }, 1);
    expect(h.events.done.map((d) => d.id)).toEqual([1, 2, 3]);
    expect(h.events.done[2]!.outcome.kind).toBe('accepted');
    expect(h.engine.stats()).toMatchObject({ accStale: 1, liveQueries: 0 });
    // no retransmission of the failed ones
    h.runUntil(h.clock.t + 10_000);
    expect(h.sent.filter((x) => x.msg.type === PM_MSG_REQ)).toHaveLength(3);
  });

  it('a failed query cancelled before the tick gets no outcome', () => {
    const h = single();
    h.engine.startQuery(query(1));
    expect(h.engine.destinationFailed(4, parseIp(B_IP).ip, 0, 3935, 'refused')).toBe(1);
    h.engine.cancelQuery(1);
    h.engine.tick(h.clock.t);
    expect(h.events.done).toHaveLength(0);
  });

  it('mixed families are refused as failed', () => {
    const h = single();
    h.engine.startQuery(query(1, 40000, 40001, '2001:db8::1'));
    h.engine.tick(h.clock.t);
    expect(h.events.done[0]!.outcome.kind).toBe('failed');
    expect(h.sent).toHaveLength(0);
  });

  it('IPv6: REQ to [remote]:3935 keeps the scope id for io; ACC mapped remote keeps flowinfo/scope', () => {
    const h = single();
    const remote: SockAddr = { ...parseIp('fe80::20', 5000), scopeId: 3, flowinfo: 0x12345 };
    h.engine.startQuery({ id: 9, local: parseIp('fe80::10', 40000), mapped: parseIp('fe80::10', 40001), remote });
    const req = h.sent[0]!;
    expect(endpointFields(req.dest)).toEqual({ family: 6, ip: 'fe80::20', port: 3935, scopeId: 3, raw: parseIp('fe80::20').ip });
    expect(req.bytes[0]).toBe(0x06);
    expect(req.bytes.length).toBe(64);
    h.engine.receive(encodePeerMessage(asReply(req.msg, PM_MSG_ACC, { apPort: 33333 })), { family: 6, ip: 'fe80::20%eth0', port: 3935 }, 3);
    const out = h.events.done[0]!.outcome;
    expect(out).toEqual({ kind: 'accepted', mappedRemote: { ...remote, port: 33333 } });
    expect(h.sent[1]).toMatchObject({ dest: { ip: 'fe80::20%eth0', port: 3935 }, via: 3 });
  });
});

describe('PeerEngine: listening side', () => {
  it('REQ for a wildcard listener: REMOTE_INFO once, ACC with the REQ IP and the mapped port', () => {
    const h = single();
    const l = h.listeners.add('0.0.0.0', 5000, 33333, 2);
    h.engine.receive(reqFrom(0x0000561234567890n), peerA, 0);
    expect(h.events.infos).toHaveLength(1);
    const info = h.events.infos[0]!;
    expect(info.ownerClient).toBe(2);
    expect(info.localRaw.equals(l.localRaw)).toBe(true);
    expect(info.mappedLocalRaw.equals(l.mappedRaw)).toBe(true); // stored mapped address: wildcard IP
    expect(info.remote).toEqual(parseIp(A_IP, 40000));
    expect(info.mappedRemote).toEqual(parseIp(A_IP, 40001));
    expect(h.sent).toHaveLength(1);
    const acc = h.sent[0]!;
    expect(acc.dest).toEqual(peerA);
    expect(acc.via).toBe(0); // out of the socket the REQ came in on
    // exactly the spec §5.3 ACC
    expect(acc.bytes.toString('hex')).toBe(
      '14000000' + '8235' + '9c40' + '0000561234567890' + 'c0a8010a000000000000000000000000' + 'c0a80114000000000000000000000000',
    );
  });

  it('wildcard listener, REQs addressed to different IPs: each conversation keeps the IP its REQ named', () => {
    const h = single();
    h.listeners.add('0.0.0.0', 5000, 33333);
    const toX = reqFrom(5n, { apIp: parseIp('192.168.1.20').ip });
    const toY = reqFrom(6n, { apIp: parseIp('192.168.7.7').ip });
    h.engine.receive(toX, peerA, 0);
    h.engine.receive(toY, peerA, 0);
    expect(h.sent.map((x) => x.msg.apIp)).toEqual([parseIp('192.168.1.20').ip, parseIp('192.168.7.7').ip]);
    // the first one's ACK (naming X) completes it; a late duplicate of its REQ gets the same ACC, no REMOTE_INFO
    h.engine.receive(encodePeerMessage(asReply(h.sent[0]!.msg, PM_MSG_ACK)), peerA, 0);
    expect(h.engine.stats()).toMatchObject({ acceptsCompleted: 1, ackStale: 0, liveAccepts: 1 });
    h.engine.receive(toX, peerA, 0);
    expect(h.events.infos).toHaveLength(2);
    expect(h.engine.stats().reqDuplicate).toBe(1);
    expect(h.sent[2]!.bytes.equals(h.sent[0]!.bytes)).toBe(true);
  });

  it("a conversation keeps its own copy of the listener's IP: the mapping's bytes may be reused once it is removed", () => {
    const h = single();
    const m = h.listeners.add(B_IP, 5000, 33333);
    h.engine.receive(reqFrom(9n), peerA, 0);
    expect(h.engine.stats()).toMatchObject({ liveAccepts: 1 });
    // the listener goes away and the daemon hands its block to another mapping
    h.listeners.remove(m);
    m.mapped.ip.fill(0x77);
    h.engine.receive(encodePeerMessage(asReply(h.sent[0]!.msg, PM_MSG_ACK)), peerA, 0);
    expect(h.engine.stats()).toMatchObject({ acceptsCompleted: 1, ackStale: 0, liveAccepts: 0 });
  });

  it('REQ for a specific listener: ACC carries the mapped IP and port', () => {
    const h = single();
    h.listeners.add(B_IP, 5000, 41000);
    h.engine.receive(reqFrom(77n), peerA, 0);
    expect(h.sent[0]!.msg).toMatchObject({ type: PM_MSG_ACC, apPort: 41000, apIp: parseIp(B_IP).ip, cpPort: 40000, assocHandle: 77n });
  });

  it('REQ for a specific IP matches a wildcard listener on the port (fuzzy rule 2), also across families', () => {
    const h = single();
    h.listeners.add('::', 5000, 42000);
    h.engine.receive(reqFrom(78n), peerA, 0);
    expect(h.sent[0]!.msg).toMatchObject({ type: PM_MSG_ACC, ipVersion: 4, apPort: 42000, apIp: parseIp(B_IP).ip });
    expect(decodeSockaddr(h.events.infos[0]!.localRaw)).toMatchObject({ ok: true, addr: { family: AF_INET6 } });
  });

  it('REQ with no listener: REJ echoing the REQ, no state, REJ again for a retransmission', () => {
    const h = single();
    h.listeners.add(B_IP, 5001, 41000); // other port
    const req = reqFrom(0x0000561234567890n);
    h.engine.receive(req, peerA, 0);
    h.engine.receive(req, peerA, 0);
    expect(h.sent).toHaveLength(2);
    const expected = Buffer.from(req.subarray(0, 48));
    expected[0] = 0x34;
    expected[2] = 0;
    expected[3] = 0;
    for (const s of h.sent) {
      expect(s.bytes.equals(expected)).toBe(true);
      expect(s.via).toBe(0);
    }
    expect(h.events.infos).toHaveLength(0);
    expect(h.engine.stats()).toMatchObject({ liveAccepts: 0, txRej: 2 });
    h.runUntil(h.clock.t + 20_000);
    expect(h.sent).toHaveLength(2);
  });

  it('retransmits the ACC until the ACK, then stops; duplicate REQ gets the ACC again without a second REMOTE_INFO', () => {
    const h = single();
    h.listeners.add('0.0.0.0', 5000, 33333);
    const req = reqFrom(0xabcn);
    h.engine.receive(req, peerA, 0);
    h.runUntil(h.clock.t + 1000);
    const accs = () => h.sent.filter((s) => s.msg.type === PM_MSG_ACC);
    const n = accs().length;
    expect(n).toBeGreaterThanOrEqual(3); // 0, 200, 500, 950
    expect(accs().every((s) => s.bytes.equals(accs()[0]!.bytes) && s.via === 0)).toBe(true);
    h.engine.receive(req, peerA, 0); // duplicate REQ
    expect(accs()).toHaveLength(n + 1);
    expect(h.events.infos).toHaveLength(1);
    expect(h.engine.stats().reqDuplicate).toBe(1);
    // ACK (ACC echoed, type 2)
    h.engine.receive(encodePeerMessage(asReply(accs()[0]!.msg, PM_MSG_ACK)), peerA, 0);
    expect(h.engine.stats()).toMatchObject({ acceptsCompleted: 1, liveAccepts: 0, lingeringAccepts: 1 });
    h.runUntil(h.clock.t + 5000);
    expect(accs()).toHaveLength(n + 1);
    // duplicate ACK: ignored
    h.engine.receive(encodePeerMessage(asReply(accs()[0]!.msg, PM_MSG_ACK)), peerA, 0);
    expect(h.engine.stats().ackStale + h.engine.stats().ackDuplicate).toBe(1);
  });

  it('a duplicate REQ shortly after the ACK is answered from the lingering conversation (no REMOTE_INFO)', () => {
    const h = single();
    h.listeners.add('0.0.0.0', 5000, 33333);
    const req = reqFrom(0xabcn);
    h.engine.receive(req, peerA, 0);
    h.engine.receive(encodePeerMessage(asReply(h.sent[0]!.msg, PM_MSG_ACK)), peerA, 0);
    h.clock.t += 100;
    h.engine.receive(req, peerA, 0);
    expect(h.sent).toHaveLength(2);
    expect(h.sent[1]!.bytes.equals(h.sent[0]!.bytes)).toBe(true);
    expect(h.events.infos).toHaveLength(1);
    // after the linger window it is a new conversation
    h.runUntil(h.clock.t + DEFAULT_PEER_TIMING.acceptLingerMs + DEFAULT_PEER_TIMING.housekeepingMs + 1);
    h.engine.receive(req, peerA, 0);
    expect(h.events.infos).toHaveLength(2);
  });

  it('gives up retransmitting the ACC after ~10 s without an ACK', () => {
    const h = single();
    h.listeners.add('0.0.0.0', 5000, 33333);
    h.engine.receive(reqFrom(1n), peerA, 0);
    h.runUntil(h.clock.t + 30_000);
    const accs = h.sent.filter((s) => s.msg.type === PM_MSG_ACC);
    expect(Math.max(...accs.map((s) => s.at)) - 1000).toBeLessThan(DEFAULT_PEER_TIMING.acceptGiveUpMs);
    expect(accs.length).toBeGreaterThanOrEqual(10);
    expect(h.engine.stats()).toMatchObject({ acceptsTimedOut: 1, liveAccepts: 0, lingeringAccepts: 0 });
    expect(h.engine.nextDeadline()).toBeUndefined(); // nothing left: no timer
  });

  it('same handle from two different peers = two conversations (the peer is part of the key)', () => {
    const h = single();
    h.listeners.add('0.0.0.0', 5000, 33333);
    h.engine.receive(reqFrom(5n), peerA, 0);
    h.engine.receive(reqFrom(5n), { family: 4, ip: '192.168.1.99', port: 50000 }, 0);
    expect(h.events.infos).toHaveLength(2);
    expect(h.engine.stats().liveAccepts).toBe(2);
  });

  it('sources given as bytes (RawEndpoint): same peer by bytes and scope id; text made only when asked for', () => {
    const h = single();
    h.listeners.add('0.0.0.0', 5000, 33333);
    const a1 = new RawEndpoint(4, Buffer.from([192, 168, 1, 10]), 50000);
    const a2 = new RawEndpoint(4, Buffer.from([192, 168, 1, 10]), 50001); // same IP, another port
    const b = new RawEndpoint(4, Buffer.from([192, 168, 1, 11]), 50000);
    h.engine.receive(reqFrom(5n), a1, 0);
    h.engine.receive(reqFrom(5n), a2, 0); // a retransmission from the same IP
    h.engine.receive(reqFrom(5n), b, 0); // another peer: a second conversation
    expect(h.events.infos).toHaveLength(2);
    expect(h.engine.stats()).toMatchObject({ reqDuplicate: 1, liveAccepts: 2 });
    expect(h.sent.map((x) => x.dest)).toEqual([a1, a2, b]);
    // the ACK from the first peer completes its conversation, not the other one
    h.engine.receive(encodePeerMessage(asReply(h.sent[0]!.msg, PM_MSG_ACK)), a1, 0);
    expect(h.engine.stats()).toMatchObject({ acceptsCompleted: 1, liveAccepts: 1 });
    expect(a1.ip).toBe('192.168.1.10');
    expect(new RawEndpoint(6, parseIp('fe80::1').ip, 1, 3).ip).toBe('fe80::1%3');
    // link-local: the same bytes on another interface are another peer
    const l1 = new RawEndpoint(6, parseIp('fe80::9').ip, 7000, 2);
    const l2 = new RawEndpoint(6, parseIp('fe80::9').ip, 7000, 3);
    h.engine.receive(reqFrom(6n, { ipVersion: 6, cpIp: parseIp('fe80::9').ip, apIp: parseIp('fe80::1').ip, mappedCpIp: parseIp('fe80::9').ip } as never), l1, 1);
    h.engine.receive(reqFrom(6n, { ipVersion: 6, cpIp: parseIp('fe80::9').ip, apIp: parseIp('fe80::1').ip, mappedCpIp: parseIp('fe80::9').ip } as never), l2, 1);
    expect(h.events.infos).toHaveLength(4);
  });

  it('drops and counts malformed datagrams without answering', () => {
    const h = single();
    h.listeners.add('0.0.0.0', 5000, 33333);
    const good = reqFrom(5n);
    const bad: Buffer[] = [
      Buffer.alloc(0),
      Buffer.alloc(47),
      Buffer.alloc(65),
      good.subarray(0, 48), // REQ of 48 bytes
      Buffer.concat([Buffer.from([0x05]), good.subarray(1)]), // IP version 5
      Buffer.concat([Buffer.from([0x44]), good.subarray(1)]), // protocol version 1
    ];
    for (const b of bad) h.engine.receive(b, peerA, 0);
    h.engine.receive(good, { ...peerA, port: 0 }, 0);
    expect(h.sent).toHaveLength(0);
    expect(h.events.infos).toHaveLength(0);
    expect(h.engine.stats().rxMalformed).toEqual({ length: 3, reqLength: 1, version: 1, ipVersion: 1, sourcePort: 1 });
    // random garbage never throws
    const r = mulberry32(3);
    for (let i = 0; i < 5000; i++) {
      const b = Buffer.alloc(r() < 0.5 ? 48 : 64);
      for (let j = 0; j < b.length; j++) b[j] = Math.floor(r() * 256);
      h.engine.receive(b, { family: 4, ip: `10.0.${i >> 8}.${i & 255}`, port: 1 + i }, i & 3);
    }
  });
});

describe('PeerEngine: handles', () => {
  it('never reuses a live or recently used handle even if the RNG repeats; never 0', () => {
    const seq = [0n, 5n, 5n, 6n, 5n, 6n, 7n, 7n, 8n];
    let i = 0;
    const h = single({ randomHandle: halves(() => seq[Math.min(i++, seq.length - 1)]!) });
    h.engine.startQuery(query(1)); // 5
    h.engine.startQuery(query(2, 40002)); // 6
    h.engine.cancelQuery(1); // 5 quarantined
    h.engine.startQuery(query(3, 40004)); // 7
    const handles = h.sent.map((s) => s.msg.assocHandle);
    expect(handles).toEqual([5n, 6n, 7n]);
    expect(h.engine.stats().handleCollisions).toBe(4); // 0, 5, 6, 5
    // after the quarantine window a handle may come back
    h.runUntil(h.clock.t + DEFAULT_PEER_TIMING.queryGiveUpMs + DEFAULT_PEER_TIMING.handleQuarantineMs + DEFAULT_PEER_TIMING.housekeepingMs + 1);
    expect(h.engine.stats().quarantinedHandles).toBe(0);
  });

  it('10,000 queries with a random RNG: all handles distinct', () => {
    const h = single({ randomHandle: halves(rng64(99)) });
    for (let q = 0; q < 10_000; q++) h.engine.startQuery(query(q, 1024 + q, 20000 + q));
    const s = new Set(h.sent.map((x) => x.msg.assocHandle));
    expect(s.size).toBe(10_000);
  });

  it('halves of 2^31 and above: on the wire as given (unsigned), and the ACC naming them completes the query', () => {
    const h = single({
      randomHandle: (out) => {
        out[0] = 0xffffffff;
        out[1] = 0x80000000;
      },
    });
    h.engine.startQuery(query(1));
    const req = h.sent[0]!;
    expect(req.bytes.subarray(8, 16).toString('hex')).toBe('ffffffff80000000');
    expect(req.msg.assocHandle).toBe(0xffffffff80000000n);
    h.engine.receive(encodePeerMessage(asReply(req.msg, PM_MSG_ACC)), peerB, 2);
    expect(h.events.done.map((d) => d.outcome.kind)).toEqual(['accepted']);
    h.engine.receive(encodePeerMessage(asReply(req.msg, PM_MSG_ACC)), peerB, 2); // duplicate: the tracker ACKs again
    expect(h.engine.stats()).toMatchObject({ accDuplicate: 1, txAck: 2 });
  });

  it('debug logs name handles in hex, sent and received alike', () => {
    const log = new MemoryLogger(true);
    const h = single({ log, randomHandle: halves(() => 0x0000561234567890n) });
    h.engine.startQuery(query(1));
    h.engine.receive(encodePeerMessage(asReply(h.sent[0]!.msg, PM_MSG_ACC)), peerB, 2);
    const debug = log.lines.filter((l) => l.level === 'debug').map((l) => l.msg);
    expect(debug).toContain(`peer: REQ h=561234567890 query 1 to ${B_IP}:3935`);
    expect(debug).toContain(`peer: ACC h=561234567890 from ${B_IP}:3935`);
  });

  it('a handle stays reserved while its ACK tracker lives', () => {
    const seq = [5n, 5n, 9n];
    let i = 0;
    const h = single({ randomHandle: halves(() => seq[Math.min(i++, seq.length - 1)]!) });
    h.engine.startQuery(query(1));
    h.engine.receive(encodePeerMessage(asReply(h.sent[0]!.msg, PM_MSG_ACC)), peerB, 1);
    h.engine.startQuery(query(2, 40002));
    expect(h.sent.filter((s) => s.msg.type === PM_MSG_REQ).map((s) => s.msg.assocHandle)).toEqual([5n, 9n]);
  });
});

describe('PeerEngine: datagrams in place, one reused source endpoint (as io/udp.ts feeds them)', () => {
  /** What was sent, read at send time (the engine may pass the transport's reused endpoint). */
  function snapshotting(h: ReturnType<typeof single>) {
    const seen: { to: string; port: number; type: number; bytes: Buffer }[] = [];
    return {
      seen,
      send: (dest: PeerEndpoint, bytes: Buffer) => {
        seen.push({ to: dest.ip, port: dest.port, type: bytes[0]! >> 4, bytes: Buffer.from(bytes) });
        return true;
      },
      h,
    };
  }

  it('a reused RawEndpoint: each conversation keeps its own peer (retransmissions, duplicates, ACKs)', () => {
    let out: ReturnType<typeof snapshotting> | undefined;
    const h = single({ send: (d, b) => out!.send(d, b) });
    out = snapshotting(h);
    h.listeners.add('0.0.0.0', 5000, 33333);
    const src = new RawEndpoint(4, Buffer.alloc(4), 0);
    const from = (ip: string, port: number): RawEndpoint => {
      parseIp(ip).ip.copy(src.raw);
      return src.reuse(port, 0);
    };
    // the text form follows the bytes after reuse
    expect(from('10.0.0.1', 1).ip).toBe('10.0.0.1');
    expect(from('10.0.0.2', 1).ip).toBe('10.0.0.2');
    h.engine.receive(reqFrom(5n), from('10.0.0.1', 50001), 0);
    h.engine.receive(reqFrom(5n), from('10.0.0.2', 50002), 0);
    h.engine.receive(reqFrom(5n), from('10.0.0.1', 50009), 0); // duplicate from the first peer
    expect(h.events.infos).toHaveLength(2);
    expect(h.engine.stats()).toMatchObject({ liveAccepts: 2, reqDuplicate: 1 });
    expect(out.seen.map((x) => `${x.to}:${x.port}`)).toEqual(['10.0.0.1:50001', '10.0.0.2:50002', '10.0.0.1:50009']);
    // the endpoint now says something else entirely; retransmissions still go to each peer
    from('192.0.2.99', 7);
    out.seen.length = 0;
    h.runUntil(h.clock.t + 250);
    expect(out.seen.map((x) => `${x.to}:${x.port}`).sort()).toEqual(['10.0.0.1:50001', '10.0.0.2:50002']);
    // the ACK of the second peer ends its conversation only
    const accOf2 = decodePeerMessage(out.seen.find((x) => x.to === '10.0.0.2')!.bytes);
    if (!accOf2.ok) throw new Error('bad ACC');
    h.engine.receive(encodePeerMessage(asReply(accOf2.msg, PM_MSG_ACK)), from('10.0.0.2', 50002), 0);
    expect(h.engine.stats()).toMatchObject({ acceptsCompleted: 1, liveAccepts: 1, lingeringAccepts: 1 });
    out.seen.length = 0;
    h.runUntil(h.clock.t + 600);
    expect(new Set(out.seen.map((x) => x.to))).toEqual(new Set(['10.0.0.1']));
  });

  it('REMOTE_INFO and the accepted outcome own their addresses: the receive buffer may be reused afterwards', () => {
    const h = single();
    h.listeners.add('0.0.0.0', 5000, 33333);
    const batch = Buffer.alloc(200);
    reqFrom(5n).copy(batch, 10);
    h.engine.receiveAt(batch, 10, 64, peerA, 0);
    h.engine.startQuery(query(1));
    encodePeerMessage(asReply(h.sent[1]!.msg, PM_MSG_ACC, { apPort: 33334 })).copy(batch, 100);
    h.engine.receiveAt(batch, 100, 48, peerB, 2);
    batch.fill(0xff);
    expect(h.events.infos[0]!.remote).toEqual(parseIp(A_IP, 40000));
    expect(h.events.infos[0]!.mappedRemote).toEqual(parseIp(A_IP, 40001));
    expect(h.events.done[0]!.outcome).toEqual({ kind: 'accepted', mappedRemote: parseIp(B_IP, 33334) });
  });

  it('receiveAt reads a datagram at an offset of a larger buffer, as receive does with the datagram alone', () => {
    const run = (feed: (e: PeerEngine, bytes: Buffer, src: PeerEndpoint, via: number) => void) => {
      const h = single({ randomHandle: halves(() => 0xfedcba9876543210n) });
      h.listeners.add(B_IP, 5000, 41000);
      feed(h.engine, reqFrom(0x8000000180000002n), peerA, 0); // REQ -> ACC
      feed(h.engine, reqFrom(0x8000000180000003n, { apPort: 5001 }), peerA, 0); // REQ -> REJ
      h.engine.startQuery(query(1));
      feed(h.engine, encodePeerMessage(asReply(h.sent[h.sent.length - 1]!.msg, PM_MSG_ACC, { apPort: 777 })), peerB, 2); // ACC -> ACK
      feed(h.engine, encodePeerMessage(asReply(h.sent[0]!.msg, PM_MSG_ACK)), peerA, 0); // ACK
      feed(h.engine, Buffer.alloc(47, 0x04), peerA, 0); // malformed
      return { sent: h.sent.map((x) => [x.bytes.toString('hex'), x.via]), done: h.events.done, infos: h.events.infos, stats: h.engine.stats() };
    };
    const plain = run((e, bytes, src, via) => e.receive(bytes, src, via));
    let k = 0;
    const inPlace = run((e, bytes, src, via) => {
      const off = 3 + 11 * k++;
      const batch = Buffer.alloc(off + bytes.length + 13, 0xa5);
      bytes.copy(batch, off);
      e.receiveAt(batch, off, bytes.length, src, via);
    });
    expect(inPlace).toEqual(plain);
    expect(plain.done).toHaveLength(1);
    expect(plain.done[0]!.outcome).toEqual({ kind: 'accepted', mappedRemote: parseIp(B_IP, 777) });
    expect(plain.stats).toMatchObject({ txAcc: 1, txRej: 1, txAck: 1, acceptsCompleted: 1, rxMalformed: { length: 1 } });
  });
});

describe('PeerEngine: bounded state', () => {
  it('caps live ACCEPT conversations (total and per peer)', () => {
    const h = single({ limits: { maxAccepts: 100, maxAcceptsPerPeer: 60, reqRatePerPeer: 1e9, reqBurstPerPeer: 1e9 } });
    h.listeners.add('0.0.0.0', 5000, 33333);
    for (let i = 1; i <= 80; i++) h.engine.receive(reqFrom(BigInt(i)), { family: 4, ip: '10.0.0.1', port: 1000 }, 0);
    expect(h.engine.stats()).toMatchObject({ liveAccepts: 60, reqCapDropped: 20 });
    for (let i = 1; i <= 80; i++) h.engine.receive(reqFrom(BigInt(i)), { family: 4, ip: '10.0.0.2', port: 1000 }, 0);
    expect(h.engine.stats()).toMatchObject({ liveAccepts: 100, reqCapDropped: 60 });
    expect(h.events.infos).toHaveLength(100);
    // ACKs free room
    for (let i = 1; i <= 10; i++) {
      const acc = h.sent.find((s) => s.msg.assocHandle === BigInt(i) && s.dest.ip === '10.0.0.1')!;
      h.engine.receive(encodePeerMessage(asReply(acc.msg, PM_MSG_ACK)), { family: 4, ip: '10.0.0.1', port: 1000 }, 0);
    }
    h.engine.receive(reqFrom(1000n), { family: 4, ip: '10.0.0.3', port: 1000 }, 0);
    expect(h.engine.stats().liveAccepts).toBe(91);
  });

  it('rate limits REQs per peer IP with a token bucket (REJs too); loopback exempt by default', () => {
    const h = single({ limits: { reqRatePerPeer: 100, reqBurstPerPeer: 10 } });
    const flood = { family: 4 as const, ip: '10.9.9.9', port: 999 };
    for (let i = 0; i < 50; i++) h.engine.receive(reqFrom(BigInt(i + 1)), flood, 0);
    expect(h.sent).toHaveLength(10); // burst
    expect(h.engine.stats().reqRateLimited).toBe(40);
    h.clock.t += 100; // +10 tokens
    for (let i = 0; i < 50; i++) h.engine.receive(reqFrom(BigInt(i + 100)), flood, 0);
    expect(h.sent).toHaveLength(20);
    // another peer is not affected
    h.engine.receive(reqFrom(7777n), { family: 4, ip: '10.9.9.8', port: 999 }, 0);
    expect(h.sent).toHaveLength(21);
    // loopback: not limited unless asked
    for (let i = 0; i < 50; i++) h.engine.receive(reqFrom(BigInt(i + 500)), { family: 4, ip: '127.0.0.1', port: 999 }, 0);
    expect(h.sent).toHaveLength(71);
    expect(h.log.lines.some((l) => /rate limit/.test(l.msg))).toBe(true);
  });

  it('a flood of REQs from spoofed, ever-changing IPs keeps memory bounded', () => {
    const h = single({ limits: { maxAccepts: 1000, maxPeerBuckets: 500, maxLingering: 200 } });
    h.listeners.add('0.0.0.0', 5000, 33333);
    for (let i = 0; i < 20_000; i++) {
      h.engine.receive(reqFrom(BigInt(i + 1)), { family: 4, ip: `10.${(i >> 16) & 255}.${(i >> 8) & 255}.${i & 255}`, port: 1 }, 0);
      if (i % 100 === 0) {
        h.clock.t += 10;
        h.engine.tick(h.clock.t);
        const s = h.engine.stats();
        expect(s.liveAccepts).toBeLessThanOrEqual(1000);
        expect(s.peerBuckets).toBeLessThanOrEqual(500);
        expect(s.lingeringAccepts).toBeLessThanOrEqual(200);
      }
    }
    expect(h.engine.stats().reqCapDropped).toBeGreaterThan(0);
    h.runUntil(h.clock.t + 15_000);
    expect(h.engine.stats()).toMatchObject({ liveAccepts: 0, lingeringAccepts: 0, peerBuckets: 0 });
  });

  it('caps outstanding queries', () => {
    const h = single({ limits: { maxQueries: 3 } });
    for (let i = 0; i < 5; i++) h.engine.startQuery(query(i, 1000 + i));
    h.engine.tick(h.clock.t);
    expect(h.events.done.map((d) => d.outcome.kind)).toEqual(['failed', 'failed']);
    expect(h.engine.stats().liveQueries).toBe(3);
  });
});

// ---------------------------------------------------------------------------
// Two engines over a simulated lossy network with a fake clock.

interface Packet {
  at: number;
  to: string;
  dstPort: number;
  src: PeerEndpoint;
  bytes: Buffer;
}

function twoHosts(opts: { loss: number; seed: number; latencyMs?: number }) {
  const clock = { t: 0 };
  const r = mulberry32(opts.seed);
  const latency = opts.latencyMs ?? 0.2;
  const queue: Packet[] = [];
  const SERVER = 3935;
  const CLIENT = 50000;
  const hosts = new Map<string, { engine: PeerEngine; events: Recorder; listeners: TestListeners }>();
  let dropped = 0;
  const mk = (ip: string, seed: number) => {
    const events = new Recorder(clock);
    const listeners = new TestListeners();
    const engine = new PeerEngine({
      now: () => clock.t,
      randomHandle: halves(rng64(seed)),
      events,
      lookup: listeners,
      send: (dest, bytes, via) => {
        if (r() < opts.loss) {
          dropped++;
          return true;
        }
        const srcPort = via === 0 ? SERVER : CLIENT;
        queue.push({ at: clock.t + latency, to: dest.ip, dstPort: dest.port, src: { family: 4, ip, port: srcPort }, bytes });
        return true;
      },
    });
    hosts.set(ip, { engine, events, listeners });
    return { engine, events, listeners };
  };
  const A = mk('10.0.0.1', 1);
  const B = mk('10.0.0.2', 2);
  const run = (until: number) => {
    for (;;) {
      let next = Infinity;
      for (const h of hosts.values()) next = Math.min(next, h.engine.nextDeadline() ?? Infinity);
      const pkt = queue.length ? queue.reduce((a, b) => (b.at < a.at ? b : a)) : undefined;
      if (pkt && pkt.at <= next) next = pkt.at;
      if (next > until) break;
      clock.t = Math.max(clock.t, next);
      if (pkt && pkt.at === next) {
        queue.splice(queue.indexOf(pkt), 1);
        hosts.get(pkt.to)?.engine.receive(pkt.bytes, pkt.src, pkt.dstPort === SERVER ? 0 : 1);
      } else {
        for (const h of hosts.values()) h.engine.tick(clock.t);
      }
    }
    clock.t = until;
  };
  return { clock, A, B, run, dropped: () => dropped };
}

describe('PeerEngine: two hosts over a lossy network', () => {
  it('30% loss each way: every query answered well before 10 s, all accepted, REMOTE_INFO once each', () => {
    const net = twoHosts({ loss: 0.3, seed: 12345 });
    net.B.listeners.add('0.0.0.0', 5000, 33333);
    const N = 2000;
    const startAt = new Map<number, number>();
    for (let i = 0; i < N; i++) {
      net.clock.t = i * 2;
      startAt.set(i, net.clock.t);
      net.A.engine.startQuery({
        id: i,
        local: parseIp('10.0.0.1', 10000 + i),
        mapped: parseIp('10.0.0.1', 30000 + i),
        remote: parseIp('10.0.0.2', 5000),
      });
      net.run(net.clock.t + 2);
    }
    net.run(net.clock.t + 30_000);
    const done = net.A.events.done;
    expect(done).toHaveLength(N);
    expect(new Set(done.map((d) => d.id)).size).toBe(N);
    const lat = done.map((d) => d.at - startAt.get(d.id)!).sort((a, b) => a - b);
    expect(lat[lat.length - 1]!).toBeLessThan(KERNEL_WAIT_MS);
    expect(done.every((d) => d.outcome.kind === 'accepted')).toBe(true);
    for (const d of done) {
      if (d.outcome.kind === 'accepted') expect(d.outcome.mappedRemote.port).toBe(33333);
    }
    // p99 well under a second of retransmission rounds
    expect(lat[Math.floor(N * 0.99)]!).toBeLessThan(2000);
    // REMOTE_INFO exactly once per query (duplicates recognised), with the right peer
    const infos = net.B.events.infos;
    expect(infos).toHaveLength(N);
    expect(new Set(infos.map((x) => x.remote.port)).size).toBe(N);
    for (const x of infos) expect(x.mappedRemote.port - x.remote.port).toBe(20000);
    expect(net.dropped()).toBeGreaterThan(0);
    // everything is cleaned up eventually
    const sa = net.A.engine.stats();
    const sb = net.B.engine.stats();
    expect(sa.liveQueries).toBe(0);
    expect(sb.liveAccepts).toBe(0);
    expect(sa.ackTrackers).toBe(0);
  });

  it('REJ both ways under loss: every query rejected, none lost', () => {
    const net = twoHosts({ loss: 0.3, seed: 777 });
    for (let i = 0; i < 500; i++) {
      net.A.engine.startQuery({ id: i, local: parseIp('10.0.0.1', 10000 + i), mapped: parseIp('10.0.0.1', 30000 + i), remote: parseIp('10.0.0.2', 6000) });
      net.run(net.clock.t + 1);
    }
    net.run(net.clock.t + 20_000);
    expect(net.A.events.done).toHaveLength(500);
    expect(net.A.events.done.every((d) => d.outcome.kind === 'rejected')).toBe(true);
    expect(net.B.events.infos).toHaveLength(0);
  });

  it('a silent peer: every query gets a timeout before 10 s', () => {
    const net = twoHosts({ loss: 1, seed: 1 });
    for (let i = 0; i < 100; i++) {
      net.A.engine.startQuery({ id: i, local: parseIp('10.0.0.1', 10000 + i), mapped: parseIp('10.0.0.1', 30000 + i), remote: parseIp('10.0.0.2', 6000) });
    }
    net.run(20_000);
    expect(net.A.events.done).toHaveLength(100);
    for (const d of net.A.events.done) {
      expect(d.outcome.kind).toBe('timeout');
      expect(d.at).toBeLessThan(KERNEL_WAIT_MS);
    }
  });

  it('both directions at once, IPv4 family end to end with the real fuzzy lookup', () => {
    const net = twoHosts({ loss: 0.1, seed: 4 });
    net.A.listeners.add('10.0.0.1', 7000, 17000);
    net.B.listeners.add('0.0.0.0', 5000, 15000);
    net.A.engine.startQuery({ id: 1, local: parseIp('10.0.0.1', 40000), mapped: parseIp('10.0.0.1', 40001), remote: parseIp('10.0.0.2', 5000) });
    net.B.engine.startQuery({ id: 2, local: parseIp('10.0.0.2', 41000), mapped: parseIp('10.0.0.2', 41001), remote: parseIp('10.0.0.1', 7000) });
    net.B.engine.startQuery({ id: 3, local: parseIp('10.0.0.2', 41002), mapped: parseIp('10.0.0.2', 41003), remote: parseIp('10.0.0.1', 7001) });
    net.run(10_000);
    expect(net.A.events.done).toEqual([{ at: expect.any(Number), id: 1, outcome: { kind: 'accepted', mappedRemote: parseIp('10.0.0.2', 15000) } }]);
    const bDone = new Map(net.B.events.done.map((d) => [d.id, d.outcome]));
    expect(bDone.get(2)).toEqual({ kind: 'accepted', mappedRemote: parseIp('10.0.0.1', 17000) });
    expect(bDone.get(3)).toEqual({ kind: 'rejected' });
    expect(net.A.events.infos.map((i) => i.remote)).toEqual([parseIp('10.0.0.2', 41000)]);
    expect(net.B.events.infos.map((i) => i.mappedRemote)).toEqual([parseIp('10.0.0.1', 40001)]);
    expect(AF_INET).toBe(2);
  });
});
