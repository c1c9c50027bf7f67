/**
 * The nine IWPM netlink operations (ABI 3 and ABI 4), both directions.
 * Kernel-facing names follow include/uapi/rdma/rdma_netlink.h.
 *
 * Decoders never throw: a malformed message decodes to { op: 'invalid', reason }.
 */
import {
  type AttrTable,
  type NlHeader,
  type NlMessage,
  NLA_HDRLEN,
  NLM_F_MULTI,
  NLM_F_REQUEST,
  NLMSG_HDRLEN,
  NLMSG_DONE,
  NLMSG_ERROR,
  bytes,
  doneStatusAt,
  encodeMessage,
  errorAt,
  parseAttrs,
  readCString,
  readHeader,
  scanAttrs,
  str,
  u16,
  u32,
} from './netlink.js';
import {
  AF_INET,
  AF_INET6,
  SOCKADDR_STORAGE_SIZE,
  type SockAddr,
  copyBytes,
  decodeSockaddr,
  encodeSockaddr,
  writeSockaddr,
} from './sockaddr.js';

export const RDMA_NL_IWCM = 2;
export const RDMA_NL_C4IW = 3; // legacy client index, ABI 3 kernels only

export const RDMA_NL_IWPM_REG_PID = 0;
export const RDMA_NL_IWPM_ADD_MAPPING = 1;
export const RDMA_NL_IWPM_QUERY_MAPPING = 2;
export const RDMA_NL_IWPM_REMOVE_MAPPING = 3;
export const RDMA_NL_IWPM_REMOTE_INFO = 4;
export const RDMA_NL_IWPM_HANDLE_ERR = 5;
export const RDMA_NL_IWPM_MAPINFO = 6;
export const RDMA_NL_IWPM_MAPINFO_NUM = 7;
export const RDMA_NL_IWPM_HELLO = 8;

export const OP_NAMES = [
  'REG_PID',
  'ADD_MAPPING',
  'QUERY_MAPPING',
  'REMOVE_MAPPING',
  'REMOTE_INFO',
  'HANDLE_ERR',
  'MAPINFO',
  'MAPINFO_NUM',
  'HELLO',
] as const;

export const IWPM_UABI_VERSION_MIN = 3;
export const IWPM_UABI_VERSION = 4;
export const IWPM_FLAGS_NO_PORT_MAP = 1;
export const IWPM_ULIB_NAME = 'iWarpPortMapperUser';
export const IWPM_IFNAME_SIZE = 16;
export const IWPM_DEVNAME_SIZE = 32;
export const IWPM_ULIBNAME_SIZE = 32;

/** Error codes (include/rdma/iw_portmap.h). */
export const IWPM_INVALID_NLMSG_ERR = 10;
export const IWPM_CREATE_MAPPING_ERR = 11;
export const IWPM_DUPLICATE_MAPPING_ERR = 12;
export const IWPM_UNKNOWN_MAPPING_ERR = 13;
export const IWPM_CLIENT_DEV_INFO_ERR = 14;
export const IWPM_USER_LIB_INFO_ERR = 15;
export const IWPM_REMOTE_QUERY_REJECT = 16;
export const IWPM_VERSION_MISMATCH_ERR = 17;

export const ERROR_NAMES: Record<number, string> = {
  10: 'IWPM_INVALID_NLMSG_ERR',
  11: 'IWPM_CREATE_MAPPING_ERR',
  12: 'IWPM_DUPLICATE_MAPPING_ERR',
  13: 'IWPM_UNKNOWN_MAPPING_ERR',
  14: 'IWPM_CLIENT_DEV_INFO_ERR',
  15: 'IWPM_USER_LIB_INFO_ERR',
  16: 'IWPM_REMOTE_QUERY_REJECT',
  17: 'IWPM_VERSION_MISMATCH_ERR',
};

