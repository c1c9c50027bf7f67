/**
 * The daemon-to-daemon exchange on UDP 3935 (spec §5): both roles, as explicit state
 * machines over an injected clock and one ticker. No sockets, no timers: io/udp.ts feeds
 * datagrams in (`receive`), calls `tick(now)` at `nextDeadline()`, and carries out sends.
 *
 * Connecting side (one QueryConv per kernel QUERY_MAPPING):
 *
 *   startQuery ──REQ──▶ waiting ──ACC──▶ done (queryDone accepted, ACK sent,
 *                         │  ▲                 ACK tracker kept for duplicate ACCs)
 *                         │  └ retransmit REQ (backoff)
 *                         ├──REJ──▶ done (queryDone rejected)
 *                         └─give-up (before the kernel's 10 s)──▶ done (queryDone timeout)
 *
 * Listening side (one AcceptConv per (peer IP, handle, listener's mapped wire address)):
 *
 *   REQ, no listener ──▶ REJ (no state)
 *   REQ, listener ──▶ REMOTE_INFO to the kernel, ACC ──▶ accepting ──ACK──▶ lingering
 *                                                           │  ▲                 │
 *                          duplicate REQ: ACC again ────────┘  └ retransmit ACC  │
 *                                                           └─give-up─▶ lingering ─▶ gone
 *
 * Lingering conversations still answer a duplicate REQ with the same ACC (no second
 * REMOTE_INFO) for a short while; they no longer retransmit.
 *
 * Deviations from rdma-core, on purpose (spec §5.5, §7): retransmission starts after
 * ~150 ms with backoff instead of 1-2 s; the connecting side always answers its kernel
 * before the kernel's 10 s; a duplicate REQ is answered (rdma-core drops it); handles
 * are random and quarantined after use; the peer IP is part of the duplicate key; state
 * is capped and REQs are rate limited per peer IP; REMOTE_INFO goes to the kernel before
 * the ACC leaves, so the kernel knows the peer before its connection can arrive.
 */
import { AF_INET, AF_INET6, type SockAddr, formatIp } from '../codec/sockaddr.js';
import {
  IWARP_PM_PORT,
  PM_MSG_ACC,
  PM_MSG_ACK,
  PM_MSG_REJ,
  PM_MSG_REQ,
  type PeerMessage,
  type PeerReq,
  asReply,
  decodePeerMessage,
  encodePeerMessage,
} from '../codec/wire.js';
import { LogLimiter, type Logger, nullLogger } from './log.js';
import type { MappingLookup, PeerEvents, PeerPort, QueryOutcome, QueryStart } from './peer-api.js';

/** The kernel waits this long for any answer (IWPM_NL_TIMEOUT). */
export const KERNEL_WAIT_MS = 10_000;

/** Protocol timing; every value is in milliseconds except the backoff factors. */
export interface PeerTiming {
  /** First REQ retransmission after the initial send. */
  reqFirstRetransmitMs: number;
  /** Each further REQ interval is the previous one times this... */
  reqBackoff: number;
  /** ...up to this. */
  reqMaxIntervalMs: number;
  /** Unanswered query: stop and tell the kernel side "timeout". Must stay below KERNEL_WAIT_MS. */
  queryGiveUpMs: number;
  /** First ACC retransmission (no ACK yet). */
  accFirstRetransmitMs: number;
  accBackoff: number;
  accMaxIntervalMs: number;
  /** Stop retransmitting an un-ACKed ACC (rdma-core: ~10 s). */
  acceptGiveUpMs: number;
  /** After an ACC completed a query, re-ACK duplicate ACCs for this long (refreshed by each one). */
  ackTrackerMs: number;
  /** A finished ACCEPT conversation still answers duplicate REQs for this long. */
  acceptLingerMs: number;
  /** A handle is not reused for this long after its conversation ended (the peer's ACC window). */
  handleQuarantineMs: number;
  /** Period of the housekeeping pass (idle rate-limit buckets). */
  housekeepingMs: number;
}

export const DEFAULT_PEER_TIMING: Readonly<PeerTiming> = Object.freeze({
  reqFirstRetransmitMs: 150,
  reqBackoff: 1.5,
  reqMaxIntervalMs: 500,
  queryGiveUpMs: 8_000,
  accFirstRetransmitMs: 200,
  accBackoff: 1.5,
  accMaxIntervalMs: 1_000,
  acceptGiveUpMs: 10_000,
  ackTrackerMs: 3_000,
  acceptLingerMs: 1_000,
  handleQuarantineMs: 12_000,
  housekeepingMs: 1_000,
});

