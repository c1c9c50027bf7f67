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
import { allocRetained, retainCopy } from '../codec/retain.js';
import { AF_INET, AF_INET6, type SockAddr, copyInto, formatIp } from '../codec/sockaddr.js';
import {
  IWARP_PM_PORT,
  PM_MESSAGE_SIZE,
  PM_MSG_ACC,
  PM_MSG_ACK,
  PM_MSG_REJ,
  PM_MSG_REQ,
  PM_REQ_SIZE,
  PM_TYPE_NAMES,
  WIRE_REJECT_KINDS,
  classifyPeerDatagram,
  decodePeerMessage,
  writePeerReq,
  writeReply,
} from '../codec/wire.js';
import { IntMap } from './int-index.js';
import { LogLimiter, type Logger, nullLogger } from './log.js';
import { AckTrackers, Lingering, Quarantine } from './peer-tables.js';
import type { MappingLookup, PeerEvents, PeerPort, QueryOutcome, QueryStart, RemoteInfo } from './peer-api.js';

/** The kernel waits this long for any answer (IWPM_NL_TIMEOUT). */
export const KERNEL_WAIT_MS = 10_000;

/** Protocol timing; every value is in milliseconds except the backoff factors. */
export interface PeerTiming {
  /**
   * First REQ retransmission after the initial send, at least (the retransmission timeout
   * follows the measured round trip, RFC 6298 style, between this and reqMaxRtoMs).
   */
  reqFirstRetransmitMs: number;
  /** Upper bound of the adaptive first retransmission timeout (slow or overloaded peers). */
  reqMaxRtoMs: number;
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
  reqMaxRtoMs: 1_000,
  reqBackoff: 1.5,
  // 30% loss each way fails a round trip half the time: retry often (a REQ is 64 bytes)
  reqMaxIntervalMs: 250,
  queryGiveUpMs: 8_000,
  accFirstRetransmitMs: 200,
  accBackoff: 1.5,
  accMaxIntervalMs: 500,
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

/** A UDP address. `ip` is text (may carry a `%zone`). */
export interface PeerEndpoint {
  family: 4 | 6;
  ip: string;
  port: number;
  /** IPv6 scope id (interface index): set on a destination built from a kernel address, and on sources a transport gives as bytes. */
  scopeId?: number;
  /**
   * The IP as 4 or 16 bytes when known (set on REQ destinations; a transport may set it on
   * sources). When two sources both have it, peer identity is decided on these bytes and
   * the scope id, without the text.
   */
  raw?: Buffer;
}

/**
 * A source address as a transport receives it: bytes, port and scope id. The text form
 * (`ip`) is only made when something asks for it (logs, rate-limit keys of non-loopback
 * peers), so the hot path formats no strings.
 *
 * A transport may use one RawEndpoint for every datagram it receives: it rewrites the
 * bytes of `raw` and calls `reuse` before each receive (the engine copies what it keeps).
 */
export class RawEndpoint implements PeerEndpoint {
  private text: string | undefined;
  constructor(
    readonly family: 4 | 6,
    /** 4 or 16 bytes. */
    readonly raw: Buffer,
    /** Changed only by reuse(). */
    public port: number,
    public scopeId: number = 0,
  ) {}

  /** The next datagram's source: `raw` already holds its bytes; port and scope id as given. */
  reuse(port: number, scopeId: number): this {
    this.port = port;
    this.scopeId = scopeId;
    this.text = undefined;
    return this;
  }

  get ip(): string {
    if (this.text === undefined) {
      const t = formatIp({ family: this.family === 4 ? AF_INET : AF_INET6, ip: this.raw });
      this.text = this.scopeId ? `${t}%${this.scopeId}` : t;
    }
    return this.text;
  }
}

/**
 * Where a query's REQs go: the kernel's remote IP (its bytes, not copied), our peer port
 * and, for IPv6, the kernel's scope id. The text form (logs, failure reasons; no zone,
 * as formatIp spells it) is made only when asked for.
 */
class ReqDest implements PeerEndpoint {
  private text: string | undefined;
  constructor(
    readonly family: 4 | 6,
    readonly raw: Buffer,
    readonly port: number,
    readonly scopeId: number,
  ) {}

  get ip(): string {
    return (this.text ??= formatIp({ family: this.family === 4 ? AF_INET : AF_INET6, ip: this.raw }));
  }
}

/**
 * Send one datagram. `via` is the id of the socket a request arrived on (replies go out
 * of it); undefined means "the client socket of dest's family". Returns false when it
 * cannot be sent at all (no socket for that family); later errors are the io's business.
 * `dest` may be a transport's reused source endpoint: read it during the call, don't keep
 * it. `bytes` stays unchanged (the engine may send the same buffer again later).
 */
export type PeerSend = (dest: PeerEndpoint, bytes: Buffer, via?: number) => boolean;

export interface PeerEngineDeps {
  now(): number;
  /**
   * A random 64-bit handle as two halves: fills out[0] (high 32 bits) and out[1] (low 32
   * bits) with uniformly random values (a CSPRNG in production: cryptoHandleSource in
   * io/udp.ts). The engine itself skips 0 and handles it still remembers.
   */
  randomHandle(out: Uint32Array): void;
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
  /** Of queriesFailed: failed because the transport reported the peer unreachable (destinationFailed). */
  queriesUnreachable: number;
  queriesCancelled: number;
  acceptsStarted: number;
  acceptsCompleted: number;
  acceptsTimedOut: number;
  remoteInfos: number;
  handleCollisions: number;
}

export interface PeerStats extends PeerCounters {
  /** Smoothed REQ round trip (0 before the first sample) and the current first retransmission timeout. */
  srttMs: number;
  rtoMs: number;
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
    queriesUnreachable: 0,
    queriesCancelled: 0,
    acceptsStarted: 0,
    acceptsCompleted: 0,
    acceptsTimedOut: 0,
    remoteInfos: 0,
    handleCollisions: 0,
  };
}