// Attribute indices.
export const IWPM_NLA_REG_PID_SEQ = 1;
export const IWPM_NLA_REG_IF_NAME = 2;
export const IWPM_NLA_REG_IBDEV_NAME = 3;
export const IWPM_NLA_REG_ULIB_NAME = 4;
export const IWPM_NLA_RREG_PID_SEQ = 1;
export const IWPM_NLA_RREG_IBDEV_NAME = 2;
export const IWPM_NLA_RREG_ULIB_NAME = 3;
export const IWPM_NLA_RREG_ULIB_VER = 4;
export const IWPM_NLA_RREG_PID_ERR = 5;
export const IWPM_NLA_MANAGE_MAPPING_SEQ = 1;
export const IWPM_NLA_MANAGE_ADDR = 2;
export const IWPM_NLA_MANAGE_FLAGS = 3;
export const IWPM_NLA_RMANAGE_MAPPING_SEQ = 1;
export const IWPM_NLA_RMANAGE_ADDR = 2;
export const IWPM_NLA_RMANAGE_MAPPED_LOC_ADDR = 3;
export const IWPM_NLA_RMANAGE_MAPPING_ERR = 4;
export const IWPM_NLA_QUERY_MAPPING_SEQ = 1;
export const IWPM_NLA_QUERY_LOCAL_ADDR = 2;
export const IWPM_NLA_QUERY_REMOTE_ADDR = 3;
export const IWPM_NLA_QUERY_FLAGS = 4;
export const IWPM_NLA_RQUERY_MAPPING_SEQ = 1;
export const IWPM_NLA_RQUERY_LOCAL_ADDR = 2;
export const IWPM_NLA_RQUERY_REMOTE_ADDR = 3;
export const IWPM_NLA_RQUERY_MAPPED_LOC_ADDR = 4;
export const IWPM_NLA_RQUERY_MAPPED_REM_ADDR = 5;
export const IWPM_NLA_RQUERY_MAPPING_ERR = 6;
export const IWPM_NLA_ERR_SEQ = 1;
export const IWPM_NLA_ERR_CODE = 2;
export const IWPM_NLA_MAPINFO_ULIB_NAME = 1;
export const IWPM_NLA_MAPINFO_ULIB_VER = 2;
export const IWPM_NLA_MAPINFO_LOCAL_ADDR = 1;
export const IWPM_NLA_MAPINFO_MAPPED_ADDR = 2;
export const IWPM_NLA_MAPINFO_FLAGS = 3;
export const IWPM_NLA_MAPINFO_SEQ = 1;
export const IWPM_NLA_MAPINFO_SEND_NUM = 2;
export const IWPM_NLA_MAPINFO_ACK_NUM = 3;
export const IWPM_NLA_HELLO_ABI_VERSION = 1;

export function nlType(client: number, op: number): number {
  return ((client & 0x3f) << 10) | (op & 0x3ff);
}
export function clientOf(type: number): number {
  return (type >> 10) & 0x3f;
}
export function opOf(type: number): number {
  return type & 0x3ff;
}

/** An address as received: decoded fields plus the kernel's exact 128 bytes (echoed verbatim, as rdma-core does). */
export interface WireAddr {
  addr: SockAddr;
  raw: Buffer;
}

interface Base {
  client: number;
  header: NlHeader;
}

export type KernelMessage =
  | (Base & { op: 'reg_pid'; echoSeq: number; ifname: string; ibdev: string; ulib: string })
  | (Base & { op: 'add'; echoSeq: number; local: WireAddr; flags: number; hasFlags: boolean })
  | (Base & { op: 'query'; echoSeq: number; local: WireAddr; remote: WireAddr; flags: number; hasFlags: boolean })
  | (Base & { op: 'remove'; echoSeq: number; local: WireAddr })
  | (Base & { op: 'mapinfo'; local: WireAddr; mapped: WireAddr; flags: number; hasFlags: boolean })
  | (Base & { op: 'mapinfo_num'; echoSeq: number; sendNum: number })
  | (Base & { op: 'hello'; abi: number })
  | (Base & { op: 'done'; status: number | undefined })
  | (Base & { op: 'error'; error: number; original: NlHeader | undefined })
  | (Base & { op: 'noop' })
  | (Base & { op: 'invalid'; opcode: number; reason: string })
  | (Base & { op: 'unknown_op'; opcode: number });

type Needs = { type: number; kind: 'u16' | 'u32' | 'addr' | 'string'; max?: number; name: string; optional?: boolean };

/**
 * Where the attributes of the message being decoded are: the value's offset in the
 * datagram and its length, by type (-1 = absent). Scratch shared by every decode
 * (decoding is synchronous), so a message costs no attribute table or views.
 */
const attrOff = new Int32Array(16);
const attrLen = new Int32Array(16);

