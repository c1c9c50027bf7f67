/**
 * The daemon-to-daemon message on UDP 3935 (spec §5.2). Pure.
 *
 * One 64-byte layout; REQ sends all 64 bytes, ACC/ACK/REJ the first 48. Big-endian.
 *
 *   0   magic: bits 7-6 protocol version (0), bits 5-4 type, bits 3-0 IP version (4|6)
 *   1   pmtime (0 in REQ, echoed in replies)
 *   2   reserved: REQ = mapped connecting-peer port, 0 in the others
 *   4   apport      accepting peer (listener) port
 *   6   cpport      connecting peer port
 *   8   assochandle 64-bit, chosen by the connecting side
 *   16  cpipaddr    16 bytes
 *   32  apipaddr    16 bytes
 *   48  mapped_cpipaddr 16 bytes (REQ only)
 *
 * IPv4 addresses sit in bytes 0-3 of a 16-byte field (not IPv4-mapped IPv6); bytes 4-15
 * are written as zeros and ignored on receive (rdma-core puts stack garbage there).
 */

import { copyInto } from './sockaddr.js';

/** rdma-core's IWARP_PM_PORT. */
export const IWARP_PM_PORT = 3935;

export const PM_MSG_REQ = 0;
export const PM_MSG_ACC = 1;
export const PM_MSG_ACK = 2;
export const PM_MSG_REJ = 3;
export type PeerMsgType = typeof PM_MSG_REQ | typeof PM_MSG_ACC | typeof PM_MSG_ACK | typeof PM_MSG_REJ;

export const PM_TYPE_NAMES: readonly string[] = ['REQ', 'ACC', 'ACK', 'REJ'];

/** IWARP_PM_MESSAGE_SIZE: ACC, ACK and REJ. */
export const PM_MESSAGE_SIZE = 48;
/** REQ: 48 + mapped_cpipaddr. */
export const PM_REQ_SIZE = 64;
/** The protocol version we send (rdma-core sends 0 and echoes what it receives). */
export const PM_PROTOCOL_VERSION = 0;

const VER_SHIFT = 6;
const MT_SHIFT = 4;
const MT_MASK = 0x30;
const IPVER_MASK = 0x0f;

export type IpVersion = 4 | 6;

interface PeerMessageBase {
  /** 4 or 6; decides the length of the address fields (4 or 16 bytes). */
  ipVersion: IpVersion;
  /** 0..255; 0 in REQ, echoed in replies. */
  pmtime: number;
  /** Wire field `reserved`: the connecting peer's mapped port in REQ; 0 in the others. */
  mappedCpPort: number;
  apPort: number;
  cpPort: number;
  /** Unsigned 64-bit. */
  assocHandle: bigint;
  /** 4 bytes (ipVersion 4) or 16 bytes (ipVersion 6). */
  cpIp: Buffer;
  apIp: Buffer;
}

export interface PeerReq extends PeerMessageBase {
  type: typeof PM_MSG_REQ;
  /** The connecting peer's mapped IP (4 or 16 bytes). */
  mappedCpIp: Buffer;
}

export interface PeerReply extends PeerMessageBase {
  type: typeof PM_MSG_ACC | typeof PM_MSG_ACK | typeof PM_MSG_REJ;
}

export type PeerMessage = PeerReq | PeerReply;

/** Why a datagram was refused (for counters). */
export type WireRejectKind = 'length' | 'reqLength' | 'version' | 'ipVersion';

export type PeerDecode =
  | { ok: true; msg: PeerMessage }
  | { ok: false; kind: WireRejectKind; reason: string };

function ipLen(v: IpVersion): number {
  return v === 4 ? 4 : 16;
}

function putIp(out: Buffer, offset: number, ip: Buffer, v: IpVersion): void {
  // out is zero-filled: IPv4 leaves bytes 4-15 zero
  ip.copy(out, offset, 0, ipLen(v));
}

/** An address as the writers below need it (SockAddr fits). */
export interface IpPort {
  /** 4 bytes (IPv4) or 16 bytes (IPv6). */
  ip: Uint8Array;
  port: number;
}

/** ip's first n bytes at out[off], zeros up to 16 bytes. */
function putIp16(out: Buffer, off: number, ip: Uint8Array, n: number): void {
  copyInto(out, off, ip, 0, n);
  for (let i = n; i < 16; i++) out[off + i] = 0;
}

