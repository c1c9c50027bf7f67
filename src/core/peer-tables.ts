/**
 * Peer state that lives for seconds after a conversation ends, kept in typed arrays
 * (time-ordered rings plus an IntIndex): tens of thousands of entries a second pass
 * through these, and as JS objects they were most of what every young-generation GC
 * had to copy and promote (the pauses behind the QUERY latency tail).
 */
import { AF_INET, AF_INET6, copyInto, formatIp } from '../codec/sockaddr.js';
import { IntIndex } from './int-index.js';

/** Recently used handles (by table key), forgotten in time order. */
export class Quarantine {
  private readonly handles: Int32Array;
  private readonly until: Float64Array;
  private readonly index = new IntIndex();
  private head = 0;
  private count = 0;

  constructor(private readonly capacity: number) {
    this.handles = new Int32Array(capacity);
    this.until = new Float64Array(capacity);
  }

  get size(): number {
    return this.count;
  }

  has(h: number): boolean {
    return this.index.has(h);
  }

  add(h: number, untilMs: number): void {
    if (this.capacity === 0 || this.index.has(h)) return;
    if (this.count === this.capacity) this.dropOldest();
    const i = (this.head + this.count) % this.capacity;
    this.handles[i] = h;
    this.until[i] = untilMs;
    this.count++;
    this.index.set(h, i);
  }

  expire(now: number): void {
    while (this.count > 0 && this.until[this.head]! <= now) this.dropOldest();
  }

  /** When the oldest entry expires (undefined when empty). */
  nextExpiry(): number | undefined {
    return this.count > 0 ? this.until[this.head] : undefined;
  }

  clear(): void {
    this.index.clear();
    this.head = 0;
    this.count = 0;
  }

  private dropOldest(): void {
    this.index.delete(this.handles[this.head]!);
    this.head = (this.head + 1) % this.capacity;
    this.count--;
  }
}

/**
 * ACK trackers: after an ACC answered one of our queries, a duplicate ACC (our ACK was
 * lost) is ACKed again for a while. Each entry is the handle (hi, lo; unique by its table
 * key) and the connecting address the ACC must name: family, port, IP as four
 * big-endian 32-bit words (IPv4: word 0). A refresh re-appends the entry, so the ring
 * stays in expiry order; the stale copy is skipped when it reaches the head.
 */
export class AckTrackers {
  private cap: number;
  private keys: Int32Array;
  private hi: Int32Array;
  private lo: Int32Array;
  /** family << 16 | port */
  private famPort: Int32Array;
  private ip: Int32Array;
  private until: Float64Array;
  private readonly index = new IntIndex();
  private head = 0;
  /** ring entries, stale ones included */
  private used = 0;

  /** @param max most live trackers (beyond it the oldest is evicted) */
  constructor(readonly max: number) {
    this.cap = Math.max(16, Math.min(1024, max * 2));
    this.keys = new Int32Array(this.cap);
    this.hi = new Int32Array(this.cap);
    this.lo = new Int32Array(this.cap);
    this.famPort = new Int32Array(this.cap);
    this.ip = new Int32Array(this.cap * 4);
    this.until = new Float64Array(this.cap);
  }

  get size(): number {
    return this.index.size;
  }

  has(key: number): boolean {
    return this.index.has(key);
  }

  /**
   * Track a finished query (untilMs, like refresh's, never earlier than an earlier
   * call's: the ring is in expiry order because every entry lasts equally long). Returns the key of a live tracker evicted to stay within
   * max (the caller quarantines it), or undefined.
   */
  add(key: number, hi: number, lo: number, family: number, port: number, ip: Buffer, untilMs: number): number | undefined {
    let evicted: number | undefined;
    if (!this.index.has(key) && this.index.size >= this.max) evicted = this.evictOldest();
    const v6 = ip.length === 16;
    this.append(key, hi, lo, (family << 16) | port, ip.readInt32BE(0), v6 ? ip.readInt32BE(4) : 0, v6 ? ip.readInt32BE(8) : 0, v6 ? ip.readInt32BE(12) : 0, untilMs);
    return evicted;
  }

  /**
   * The live tracker of this handle that names this connecting address (family, port at
   * b[portOff], IP at b[ipOff], 4 or 16 bytes), or -1.
   */
  find(key: number, hi: number, lo: number, family: number, b: Buffer, portOff: number, ipOff: number): number {
    const i = this.index.get(key);
    // stored as int32: compare the halves as such (they arrive as unsigned)
    if (i < 0 || this.hi[i] !== (hi | 0) || this.lo[i] !== (lo | 0)) return -1;
    if (this.famPort[i] !== ((family << 16) | b.readUInt16BE(portOff))) return -1;
    const w = 4 * i;
    if (this.ip[w] !== b.readInt32BE(ipOff)) return -1;
    if (family !== 2 /* AF_INET */) {
      for (let k = 1; k < 4; k++) if (this.ip[w + k] !== b.readInt32BE(ipOff + 4 * k)) return -1;
    }
    return i;
  }