/** Bounds on peer state, so spoofed or flooding datagrams cannot grow memory. */
export interface PeerLimits {
  /** Outstanding queries (connecting side). */
  maxQueries: number;
  /** Live (un-ACKed) ACCEPT conversations, all peers together. */
  maxAccepts: number;
  /** Live ACCEPT conversations per peer IP. */
  maxAcceptsPerPeer: number;
  /** Conversations sharing one handle (other peer IPs or listeners); more is a flood. */
  maxSameHandle: number;
  /** Finished ACCEPT conversations kept for duplicates (oldest evicted first). */
  maxLingering: number;
  /** ACK trackers (oldest evicted first). */
  maxAckTrackers: number;
  /** Recently used handles remembered (oldest forgotten first). */
  maxQuarantinedHandles: number;
  /** REQ token bucket per peer IP: sustained rate (per second) and burst. */
  reqRatePerPeer: number;
  reqBurstPerPeer: number;
  /** Whether loopback sources (127/8, ::1) are rate limited too. */
  rateLimitLoopback: boolean;
  /** Rate-limit buckets kept; beyond that, new peers share one overflow bucket. */
  maxPeerBuckets: number;
}

export const DEFAULT_PEER_LIMITS: Readonly<PeerLimits> = Object.freeze({
  maxQueries: 65_536,
  maxAccepts: 65_536,
  maxAcceptsPerPeer: 8_192,
  maxSameHandle: 8,
  maxLingering: 65_536,
  maxAckTrackers: 65_536,
  maxQuarantinedHandles: 262_144,
  reqRatePerPeer: 20_000,
  reqBurstPerPeer: 2_000,
  rateLimitLoopback: false,
  maxPeerBuckets: 65_536,
});

/** A UDP address as Node's dgram uses it. `ip` is text (may carry a `%zone`). */
export interface PeerEndpoint {
  family: 4 | 6;
  ip: string;
  port: number;
  /** IPv6 scope id for a destination built from a kernel address (io/ turns it into `%ifname`). */
  scopeId?: number;
}

/**
 * Send one datagram. `via` is the id of the socket a request arrived on (replies go out
 * of it); undefined means "the client socket of dest's family". Returns false when it
 * cannot be sent at all (no socket for that family); later errors are the io's business.
 */
export type PeerSend = (dest: PeerEndpoint, bytes: Buffer, via?: number) => boolean;

export interface PeerEngineDeps {
  now(): number;
  /** Uniformly random unsigned 64-bit values (a CSPRNG in production). */
  random64(): bigint;
  send: PeerSend;
  events: PeerEvents;
  lookup: MappingLookup;
  /** UDP port REQs are sent to (default 3935). */
  peerPort?: number;
  timing?: Partial<PeerTiming>;
  limits?: Partial<PeerLimits>;
  log?: Logger;
}

export interface PeerCounters {
  rxDatagrams: number;
  rxMalformed: { length: number; reqLength: number; version: number; ipVersion: number; sourcePort: number };
  rxReq: number;
  rxAcc: number;
  rxAck: number;
  rxRej: number;
  txReq: number;
  txReqRetransmit: number;
  txAcc: number;
  txAccRetransmit: number;
  txAccDuplicateReq: number;
  txAck: number;
  txRej: number;
  sendFailures: number;
  reqDuplicate: number;
  reqRateLimited: number;
  reqCapDropped: number;
  accDuplicate: number;
  accStale: number;
  ackDuplicate: number;
  ackStale: number;
  rejStale: number;
  queriesStarted: number;
  queriesAccepted: number;
  queriesRejected: number;
  queriesTimedOut: number;
  queriesFailed: number;
  queriesCancelled: number;
  acceptsStarted: number;
  acceptsCompleted: number;
  acceptsTimedOut: number;
  remoteInfos: number;
  handleCollisions: number;
}

export interface PeerStats extends PeerCounters {
  liveQueries: number;
  liveAccepts: number;
  lingeringAccepts: number;
  ackTrackers: number;
  quarantinedHandles: number;
  peerBuckets: number;
}

function newCounters(): PeerCounters {
  return {
    rxDatagrams: 0,
    rxMalformed: { length: 0, reqLength: 0, version: 0, ipVersion: 0, sourcePort: 0 },
    rxReq: 0,
    rxAcc: 0,
    rxAck: 0,
    rxRej: 0,
    txReq: 0,
    txReqRetransmit: 0,
    txAcc: 0,
    txAccRetransmit: 0,
    txAccDuplicateReq: 0,
    txAck: 0,
    txRej: 0,
    sendFailures: 0,
    reqDuplicate: 0,
    reqRateLimited: 0,
    reqCapDropped: 0,
    accDuplicate: 0,
    accStale: 0,
    ackDuplicate: 0,
    ackStale: 0,
    rejStale: 0,
    queriesStarted: 0,
    queriesAccepted: 0,
    queriesRejected: 0,
    queriesTimedOut: 0,
    queriesFailed: 0,
    queriesCancelled: 0,
    acceptsStarted: 0,
    acceptsCompleted: 0,
    acceptsTimedOut: 0,
    remoteInfos: 0,
    handleCollisions: 0,
  };
}

