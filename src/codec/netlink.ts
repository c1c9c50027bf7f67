/**
 * Netlink framing: struct nlmsghdr, struct nlattr, NLMSG_DONE / NLMSG_ERROR payloads.
 * Pure functions over Buffers. Decoders never throw: they return a value or a reason.
 * All integers in netlink headers and u16/u32 attributes are host byte order
 * (little-endian on every platform this daemon targets: x86-64, arm64, ppc64le).
 */

export const NLMSG_HDRLEN = 16;
export const NLA_HDRLEN = 4;
export const NLMSG_NOOP = 1;
export const NLMSG_ERROR = 2;
export const NLMSG_DONE = 3;
export const NLMSG_OVERRUN = 4;
export const NLM_F_REQUEST = 0x1;
export const NLM_F_MULTI = 0x2;
export const NLA_TYPE_MASK = 0x3fff; // strips NLA_F_NESTED and NLA_F_NET_BYTEORDER

export function align4(n: number): number {
  return (n + 3) & ~3;
}

export interface NlHeader {
  len: number;
  type: number;
  flags: number;
  seq: number;
  pid: number;
}

/** One netlink message carved out of a datagram; `payload` excludes the 16-byte header. */
export interface NlMessage {
  header: NlHeader;
  payload: Buffer;
  /** The whole message, header included (view into the datagram). */
  raw: Buffer;
}

export interface SplitResult {
  messages: NlMessage[];
  /** Set when the datagram held trailing bytes that do not form a valid message. */
  error?: string;
}

export function readHeader(buf: Buffer, off = 0): NlHeader {
  return {
    len: buf.readUInt32LE(off),
    type: buf.readUInt16LE(off + 4),
    flags: buf.readUInt16LE(off + 6),
    seq: buf.readUInt32LE(off + 8),
    pid: buf.readUInt32LE(off + 12),
  };
}

export function writeHeader(buf: Buffer, h: NlHeader, off = 0): void {
  buf.writeUInt32LE(h.len >>> 0, off);
  buf.writeUInt16LE(h.type & 0xffff, off + 4);
  buf.writeUInt16LE(h.flags & 0xffff, off + 6);
  buf.writeUInt32LE(h.seq >>> 0, off + 8);
  buf.writeUInt32LE(h.pid >>> 0, off + 12);
}

/** An NlMessage whose `raw` view is made only when asked for (the daemon never needs it). */
class SplitMessage implements NlMessage {
  readonly header: NlHeader;
  readonly payload: Buffer;
  constructor(
    private readonly datagram: Buffer,
    private readonly off: number,
    len: number,
  ) {
    this.header = readHeader(datagram, off);
    this.payload = datagram.subarray(off + NLMSG_HDRLEN, off + len);
  }

  get raw(): Buffer {
    return this.datagram.subarray(this.off, this.off + this.header.len);
  }
}

/**
 * Length of the message at datagram[off] when it lies wholly before `end`
 * (NLMSG_OK), or why not. The next message starts at off + align4(length).
 */
export function messageLengthAt(datagram: Uint8Array, off: number, end: number): number | string {
  const remaining = end - off;
  if (remaining < NLMSG_HDRLEN) return `trailing ${remaining} bytes shorter than a netlink header`;
  const len = (datagram[off]! | (datagram[off + 1]! << 8) | (datagram[off + 2]! << 16) | (datagram[off + 3]! << 24)) >>> 0;
  if (len < NLMSG_HDRLEN) return `nlmsg_len ${len} smaller than the header`;
  if (len > remaining) return `nlmsg_len ${len} exceeds the ${remaining} bytes left in the datagram`;
  return len;
}

/**
 * Walk the messages of one datagram (NLMSG_OK / NLMSG_NEXT). Stops at the first
 * malformed header and reports it; messages before it are returned.
 */
export function splitMessages(datagram: Buffer): SplitResult {
  const messages: NlMessage[] = [];
  let off = 0;
  while (off < datagram.length) {
    const len = messageLengthAt(datagram, off, datagram.length);
    if (typeof len === 'string') return { messages, error: len };
    messages.push(new SplitMessage(datagram, off, len));
    off += align4(len);
  }
  return { messages };
}

/** Attributes indexed by type; index 0 unused. The last occurrence of a type wins (as nla_parse). */
export type AttrTable = (Buffer | undefined)[];

export type AttrParse = { ok: true; attrs: AttrTable } | { ok: false; reason: string };

/**
 * Scan the attributes in buf[from, end) (no family header: they start right after the
 * netlink header) into off/len by type: the value's offset in `buf` and its length, -1
 * in off[type] when absent. Types above `maxType` are ignored and the last occurrence
 * of a type wins (liberal parsing, as nla_parse, the kernel and rdma-core do); fewer
 * than 4 trailing bytes are tolerated (nla_ok semantics). Returns a reason or undefined.
 */
export function scanAttrs(buf: Uint8Array, from: number, end: number, maxType: number, off: Int32Array, len: Int32Array): string | undefined {
  off.fill(-1, 0, maxType + 1);
  let at = from;
  while (at + NLA_HDRLEN <= end) {
    const n = buf[at]! | (buf[at + 1]! << 8);
    const type = (buf[at + 2]! | (buf[at + 3]! << 8)) & NLA_TYPE_MASK;
    if (n < NLA_HDRLEN) return `attribute at offset ${at - from} has nla_len ${n} < 4`;
    if (at + n > end) return `attribute ${type} at offset ${at - from} (nla_len ${n}) runs past the message end`;
    if (type <= maxType) {
      off[type] = at + NLA_HDRLEN;
      len[type] = n - NLA_HDRLEN;
    }
    at += align4(n);
  }
  return undefined;
}