  /** Extend a tracker found by find(). */
  refresh(i: number, untilMs: number): void {
    const w = 4 * i;
    this.append(this.keys[i]!, this.hi[i]!, this.lo[i]!, this.famPort[i]!, this.ip[w]!, this.ip[w + 1]!, this.ip[w + 2]!, this.ip[w + 3]!, untilMs);
  }

  /** Drop trackers due at now; calls gone(key) for each. */
  expire(now: number, gone: (key: number) => void): void {
    while (this.used > 0 && this.until[this.head]! <= now) {
      const key = this.popHead();
      if (key !== undefined) gone(key);
    }
  }

  clear(): void {
    this.index.clear();
    this.head = 0;
    this.used = 0;
  }

  private append(key: number, hi: number, lo: number, famPort: number, w0: number, w1: number, w2: number, w3: number, untilMs: number): void {
    if (this.used === this.cap) this.grow();
    const i = (this.head + this.used) % this.cap;
    this.keys[i] = key;
    this.hi[i] = hi;
    this.lo[i] = lo;
    this.famPort[i] = famPort;
    const w = 4 * i;
    this.ip[w] = w0;
    this.ip[w + 1] = w1;
    this.ip[w + 2] = w2;
    this.ip[w + 3] = w3;
    this.until[i] = untilMs;
    this.used++;
    this.index.set(key, i);
  }

  /** Removes the head entry; its key when it was the live copy. */
  private popHead(): number | undefined {
    const i = this.head;
    const key = this.keys[i]!;
    this.head = (this.head + 1) % this.cap;
    this.used--;
    if (this.index.get(key) !== i) return undefined; // refreshed: a later copy is live
    this.index.delete(key);
    return key;
  }

  private evictOldest(): number | undefined {
    while (this.used > 0) {
      const key = this.popHead();
      if (key !== undefined) return key;
    }
    return undefined;
  }

  /** Doubles the ring (stale copies from refreshes can outnumber live entries for a while). */
  private grow(): void {
    const cap = this.cap * 2;
    const keys = new Int32Array(cap);
    const hi = new Int32Array(cap);
    const lo = new Int32Array(cap);
    const famPort = new Int32Array(cap);
    const ip = new Int32Array(cap * 4);
    const until = new Float64Array(cap);
    for (let k = 0; k < this.used; k++) {
      const i = (this.head + k) % this.cap;
      keys[k] = this.keys[i]!;
      hi[k] = this.hi[i]!;
      lo[k] = this.lo[i]!;
      famPort[k] = this.famPort[i]!;
      for (let w = 0; w < 4; w++) ip[4 * k + w] = this.ip[4 * i + w]!;
      until[k] = this.until[i]!;
      if (this.index.get(keys[k]!) === i) this.index.set(keys[k]!, k);
    }
    this.keys = keys;
    this.hi = hi;
    this.lo = lo;
    this.famPort = famPort;
    this.ip = ip;
    this.until = until;
    this.cap = cap;
    this.head = 0;
  }
}

/** What the lingering table needs of a peer address (PeerEndpoint's shape). */
export interface LingerPeer {
  readonly ip: string;
  readonly raw?: Buffer;
  readonly scopeId?: number;
}

/**
 * Finished ACCEPT conversations, kept for a while to answer duplicate REQs with the
 * same ACC and to tell duplicate ACKs from stale ones. A fixed ring of `max` entries
 * (typed arrays; memory is touched only as entries are written), in expiry order; the
 * oldest is dropped when full. Several entries may share a handle key (other peers or
 * listeners): the index points at the newest, each entry at the next older one, a link
 * being valid while the entry it names still carries the sequence number it had.
 */
export class Lingering {
  private readonly keys: Int32Array;
  private readonly hi: Int32Array;
  private readonly lo: Int32Array;
  private readonly wirePort: Int32Array;
  /** wire IP and peer IP, 16 bytes each; lengths 4 or 16 (peer: 0 = text only) */
  private readonly wireIp: Uint8Array;
  private readonly wireLen: Uint8Array;
  private readonly peerIp: Uint8Array;
  private readonly peerLen: Uint8Array;
  private readonly peerScope: Uint32Array;
  /** the peer address as text, only for peers given without bytes */
  private readonly peerText: (string | undefined)[];
  private readonly acc: Uint8Array;
  private readonly until: Float64Array;
  private readonly seq: Float64Array;
  private readonly next: Int32Array;
  private readonly nextSeq: Float64Array;
  private readonly index = new IntIndex();
  private head = 0;
  private count = 0;
  private seqNext = 1;