// ---------------------------------------------------------------------------
// Conversations

interface Timed {
  /** Bumped whenever the conversation's pending deadline changes or it ends. */
  timerSeq: number;
}

interface QueryConv extends Timed {
  kind: 'query';
  id: number;
  handle: bigint;
  local: SockAddr;
  /** After the ACC the conversation stays on as the ACK tracker: its entries in the expiry queue. */
  queued: number;
  remote: SockAddr;
  dest: PeerEndpoint;
  req: Buffer;
  giveUpAtMs: number;
  nextSendAtMs: number;
  intervalMs: number;
}

/** What re-ACKs a duplicate ACC: the finished query itself. */
type AckTracker = QueryConv;

interface PeerBucket {
  tokens: number;
  lastMs: number;
  /** Live ACCEPT conversations of this peer. */
  live: number;
}

interface AcceptConv extends Timed {
  kind: 'accept';
  handle: bigint;
  /** The listener's mapped wire address as sent in the ACC (duplicate key with handle and peer IP). */
  wirePort: number;
  wireIp: Buffer;
  peerIp: string;
  src: PeerEndpoint;
  via: number | undefined;
  acc: Buffer;
  state: 'accepting' | 'lingering';
  bucket: PeerBucket;
  giveUpAtMs: number;
  nextSendAtMs: number;
  intervalMs: number;
}

interface HeapEntry {
  at: number;
  seq: number;
  conv: QueryConv | AcceptConv;
}

/** Binary min-heap on `at` with lazy deletion (entries whose seq is stale are skipped). */
class DeadlineHeap {
  private readonly a: HeapEntry[] = [];

  get size(): number {
    return this.a.length;
  }

  peek(): HeapEntry | undefined {
    return this.a[0];
  }

  push(e: HeapEntry): void {
    const a = this.a;
    a.push(e);
    let i = a.length - 1;
    while (i > 0) {
      const p = (i - 1) >> 1;
      if (a[p]!.at <= e.at) break;
      a[i] = a[p]!;
      i = p;
    }
    a[i] = e;
  }

  pop(): HeapEntry | undefined {
    const a = this.a;
    const top = a[0];
    const last = a.pop();
    if (a.length === 0 || !last) return top;
    let i = 0;
    const n = a.length;
    for (;;) {
      const l = 2 * i + 1;
      if (l >= n) break;
      const r = l + 1;
      const c = r < n && a[r]!.at < a[l]!.at ? r : l;
      if (a[c]!.at >= last.at) break;
      a[i] = a[c]!;
      i = c;
    }
    a[i] = last;
    return top;
  }

  clear(): void {
    this.a.length = 0;
  }
}

/** FIFO queue with O(1) push/shift (amortised). */
class Fifo<T> {
  private items: (T | undefined)[] = [];
  private head = 0;

  get size(): number {
    return this.items.length - this.head;
  }

  push(v: T): void {
    this.items.push(v);
  }

  peek(): T | undefined {
    return this.head < this.items.length ? this.items[this.head] : undefined;
  }

  shift(): T | undefined {
    if (this.head >= this.items.length) return undefined;
    const v = this.items[this.head];
    this.items[this.head++] = undefined;
    if (this.head > 1024 && this.head * 2 > this.items.length) {
      this.items = this.items.slice(this.head);
      this.head = 0;
    }
    return v;
  }

  clear(): void {
    this.items = [];
    this.head = 0;
  }
}

function isLoopback(ip: string): boolean {
  return ip.startsWith('127.') || ip === '::1' || ip.startsWith('::ffff:127.');
}

function sameIp(a: Buffer, b: Buffer, n: number): boolean {
  for (let i = 0; i < n; i++) if (a[i] !== b[i]) return false;
  return true;
}

function familyOf(ipVersion: 4 | 6): typeof AF_INET | typeof AF_INET6 {
  return ipVersion === 4 ? AF_INET : AF_INET6;
}

/** The connecting-side checks of an ACC/REJ: same family, cpipaddr and cpport as the query. */
function matchesLocal(local: SockAddr, m: PeerMessage): boolean {
  return (
    familyOf(m.ipVersion) === local.family &&
    m.cpPort === local.port &&
    sameIp(m.cpIp, local.ip, local.family === AF_INET ? 4 : 16)
  );
}

// ---------------------------------------------------------------------------