/** Validate the scanned attributes against a policy; returns a reason or undefined. */
function check(buf: Buffer, needs: readonly Needs[]): string | undefined {
  for (const n of needs) {
    const o = attrOff[n.type]!;
    if (o < 0) {
      if (n.optional) continue;
      return `attribute ${n.type} (${n.name}) missing`;
    }
    const len = attrLen[n.type]!;
    switch (n.kind) {
      case 'u16':
        if (len < 2) return `attribute ${n.type} (${n.name}) is ${len} bytes, u16 needs 2`;
        break;
      case 'u32':
        if (len < 4) return `attribute ${n.type} (${n.name}) is ${len} bytes, u32 needs 4`;
        break;
      case 'addr': {
        // the cheap test first; decodeSockaddr only to say why not
        if (len >= SOCKADDR_STORAGE_SIZE) {
          const family = buf[o]! | (buf[o + 1]! << 8);
          if (family === AF_INET || family === AF_INET6) break;
        }
        const d = decodeSockaddr(buf.subarray(o, o + len));
        if (!d.ok) return `attribute ${n.type} (${n.name}): ${d.reason}`;
        break;
      }
      case 'string':
        if (n.max !== undefined && len > n.max) {
          return `attribute ${n.type} (${n.name}) is ${len} bytes, at most ${n.max} allowed`;
        }
        break;
    }
  }
  return undefined;
}

const u32Attr = (buf: Buffer, type: number): number => buf.readUInt32LE(attrOff[type]!);
const stringAttr = (buf: Buffer, type: number): string => readCString(buf.subarray(attrOff[type]!, attrOff[type]! + attrLen[type]!));
const flagsAttr = (buf: Buffer, type: number): number => (attrOff[type]! >= 0 ? u32Attr(buf, type) : 0);

/**
 * A validated address attribute (check() passed): a copy of its 128 bytes, and the
 * decoded fields, whose `ip` is a view into that copy.
 */
function wireAddr(buf: Buffer, type: number): WireAddr {
  const raw = copyBytes(buf, attrOff[type]!, SOCKADDR_STORAGE_SIZE);
  const family = raw[0]! | (raw[1]! << 8);
  const port = (raw[2]! << 8) | raw[3]!;
  if (family === AF_INET) return { addr: { family: AF_INET, port, ip: raw.subarray(4, 8), flowinfo: 0, scopeId: 0 }, raw };
  return {
    addr: { family: AF_INET6, port, ip: raw.subarray(8, 24), flowinfo: raw.readUInt32BE(4), scopeId: raw.readUInt32LE(24) },
    raw,
  };
}

const REG_PID_POLICY: Needs[] = [
  { type: IWPM_NLA_REG_PID_SEQ, kind: 'u32', name: 'REG_PID_SEQ' },
  { type: IWPM_NLA_REG_IF_NAME, kind: 'string', max: IWPM_IFNAME_SIZE, name: 'REG_IF_NAME' },
  { type: IWPM_NLA_REG_IBDEV_NAME, kind: 'string', max: IWPM_DEVNAME_SIZE, name: 'REG_IBDEV_NAME' },
  { type: IWPM_NLA_REG_ULIB_NAME, kind: 'string', max: IWPM_ULIBNAME_SIZE, name: 'REG_ULIB_NAME' },
];
const ADD_POLICY: Needs[] = [
  { type: IWPM_NLA_MANAGE_MAPPING_SEQ, kind: 'u32', name: 'MANAGE_MAPPING_SEQ' },
  { type: IWPM_NLA_MANAGE_ADDR, kind: 'addr', name: 'MANAGE_ADDR' },
  { type: IWPM_NLA_MANAGE_FLAGS, kind: 'u32', name: 'MANAGE_FLAGS', optional: true },
];
const QUERY_POLICY: Needs[] = [
  { type: IWPM_NLA_QUERY_MAPPING_SEQ, kind: 'u32', name: 'QUERY_MAPPING_SEQ' },
  { type: IWPM_NLA_QUERY_LOCAL_ADDR, kind: 'addr', name: 'QUERY_LOCAL_ADDR' },
  { type: IWPM_NLA_QUERY_REMOTE_ADDR, kind: 'addr', name: 'QUERY_REMOTE_ADDR' },
  { type: IWPM_NLA_QUERY_FLAGS, kind: 'u32', name: 'QUERY_FLAGS', optional: true },
];
const REMOVE_POLICY: Needs[] = [
  { type: IWPM_NLA_MANAGE_MAPPING_SEQ, kind: 'u32', name: 'MANAGE_MAPPING_SEQ' },
  { type: IWPM_NLA_MANAGE_ADDR, kind: 'addr', name: 'MANAGE_ADDR' },
];
const MAPINFO_POLICY: Needs[] = [
  { type: IWPM_NLA_MAPINFO_LOCAL_ADDR, kind: 'addr', name: 'MAPINFO_LOCAL_ADDR' },
  { type: IWPM_NLA_MAPINFO_MAPPED_ADDR, kind: 'addr', name: 'MAPINFO_MAPPED_ADDR' },
  { type: IWPM_NLA_MAPINFO_FLAGS, kind: 'u32', name: 'MAPINFO_FLAGS', optional: true },
];
const MAPINFO_NUM_POLICY: Needs[] = [
  { type: IWPM_NLA_MAPINFO_SEQ, kind: 'u32', name: 'MAPINFO_SEQ' },
  { type: IWPM_NLA_MAPINFO_SEND_NUM, kind: 'u32', name: 'MAPINFO_SEND_NUM' },
];
const HELLO_POLICY: Needs[] = [{ type: IWPM_NLA_HELLO_ABI_VERSION, kind: 'u16', name: 'HELLO_ABI_VERSION' }];