// ---------------------------------------------------------------------------
// Conversations. Each one sits at most once in the deadline heap (intrusive: heapPos).

interface Timed {
  /** When the ticker next has to look at it (retransmission or give-up). */
  dueAtMs: number;
  /** Index in the deadline heap, -1 when not in it. */
  heapPos: number;
}

interface QueryConv extends Timed {
  kind: 'query';
  id: number;
  /** The handle's high and low 32 bits (unsigned), and its table key (handleKey). */
  hi: number;
  lo: number;
  key: number;
  local: SockAddr;
  remote: SockAddr;
  dest: PeerEndpoint;
  /** The REQ as sent (retransmitted until an answer). */
  req: Buffer;
  startedAtMs: number;
  /** Sent more than once: its answer says nothing about the round trip (Karn). */
  retransmitted: boolean;
  giveUpAtMs: number;
  nextSendAtMs: number;
  intervalMs: number;
}

interface PeerBucket {
  tokens: number;
  lastMs: number;
  /** Live ACCEPT conversations of this peer. */
  live: number;
}

interface AcceptConv extends Timed {
  kind: 'accept';
  /** The peer's handle: high and low 32 bits, and its table key (handleKey). */
  hi: number;
  lo: number;
  key: number;
  /** The listener's mapped wire address as sent in the ACC (duplicate key with handle and peer IP). */
  wirePort: number;
  wireIp: Buffer;
  /** Where the REQ came from (peer identity: samePeerIp). */
  src: PeerEndpoint;
  via: number | undefined;
  acc: Buffer;
  bucket: PeerBucket;
  giveUpAtMs: number;
  nextSendAtMs: number;
  intervalMs: number;
  /** The next conversation under the same handle key (in the order they began). */
  nextSameKey: AcceptConv | undefined;
}

type Conv = QueryConv | AcceptConv;

/**
 * Binary min-heap on dueAtMs; conversations know their position, so removal is O(log n).
 * The array only grows (entries past `n` are cleared, not popped): a shrinking array is
 * trimmed by V8 and reallocated as it grows again, with every burst of conversations.
 */
class DeadlineHeap {
  private readonly a: (Conv | undefined)[] = [];
  private n = 0;

  get size(): number {
    return this.n;
  }

  peek(): Conv | undefined {
    return this.n > 0 ? this.a[0] : undefined;
  }

  /** Insert, or move after dueAtMs changed. */
  set(c: Conv, dueAtMs: number): void {
    c.dueAtMs = dueAtMs;
    if (c.heapPos < 0) {
      c.heapPos = this.n;
      this.a[this.n++] = c;
    }
    this.up(c.heapPos);
    this.down(c.heapPos);
  }

  remove(c: Conv): void {
    const i = c.heapPos;
    if (i < 0) return;
    c.heapPos = -1;
    const last = this.a[--this.n]!;
    this.a[this.n] = undefined;
    if (last === c) return;
    this.a[i] = last;
    last.heapPos = i;
    this.up(i);
    this.down(last.heapPos);
  }

  clear(): void {
    for (let i = 0; i < this.n; i++) this.a[i]!.heapPos = -1;
    this.a.length = 0;
    this.n = 0;
  }

  private up(i: number): void {
    const a = this.a;
    const c = a[i]!;
    while (i > 0) {
      const p = (i - 1) >> 1;
      const pc = a[p]!;
      if (pc.dueAtMs <= c.dueAtMs) break;
      a[i] = pc;
      pc.heapPos = i;
      i = p;
    }
    a[i] = c;
    c.heapPos = i;
  }

  private down(i: number): void {
    const a = this.a;
    const n = this.n;
    const c = a[i]!;
    for (;;) {
      const l = 2 * i + 1;
      if (l >= n) break;
      const r = l + 1;
      const k = r < n && a[r]!.dueAtMs < a[l]!.dueAtMs ? r : l;
      const kc = a[k]!;
      if (kc.dueAtMs >= c.dueAtMs) break;
      a[i] = kc;
      kc.heapPos = i;
      i = k;
    }
    a[i] = c;
    c.heapPos = i;
  }
}

function isLoopback(ip: string): boolean {
  return ip.startsWith('127.') || ip === '::1' || ip.startsWith('::ffff:127.');
}