export class PeerEngine implements PeerPort {
  readonly timing: Readonly<PeerTiming>;
  readonly limits: Readonly<PeerLimits>;
  private peerPortValue: number;
  private readonly log: Logger;
  private readonly limiter = new LogLimiter();
  private readonly counters = newCounters();

  private readonly heap = new DeadlineHeap();
  private readonly queriesById = new Map<number, QueryConv>();
  private readonly queriesByHandle = new Map<bigint, QueryConv>();
  private readonly ackTrackers = new Map<bigint, AckTracker>();
  /** Expiry order of the trackers; a tracker expires at its last entry. */
  private readonly trackerQueue = new Fifo<{ t: AckTracker; atMs: number }>();
  /** Handles recently used, and when each may be used again (in order). */
  private readonly quarantine = new Set<bigint>();
  private readonly quarantineQueue = new Fifo<{ h: bigint; untilMs: number }>();
  /** handle → ACCEPT conversations (normally one; more for other peer IPs or listeners). */
  private readonly accepts = new Map<bigint, AcceptConv[]>();
  private readonly lingering = new Fifo<{ conv: AcceptConv; untilMs: number }>();
  private liveAccepts = 0;
  private readonly buckets = new Map<string, PeerBucket>();
  private readonly overflowBucket: PeerBucket;
  private readonly loopbackBucket: PeerBucket = { tokens: Infinity, lastMs: 0, live: 0 };
  private deferred: { id: number; outcome: QueryOutcome }[] = [];
  private lastHousekeepingMs: number;

  constructor(private readonly deps: PeerEngineDeps) {
    this.timing = Object.freeze({ ...DEFAULT_PEER_TIMING, ...deps.timing });
    this.limits = Object.freeze({ ...DEFAULT_PEER_LIMITS, ...deps.limits });
    this.peerPortValue = deps.peerPort ?? IWARP_PM_PORT;
    this.log = deps.log ?? nullLogger;
    const t = this.timing;
    if (!(t.queryGiveUpMs > 0 && t.queryGiveUpMs < KERNEL_WAIT_MS)) {
      throw new RangeError(`queryGiveUpMs must be between 0 and ${KERNEL_WAIT_MS} ms (the kernel's wait), got ${t.queryGiveUpMs}`);
    }
    for (const k of ['reqFirstRetransmitMs', 'reqMaxIntervalMs', 'accFirstRetransmitMs', 'accMaxIntervalMs'] as const) {
      if (!(t[k] > 0)) throw new RangeError(`${k} must be positive, got ${t[k]}`);
    }
    if (!(t.reqBackoff >= 1 && t.accBackoff >= 1)) throw new RangeError('backoff factors must be >= 1');
    this.lastHousekeepingMs = deps.now();
    this.overflowBucket = { tokens: this.limits.reqBurstPerPeer, lastMs: this.lastHousekeepingMs, live: 0 };
  }

  /** UDP port new REQs are sent to. */
  get peerPort(): number {
    return this.peerPortValue;
  }

  setPeerPort(port: number): void {
    if (!Number.isInteger(port) || port < 1 || port > 65535) throw new RangeError(`invalid UDP port ${port}`);
    this.peerPortValue = port;
  }

  // -------------------------------------------------------------------------
  // PeerPort (kernel side → peer side)

  startQuery(q: QueryStart): void {
    const now = this.deps.now();
    this.counters.queriesStarted++;
    if (this.queriesById.has(q.id)) this.dropQuery(this.queriesById.get(q.id)!, now);
    const { local, mapped, remote } = q;
    if (local.family !== remote.family || mapped.family !== local.family) {
      return this.defer(q.id, { kind: 'failed', reason: 'local, mapped and remote addresses are not of one family' });
    }
    if (this.queriesById.size >= this.limits.maxQueries) {
      return this.defer(q.id, { kind: 'failed', reason: `too many outstanding queries (${this.limits.maxQueries})` });
    }
    const handle = this.newHandle();
    const ipVersion = local.family === AF_INET ? 4 : 6;
    const req = encodePeerMessage({
      type: PM_MSG_REQ,
      ipVersion,
      pmtime: 0,
      mappedCpPort: mapped.port,
      apPort: remote.port,
      cpPort: local.port,
      assocHandle: handle,
      cpIp: local.ip,
      apIp: remote.ip,
      mappedCpIp: mapped.ip,
    });
    const dest: PeerEndpoint = { family: ipVersion, ip: formatIp(remote), port: this.peerPortValue };
    if (remote.family === AF_INET6 && remote.scopeId) dest.scopeId = remote.scopeId;
    if (!this.trySend(dest, req, undefined)) {
      this.quarantineHandle(handle, now);
      return this.defer(q.id, { kind: 'failed', reason: `cannot send to ${dest.ip} (no IPv${ipVersion} socket)` });
    }
    this.counters.txReq++;
    const conv: QueryConv = {
      kind: 'query',
      id: q.id,
      handle,
      local,
      queued: 0,
      remote,
      dest,
      req,
      giveUpAtMs: now + this.timing.queryGiveUpMs,
      nextSendAtMs: now + this.timing.reqFirstRetransmitMs,
      intervalMs: this.timing.reqFirstRetransmitMs,
      timerSeq: 0,
    };
    this.queriesById.set(q.id, conv);
    this.queriesByHandle.set(handle, conv);
    this.schedule(conv, Math.min(conv.nextSendAtMs, conv.giveUpAtMs));
    if (this.log.debugEnabled) {
      this.log.debug(`peer: REQ h=${handle.toString(16)} query ${q.id} to ${dest.ip}:${dest.port}`);
    }
  }