/** Policy and highest attribute type of each kernel → daemon op, by opcode. */
const POLICIES: readonly ({ policy: Needs[]; max: number } | undefined)[] = (() => {
  const t: ({ policy: Needs[]; max: number } | undefined)[] = [];
  t[RDMA_NL_IWPM_REG_PID] = { policy: REG_PID_POLICY, max: 4 };
  t[RDMA_NL_IWPM_ADD_MAPPING] = { policy: ADD_POLICY, max: 3 };
  t[RDMA_NL_IWPM_QUERY_MAPPING] = { policy: QUERY_POLICY, max: 4 };
  t[RDMA_NL_IWPM_REMOVE_MAPPING] = { policy: REMOVE_POLICY, max: 2 };
  t[RDMA_NL_IWPM_REMOTE_INFO] = undefined;
  t[RDMA_NL_IWPM_HANDLE_ERR] = undefined;
  t[RDMA_NL_IWPM_MAPINFO] = { policy: MAPINFO_POLICY, max: 3 };
  t[RDMA_NL_IWPM_MAPINFO_NUM] = { policy: MAPINFO_NUM_POLICY, max: 2 };
  t[RDMA_NL_IWPM_HELLO] = { policy: HELLO_POLICY, max: 1 };
  return t;
})();

/**
 * Decode one kernel → daemon message. FLAGS attributes are accepted when present
 * and default to 0, whatever the negotiated ABI (more robust than rdma-core, same result).
 */
export function decodeKernelMessage(m: NlMessage): KernelMessage {
  return decodeKernelMessageAt(m.raw, 0, m.raw.length);
}

/**
 * decodeKernelMessage for the message at buf[off, off + len) (a whole message:
 * messageLengthAt checked it). Nothing returned is a view into `buf` except the
 * header fields' numbers: addresses are copied.
 */