  constructor(readonly max: number) {
    const n = Math.max(1, max);
    this.keys = new Int32Array(n);
    this.hi = new Int32Array(n);
    this.lo = new Int32Array(n);
    this.wirePort = new Int32Array(n);
    this.wireIp = new Uint8Array(16 * n);
    this.wireLen = new Uint8Array(n);
    this.peerIp = new Uint8Array(16 * n);
    this.peerLen = new Uint8Array(n);
    this.peerScope = new Uint32Array(n);
    this.peerText = [];
    this.acc = new Uint8Array(48 * n);
    this.until = new Float64Array(n);
    this.seq = new Float64Array(n);
    this.next = new Int32Array(n);
    this.nextSeq = new Float64Array(n);
  }

  get size(): number {
    return this.count;
  }

  add(key: number, hi: number, lo: number, wirePort: number, wireIp: Uint8Array, peer: LingerPeer, acc: Uint8Array, untilMs: number): void {
    if (this.max <= 0) return;
    if (this.count === this.max) this.dropOldest();
    const n = this.keys.length;
    const i = (this.head + this.count) % n;
    this.count++;
    this.keys[i] = key;
    this.hi[i] = hi;
    this.lo[i] = lo;
    this.wirePort[i] = wirePort;
    this.wireLen[i] = wireIp.length;
    // byte loops, not set(subarray): no view object per entry
    copyInto(this.wireIp, 16 * i, wireIp, 0, Math.min(wireIp.length, 16));
    const raw = peer.raw;
    if (raw !== undefined) {
      this.peerLen[i] = raw.length;
      copyInto(this.peerIp, 16 * i, raw, 0, Math.min(raw.length, 16));
      this.peerScope[i] = peer.scopeId ?? 0;
      if (this.peerText[i] !== undefined) this.peerText[i] = undefined;
    } else {
      this.peerLen[i] = 0;
      this.peerText[i] = peer.ip;
    }
    copyInto(this.acc, 48 * i, acc, 0, Math.min(acc.length, 48));
    this.until[i] = untilMs;
    const s = this.seqNext++;
    this.seq[i] = s;
    const older = this.index.get(key);
    this.next[i] = older;
    this.nextSeq[i] = older >= 0 ? this.seq[older]! : 0;
    this.index.set(key, i);
  }

  /** Newest entry with this key, or -1. */
  first(key: number): number {
    return this.index.get(key);
  }

  /** The next older entry with the same key, or -1. */
  after(i: number): number {
    const j = this.next[i]!;
    return j >= 0 && this.seq[j] === this.nextSeq[i] && this.isLive(j) ? j : -1;
  }

  sameHandle(i: number, hi: number, lo: number): boolean {
    return this.hi[i] === (hi | 0) && this.lo[i] === (lo | 0);
  }

  /** Same wire address as given (port, IP bytes). */
  sameWire(i: number, port: number, ip: Uint8Array, ipOff: number, ipLen: number): boolean {
    if (this.wirePort[i] !== port || this.wireLen[i] !== ipLen) return false;
    const w = this.wireIp;
    const o = 16 * i;
    for (let k = 0; k < ipLen; k++) if (w[o + k] !== ip[ipOff + k]) return false;
    return true;
  }

  /** Same peer IP (bytes and scope id when both have bytes, else the text). */
  samePeer(i: number, p: LingerPeer): boolean {
    const len = this.peerLen[i]!;
    const raw = p.raw;
    if (len !== 0 && raw !== undefined) {
      if (raw.length !== len || this.peerScope[i] !== (p.scopeId ?? 0)) return false;
      const o = 16 * i;
      for (let k = 0; k < len; k++) if (this.peerIp[o + k] !== raw[k]) return false;
      return true;
    }
    return this.peerTextOf(i) === p.ip;
  }

  /** A copy of the entry's ACC. */
  accCopy(i: number, out: Buffer): Buffer {
    copyInto(out, 0, this.acc, 48 * i, 48);
    return out;
  }

  /** Drop entries due at now. */
  expire(now: number): void {
    while (this.count > 0 && this.until[this.head]! <= now) this.dropOldest();
  }

  clear(): void {
    this.index.clear();
    this.head = 0;
    this.count = 0;
    this.peerText.length = 0;
  }

  private isLive(j: number): boolean {
    const n = this.keys.length;
    return (j - this.head + n) % n < this.count;
  }

  private peerTextOf(i: number): string {
    const t = this.peerText[i];
    if (this.peerLen[i] === 0 && t !== undefined) return t;
    // as RawEndpoint.ip spells it
    const len = this.peerLen[i]!;
    const ip = Buffer.from(this.peerIp.subarray(16 * i, 16 * i + len));
    const text = formatIp({ family: len === 4 ? AF_INET : AF_INET6, ip });
    return this.peerScope[i] ? `${text}%${this.peerScope[i]}` : text;
  }

  private dropOldest(): void {
    const i = this.head;
    if (this.index.get(this.keys[i]!) === i) this.index.delete(this.keys[i]!);
    this.head = (this.head + 1) % this.keys.length;
    this.count--;
  }
}