  cancelQuery(id: number): void {
    this.deferred = this.deferred.filter((d) => d.id !== id);
    const conv = this.queriesById.get(id);
    if (!conv) return;
    this.counters.queriesCancelled++;
    this.dropQuery(conv, this.deps.now());
  }

  // -------------------------------------------------------------------------
  // Datagrams (io → engine)

  /** One datagram from `src`, received on socket `via`. Never throws on content. */
  receive(bytes: Uint8Array, src: PeerEndpoint, via?: number): void {
    this.counters.rxDatagrams++;
    if (src.port === 0) {
      this.counters.rxMalformed.sourcePort++;
      return;
    }
    const d = decodePeerMessage(bytes);
    if (!d.ok) {
      this.counters.rxMalformed[d.kind]++;
      this.warn(`malformed:${d.kind}`, `peer: dropped a datagram from ${src.ip}:${src.port}: ${d.reason}`);
      return;
    }
    const m = d.msg;
    switch (m.type) {
      case PM_MSG_REQ:
        this.counters.rxReq++;
        return this.onReq(m, src, via);
      case PM_MSG_ACC:
        this.counters.rxAcc++;
        return this.onAcc(m, src, via);
      case PM_MSG_ACK:
        this.counters.rxAck++;
        return this.onAck(m, src);
      case PM_MSG_REJ:
        this.counters.rxRej++;
        return this.onRej(m);
    }
  }

  // Listening side ------------------------------------------------------------

  private onReq(m: PeerReq, src: PeerEndpoint, via: number | undefined): void {
    const now = this.deps.now();
    const bucket = this.bucketFor(src.ip, now);
    if (bucket.tokens < 1) {
      this.counters.reqRateLimited++;
      this.warn('ratelimit', `peer: REQ rate limit for ${src.ip} (dropping)`);
      return;
    }
    bucket.tokens--;

    const family = familyOf(m.ipVersion);
    const ap: SockAddr = { family, port: m.apPort, ip: m.apIp, flowinfo: 0, scopeId: 0 };
    const listener = this.deps.lookup.findListener(ap);
    let wire: SockAddr | undefined;
    if (listener) {
      if (listener.wildcard) wire = { ...ap, port: listener.mapped.port };
      else if (listener.mapped.family === family) wire = { ...listener.mapped, flowinfo: 0, scopeId: 0 };
    }
    if (!listener || !wire) {
      this.sendCounted(src, encodePeerMessage(asReply(m, PM_MSG_REJ)), via, 'txRej');
      if (this.log.debugEnabled) {
        this.log.debug(`peer: REJ h=${m.assocHandle.toString(16)} to ${src.ip}:${src.port}: no listener at ${formatIp(ap)}:${ap.port}`);
      }
      return;
    }

    let list = this.accepts.get(m.assocHandle);
    if (list) {
      for (const c of list) {
        if (c.peerIp === src.ip && c.wirePort === wire.port && c.wireIp.equals(wire.ip)) {
          // A retransmitted REQ (our ACC or the peer's REQ got lost): the same ACC again.
          this.counters.reqDuplicate++;
          this.sendCounted(src, c.acc, via, 'txAccDuplicateReq');
          return;
        }
      }
    }
    if (this.liveAccepts >= this.limits.maxAccepts || bucket.live >= this.limits.maxAcceptsPerPeer) {
      this.counters.reqCapDropped++;
      this.warn('cap', `peer: too many live ACCEPT conversations (${this.liveAccepts} total, ${bucket.live} from ${src.ip}); REQ dropped`);
      return;
    }
    if (list && list.length >= this.limits.maxSameHandle) {
      this.counters.reqCapDropped++;
      return;
    }

    const acc = encodePeerMessage(asReply(m, PM_MSG_ACC, { apIp: wire.ip, apPort: wire.port }));
    const conv: AcceptConv = {
      kind: 'accept',
      handle: m.assocHandle,
      wirePort: wire.port,
      wireIp: wire.ip,
      peerIp: src.ip,
      src: { family: src.family, ip: src.ip, port: src.port },
      via,
      acc,
      state: 'accepting',
      bucket,
      giveUpAtMs: now + this.timing.acceptGiveUpMs,
      nextSendAtMs: now + this.timing.accFirstRetransmitMs,
      intervalMs: this.timing.accFirstRetransmitMs,
      timerSeq: 0,
    };
    if (!list) {
      list = [];
      this.accepts.set(m.assocHandle, list);
    }
    list.push(conv);
    this.liveAccepts++;
    bucket.live++;
    this.counters.acceptsStarted++;
    this.schedule(conv, Math.min(conv.nextSendAtMs, conv.giveUpAtMs));

    // REMOTE_INFO first: the kernel then knows the peer before its connection can arrive.
    this.counters.remoteInfos++;
    this.deps.events.remoteInfo({
      ownerClient: listener.ownerClient,
      localRaw: listener.localRaw,
      remote: { family, port: m.cpPort, ip: m.cpIp, flowinfo: 0, scopeId: 0 },
      mappedLocalRaw: listener.mappedRaw,
      mappedRemote: { family, port: m.mappedCpPort, ip: m.mappedCpIp, flowinfo: 0, scopeId: 0 },
    });
    this.sendCounted(src, acc, via, 'txAcc');
    if (this.log.debugEnabled) {
      this.log.debug(`peer: ACC h=${m.assocHandle.toString(16)} to ${src.ip}:${src.port}: listener ${formatIp(wire)}:${wire.port}`);
    }
  }