/** scanAttrs as a table of views into `payload`, by type. */
export function parseAttrs(payload: Buffer, maxType: number): AttrParse {
  const off = new Int32Array(maxType + 1);
  const len = new Int32Array(maxType + 1);
  const reason = scanAttrs(payload, 0, payload.length, maxType, off, len);
  if (reason !== undefined) return { ok: false, reason };
  const attrs: AttrTable = new Array(maxType + 1);
  for (let t = 0; t <= maxType; t++) if (off[t]! >= 0) attrs[t] = payload.subarray(off[t]!, off[t]! + len[t]!);
  return { ok: true, attrs };
}

/** Attribute value kinds used by IWPM. */
export type AttrValue =
  | { kind: 'u16'; value: number }
  | { kind: 'u32'; value: number }
  | { kind: 'bytes'; value: Buffer }
  | { kind: 'string'; value: string };

export interface AttrSpec {
  type: number;
  v: AttrValue;
}

function attrPayloadLen(v: AttrValue): number {
  switch (v.kind) {
    case 'u16':
      return 2;
    case 'u32':
      return 4;
    case 'bytes':
      return v.value.length;
    case 'string':
      return Buffer.byteLength(v.value, 'latin1') + 1; // NUL-terminated, libnl nla_put_string
  }
}

/**
 * Encode one message. nlmsg_len counts the padding of the last attribute, as libnl
 * (and therefore rdma-core) does.
 */
export function encodeMessage(h: Omit<NlHeader, 'len'>, attrs: readonly AttrSpec[]): Buffer {
  let len = NLMSG_HDRLEN;
  for (const a of attrs) len += align4(NLA_HDRLEN + attrPayloadLen(a.v));
  // Pooled allocation (allocUnsafe shares Node's slab for small sizes): Buffer.alloc
  // creates a fresh ArrayBuffer per message, which showed up as GC time at tens of
  // thousands of replies per second. Every byte is written below (header, attribute
  // headers, payloads, and the padding explicitly zeroed), so nothing stale leaks.
  const buf = Buffer.allocUnsafe(len);
  buf.writeUInt32LE(len, 0);
  buf.writeUInt16LE(h.type & 0xffff, 4);
  buf.writeUInt16LE(h.flags & 0xffff, 6);
  buf.writeUInt32LE(h.seq >>> 0, 8);
  buf.writeUInt32LE(h.pid >>> 0, 12);
  let off = NLMSG_HDRLEN;
  for (const a of attrs) {
    const plen = attrPayloadLen(a.v);
    buf.writeUInt16LE(NLA_HDRLEN + plen, off);
    buf.writeUInt16LE(a.type, off + 2);
    const p = off + NLA_HDRLEN;
    switch (a.v.kind) {
      case 'u16':
        buf.writeUInt16LE(a.v.value & 0xffff, p);
        break;
      case 'u32':
        buf.writeUInt32LE(a.v.value >>> 0, p);
        break;
      case 'bytes':
        a.v.value.copy(buf, p);
        break;
      case 'string':
        buf.write(a.v.value, p, 'latin1');
        buf[p + plen - 1] = 0; // the terminating NUL
        break;
    }
    const end = off + align4(NLA_HDRLEN + plen);
    for (let q = p + plen; q < end; q++) buf[q] = 0; // padding
    off = end;
  }
  return buf;
}

export const u16 = (type: number, value: number): AttrSpec => ({ type, v: { kind: 'u16', value } });
export const u32 = (type: number, value: number): AttrSpec => ({ type, v: { kind: 'u32', value } });
export const bytes = (type: number, value: Buffer): AttrSpec => ({ type, v: { kind: 'bytes', value } });
export const str = (type: number, value: string): AttrSpec => ({ type, v: { kind: 'string', value } });

/** NLMSG_DONE payload: optional s32 status (the kernel handler's return value). */
export function decodeDoneStatus(m: NlMessage): number | undefined {
  return doneStatusAt(m.payload, 0, m.payload.length);
}

/** decodeDoneStatus of a payload at buf[off, off + len). */
export function doneStatusAt(buf: Buffer, off: number, len: number): number | undefined {
  return len >= 4 ? buf.readInt32LE(off) : undefined;
}

export interface NlError {
  /** Negative errno (0 = ack). */
  error: number;
  /** Header of the message that failed, when echoed. */
  original?: NlHeader;
}

export function decodeError(m: NlMessage): NlError | undefined {
  return errorAt(m.payload, 0, m.payload.length);
}

/** decodeError of a payload at buf[off, off + len). */
export function errorAt(buf: Buffer, off: number, len: number): NlError | undefined {
  if (len < 4) return undefined;
  const error = buf.readInt32LE(off);
  const original = len >= 4 + NLMSG_HDRLEN ? readHeader(buf, off + 4) : undefined;
  return { error, original };
}

/** Bare 16-byte NLMSG_DONE (as the kernel ends a MAPINFO datagram). */
export function encodeDone(seq: number, pid: number, status?: number): Buffer {
  const len = status === undefined ? NLMSG_HDRLEN : NLMSG_HDRLEN + 4;
  const buf = Buffer.alloc(len);
  writeHeader(buf, { len, type: NLMSG_DONE, flags: NLM_F_MULTI, seq, pid });
  if (status !== undefined) buf.writeInt32LE(status, NLMSG_HDRLEN);
  return buf;
}

/** Read a NUL-padded/terminated string attribute (stops at the first NUL). */
export function readCString(b: Buffer): string {
  const nul = b.indexOf(0);
  return b.toString('latin1', 0, nul === -1 ? b.length : nul);
}