export function decodeKernelMessageAt(buf: Buffer, off: number, len: number): KernelMessage {
  const header = readHeader(buf, off);
  const client = clientOf(header.type);
  const body = off + NLMSG_HDRLEN;
  const end = off + len;
  if (header.type === NLMSG_DONE) return { op: 'done', client: 0, header, status: doneStatusAt(buf, body, len - NLMSG_HDRLEN) };
  if (header.type === NLMSG_ERROR) {
    const e = errorAt(buf, body, len - NLMSG_HDRLEN);
    if (!e) return { op: 'invalid', client: 0, header, opcode: -1, reason: 'NLMSG_ERROR shorter than 4 bytes' };
    return { op: 'error', client: 0, header, error: e.error, original: e.original };
  }
  if (header.type < 0x10) return { op: 'noop', client: 0, header };
  const opcode = opOf(header.type);
  const invalid = (reason: string): KernelMessage => ({ op: 'invalid', client, header, opcode, reason });

  const p = POLICIES[opcode];
  if (!p) return { op: 'unknown_op', client, header, opcode };
  const scanned = scanAttrs(buf, body, end, p.max, attrOff, attrLen);
  if (scanned) return invalid(scanned);
  const bad = check(buf, p.policy);
  if (bad) return invalid(bad);

  switch (opcode) {
    case RDMA_NL_IWPM_REG_PID: {
      const ibdev = stringAttr(buf, IWPM_NLA_REG_IBDEV_NAME);
      // The reply echoes the device name as a NUL string that the kernel accepts only up to 31 chars.
      if (ibdev.length > IWPM_DEVNAME_SIZE - 1) return invalid(`REG_IBDEV_NAME longer than ${IWPM_DEVNAME_SIZE - 1}`);
      return {
        op: 'reg_pid',
        client,
        header,
        echoSeq: u32Attr(buf, IWPM_NLA_REG_PID_SEQ),
        ifname: stringAttr(buf, IWPM_NLA_REG_IF_NAME),
        ibdev,
        ulib: stringAttr(buf, IWPM_NLA_REG_ULIB_NAME),
      };
    }
    case RDMA_NL_IWPM_ADD_MAPPING:
      return {
        op: 'add',
        client,
        header,
        echoSeq: u32Attr(buf, IWPM_NLA_MANAGE_MAPPING_SEQ),
        local: wireAddr(buf, IWPM_NLA_MANAGE_ADDR),
        flags: flagsAttr(buf, IWPM_NLA_MANAGE_FLAGS),
        hasFlags: attrOff[IWPM_NLA_MANAGE_FLAGS]! >= 0,
      };
    case RDMA_NL_IWPM_QUERY_MAPPING: {
      const local = wireAddr(buf, IWPM_NLA_QUERY_LOCAL_ADDR);
      const remote = wireAddr(buf, IWPM_NLA_QUERY_REMOTE_ADDR);
      if (local.addr.family !== remote.addr.family) return invalid('QUERY local and remote address families differ');
      return {
        op: 'query',
        client,
        header,
        echoSeq: u32Attr(buf, IWPM_NLA_QUERY_MAPPING_SEQ),
        local,
        remote,
        flags: flagsAttr(buf, IWPM_NLA_QUERY_FLAGS),
        hasFlags: attrOff[IWPM_NLA_QUERY_FLAGS]! >= 0,
      };
    }
    case RDMA_NL_IWPM_REMOVE_MAPPING:
      return {
        op: 'remove',
        client,
        header,
        echoSeq: u32Attr(buf, IWPM_NLA_MANAGE_MAPPING_SEQ),
        local: wireAddr(buf, IWPM_NLA_MANAGE_ADDR),
      };
    case RDMA_NL_IWPM_MAPINFO: {
      const local = wireAddr(buf, IWPM_NLA_MAPINFO_LOCAL_ADDR);
      const mapped = wireAddr(buf, IWPM_NLA_MAPINFO_MAPPED_ADDR);
      if (local.addr.family !== mapped.addr.family) return invalid('MAPINFO local and mapped address families differ');
      return {
        op: 'mapinfo',
        client,
        header,
        local,
        mapped,
        flags: flagsAttr(buf, IWPM_NLA_MAPINFO_FLAGS),
        hasFlags: attrOff[IWPM_NLA_MAPINFO_FLAGS]! >= 0,
      };
    }
    case RDMA_NL_IWPM_MAPINFO_NUM:
      return {
        op: 'mapinfo_num',
        client,
        header,
        echoSeq: u32Attr(buf, IWPM_NLA_MAPINFO_SEQ),
        sendNum: u32Attr(buf, IWPM_NLA_MAPINFO_SEND_NUM),
      };
    case RDMA_NL_IWPM_HELLO:
      return { op: 'hello', client, header, abi: buf.readUInt16LE(attrOff[IWPM_NLA_HELLO_ABI_VERSION]!) };
  }
  return { op: 'unknown_op', client, header, opcode };
}

// ---------------------------------------------------------------------------
// Daemon → kernel encoders. `seq` and `pid` are the daemon's header fields
// (per-client counter, own port id); flags are always NLM_F_REQUEST.

export interface DaemonHeader {
  seq: number;
  pid: number;
}

const req = (type: number, h: DaemonHeader) => ({ type, flags: NLM_F_REQUEST, seq: h.seq, pid: h.pid });

export function encodeHello(h: DaemonHeader, abi: number, client = RDMA_NL_IWCM): Buffer {
  return encodeMessage(req(nlType(client, RDMA_NL_IWPM_HELLO), h), [u16(IWPM_NLA_HELLO_ABI_VERSION, abi)]);
}