  private onAck(m: PeerMessage, src: PeerEndpoint): void {
    const all = this.accepts.get(m.assocHandle);
    const list = all?.filter((c) => c.wirePort === m.apPort && c.wireIp.equals(m.apIp));
    // Prefer the conversation of the ACK's sender; a multi-homed peer may ACK from another IP.
    const conv =
      list?.find((c) => c.peerIp === src.ip) ?? (list?.length === 1 ? list[0] : list?.find((c) => c.state === 'accepting'));
    if (!conv) {
      this.counters.ackStale++;
      return;
    }
    if (conv.state !== 'accepting') {
      this.counters.ackDuplicate++;
      return;
    }
    this.counters.acceptsCompleted++;
    this.endAccept(conv, this.deps.now());
  }

  /** accepting → lingering: stop retransmitting, keep answering duplicate REQs for a while. */
  private endAccept(conv: AcceptConv, now: number): void {
    conv.state = 'lingering';
    conv.timerSeq++;
    this.liveAccepts--;
    conv.bucket.live--;
    this.lingering.push({ conv, untilMs: now + this.timing.acceptLingerMs });
    while (this.lingering.size > this.limits.maxLingering) this.forgetAccept(this.lingering.shift()!.conv);
  }

  private forgetAccept(conv: AcceptConv): void {
    const list = this.accepts.get(conv.handle);
    if (!list) return;
    const i = list.indexOf(conv);
    if (i < 0) return;
    if (list.length === 1) this.accepts.delete(conv.handle);
    else list.splice(i, 1);
  }

  // Connecting side ------------------------------------------------------------

  private onAcc(m: PeerMessage, src: PeerEndpoint, via: number | undefined): void {
    const now = this.deps.now();
    const q = this.queriesByHandle.get(m.assocHandle);
    if (q && matchesLocal(q.local, m)) {
      this.finishQuery(q);
      this.counters.queriesAccepted++;
      const mappedRemote: SockAddr = {
        family: q.remote.family,
        port: m.apPort,
        ip: m.apIp,
        // the same peer: keep the kernel's flowinfo and scope id (needed for link-local)
        flowinfo: q.remote.flowinfo,
        scopeId: q.remote.scopeId,
      };
      q.queued = 1;
      this.ackTrackers.set(q.handle, q);
      this.trackerQueue.push({ t: q, atMs: now + this.timing.ackTrackerMs });
      while (this.ackTrackers.size > this.limits.maxAckTrackers) this.expireTrackers(now, true);
      this.deps.events.queryDone(q.id, { kind: 'accepted', mappedRemote });
      this.sendCounted(src, encodePeerMessage(asReply(m, PM_MSG_ACK)), via, 'txAck');
      return;
    }
    const t = this.ackTrackers.get(m.assocHandle);
    if (t && matchesLocal(t.local, m)) {
      // Our ACK got lost and the peer retransmitted its ACC: ACK again.
      this.counters.accDuplicate++;
      t.queued++;
      this.trackerQueue.push({ t, atMs: now + this.timing.ackTrackerMs });
      this.sendCounted(src, encodePeerMessage(asReply(m, PM_MSG_ACK)), via, 'txAck');
      return;
    }
    this.counters.accStale++;
  }