/**
 * A REQ written into out[0, 64) (whatever it held): the bytes encodePeerMessage makes of
 * a REQ with pmtime 0, handle `hi << 32 | lo` (unsigned 32-bit halves), connecting peer
 * `cp`, accepting peer `ap` and the connecting peer's mapped address `mappedCp` (its
 * port goes in `reserved`). No message object, no BigInt.
 */
export function writePeerReq(out: Buffer, ipVersion: IpVersion, hi: number, lo: number, cp: IpPort, ap: IpPort, mappedCp: IpPort): Buffer {
  const n = ipLen(ipVersion);
  out[0] = (PM_PROTOCOL_VERSION << VER_SHIFT) | (PM_MSG_REQ << MT_SHIFT) | ipVersion;
  out[1] = 0;
  out.writeUInt16BE(mappedCp.port & 0xffff, 2);
  out.writeUInt16BE(ap.port & 0xffff, 4);
  out.writeUInt16BE(cp.port & 0xffff, 6);
  out.writeUInt32BE(hi >>> 0, 8);
  out.writeUInt32BE(lo >>> 0, 12);
  putIp16(out, 16, cp.ip, n);
  putIp16(out, 32, ap.ip, n);
  putIp16(out, 48, mappedCp.ip, n);
  return out;
}

/** Encode into a fresh buffer: 64 bytes for REQ, 48 for the others. */
export function encodePeerMessage(m: PeerMessage): Buffer {
  // pooled, zeroed by hand (Buffer.alloc makes an ArrayBuffer per call)
  const out = Buffer.allocUnsafe(m.type === PM_MSG_REQ ? PM_REQ_SIZE : PM_MESSAGE_SIZE).fill(0);
  out[0] = (PM_PROTOCOL_VERSION << VER_SHIFT) | (m.type << MT_SHIFT) | m.ipVersion;
  out[1] = m.pmtime & 0xff;
  out.writeUInt16BE(m.mappedCpPort & 0xffff, 2);
  out.writeUInt16BE(m.apPort & 0xffff, 4);
  out.writeUInt16BE(m.cpPort & 0xffff, 6);
  out.writeBigUInt64BE(BigInt.asUintN(64, m.assocHandle), 8);
  putIp(out, 16, m.cpIp, m.ipVersion);
  putIp(out, 32, m.apIp, m.ipVersion);
  if (m.type === PM_MSG_REQ) putIp(out, 48, m.mappedCpIp, m.ipVersion);
  return out;
}

/**
 * Decode one datagram. Never throws. Accepts what rdma-core accepts (48 or 64 bytes,
 * IP version 4 or 6) except: the protocol version must be 0 and a REQ must be 64 bytes
 * (rdma-core reads mapped_cpipaddr from a REQ whatever its length). A 64-byte ACC, ACK
 * or REJ is accepted and its last 16 bytes ignored.
 */
export function decodePeerMessage(b: Uint8Array): PeerDecode {
  const len = b.length;
  if (len !== PM_MESSAGE_SIZE && len !== PM_REQ_SIZE) {
    return { ok: false, kind: 'length', reason: `datagram is ${len} bytes, expected ${PM_MESSAGE_SIZE} or ${PM_REQ_SIZE}` };
  }
  const magic = b[0]!;
  const version = magic >> VER_SHIFT;
  if (version !== PM_PROTOCOL_VERSION) {
    return { ok: false, kind: 'version', reason: `protocol version ${version}, expected ${PM_PROTOCOL_VERSION}` };
  }
  const ipv = magic & IPVER_MASK;
  if (ipv !== 4 && ipv !== 6) return { ok: false, kind: 'ipVersion', reason: `IP version ${ipv}, expected 4 or 6` };
  const type = ((magic & MT_MASK) >> MT_SHIFT) as PeerMsgType;
  if (type === PM_MSG_REQ && len !== PM_REQ_SIZE) {
    return { ok: false, kind: 'reqLength', reason: `REQ is ${len} bytes, expected ${PM_REQ_SIZE}` };
  }
  const buf = Buffer.isBuffer(b) ? b : Buffer.from(b.buffer, b.byteOffset, b.byteLength);
  const n = ipLen(ipv);
  const ip = (offset: number): Buffer => Buffer.from(buf.subarray(offset, offset + n));
  const base = {
    ipVersion: ipv as IpVersion,
    pmtime: buf[1]!,
    mappedCpPort: buf.readUInt16BE(2),
    apPort: buf.readUInt16BE(4),
    cpPort: buf.readUInt16BE(6),
    assocHandle: buf.readBigUInt64BE(8),
    cpIp: ip(16),
    apIp: ip(32),
  };
  if (type === PM_MSG_REQ) return { ok: true, msg: { type, ...base, mappedCpIp: ip(48) } };
  return { ok: true, msg: { type, ...base } };
}