export function encodeMapinfoRequest(h: DaemonHeader, client: number, version: number): Buffer {
  return encodeMessage(req(nlType(client, RDMA_NL_IWPM_MAPINFO), h), [
    str(IWPM_NLA_MAPINFO_ULIB_NAME, IWPM_ULIB_NAME),
    u16(IWPM_NLA_MAPINFO_ULIB_VER, version),
  ]);
}

export function encodeRegPidReply(
  h: DaemonHeader,
  client: number,
  r: { kernelSeq: number; ibdev: string; version: number; err?: number },
): Buffer {
  return encodeMessage(req(nlType(client, RDMA_NL_IWPM_REG_PID), h), [
    u32(IWPM_NLA_RREG_PID_SEQ, r.kernelSeq),
    str(IWPM_NLA_RREG_IBDEV_NAME, r.ibdev),
    str(IWPM_NLA_RREG_ULIB_NAME, IWPM_ULIB_NAME),
    u16(IWPM_NLA_RREG_ULIB_VER, r.version),
    u16(IWPM_NLA_RREG_PID_ERR, r.err ?? 0),
  ]);
}

export function encodeManageReply(
  h: DaemonHeader,
  client: number,
  r: { kernelSeq: number; local: Buffer; mapped: Buffer },
): Buffer {
  return encodeMessage(req(nlType(client, RDMA_NL_IWPM_ADD_MAPPING), h), [
    u32(IWPM_NLA_RMANAGE_MAPPING_SEQ, r.kernelSeq),
    bytes(IWPM_NLA_RMANAGE_ADDR, r.local),
    bytes(IWPM_NLA_RMANAGE_MAPPED_LOC_ADDR, r.mapped),
    u16(IWPM_NLA_RMANAGE_MAPPING_ERR, 0),
  ]);
}

/** An address attribute: 128 raw bytes as the kernel sent them, or a SockAddr to encode. */
export type AddrValue = Buffer | SockAddr;

export interface ConnInfo {
  seqAttr: number;
  local: AddrValue;
  remote: AddrValue;
  mappedLocal: AddrValue;
  mappedRemote: AddrValue;
  err: number;
}

/** Size of RQUERY / REMOTE_INFO: header, u32, four 128-byte addresses, u16 (padded). */
const CONN_INFO_LEN = NLMSG_HDRLEN + 8 + 4 * (NLA_HDRLEN + SOCKADDR_STORAGE_SIZE) + 8;

function isRawAddr(v: AddrValue): v is Buffer {
  return v instanceof Uint8Array;
}

function putAddrAttr(buf: Buffer, off: number, type: number, v: AddrValue): number {
  buf.writeUInt16LE(NLA_HDRLEN + SOCKADDR_STORAGE_SIZE, off);
  buf.writeUInt16LE(type, off + 2);
  if (isRawAddr(v)) v.copy(buf, off + NLA_HDRLEN, 0, SOCKADDR_STORAGE_SIZE);
  else writeSockaddr(buf, off + NLA_HDRLEN, v);
  return off + NLA_HDRLEN + SOCKADDR_STORAGE_SIZE;
}

/**
 * The same bytes as encodeMessage with u32 SEQ, four address attributes and u16 ERR,
 * written straight into one buffer (the hot path: one per query, one per REMOTE_INFO).
 */