/** 127/8, ::1 or ::ffff:127/104, from the address bytes. */
function isLoopbackRaw(raw: Buffer): boolean {
  if (raw.length === 4) return raw[0] === 127;
  for (let i = 0; i < 10; i++) if (raw[i] !== 0) return false;
  if (raw[10] === 0xff && raw[11] === 0xff) return raw[12] === 127;
  if (raw[10] !== 0 || raw[11] !== 0 || raw[12] !== 0 || raw[13] !== 0 || raw[14] !== 0) return false;
  return raw[15] === 1;
}

function endpointIsLoopback(e: PeerEndpoint): boolean {
  return e.raw !== undefined ? isLoopbackRaw(e.raw) : isLoopback(e.ip);
}

/** Same peer IP: on the bytes and scope id when both have them, else on the text. */
function samePeerIp(a: PeerEndpoint, b: PeerEndpoint): boolean {
  const ar = a.raw;
  const br = b.raw;
  if (ar !== undefined && br !== undefined) {
    if (ar.length !== br.length || (a.scopeId ?? 0) !== (b.scopeId ?? 0)) return false;
    for (let i = 0; i < ar.length; i++) if (ar[i] !== br[i]) return false;
    return true;
  }
  return a.ip === b.ip;
}

/** The big-endian unsigned 32-bit value at b[o] (a handle half), inlined where Buffer.readUInt32BE boxes its result. */
function u32(b: Uint8Array, o: number): number {
  return ((b[o]! << 24) | (b[o + 1]! << 16) | (b[o + 2]! << 8) | b[o + 3]!) >>> 0;
}

function sameBytes(a: Buffer, aOff: number, b: Buffer, n: number): boolean {
  for (let i = 0; i < n; i++) if (a[aOff + i] !== b[i]) return false;
  return true;
}

function familyOf(ipVersion: number): typeof AF_INET | typeof AF_INET6 {
  return ipVersion === 4 ? AF_INET : AF_INET6;
}

function ipLen(ipVersion: number): number {
  return ipVersion === 4 ? 4 : 16;
}

// Offsets of the wire fields (spec §5.2).
const OFF_APPORT = 4;
const OFF_CPPORT = 6;
const OFF_HANDLE = 8;
const OFF_CPIP = 16;
const OFF_APIP = 32;
const OFF_MCPIP = 48;

/** The connecting-side check of the ACC/REJ at b[o]: same family, cpipaddr and cpport as the query. */
function matchesLocal(local: SockAddr, b: Buffer, o: number, ipVersion: number): boolean {
  return (
    familyOf(ipVersion) === local.family &&
    b.readUInt16BE(o + OFF_CPPORT) === local.port &&
    sameBytes(b, o + OFF_CPIP, local.ip, ipLen(ipVersion))
  );
}

/**
 * src as a live conversation keeps it (until the ACK, up to the give-up): a RawEndpoint
 * may be the transport's, reused for the next datagram (or its bytes a view into a
 * receive batch, which would stay alive with it); copy it.
 */
function keptEndpoint(src: PeerEndpoint): PeerEndpoint {
  if (!(src instanceof RawEndpoint)) return src;
  return new RawEndpoint(src.family, retainCopy(src.raw, 0, src.raw.length), src.port, src.scopeId);
}

/** What the REMOTE_INFO event names no listener bytes with between events. */
const EMPTY = Buffer.alloc(0);

/**
 * An address handed to the kernel side in an event (REMOTE_INFO, an accepted outcome):
 * one object per event field, refilled for every event (PeerEvents: valid during the call).
 */
class EventAddr {
  private readonly ip4 = Buffer.alloc(4);
  private readonly ip6 = Buffer.alloc(16);
  readonly addr: SockAddr = { family: AF_INET, port: 0, ip: this.ip4, flowinfo: 0, scopeId: 0 };

  /** The IP at b[off] (4 or 16 bytes, by ipVersion), with these other fields. */
  fill(family: SockAddr['family'], port: number, b: Uint8Array, off: number, ipVersion: number, flowinfo: number, scopeId: number): SockAddr {
    const a = this.addr;
    const ip = ipVersion === 4 ? this.ip4 : this.ip6;
    copyInto(ip, 0, b, off, ip.length);
    a.family = family;
    a.port = port;
    a.ip = ip;
    a.flowinfo = flowinfo;
    a.scopeId = scopeId;
    return a;
  }
}

/** A handle's hex digits, as a bigint's toString(16) (debug logs). */
function handleHex(hi: number, lo: number): string {
  return ((BigInt(hi >>> 0) << 32n) | BigInt(lo >>> 0)).toString(16);
}