  private onRej(m: PeerMessage): void {
    const q = this.queriesByHandle.get(m.assocHandle);
    if (!q || !matchesLocal(q.local, m)) {
      this.counters.rejStale++;
      return;
    }
    this.finishQuery(q);
    this.quarantineHandle(q.handle, this.deps.now());
    this.counters.queriesRejected++;
    this.deps.events.queryDone(q.id, { kind: 'rejected' });
  }

  private finishQuery(q: QueryConv): void {
    q.timerSeq++;
    this.queriesById.delete(q.id);
    this.queriesByHandle.delete(q.handle);
  }

  private dropQuery(q: QueryConv, now: number): void {
    this.finishQuery(q);
    this.quarantineHandle(q.handle, now);
  }

  /** Expire the trackers due at `now`; with `one`, the oldest live tracker whatever its time (cap). */
  private expireTrackers(now: number, one = false): void {
    for (let e = this.trackerQueue.peek(); e && (one || e.atMs <= now); e = this.trackerQueue.peek()) {
      this.trackerQueue.shift();
      const t = e.t;
      if (--t.queued > 0 || this.ackTrackers.get(t.handle) !== t) continue;
      this.ackTrackers.delete(t.handle);
      this.quarantineHandle(t.handle, now);
      if (one) return;
    }
  }

  // Handles -------------------------------------------------------------------

  /** A random non-zero 64-bit handle not used by any live conversation, tracker or recent one. */
  private newHandle(): bigint {
    for (;;) {
      const h = BigInt.asUintN(64, this.deps.random64());
      if (h !== 0n && !this.queriesByHandle.has(h) && !this.ackTrackers.has(h) && !this.quarantine.has(h)) return h;
      this.counters.handleCollisions++;
    }
  }

  private quarantineHandle(h: bigint, now: number): void {
    if (this.quarantine.has(h)) return;
    this.quarantine.add(h);
    this.quarantineQueue.push({ h, untilMs: now + this.timing.handleQuarantineMs });
    while (this.quarantine.size > this.limits.maxQuarantinedHandles) this.quarantine.delete(this.quarantineQueue.shift()!.h);
  }

  // Rate limiting -------------------------------------------------------------

  private bucketFor(ip: string, now: number): PeerBucket {
    if (!this.limits.rateLimitLoopback && isLoopback(ip)) return this.loopbackBucket;
    let b = this.buckets.get(ip);
    if (!b) {
      if (this.buckets.size >= this.limits.maxPeerBuckets) {
        this.sweepBuckets(now);
        if (this.buckets.size >= this.limits.maxPeerBuckets) b = this.overflowBucket;
      }
      if (!b) {
        b = { tokens: this.limits.reqBurstPerPeer, lastMs: now, live: 0 };
        this.buckets.set(ip, b);
        return b;
      }
    }
    this.refill(b, now);
    return b;
  }

  private refill(b: PeerBucket, now: number): void {
    const dt = now - b.lastMs;
    if (dt > 0) {
      b.tokens = Math.min(this.limits.reqBurstPerPeer, b.tokens + (dt * this.limits.reqRatePerPeer) / 1000);
      b.lastMs = now;
    }
  }

  private sweepBuckets(now: number): void {
    for (const [ip, b] of this.buckets) {
      this.refill(b, now);
      if (b.live === 0 && b.tokens >= this.limits.reqBurstPerPeer) this.buckets.delete(ip);
    }
  }

  // Ticker --------------------------------------------------------------------

  private schedule(conv: QueryConv | AcceptConv, at: number): void {
    conv.timerSeq++;
    this.heap.push({ at, seq: conv.timerSeq, conv });
  }

  private defer(id: number, outcome: QueryOutcome): void {
    this.deferred.push({ id, outcome });
  }

  /**
   * When `tick` next has work: the earliest retransmission or give-up, an outcome waiting
   * to be delivered (now), or housekeeping (coarse). Undefined when there is nothing at all.
   */
  nextDeadline(): number | undefined {
    if (this.deferred.length > 0) return this.deps.now();
    let best: number | undefined;
    const heap = this.heap;
    while (heap.size > 0) {
      const top = heap.peek()!;
      if (top.seq === top.conv.timerSeq) {
        best = top.at;
        break;
      }
      heap.pop();
    }
    if (
      this.ackTrackers.size > 0 ||
      this.quarantine.size > 0 ||
      this.lingering.size > 0 ||
      this.buckets.size > 0
    ) {
      const hk = this.lastHousekeepingMs + this.timing.housekeepingMs;
      best = best === undefined ? hk : Math.min(best, hk);
    }
    return best;
  }