function encodeConnInfo(h: DaemonHeader, type: number, r: ConnInfo): Buffer {
  const addrs = [r.local, r.remote, r.mappedLocal, r.mappedRemote];
  for (const a of addrs) {
    if (isRawAddr(a) && a.length !== SOCKADDR_STORAGE_SIZE) {
      // not a 128-byte address: the generic encoder (attribute as long as the value)
      const v = addrs.map((x) => (isRawAddr(x) ? x : encodeSockaddr(x)));
      return encodeMessage(req(type, h), [
        u32(IWPM_NLA_RQUERY_MAPPING_SEQ, r.seqAttr),
        bytes(IWPM_NLA_RQUERY_LOCAL_ADDR, v[0]!),
        bytes(IWPM_NLA_RQUERY_REMOTE_ADDR, v[1]!),
        bytes(IWPM_NLA_RQUERY_MAPPED_LOC_ADDR, v[2]!),
        bytes(IWPM_NLA_RQUERY_MAPPED_REM_ADDR, v[3]!),
        u16(IWPM_NLA_RQUERY_MAPPING_ERR, r.err),
      ]);
    }
  }
  const buf = Buffer.allocUnsafe(CONN_INFO_LEN).fill(0);
  buf.writeUInt32LE(CONN_INFO_LEN, 0);
  buf.writeUInt16LE(type & 0xffff, 4);
  buf.writeUInt16LE(NLM_F_REQUEST, 6);
  buf.writeUInt32LE(h.seq >>> 0, 8);
  buf.writeUInt32LE(h.pid >>> 0, 12);
  let off = NLMSG_HDRLEN;
  buf.writeUInt16LE(NLA_HDRLEN + 4, off);
  buf.writeUInt16LE(IWPM_NLA_RQUERY_MAPPING_SEQ, off + 2);
  buf.writeUInt32LE(r.seqAttr >>> 0, off + 4);
  off += 8;
  off = putAddrAttr(buf, off, IWPM_NLA_RQUERY_LOCAL_ADDR, r.local);
  off = putAddrAttr(buf, off, IWPM_NLA_RQUERY_REMOTE_ADDR, r.remote);
  off = putAddrAttr(buf, off, IWPM_NLA_RQUERY_MAPPED_LOC_ADDR, r.mappedLocal);
  off = putAddrAttr(buf, off, IWPM_NLA_RQUERY_MAPPED_REM_ADDR, r.mappedRemote);
  buf.writeUInt16LE(NLA_HDRLEN + 2, off);
  buf.writeUInt16LE(IWPM_NLA_RQUERY_MAPPING_ERR, off + 2);
  buf.writeUInt16LE(r.err & 0xffff, off + 4);
  return buf;
}

/** RQUERY: the answer to QUERY_MAPPING (seqAttr = the kernel's header seq of the query). */
export function encodeQueryReply(h: DaemonHeader, client: number, r: ConnInfo): Buffer {
  return encodeConnInfo(h, nlType(client, RDMA_NL_IWPM_QUERY_MAPPING), r);
}

/** REMOTE_INFO: the connecting peer's real address for the passive kernel (seqAttr 0, err 0). */
export function encodeRemoteInfo(h: DaemonHeader, client: number, r: Omit<ConnInfo, 'seqAttr' | 'err'>): Buffer {
  return encodeConnInfo(h, nlType(client, RDMA_NL_IWPM_REMOTE_INFO), {
    seqAttr: 0,
    local: r.local,
    remote: r.remote,
    mappedLocal: r.mappedLocal,
    mappedRemote: r.mappedRemote,
    err: 0,
  });
}

export function encodeHandleErr(h: DaemonHeader, client: number, errSeq: number, code: number): Buffer {
  return encodeMessage(req(nlType(client, RDMA_NL_IWPM_HANDLE_ERR), h), [
    u32(IWPM_NLA_ERR_SEQ, errSeq),
    u16(IWPM_NLA_ERR_CODE, code),
  ]);
}

export function encodeMapinfoNumReply(
  h: DaemonHeader,
  client: number,
  r: { kernelSeq: number; sendNum: number; ackNum: number },
): Buffer {
  return encodeMessage(req(nlType(client, RDMA_NL_IWPM_MAPINFO_NUM), h), [
    u32(IWPM_NLA_MAPINFO_SEQ, r.kernelSeq),
    u32(IWPM_NLA_MAPINFO_SEND_NUM, r.sendNum),
    u32(IWPM_NLA_MAPINFO_ACK_NUM, r.ackNum),
  ]);
}

// ---------------------------------------------------------------------------
// Kernel → daemon encoders (for tests, the load generator and benchmarks).
// The kernel sends pid 0 and NLM_F_REQUEST, MAPINFO records NLM_F_MULTI with seq 0.

export interface KernelHeader {
  seq: number;
}

const kreq = (type: number, h: KernelHeader, flags = NLM_F_REQUEST) => ({ type, flags, seq: h.seq, pid: 0 });

function fixedString(s: string, size: number): Buffer {
  const b = Buffer.alloc(size);
  b.write(s.slice(0, size - 1), 'latin1');
  return b;
}