/** Two random 32-bit values (Web Crypto when present; only used to key hash tables). */
function randomSeed(): Uint32Array {
  const a = new Uint32Array(2);
  const c = (globalThis as { crypto?: { getRandomValues?(a: Uint32Array): Uint32Array } }).crypto;
  if (c?.getRandomValues) c.getRandomValues(a);
  else for (let i = 0; i < 2; i++) a[i] = Math.floor(Math.random() * 2 ** 32);
  return a;
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
  /**
   * Handle tables are keyed by handleKey (a 32-bit number: far cheaper than BigInt keys);
   * a lookup is confirmed on the full 64 bits. Our own handles are unique by key.
   */
  private readonly queriesByHandle = new IntMap<QueryConv>();
  private readonly ackTrackers: AckTrackers;
  private readonly quarantine: Quarantine;
  /**
   * Peer handle (key) → the first of its ACCEPT conversations, chained by nextSameKey
   * (normally one; more for other peer IPs or listeners).
   */
  private readonly accepts = new IntMap<AcceptConv>();
  /** Secret mixing values of handleKey, so peers cannot aim many handles at one key. */
  private readonly keyXor: number;
  private readonly keyMul: number;
  /** Finished ACCEPT conversations (typed arrays, not the objects). */
  private readonly lingering: Lingering;
  private liveAccepts = 0;
  private readonly buckets = new Map<string, PeerBucket>();
  private readonly overflowBucket: PeerBucket;
  private readonly loopbackBucket: PeerBucket = { tokens: Infinity, lastMs: 0, live: 0 };
  private deferred: { id: number; outcome: QueryOutcome }[] = [];
  /** The events' objects, refilled for each event (PeerEvents: valid during the call). */
  private readonly infoRemote = new EventAddr();
  private readonly infoMappedRemote = new EventAddr();
  private readonly info: RemoteInfo = {
    ownerClient: 0,
    localRaw: EMPTY,
    remote: this.infoRemote.addr,
    mappedLocalRaw: EMPTY,
    mappedRemote: this.infoMappedRemote.addr,
  };
  private readonly acceptedRemote = new EventAddr();
  private readonly accepted: { kind: 'accepted'; mappedRemote: SockAddr } = { kind: 'accepted', mappedRemote: this.acceptedRemote.addr };
  private lastHousekeepingMs: number;
  /** Round-trip estimate of REQ -> ACC/REJ over all peers (RFC 6298), 0 = no sample yet. */
  private srttMs = 0;
  private rttvarMs = 0;
  /** newHandle's output: the handle's high and low halves. */
  private readonly handleHalves = new Uint32Array(2);
  /** A REQ's apipaddr:apport for the listener lookup (which keeps nothing of it), per family; reused. */
  private readonly lookupAddr4: SockAddr = { family: AF_INET, port: 0, ip: Buffer.alloc(4), flowinfo: 0, scopeId: 0 };
  private readonly lookupAddr6: SockAddr = { family: AF_INET6, port: 0, ip: Buffer.alloc(16), flowinfo: 0, scopeId: 0 };

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
    this.quarantine = new Quarantine(Math.max(0, Math.floor(this.limits.maxQuarantinedHandles)));
    this.lingering = new Lingering(Math.max(0, Math.floor(this.limits.maxLingering)));
    this.ackTrackers = new AckTrackers(Math.max(1, Math.floor(this.limits.maxAckTrackers)));
    const seed = randomSeed();
    this.keyXor = seed[0]! | 0;
    this.keyMul = seed[1]! | 1;
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
    const old = this.queriesById.get(q.id);
    if (old) this.dropQuery(old, now);
    const { local, mapped, remote } = q;
    if (local.family !== remote.family || mapped.family !== local.family) {
      return this.defer(q.id, { kind: 'failed', reason: 'local, mapped and remote addresses are not of one family' });
    }
    if (this.queriesById.size >= this.limits.maxQueries) {
      return this.defer(q.id, { kind: 'failed', reason: `too many outstanding queries (${this.limits.maxQueries})` });
    }
    const key = this.newHandle();
    const hi = this.handleHalves[0]!;
    const lo = this.handleHalves[1]!;
    const ipVersion = local.family === AF_INET ? 4 : 6;
    // kept for retransmission until the answer: not from Node's pool
    const req = writePeerReq(allocRetained(PM_REQ_SIZE), ipVersion, hi, lo, local, remote, mapped);
    const dest = new ReqDest(ipVersion, remote.ip, this.peerPortValue, remote.family === AF_INET6 ? remote.scopeId : 0);
    const rto = this.rtoMs();
    if (!this.trySend(dest, req, undefined)) {
      this.quarantine.add(key, now + this.timing.handleQuarantineMs);
      return this.defer(q.id, { kind: 'failed', reason: `cannot send to ${dest.ip} (no IPv${ipVersion} socket)` });
    }
    this.counters.txReq++;
    const conv: QueryConv = {
      kind: 'query',
      id: q.id,
      hi,
      lo,
      key,
      local,
      remote,
      dest,
      req,
      startedAtMs: now,
      retransmitted: false,
      giveUpAtMs: now + this.timing.queryGiveUpMs,
      nextSendAtMs: now + rto,
      intervalMs: rto,
      dueAtMs: 0,
      heapPos: -1,
    };
    this.queriesById.set(q.id, conv);
    this.queriesByHandle.set(key, conv);
    this.heap.set(conv, Math.min(conv.nextSendAtMs, conv.giveUpAtMs));
    if (this.log.debugEnabled) {
      this.log.debug(`peer: REQ h=${handleHex(hi, lo)} query ${q.id} to ${dest.ip}:${dest.port}`);
    }
  }

  cancelQuery(id: number): void {
    if (this.deferred.length) this.deferred = this.deferred.filter((d) => d.id !== id);
    const conv = this.queriesById.get(id);
    if (!conv) return;
    this.counters.queriesCancelled++;
    this.dropQuery(conv, this.deps.now());
  }

  /**
   * The transport learned that UDP `port` at the IP in `addr[off, off + 4|16)` cannot be
   * reached (an ICMP port unreachable for a REQ: no port mapper there; or a send that
   * failed for good). Every live query whose REQs go there is dropped at once and fails
   * (delivered by the next tick, as other failures) instead of waiting for the give-up.
   * Returns how many queries failed.
   */
  destinationFailed(family: 4 | 6, addr: Uint8Array, off: number, port: number, reason: string): number {
    if (this.queriesById.size === 0) return 0;
    const n = family === 4 ? 4 : 16;
    const now = this.deps.now();
    let failed = 0;
    let where = '';
    for (const q of this.queriesById.values()) {
      const d = q.dest;
      if (d.port !== port || d.family !== family) continue;
      const raw = d.raw;
      if (raw === undefined || raw.length !== n) continue;
      let same = true;
      for (let i = 0; i < n; i++) {
        if (raw[i] !== addr[off + i]) {
          same = false;
          break;
        }
      }
      if (!same) continue;
      if (failed === 0) where = `${d.ip}:${d.port}`;
      failed++;
      this.dropQuery(q, now);
      this.defer(q.id, { kind: 'failed', reason: `${where}: ${reason}` });
    }
    if (failed > 0) {
      this.counters.queriesUnreachable += failed;
      this.warn('unreach', `peer: ${where} unreachable (${reason}); ${failed} quer${failed === 1 ? 'y' : 'ies'} to it failed`);
    }
    return failed;
  }

  // -------------------------------------------------------------------------
  // Datagrams (io → engine)

  /**
   * One datagram from `src`, received on socket `via`. Never throws on content. Neither
   * `bytes` nor `src` is kept (a RawEndpoint is copied where a conversation needs it; a
   * plain PeerEndpoint object is kept as it is, so don't reuse those).
   */
  receive(bytes: Uint8Array, src: PeerEndpoint, via?: number): void {
    const b = Buffer.isBuffer(bytes) ? bytes : Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
    this.receiveAt(b, 0, b.length, src, via);
  }

  /** receive() of the datagram data[off, off + len): a transport's receive batch, without a view per datagram. */
  receiveAt(data: Buffer, off: number, len: number, src: PeerEndpoint, via?: number): void {
    this.counters.rxDatagrams++;
    if (src.port === 0) {
      this.counters.rxMalformed.sourcePort++;
      return;
    }
    const c = classifyPeerDatagram(data, off, len);
    if (c < 0) {
      const kind = WIRE_REJECT_KINDS[-c - 1]!;
      this.counters.rxMalformed[kind]++;
      const d = decodePeerMessage(data.subarray(off, off + len));
      this.warn(`malformed:${kind}`, `peer: dropped a datagram from ${src.ip}:${src.port}: ${d.ok ? kind : d.reason}`);
      return;
    }
    const ipVersion = c & 0x0f;
    const type = c >> 4;
    if (this.log.debugEnabled) {
      this.log.debug(`peer: ${PM_TYPE_NAMES[type]} h=${handleHex(u32(data, off + OFF_HANDLE), u32(data, off + OFF_HANDLE + 4))} from ${src.ip}:${src.port}`);
    }
    switch (type) {
      case PM_MSG_REQ:
        this.counters.rxReq++;
        return this.onReq(data, off, ipVersion, src, via);
      case PM_MSG_ACC:
        this.counters.rxAcc++;
        return this.onAcc(data, off, ipVersion, src, via);
      case PM_MSG_ACK:
        this.counters.rxAck++;
        return this.onAck(data, off, ipVersion, src);
      default:
        this.counters.rxRej++;
        return this.onRej(data, off, ipVersion);
    }
  }

  // Listening side ------------------------------------------------------------

  /** A REQ at b[o]. */
  private onReq(b: Buffer, o: number, ipVersion: number, src: PeerEndpoint, via: number | undefined): void {
    const now = this.deps.now();
    const bucket = this.bucketFor(src, now);
    if (bucket.tokens < 1) {
      this.counters.reqRateLimited++;
      this.warn('ratelimit', `peer: REQ rate limit for ${src.ip} (dropping)`);
      return;
    }
    bucket.tokens--;

    const family = familyOf(ipVersion);
    const n = ipLen(ipVersion);
    // the lookup keeps nothing of the address: a reused one
    const ap = ipVersion === 4 ? this.lookupAddr4 : this.lookupAddr6;
    ap.port = b.readUInt16BE(o + OFF_APPORT);
    for (let i = 0; i < n; i++) ap.ip[i] = b[o + OFF_APIP + i]!;
    const listener = this.deps.lookup.findListener(ap);
    let wireIp: Buffer | undefined;
    let wirePort = 0;
    if (listener) {
      wirePort = listener.mapped.port;
      // wildcard listener: the IP as the peer addressed it (copied below if kept); otherwise the mapped address
      if (listener.wildcard) wireIp = ap.ip;
      else if (listener.mapped.family === family) wireIp = listener.mapped.ip;
    }
    if (!listener || !wireIp) {
      this.sendCounted(src, writeReply(Buffer.allocUnsafe(PM_MESSAGE_SIZE), b, o, PM_MSG_REJ), via, 'txRej');
      if (this.log.debugEnabled) this.log.debug(`peer: REJ to ${src.ip}:${src.port}: no listener at ${formatIp(ap)}:${ap.port}`);
      return;
    }

    const hi = u32(b, o + OFF_HANDLE);
    const lo = u32(b, o + OFF_HANDLE + 4);
    const key = this.handleKey(hi, lo);
    const first = this.accepts.get(key);
    let last: AcceptConv | undefined;
    let same = 0;
    for (let c = first; c !== undefined; c = c.nextSameKey) {
      last = c;
      if (c.lo !== lo || c.hi !== hi) continue;
      if (c.wirePort === wirePort && samePeerIp(c.src, src) && c.wireIp.equals(wireIp)) {
        // A retransmitted REQ (our ACC or the peer's REQ got lost): the same ACC again.
        this.counters.reqDuplicate++;
        this.sendCounted(src, c.acc, via, 'txAccDuplicateReq');
        return;
      }
      same++;
    }
    const lingering = this.lingering;
    for (let i = lingering.first(key); i >= 0; i = lingering.after(i)) {
      if (!lingering.sameHandle(i, hi, lo)) continue;
      if (lingering.sameWire(i, wirePort, wireIp, 0, wireIp.length) && lingering.samePeer(i, src)) {
        // a duplicate of a finished conversation (the ACK came first, or it gave up): the same ACC
        this.counters.reqDuplicate++;
        this.sendCounted(src, lingering.accCopy(i, allocRetained(PM_MESSAGE_SIZE)), via, 'txAccDuplicateReq');
        return;
      }
      same++;
    }
    if (same >= this.limits.maxSameHandle) {
      this.counters.reqCapDropped++;
      return;
    }
    if (this.liveAccepts >= this.limits.maxAccepts || bucket.live >= this.limits.maxAcceptsPerPeer) {
      this.counters.reqCapDropped++;
      this.warn('cap', `peer: too many live ACCEPT conversations (${this.liveAccepts} total, ${bucket.live} from ${src.ip}); REQ dropped`);
      return;
    }

    // kept for the conversation: a copy (ap.ip is reused per datagram; a listener's IP lives
    // in its mapping's block, which is reused once the mapping is removed)
    wireIp = retainCopy(wireIp, 0, n);
    const acc = writeReply(allocRetained(PM_MESSAGE_SIZE), b, o, PM_MSG_ACC, wireIp, wirePort);
    const conv: AcceptConv = {
      kind: 'accept',
      hi,
      lo,
      key,
      wirePort,
      wireIp,
      src: keptEndpoint(src),
      via,
      acc,
      bucket,
      giveUpAtMs: now + this.timing.acceptGiveUpMs,
      nextSendAtMs: now + this.timing.accFirstRetransmitMs,
      intervalMs: this.timing.accFirstRetransmitMs,
      dueAtMs: 0,
      heapPos: -1,
      nextSameKey: undefined,
    };
    if (last === undefined) this.accepts.set(key, conv);
    else last.nextSameKey = conv;
    this.liveAccepts++;
    bucket.live++;
    this.counters.acceptsStarted++;
    this.heap.set(conv, Math.min(conv.nextSendAtMs, conv.giveUpAtMs));

    // REMOTE_INFO first: the kernel then knows the peer before its connection can arrive.
    this.counters.remoteInfos++;
    const info = this.info;
    info.ownerClient = listener.ownerClient;
    info.localRaw = listener.localRaw;
    info.remote = this.infoRemote.fill(family, b.readUInt16BE(o + OFF_CPPORT), b, o + OFF_CPIP, ipVersion, 0, 0);
    info.mappedLocalRaw = listener.mappedRaw;
    // REQ `reserved` = the connecting peer's mapped port
    info.mappedRemote = this.infoMappedRemote.fill(family, b.readUInt16BE(o + 2), b, o + OFF_MCPIP, ipVersion, 0, 0);
    this.deps.events.remoteInfo(info);
    info.localRaw = EMPTY; // the listener's bytes are not ours to hold on to
    info.mappedLocalRaw = EMPTY;
    this.sendCounted(src, acc, via, 'txAcc');
  }

  /** An ACK at b[o]. */
  private onAck(b: Buffer, o: number, ipVersion: number, src: PeerEndpoint): void {
    const hi = u32(b, o + OFF_HANDLE);
    const lo = u32(b, o + OFF_HANDLE + 4);
    const key = this.handleKey(hi, lo);
    const apPort = b.readUInt16BE(o + OFF_APPORT);
    const n = ipLen(ipVersion);
    let conv: AcceptConv | undefined;
    // Prefer the conversation of the ACK's sender; a multi-homed peer may ACK from another IP.
    let other: AcceptConv | undefined;
    for (let c = this.accepts.get(key); c !== undefined; c = c.nextSameKey) {
      if (c.lo !== lo || c.hi !== hi) continue;
      if (c.wirePort !== apPort || c.wireIp.length !== n || !sameBytes(b, o + OFF_APIP, c.wireIp, n)) continue;
      if (samePeerIp(c.src, src)) {
        conv = c;
        break;
      }
      other ??= c;
    }
    if (!conv) {
      // the sender's conversation may have finished already (its ACK is a duplicate)
      if (this.lingeringAck(key, hi, lo, b, o, apPort, n, src)) {
        this.counters.ackDuplicate++;
        return;
      }
      conv = other;
    }
    if (!conv) {
      if (this.lingeringAck(key, hi, lo, b, o, apPort, n, undefined)) this.counters.ackDuplicate++;
      else this.counters.ackStale++;
      return;
    }
    this.counters.acceptsCompleted++;
    this.endAccept(conv, this.deps.now());
  }

  /** A finished conversation the ACK at b[o] names (from `from` when given, else from any peer). */
  private lingeringAck(key: number, hi: number, lo: number, b: Buffer, o: number, apPort: number, n: number, from: PeerEndpoint | undefined): boolean {
    const l = this.lingering;
    for (let i = l.first(key); i >= 0; i = l.after(i)) {
      if (l.sameHandle(i, hi, lo) && l.sameWire(i, apPort, b, o + OFF_APIP, n) && (from === undefined || l.samePeer(i, from))) return true;
    }
    return false;
  }

  /** accepting → lingering: stop retransmitting, keep answering duplicate REQs for a while (as numbers and bytes only). */
  private endAccept(conv: AcceptConv, now: number): void {
    this.heap.remove(conv);
    this.liveAccepts--;
    conv.bucket.live--;
    const first = this.accepts.get(conv.key);
    if (first === conv) {
      if (conv.nextSameKey === undefined) this.accepts.delete(conv.key);
      else this.accepts.set(conv.key, conv.nextSameKey);
    } else {
      for (let c = first; c !== undefined; c = c.nextSameKey) {
        if (c.nextSameKey === conv) {
          c.nextSameKey = conv.nextSameKey;
          break;
        }
      }
    }
    conv.nextSameKey = undefined;
    this.lingering.add(conv.key, conv.hi, conv.lo, conv.wirePort, conv.wireIp, conv.src, conv.acc, now + this.timing.acceptLingerMs);
  }

  // Connecting side ------------------------------------------------------------

  /** An ACC at b[o]. */
  private onAcc(b: Buffer, o: number, ipVersion: number, src: PeerEndpoint, via: number | undefined): void {
    const hi = u32(b, o + OFF_HANDLE);
    const lo = u32(b, o + OFF_HANDLE + 4);
    const key = this.handleKey(hi, lo);
    const q = this.queriesByHandle.get(key);
    if (q && q.lo === lo && q.hi === hi && matchesLocal(q.local, b, o, ipVersion)) {
      const now = this.deps.now();
      this.finishQuery(q);
      this.sampleRtt(q, now);
      this.counters.queriesAccepted++;
      // the same peer: keep the kernel's flowinfo and scope id (needed for link-local)
      const r = q.remote;
      this.accepted.mappedRemote = this.acceptedRemote.fill(r.family, b.readUInt16BE(o + OFF_APPORT), b, o + OFF_APIP, ipVersion, r.flowinfo, r.scopeId);
      this.track(q, now);
      this.deps.events.queryDone(q.id, this.accepted);
      this.sendCounted(src, writeReply(Buffer.allocUnsafe(PM_MESSAGE_SIZE), b, o, PM_MSG_ACK), via, 'txAck');
      return;
    }
    const t = this.ackTrackers.find(key, hi, lo, familyOf(ipVersion), b, o + OFF_CPPORT, o + OFF_CPIP);
    if (t >= 0) {
      // Our ACK got lost and the peer retransmitted its ACC: ACK again.
      this.counters.accDuplicate++;
      this.ackTrackers.refresh(t, this.deps.now() + this.timing.ackTrackerMs);
      this.sendCounted(src, writeReply(Buffer.allocUnsafe(PM_MESSAGE_SIZE), b, o, PM_MSG_ACK), via, 'txAck');
      return;
    }
    this.counters.accStale++;
  }

  /** A REJ at b[o]. */
  private onRej(b: Buffer, o: number, ipVersion: number): void {
    const hi = u32(b, o + OFF_HANDLE);
    const lo = u32(b, o + OFF_HANDLE + 4);
    const q = this.queriesByHandle.get(this.handleKey(hi, lo));
    if (!q || q.lo !== lo || q.hi !== hi || !matchesLocal(q.local, b, o, ipVersion)) {
      this.counters.rejStale++;
      return;
    }
    const now = this.deps.now();
    this.dropQuery(q, now);
    this.sampleRtt(q, now);
    this.counters.queriesRejected++;
    this.deps.events.queryDone(q.id, { kind: 'rejected' });
  }

  private finishQuery(q: QueryConv): void {
    this.heap.remove(q);
    this.queriesById.delete(q.id);
    this.queriesByHandle.delete(q.key);
  }

  private dropQuery(q: QueryConv, now: number): void {
    this.finishQuery(q);
    this.quarantine.add(q.key, now + this.timing.handleQuarantineMs);
  }

  /** The answered query stays on as an ACK tracker (numbers only: the query object goes). */
  private track(q: QueryConv, now: number): void {
    const evicted = this.ackTrackers.add(q.key, q.hi, q.lo, q.local.family, q.local.port, q.local.ip, now + this.timing.ackTrackerMs);
    if (evicted !== undefined) this.quarantine.add(evicted, now + this.timing.handleQuarantineMs);
  }

  // Round trip ----------------------------------------------------------------

  private sampleRtt(q: QueryConv, now: number): void {
    if (q.retransmitted) return;
    const r = now - q.startedAtMs;
    if (this.srttMs === 0) {
      this.srttMs = Math.max(r, 0.001);
      this.rttvarMs = r / 2;
    } else {
      this.rttvarMs = 0.75 * this.rttvarMs + 0.25 * Math.abs(this.srttMs - r);
      this.srttMs = 0.875 * this.srttMs + 0.125 * r;
    }
  }

  /** First retransmission timeout for a new REQ. */
  private rtoMs(): number {
    const t = this.timing;
    if (this.srttMs === 0) return t.reqFirstRetransmitMs;
    return Math.min(Math.max(this.srttMs + 4 * this.rttvarMs, t.reqFirstRetransmitMs), Math.max(t.reqMaxRtoMs, t.reqFirstRetransmitMs));
  }

  // Handles -------------------------------------------------------------------

  /**
   * A random non-zero 64-bit handle not used by any live conversation, tracker or recent
   * one. Stricter than that: its key (handleKey) is unused too, so our tables never hold
   * two of our handles under one key. Returns the key; the handle's halves are left in
   * handleHalves (high, low).
   */
  private newHandle(): number {
    const h = this.handleHalves;
    for (;;) {
      this.deps.randomHandle(h);
      const hi = h[0]!;
      const lo = h[1]!;
      if (hi !== 0 || lo !== 0) {
        const k = this.handleKey(hi, lo);
        if (!this.queriesByHandle.has(k) && !this.ackTrackers.has(k) && !this.quarantine.has(k)) return k;
      }
      this.counters.handleCollisions++;
    }
  }

  /** Table key of a 64-bit handle given as two 32-bit halves: a keyed mix, a small integer. */
  private handleKey(hi: number, lo: number): number {
    return (Math.imul(hi ^ this.keyXor, this.keyMul) ^ lo) | 0;
  }

  // Rate limiting -------------------------------------------------------------

  private bucketFor(src: PeerEndpoint, now: number): PeerBucket {
    if (!this.limits.rateLimitLoopback && endpointIsLoopback(src)) return this.loopbackBucket;
    const ip = src.ip;
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

  private defer(id: number, outcome: QueryOutcome): void {
    this.deferred.push({ id, outcome });
  }

  /**
   * When `tick` next has work: the earliest retransmission or give-up, an outcome waiting
   * to be delivered (now), or housekeeping (coarse). Undefined when there is nothing at all.
   */
  nextDeadline(): number | undefined {
    if (this.deferred.length > 0) return this.deps.now();
    let best = this.heap.peek()?.dueAtMs;
    if (this.ackTrackers.size > 0 || this.quarantine.size > 0 || this.lingering.size > 0 || this.buckets.size > 0) {
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
    for (let c = heap.peek(); c && c.dueAtMs <= now; c = heap.peek()) {
      if (c.kind === 'query') this.timeQuery(c, now);
      else this.timeAccept(c, now);
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
      q.retransmitted = true;
      // back off up to reqMaxIntervalMs, or the current timeout when that is longer (slow peer)
      q.intervalMs = Math.max(Math.min(q.intervalMs * this.timing.reqBackoff, this.timing.reqMaxIntervalMs), Math.min(q.intervalMs, this.rtoMs()));
      q.nextSendAtMs = now + q.intervalMs;
    }
    this.heap.set(q, Math.min(q.nextSendAtMs, q.giveUpAtMs));
  }

  private timeAccept(c: AcceptConv, now: number): void {
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
    this.heap.set(c, Math.min(c.nextSendAtMs, c.giveUpAtMs));
  }

  private housekeeping(now: number): void {
    this.lastHousekeepingMs = now;
    this.ackTrackers.expire(now, (key) => this.quarantine.add(key, now + this.timing.handleQuarantineMs));
    this.lingering.expire(now);
    this.quarantine.expire(now);
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
      srttMs: this.srttMs,
      rtoMs: this.rtoMs(),
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
    this.quarantine.clear();
    this.accepts.clear();
    this.lingering.clear();
    this.liveAccepts = 0;
    this.buckets.clear();
    this.deferred = [];
  }
}