  /** Run everything due at `now`: outcomes, retransmissions, give-ups, expiries. */
  tick(now: number): void {
    if (this.deferred.length > 0) {
      const d = this.deferred;
      this.deferred = [];
      for (const { id, outcome } of d) {
        if (outcome.kind === 'failed') this.counters.queriesFailed++;
        this.deps.events.queryDone(id, outcome);
      }
    }
    const heap = this.heap;
    for (let e = heap.peek(); e && e.at <= now; e = heap.peek()) {
      heap.pop();
      if (e.seq !== e.conv.timerSeq) continue;
      if (e.conv.kind === 'query') this.timeQuery(e.conv, now);
      else this.timeAccept(e.conv, now);
    }
    if (now - this.lastHousekeepingMs >= this.timing.housekeepingMs) this.housekeeping(now);
  }

  private timeQuery(q: QueryConv, now: number): void {
    if (now >= q.giveUpAtMs) {
      this.dropQuery(q, now);
      this.counters.queriesTimedOut++;
      this.warn('qtimeout', `peer: no answer from ${q.dest.ip}:${q.dest.port} for query ${q.id}; giving up`);
      this.deps.events.queryDone(q.id, { kind: 'timeout' });
      return;
    }
    if (now >= q.nextSendAtMs) {
      if (this.trySend(q.dest, q.req, undefined)) this.counters.txReqRetransmit++;
      q.intervalMs = Math.min(q.intervalMs * this.timing.reqBackoff, this.timing.reqMaxIntervalMs);
      q.nextSendAtMs = now + q.intervalMs;
    }
    this.schedule(q, Math.min(q.nextSendAtMs, q.giveUpAtMs));
  }

  private timeAccept(c: AcceptConv, now: number): void {
    if (c.state !== 'accepting') return;
    if (now >= c.giveUpAtMs) {
      this.counters.acceptsTimedOut++;
      this.endAccept(c, now);
      return;
    }
    if (now >= c.nextSendAtMs) {
      if (this.trySend(c.src, c.acc, c.via)) this.counters.txAccRetransmit++;
      c.intervalMs = Math.min(c.intervalMs * this.timing.accBackoff, this.timing.accMaxIntervalMs);
      c.nextSendAtMs = now + c.intervalMs;
    }
    this.schedule(c, Math.min(c.nextSendAtMs, c.giveUpAtMs));
  }

  private housekeeping(now: number): void {
    this.lastHousekeepingMs = now;
    this.expireTrackers(now);
    for (let l = this.lingering.peek(); l && l.untilMs <= now; l = this.lingering.peek()) {
      this.lingering.shift();
      this.forgetAccept(l.conv);
    }
    for (let e = this.quarantineQueue.peek(); e && e.untilMs <= now; e = this.quarantineQueue.peek()) {
      this.quarantineQueue.shift();
      this.quarantine.delete(e.h);
    }
    this.sweepBuckets(now);
  }

  // Output --------------------------------------------------------------------

  private trySend(dest: PeerEndpoint, bytes: Buffer, via: number | undefined): boolean {
    let ok = false;
    try {
      ok = this.deps.send(dest, bytes, via);
    } catch (e) {
      this.warn('sendthrow', `peer: send to ${dest.ip}:${dest.port} failed: ${(e as Error).message}`);
    }
    if (!ok) this.counters.sendFailures++;
    return ok;
  }

  private sendCounted(
    dest: PeerEndpoint,
    bytes: Buffer,
    via: number | undefined,
    counter: 'txAcc' | 'txAck' | 'txRej' | 'txAccDuplicateReq',
  ): void {
    if (this.trySend(dest, bytes, via)) this.counters[counter]++;
  }

  private warn(key: string, msg: string): void {
    const suffix = this.limiter.admit(key, this.deps.now());
    if (suffix !== undefined) this.log.warn(msg + suffix);
  }

  // Operator surface ------------------------------------------------------------

  stats(): PeerStats {
    const c = this.counters;
    return {
      ...c,
      rxMalformed: { ...c.rxMalformed },
      liveQueries: this.queriesById.size,
      liveAccepts: this.liveAccepts,
      lingeringAccepts: this.lingering.size,
      ackTrackers: this.ackTrackers.size,
      quarantinedHandles: this.quarantine.size,
      peerBuckets: this.buckets.size,
    };
  }

  /** Drop all state (shutdown). Outstanding queries get no outcome: the kernel side cancels them. */
  clear(): void {
    this.heap.clear();
    this.queriesById.clear();
    this.queriesByHandle.clear();
    this.ackTrackers.clear();
    this.trackerQueue.clear();
    this.quarantine.clear();
    this.quarantineQueue.clear();
    this.accepts.clear();
    this.lingering.clear();
    this.liveAccepts = 0;
    this.buckets.clear();
    this.deferred = [];
  }
}