export function encodeKernelRegPid(
  h: KernelHeader,
  r: { echoSeq: number; ifname: string; ibdev: string; ulib?: string },
  client = RDMA_NL_IWCM,
): Buffer {
  return encodeMessage(kreq(nlType(client, RDMA_NL_IWPM_REG_PID), h), [
    u32(IWPM_NLA_REG_PID_SEQ, r.echoSeq),
    bytes(IWPM_NLA_REG_IF_NAME, fixedString(r.ifname, IWPM_IFNAME_SIZE)),
    bytes(IWPM_NLA_REG_IBDEV_NAME, fixedString(r.ibdev, IWPM_DEVNAME_SIZE)),
    bytes(IWPM_NLA_REG_ULIB_NAME, fixedString(r.ulib ?? IWPM_ULIB_NAME, IWPM_ULIBNAME_SIZE)),
  ]);
}

/** flags === undefined encodes the ABI 3 layout (no FLAGS attribute). */
export function encodeKernelAdd(
  h: KernelHeader,
  r: { echoSeq: number; local: Buffer; flags?: number },
  client = RDMA_NL_IWCM,
): Buffer {
  const attrs = [u32(IWPM_NLA_MANAGE_MAPPING_SEQ, r.echoSeq), bytes(IWPM_NLA_MANAGE_ADDR, r.local)];
  if (r.flags !== undefined) attrs.push(u32(IWPM_NLA_MANAGE_FLAGS, r.flags));
  return encodeMessage(kreq(nlType(client, RDMA_NL_IWPM_ADD_MAPPING), h), attrs);
}

export function encodeKernelQuery(
  h: KernelHeader,
  r: { echoSeq: number; local: Buffer; remote: Buffer; flags?: number },
  client = RDMA_NL_IWCM,
): Buffer {
  const attrs = [
    u32(IWPM_NLA_QUERY_MAPPING_SEQ, r.echoSeq),
    bytes(IWPM_NLA_QUERY_LOCAL_ADDR, r.local),
    bytes(IWPM_NLA_QUERY_REMOTE_ADDR, r.remote),
  ];
  if (r.flags !== undefined) attrs.push(u32(IWPM_NLA_QUERY_FLAGS, r.flags));
  return encodeMessage(kreq(nlType(client, RDMA_NL_IWPM_QUERY_MAPPING), h), attrs);
}

export function encodeKernelRemove(h: KernelHeader, r: { echoSeq: number; local: Buffer }, client = RDMA_NL_IWCM): Buffer {
  return encodeMessage(kreq(nlType(client, RDMA_NL_IWPM_REMOVE_MAPPING), h), [
    u32(IWPM_NLA_MANAGE_MAPPING_SEQ, r.echoSeq),
    bytes(IWPM_NLA_MANAGE_ADDR, r.local),
  ]);
}

export function encodeKernelMapinfo(r: { local: Buffer; mapped: Buffer; flags?: number }, client = RDMA_NL_IWCM): Buffer {
  const attrs = [bytes(IWPM_NLA_MAPINFO_LOCAL_ADDR, r.local), bytes(IWPM_NLA_MAPINFO_MAPPED_ADDR, r.mapped)];
  if (r.flags !== undefined) attrs.push(u32(IWPM_NLA_MAPINFO_FLAGS, r.flags));
  return encodeMessage(kreq(nlType(client, RDMA_NL_IWPM_MAPINFO), { seq: 0 }, NLM_F_MULTI), attrs);
}

export function encodeKernelMapinfoNum(h: KernelHeader, sendNum: number, client = RDMA_NL_IWCM): Buffer {
  return encodeMessage(kreq(nlType(client, RDMA_NL_IWPM_MAPINFO_NUM), h), [
    u32(IWPM_NLA_MAPINFO_SEQ, 0),
    u32(IWPM_NLA_MAPINFO_SEND_NUM, sendNum),
  ]);
}

export function encodeKernelHello(h: KernelHeader, abi: number, client = RDMA_NL_IWCM): Buffer {
  return encodeMessage(kreq(nlType(client, RDMA_NL_IWPM_HELLO), h), [u16(IWPM_NLA_HELLO_ABI_VERSION, abi)]);
}

// ---------------------------------------------------------------------------
// Daemon → kernel decoders (for tests and tools): attribute tables by op.

export function decodeDaemonAttrs(m: NlMessage): AttrTable | undefined {
  const p = parseAttrs(m.payload, 8);
  return p.ok ? p.attrs : undefined;
}