/** The same message as another reply type (REJ/ACC from a REQ, ACK from an ACC): 48 bytes. */
export function asReply(
  m: PeerMessage,
  type: PeerReply['type'],
  fields: Partial<Pick<PeerMessageBase, 'apPort' | 'apIp'>> = {},
): PeerReply {
  return {
    type,
    ipVersion: m.ipVersion,
    pmtime: m.pmtime,
    mappedCpPort: 0,
    apPort: fields.apPort ?? m.apPort,
    cpPort: m.cpPort,
    assocHandle: m.assocHandle,
    cpIp: m.cpIp,
    apIp: fields.apIp ?? m.apIp,
  };
}

/** Negative results of classifyPeerDatagram, by kind. */
export const WIRE_REJECT_KINDS: readonly WireRejectKind[] = ['length', 'reqLength', 'version', 'ipVersion'];

/**
 * The checks of decodePeerMessage without decoding anything (no allocation): returns
 * `(type << 4) | ipVersion` for an acceptable datagram, or `-(1 + i)` where
 * WIRE_REJECT_KINDS[i] says why not. The datagram is b[off, off + len) (default: all of b).
 */
export function classifyPeerDatagram(b: Uint8Array, off = 0, len = b.length - off): number {
  if (len !== PM_MESSAGE_SIZE && len !== PM_REQ_SIZE) return -1;
  const magic = b[off]!;
  if (magic >> VER_SHIFT !== PM_PROTOCOL_VERSION) return -3;
  const ipv = magic & IPVER_MASK;
  if (ipv !== 4 && ipv !== 6) return -4;
  const type = (magic & MT_MASK) >> MT_SHIFT;
  if (type === PM_MSG_REQ && len !== PM_REQ_SIZE) return -2;
  return (type << 4) | ipv;
}

/**
 * A 48-byte reply built from a received (valid) REQ or ACC, as asReply + encode would:
 * every field echoed except the type, `reserved` (0) and, when given, apport/apipaddr;
 * bytes 4-15 of IPv4 address fields zeroed.
 */
export function replyFromRaw(
  received: Uint8Array,
  type: PeerReply['type'],
  ap?: { ip: Buffer; port: number },
  /** Where to write the 48 bytes (default: a new pooled buffer). */
  out: Buffer = Buffer.allocUnsafe(PM_MESSAGE_SIZE),
): Buffer {
  return writeReply(out, received, 0, type, ap?.ip, ap?.port ?? 0);
}

/**
 * replyFromRaw without an argument object: the reply to the datagram at received[off]
 * written into out[0, 48). apIp (4 or 16 bytes, as the datagram's IP version) replaces
 * apipaddr and apPort apport when apIp is given. received and out must not overlap.
 */
export function writeReply(out: Buffer, received: Uint8Array, off: number, type: PeerReply['type'], apIp?: Uint8Array, apPort = 0): Buffer {
  copyInto(out, 0, received, off, PM_MESSAGE_SIZE);
  const ipv = received[off]! & IPVER_MASK;
  out[0] = (PM_PROTOCOL_VERSION << VER_SHIFT) | (type << MT_SHIFT) | ipv;
  out[2] = 0;
  out[3] = 0;
  if (apIp !== undefined) {
    out.writeUInt16BE(apPort & 0xffff, 4);
    copyInto(out, 32, apIp, 0, Math.min(ipv === 4 ? 4 : 16, apIp.length));
  }
  if (ipv === 4) {
    out.fill(0, 20, 32);
    out.fill(0, 36, 48);
  }
  return out;
}
