/**
 * KernelSim: a user-space stand-in for the Linux kernel's iw_cm port-mapper client
 * (drivers/infiniband/core/iwpm_msg.c, iwpm_util.c, netlink.c, iwcm.c: iw_cm_map),
 * speaking IWPM over NETLINK_USERSOCK with the project's native NetlinkSocket.
 *
 * The daemon under test is started with `--kernel-port <sim.portId> --nl-group <G>`;
 * it treats this socket's port id as "the kernel". Everything else follows the real
 * kernel (spec sections 1.4-1.7, 2, 3.2-3.4 and 10):
 *
 *   - REG_PID goes by multicast to group G (never unicast); ADD/QUERY/REMOVE, HELLO
 *     replies, MAPINFO records and MAPINFO_NUM go by unicast to the learned daemon
 *     port id (iwpm_user_pid), which is taken from the header nlmsg_pid of a HELLO,
 *     a MAPINFO request or a good REG_PID reply.
 *   - Registration UNDEF / VALID / INCOMPL; REG_PID is sent before an add/query when
 *     not VALID; unicast failures forget the daemon (pid := -1) for ADD and REMOVE.
 *   - Every message the daemon sends is handled like rdma_nl_rcv_skb: skipped
 *     without NLM_F_REQUEST or with a control type; NLMSG_ERROR(-EINVAL, original
 *     message echoed) for an op without a callback, a bad client or (ABI 3) HELLO;
 *     otherwise the handler runs as a dump callback and is followed by NLMSG_DONE
 *     (type 3, NLM_F_MULTI, 20 bytes, seq = daemon seq, pid = sender, s32 = handler
 *     result: 0, -22 on rejection, -22 after every REMOTE_INFO).
 *   - Attributes are validated like the kernel's policies (NLA_NUL_STRING len 31,
 *     addresses >= 128 bytes, u16/u32 minimum lengths, every index mandatory);
 *     replies are matched by their SEQ attribute against outstanding request seqs,
 *     never by header; content checks as in iwpm_*_cb (ibdev, ulib name and version,
 *     local/remote address equality, mapped family).
 *   - A mapinfo table like iwpm_create_mapinfo (a record per add/query that got past
 *     registration, failed ones as local -> local), replayed on a MAPINFO request:
 *     several records per datagram, each datagram ending in a bare 16-byte
 *     NLMSG_DONE, then MAPINFO_NUM {SEQ 0, SEND_NUM} with a fresh header seq; an
 *     empty table sends nothing.
 *
 * Facts from the real kernel (Debian 6.1 under qemu, docs/real-kernel.md) modelled here:
 *
 *   - The dump NLMSG_DONE of a daemon message comes after what its handler sends
 *     (HELLO reply, then DONE; MAPINFO records, their bare DONEs and MAPINFO_NUM, then
 *     the MAPINFO request's DONE, which thus marks "replay finished", also for an
 *     empty table). `doneTiming: 'before-handler'` remains as a robustness check.
 *   - 12 records per replay datagram with 4 KiB pages (26 records: 12 + 12 + 2).
 *   - After a HELLO or MAPINFO request the registration is INCOMPL, yet ADD/QUERY
 *     and REMOVE_MAPPING already go to the new daemon by unicast; REMOVEs of replayed
 *     mappings can reach it before any REG_PID (only add/query register first).
 *   - REG_PID multicast to a group nobody has joined fails (-ESRCH): the kernel marks
 *     the port mapper unavailable and maps nothing until a daemon's HELLO (checked
 *     here with /proc/net/netlink, since a USERSOCK multicast send cannot tell).
 *   - A unicast ADD that cannot be delivered (daemon gone) forgets the daemon's pid;
 *     the registration stays VALID, so nothing more is asked until a new HELLO.
 *   - The 6.1 late-reply bug: a request object (iwpm_nlmsg_request) is never freed
 *     and stays findable by its seq after its waiter returned (timed out or answered),
 *     with req_buffer pointing into the dead stack frame of iw_cm_map(). An ADD,
 *     QUERY or REG_PID reply naming such a request makes iwpm_add_mapping_cb /
 *     iwpm_add_and_query_mapping_cb / iwpm_register_pid_cb read and write that stale
 *     stack: an oops, or silent stack corruption. The simulator records it as a
 *     kernel crash (`crashes`, and a rejection, so problems() lists it). A late
 *     HANDLE_ERR only touches the request object itself and is harmless.
 *
 * Deliberately stricter than the kernel (recorded as rejections so tests see them):
 * replies from a sender other than the learned daemon port id, a header nlmsg_pid
 * that differs from the sender's port id, and a reply of the wrong op for the request
 * its SEQ names. When a reply fails validation but names a waiting request in a
 * readable SEQ attribute, that request resolves at once as 'rejected-reply' (the real
 * kernel would let it time out after 10 s).
 *
 * Daemon -> kernel messages are decoded here independently of src/codec (the
 * daemon's own decoders); kernel -> daemon messages are built with src/codec's
 * encodeKernel* helpers, whose bytes test/sim/kernel-sim.test.ts checks against the
 * spec's golden examples.
 */
import { readFileSync } from 'node:fs';
import { getSystemErrorName } from 'node:util';
import { native } from '../../src/native/index.js';
import { NETLINK_USERSOCK, type NetlinkBatch, type NetlinkSocket } from '../../src/native/types.js';
import { encodeDone } from '../../src/codec/netlink.js';
import {
  encodeKernelAdd,
  encodeKernelHello,
  encodeKernelMapinfo,
  encodeKernelMapinfoNum,
  encodeKernelQuery,
  encodeKernelRegPid,
  encodeKernelRemove,
} from '../../src/codec/iwpm.js';
import { type SockAddr, encodeSockaddr, parseIp } from '../../src/codec/sockaddr.js';

// ---------------------------------------------------------------------------
// Constants (kernel names).

export const NLMSG_HDRLEN = 16;
export const NLMSG_ERROR = 2;
export const NLMSG_DONE = 3;
export const NLMSG_MIN_TYPE = 0x10;
export const NLM_F_REQUEST = 0x1;
export const NLM_F_MULTI = 0x2;
export const NLM_F_ACK = 0x4;
export const NLM_F_CAPPED = 0x100;
export const EINVAL = 22;
export const ENOMEM = 12;
export const RDMA_NL_IWCM = 2;
export const RDMA_NL_C4IW = 3;
export const RDMA_NL_NUM_CLIENTS = 6;
export const IWPM_ULIB_NAME = 'iWarpPortMapperUser';
export const IWPM_UABI_VERSION_MIN = 3;
export const IWPM_UABI_VERSION = 4;
export const IWPM_USER_LIB_INFO_ERR = 15;
export const IWPM_REMOTE_QUERY_REJECT = 16;
export const IWPM_PID_UNDEFINED = -1;
export const IWPM_PID_UNAVAILABLE = -2;
/** NLMSG_GOODSIZE with 4 KiB pages on x86-64: min(PAGE_SIZE, 8192) - SKB_DATA_ALIGN(sizeof(skb_shared_info)). */
export const NLMSG_GOODSIZE_4K = 4096 - 320;
export const IWPM_MAPINFO_SKB_COUNT = 20;

export const OP = {
  REG_PID: 0,
  ADD_MAPPING: 1,
  QUERY_MAPPING: 2,
  REMOVE_MAPPING: 3,
  REMOTE_INFO: 4,
  HANDLE_ERR: 5,
  MAPINFO: 6,
  MAPINFO_NUM: 7,
  HELLO: 8,
} as const;

export const nlType = (client: number, op: number): number => ((client & 0x3f) << 10) | (op & 0x3ff);

// ---------------------------------------------------------------------------
// Public types.

export type Registration = 'UNDEF' | 'VALID' | 'INCOMPL';
export type DoneTiming = 'after-handler' | 'before-handler';

export interface KernelSimOptions {
  /** ABI the simulated kernel speaks: 4 (current kernels) or 3 (no HELLO, no FLAGS). */
  abi: 3 | 4;
  /** Multicast group number REG_PID is sent to (the daemon joins it with --nl-group). Default 2. */
  group?: number;
  /** How long add/query/reg_pid wait for an answer (the kernel's IWPM_NL_TIMEOUT is 10 s). Default 10000. */
  replyTimeoutMs?: number;
  /**
   * When the dump NLMSG_DONE for a daemon message goes out relative to what the handler
   * itself sends (HELLO reply, MAPINFO replay). The real 6.1 kernel sends it after
   * (default; docs/real-kernel.md sections 1-2): HELLO reply then DONE, replay records +
   * MAPINFO_NUM then the request's DONE. 'before-handler' checks that a daemon does not
   * depend on that order.
   */
  doneTiming?: DoneTiming;
  /** Legacy kernels also registered client 3 (C4IW). Default false: client 3 gets NLMSG_ERROR. */
  acceptClient3?: boolean;
  /** Replay datagram budget (bytes) and count limit, as iwpm_send_mapinfo. */
  mapinfoGoodSize?: number;
  mapinfoMaxDatagrams?: number;
  /**
   * Hold back the kernel's answer to a daemon HELLO (HELLO reply or NLMSG_ERROR, and the
   * DONE) by this many ms, so that kernel requests reach a daemon still negotiating.
   * The state change itself is immediate. Default 0.
   */
  handshakeDelayMs?: number;
  /** Receive buffer of the simulator's socket. Default 8 MiB. */
  rcvbufBytes?: number;
  /** Defaults for REG_PID: netdev and RDMA device names. */
  ifname?: string;
  ibdev?: string;
}

export interface DeviceInfo {
  ifname?: string;
  ibdev?: string;
  /** REG_ULIB_NAME the kernel sends (always "iWarpPortMapperUser" on real kernels). */
  ulib?: string;
}

/** A daemon -> kernel message, decoded the way the kernel's callbacks read it. */
export type DaemonMsg =
  | { op: 'hello'; client: number; abi: number }
  | { op: 'mapinfo_req'; client: number; ulib: string; version: number }
  | { op: 'reg_pid'; client: number; seqAttr: number; ibdev: string; ulib: string; version: number; err: number }
  | { op: 'add'; client: number; seqAttr: number; local: Buffer; mapped: Buffer; err: number }
  | {
      op: 'query' | 'remote_info';
      client: number;
      seqAttr: number;
      local: Buffer;
      remote: Buffer;
      mappedLocal: Buffer;
      mappedRemote: Buffer;
      err: number;
    }
  | { op: 'handle_err'; client: number; seqAttr: number; code: number }
  | { op: 'mapinfo_num'; client: number; seqAttr: number; sendNum: number; ackNum: number }
  /** Failed the kernel's attribute policy (handler returned -EINVAL). */
  | { op: 'invalid'; client: number; opcode: number; reason: string; seqAttr?: number }
  /** No callback for the type (kernel sent NLMSG_ERROR -EINVAL). */
  | { op: 'refused'; client: number; opcode: number; reason: string }
  /** Skipped by rdma_nl_rcv_skb (no NLM_F_REQUEST, control type). */
  | { op: 'skipped'; reason: string }
  /** Header unusable: the rest of the datagram was dropped. */
  | { op: 'malformed'; reason: string };

export interface ReceivedEntry {
  /** Position in the log. */
  index: number;
  atMs: number;
  /** Sender port id (sockaddr_nl.nl_pid from recvfrom). */
  sender: number;
  /** Which datagram (counter over all datagrams received) and position inside it. */
  datagram: number;
  position: number;
  /** The message bytes (copied), header included; for 'malformed', the rest of the datagram. */
  raw: Buffer;
  header: { len: number; type: number; flags: number; seq: number; pid: number };
  msg: DaemonMsg;
  /** What the kernel answered: dump NLMSG_DONE with this status, an NLMSG_ERROR, or nothing. */
  answer: { kind: 'done'; status: number } | { kind: 'error'; errno: number } | { kind: 'none' };
  /** Why the kernel (or this simulator's stricter rules) did not take this message, if so. */
  rejected?: string;
  /** Outstanding request this message answered, if any. */
  answered?: { op: PendingOp; seq: number };
  /**
   * Refused as rdma-core's protocol expects on this kernel (HELLO and client-3 MAPINFO
   * requests on ABI 3): listed in `rejections` but not in problems().
   */
  expectedRefusal?: boolean;
}

export interface RejectionEntry {
  entry: ReceivedEntry;
  reason: string;
}

export type PendingOp = 'reg_pid' | 'add' | 'query';

export type RequestOutcome<Ok> =
  | ({ kind: 'ok'; seq: number; reply: ReceivedEntry } & Ok)
  /** HANDLE_ERR (or RQUERY with ERR 16, or REG_PID/ADD/QUERY content checks failing: 15). */
  | { kind: 'error'; seq: number; code: number; reply: ReceivedEntry }
  | { kind: 'timeout'; seq: number; closed?: boolean }
  /** The daemon answered but the answer was unusable (reason says why). */
  | { kind: 'rejected-reply'; seq: number; reason: string; reply: ReceivedEntry }
  /** The kernel did not even ask (registration failed, no daemon pid, send failed, ABI 3 + flags). */
  | { kind: 'unmapped'; seq?: number; reason: string };

export type RegPidOutcome = RequestOutcome<{ version: number }>;
export type AddOutcome = RequestOutcome<{ mapped: SockAddr; mappedRaw: Buffer }>;
export type QueryOutcome = RequestOutcome<{
  mapped: SockAddr;
  mappedRaw: Buffer;
  /** As the kernel uses it: a wildcard IP in MAPPED_REM is replaced by the real remote IP. */
  mappedRemote: SockAddr;
  mappedRemoteRaw: Buffer;
}>;
export type BarrierOutcome =
  | { kind: 'ok'; seq: number; sendNum: number; ackNum: number; reply: ReceivedEntry }
  | { kind: 'timeout'; seq: number; closed?: boolean };

export interface MapinfoRecord {
  client: number;
  local: Buffer;
  mapped: Buffer;
  flags: number;
}

export interface ReplayRecord {
  /** Header seq of the daemon's MAPINFO request. */
  requestSeq: number;
  client: number;
  records: number;
  datagrams: Buffer[];
  /** Header seq of the MAPINFO_NUM the simulator sent (undefined: none sent). */
  numSeq?: number;
  /** Set when the kernel stopped early ("Insufficient skbs for map info"). */
  truncated?: boolean;
  ack?: BarrierOutcome;
}

export interface RemoteInfoRecord {
  client: number;
  local: Buffer;
  remote: Buffer;
  mappedLocal: Buffer;
  mappedRemote: Buffer;
  entry: ReceivedEntry;
}

interface Pending {
  op: PendingOp;
  seq: number;
  client: number;
  /** What the reply is checked against. */
  ibdev?: string;
  local?: Buffer;
  remote?: Buffer;
  timer: NodeJS.Timeout;
  resolve: (o: RequestOutcome<Record<string, unknown>>) => void;
}

/** A request the kernel's waiter is done with (timed out, or completed by a reply). */
interface Finished {
  op: PendingOp;
  seq: number;
  how: 'timed-out' | 'answered';
  atMs: number;
  /** The log entry that completed it ('answered'). */
  by?: number;
}

/** FIFO bound on remembered finished requests (a long stress test sends many). */
const MAX_FINISHED = 1 << 16;

export interface CrashRecord {
  /** The reply that would have crashed the kernel. */
  entry: ReceivedEntry;
  op: PendingOp;
  seq: number;
  /** What had happened to the request before this reply. */
  how: 'timed-out' | 'answered';
  /** When (simulator ms) the request timed out or was answered. */
  finishedAtMs: number;
  reason: string;
}

interface Barrier {
  seq: number;
  timer?: NodeJS.Timeout;
  resolve?: (o: BarrierOutcome) => void;
  replay?: ReplayRecord;
}

/**
 * Whether any NETLINK_USERSOCK socket of this network namespace has joined `group`
 * (/proc/net/netlink: protocol column 2, Groups = the first 32 groups as hex). When
 * the table cannot be read, assume so (the multicast then goes out as before).
 */
export function groupHasListener(group: number): boolean {
  let text: string;
  try {
    text = readFileSync('/proc/net/netlink', 'utf8');
  } catch {
    return true;
  }
  const bit = 2 ** (group - 1);
  for (const line of text.split('\n').slice(1)) {
    const f = line.trim().split(/\s+/);
    if (f.length < 4 || f[1] !== '2') continue;
    const groups = parseInt(f[3]!, 16);
    if (Number.isFinite(groups) && Math.floor(groups / bit) % 2 === 1) return true;
  }
  return false;
}

// ---------------------------------------------------------------------------
// Small address helpers (independent of src/codec's decoder).

/** Decode a 128-byte sockaddr_storage attribute (kernel layout). */
export function sockaddrOf(b: Buffer): SockAddr {
  const family = b.readUInt16LE(0);
  const port = b.readUInt16BE(2);
  if (family === 10) {
    return { family: 10, port, ip: Buffer.from(b.subarray(8, 24)), flowinfo: b.readUInt32BE(4), scopeId: b.readUInt32LE(24) };
  }
  return { family: 2, port, ip: Buffer.from(b.subarray(4, 8)), flowinfo: 0, scopeId: 0 };
}

/** iwpm_compare_sockaddr == 0: same family, address and port (AF_INET/AF_INET6 only). */
export function sameSockaddr(a: Buffer, b: Buffer): boolean {
  const fa = a.readUInt16LE(0);
  if (fa !== b.readUInt16LE(0)) return false;
  if (a.readUInt16BE(2) !== b.readUInt16BE(2)) return false;
  if (fa === 2) return a.subarray(4, 8).equals(b.subarray(4, 8));
  if (fa === 10) return a.subarray(8, 24).equals(b.subarray(8, 24));
  return false;
}

function isWildcardRaw(b: Buffer): boolean {
  const fam = b.readUInt16LE(0);
  const ip = fam === 10 ? b.subarray(8, 24) : b.subarray(4, 8);
  return ip.every((x) => x === 0);
}

/** "127.0.0.1:5000", "[::1]:5000" or a SockAddr → SockAddr. */
export function addr(a: SockAddr | string, port?: number): SockAddr {
  if (typeof a !== 'string') return a;
  if (port !== undefined) return parseIp(a, port);
  const m = /^\[([^\]]+)\]:(\d+)$/.exec(a) ?? /^([^:]+):(\d+)$/.exec(a);
  if (!m) throw new Error(`address "${a}" needs ip:port or [ip6]:port`);
  return parseIp(m[1]!, Number(m[2]));
}

export function fmtSockaddr(b: Buffer | SockAddr): string {
  const a = Buffer.isBuffer(b) ? sockaddrOf(b) : b;
  if (a.family === 2) return `${[...a.ip].join('.')}:${a.port}`;
  const g: string[] = [];
  for (let i = 0; i < 16; i += 2) g.push(a.ip.readUInt16BE(i).toString(16));
  return `[${g.join(':')}]:${a.port}`;
}

const rawOf = (a: SockAddr | Buffer): Buffer => (Buffer.isBuffer(a) ? a : encodeSockaddr(a));

// ---------------------------------------------------------------------------
// Kernel-style attribute parsing: nlmsg_validate/parse_deprecated (liberal) with the
// iwpm policies, then iwpm_validate_nlmsg_attr (every index 1..max-1 present).

type PolicyKind = 'u16' | 'u32' | 'addr' | 'nulstr';

interface ParseOk {
  ok: true;
  tb: (Buffer | undefined)[];
}
interface ParseErr {
  ok: false;
  reason: string;
  tb: (Buffer | undefined)[];
}

/** `policy[i]` describes attribute index i (1-based); policy.length == IWPM_NLA_*_MAX. */
export function kernelParse(payload: Buffer, policy: readonly (PolicyKind | undefined)[]): ParseOk | ParseErr {
  const maxtype = policy.length - 1;
  const tb: (Buffer | undefined)[] = new Array(policy.length).fill(undefined);
  let off = 0;
  let firstError: string | undefined;
  // nla_for_each_attr: continue while nla_ok(nla, rem).
  while (payload.length - off >= 4) {
    const rem = payload.length - off;
    const nlaLen = payload.readUInt16LE(off);
    if (nlaLen < 4 || nlaLen > rem) break; // !nla_ok: leftover bytes only warn (liberal)
    const type = payload.readUInt16LE(off + 2) & 0x3fff;
    const data = payload.subarray(off + 4, off + nlaLen);
    if (type > 0 && type <= maxtype) {
      const kind = policy[type];
      const bad = kind ? validateAttr(kind, data) : undefined;
      if (bad && !firstError) firstError = `attribute ${type}: ${bad}`;
      tb[type] = data;
    }
    off += (nlaLen + 3) & ~3;
  }
  if (firstError) return { ok: false, reason: `Invalid attribute (${firstError})`, tb };
  for (let i = 1; i <= maxtype; i++) {
    if (!tb[i]) return { ok: false, reason: `Invalid NULL attribute: attribute ${i} missing`, tb };
  }
  return { ok: true, tb };
}

function validateAttr(kind: PolicyKind, d: Buffer): string | undefined {
  switch (kind) {
    case 'u16':
      return d.length < 2 ? `u16 attribute is ${d.length} bytes` : undefined;
    case 'u32':
      return d.length < 4 ? `u32 attribute is ${d.length} bytes` : undefined;
    case 'addr':
      return d.length < 128 ? `address attribute is ${d.length} bytes, the policy needs 128` : undefined;
    case 'nulstr': {
      // NLA_NUL_STRING, .len = 31
      const minlen = Math.min(d.length, 32);
      if (minlen === 0 || d.subarray(0, minlen).indexOf(0) < 0) return 'string is not NUL-terminated within 32 bytes';
      let len = d.length;
      if (d[len - 1] === 0) len--;
      if (len > 31) return `string attribute is ${len} bytes (after its trailing NUL), the policy allows 31`;
      return undefined;
    }
  }
}

const cstr = (b: Buffer): string => {
  const n = b.indexOf(0);
  return b.toString('latin1', 0, n < 0 ? b.length : n);
};

// Policies (index 0 unused), current kernels (iwpm_msg.c).
const RESP_REG_POLICY: (PolicyKind | undefined)[] = [undefined, 'u32', 'nulstr', 'nulstr', 'u16', 'u16'];
const RESP_ADD_POLICY: (PolicyKind | undefined)[] = [undefined, 'u32', 'addr', 'addr', 'u16'];
const RESP_QUERY_POLICY: (PolicyKind | undefined)[] = [undefined, 'u32', 'addr', 'addr', 'addr', 'addr', 'u16'];
const RESP_MAPINFO_POLICY: (PolicyKind | undefined)[] = [undefined, 'nulstr', 'u16'];
const ACK_MAPINFO_POLICY: (PolicyKind | undefined)[] = [undefined, 'u32', 'u32', 'u32'];
const MAP_ERROR_POLICY: (PolicyKind | undefined)[] = [undefined, 'u32', 'u16'];
const HELLO_POLICY: (PolicyKind | undefined)[] = [undefined, 'u16'];

/** Decode one daemon message with the kernel's policy for its op (no state). */
export function decodeDaemonMessage(raw: Buffer): DaemonMsg {
  const type = raw.readUInt16LE(4);
  const flags = raw.readUInt16LE(6);
  if (!(flags & NLM_F_REQUEST)) return { op: 'skipped', reason: `no NLM_F_REQUEST (flags 0x${flags.toString(16)})` };
  if (type < NLMSG_MIN_TYPE) return { op: 'skipped', reason: `control type ${type}` };
  const client = (type >> 10) & 0x3f;
  const opcode = type & 0x3ff;
  const payload = raw.subarray(NLMSG_HDRLEN);
  const invalid = (reason: string, tb?: (Buffer | undefined)[]): DaemonMsg => {
    const s = tb?.[1];
    return { op: 'invalid', client, opcode, reason, seqAttr: s && s.length >= 4 ? s.readUInt32LE(0) : undefined };
  };
  switch (opcode) {
    case OP.REG_PID: {
      const p = kernelParse(payload, RESP_REG_POLICY);
      if (!p.ok) return invalid(p.reason, p.tb);
      const t = p.tb as Buffer[];
      return {
        op: 'reg_pid',
        client,
        seqAttr: t[1]!.readUInt32LE(0),
        ibdev: cstr(t[2]!),
        ulib: cstr(t[3]!),
        version: t[4]!.readUInt16LE(0),
        err: t[5]!.readUInt16LE(0),
      };
    }
    case OP.ADD_MAPPING: {
      const p = kernelParse(payload, RESP_ADD_POLICY);
      if (!p.ok) return invalid(p.reason, p.tb);
      const t = p.tb as Buffer[];
      return {
        op: 'add',
        client,
        seqAttr: t[1]!.readUInt32LE(0),
        local: Buffer.from(t[2]!.subarray(0, 128)),
        mapped: Buffer.from(t[3]!.subarray(0, 128)),
        err: t[4]!.readUInt16LE(0),
      };
    }
    case OP.QUERY_MAPPING:
    case OP.REMOTE_INFO: {
      const p = kernelParse(payload, RESP_QUERY_POLICY);
      if (!p.ok) return invalid(p.reason, p.tb);
      const t = p.tb as Buffer[];
      return {
        op: opcode === OP.QUERY_MAPPING ? 'query' : 'remote_info',
        client,
        seqAttr: t[1]!.readUInt32LE(0),
        local: Buffer.from(t[2]!.subarray(0, 128)),
        remote: Buffer.from(t[3]!.subarray(0, 128)),
        mappedLocal: Buffer.from(t[4]!.subarray(0, 128)),
        mappedRemote: Buffer.from(t[5]!.subarray(0, 128)),
        err: t[6]!.readUInt16LE(0),
      };
    }
    case OP.HANDLE_ERR: {
      const p = kernelParse(payload, MAP_ERROR_POLICY);
      if (!p.ok) return invalid(p.reason, p.tb);
      return { op: 'handle_err', client, seqAttr: p.tb[1]!.readUInt32LE(0), code: p.tb[2]!.readUInt16LE(0) };
    }
    case OP.MAPINFO: {
      const p = kernelParse(payload, RESP_MAPINFO_POLICY);
      if (!p.ok) return invalid(p.reason);
      return { op: 'mapinfo_req', client, ulib: cstr(p.tb[1]!), version: p.tb[2]!.readUInt16LE(0) };
    }
    case OP.MAPINFO_NUM: {
      const p = kernelParse(payload, ACK_MAPINFO_POLICY);
      if (!p.ok) return invalid(p.reason, p.tb);
      return {
        op: 'mapinfo_num',
        client,
        seqAttr: p.tb[1]!.readUInt32LE(0),
        sendNum: p.tb[2]!.readUInt32LE(0),
        ackNum: p.tb[3]!.readUInt32LE(0),
      };
    }
    case OP.HELLO: {
      const p = kernelParse(payload, HELLO_POLICY);
      if (!p.ok) return invalid(p.reason);
      return { op: 'hello', client, abi: p.tb[1]!.readUInt16LE(0) };
    }
    default:
      return { op: 'refused', client, opcode, reason: `no callback for op ${opcode}` };
  }
}

// ---------------------------------------------------------------------------

export interface Spoofer {
  readonly portId: number;
  /** Datagrams received, with sender port ids. */
  readonly received: { sender: number; data: Buffer }[];
  send(datagrams: Buffer | Buffer[], dest: number, groups?: number): number;
  close(): void;
}

export class KernelSim {
  private sock?: NetlinkSocket;
  private opts!: Required<Omit<KernelSimOptions, 'ifname' | 'ibdev'>> & { ifname: string; ibdev: string };
  private closed = false;

  /**
   * iwpm_user_pid (an int): -1 undefined, -2 unavailable, > 0 the daemon's port id. A
   * daemon whose port id is >= 2^31 (what autobind gives every netlink socket of a
   * process but the first) reads as negative here, as in the kernel, and is never used.
   */
  userPid = IWPM_PID_UNDEFINED;
  /** reg_list[client] for client 2 (and 3 with acceptClient3). */
  readonly registration: Record<number, Registration> = { 2: 'UNDEF', 3: 'UNDEF' };
  /** iwpm_ulib_version. */
  ulibVersion = IWPM_UABI_VERSION_MIN;
  /** echo_nlmsg_seq: last daemon header seq seen by a callback. */
  echoSeq = 0;
  private seqCounter = 0;

  /** Everything received from the daemon (or anyone), decoded, in arrival order. */
  readonly received: ReceivedEntry[] = [];
  /** Every message not taken, and why. */
  readonly rejections: RejectionEntry[] = [];
  /** Things the real kernel would accept but rdma-core never does (header pid != sender, ...). */
  readonly violations: string[] = [];
  /** Send errors reported by the socket (other than the expected ECONNREFUSED of multicast sends). */
  readonly sendErrors: string[] = [];
  /** The kernel's mapinfo table. */
  readonly mapinfo: MapinfoRecord[] = [];
  /** Each MAPINFO replay sent. */
  readonly replays: ReplayRecord[] = [];
  /** REMOTE_INFO records the kernel accepted (iwpm_add_remote_info). */
  readonly remoteInfos: RemoteInfoRecord[] = [];
  /** Datagrams sent to the daemon (for debugging). */
  readonly sent: { dest: number; groups: number; data: Buffer; atMs: number }[] = [];
  /**
   * Replies that would have crashed Linux 6.1: an ADD/QUERY/REG_PID reply for a request
   * that had already timed out or been answered (see the header).
   */
  readonly crashes: CrashRecord[] = [];

  private readonly pending = new Map<number, Pending>();
  /** Requests whose waiter has returned, by seq: still findable in a 6.1 kernel. */
  private readonly finished = new Map<number, Finished>();
  private readonly barriers = new Map<number, Barrier>();
  private waiters: { pred: (e: ReceivedEntry) => boolean; from: number; resolve: (e: ReceivedEntry) => void }[] = [];
  private datagramCount = 0;
  private readonly spoofers: NetlinkSocket[] = [];
  private readonly t0 = performance.now();

  static async create(opts: KernelSimOptions): Promise<KernelSim> {
    const s = new KernelSim();
    await s.start(opts);
    return s;
  }

  async start(opts: KernelSimOptions): Promise<number> {
    if (this.sock) throw new Error('KernelSim already started');
    this.opts = {
      abi: opts.abi,
      group: opts.group ?? 2,
      replyTimeoutMs: opts.replyTimeoutMs ?? 10_000,
      doneTiming: opts.doneTiming ?? 'after-handler',
      acceptClient3: opts.acceptClient3 ?? false,
      mapinfoGoodSize: opts.mapinfoGoodSize ?? NLMSG_GOODSIZE_4K,
      mapinfoMaxDatagrams: opts.mapinfoMaxDatagrams ?? IWPM_MAPINFO_SKB_COUNT,
      rcvbufBytes: opts.rcvbufBytes ?? 8 * 1024 * 1024,
      handshakeDelayMs: opts.handshakeDelayMs ?? 0,
      ifname: opts.ifname ?? 'eth0',
      ibdev: opts.ibdev ?? 'siw0',
    };
    if (this.opts.group < 1 || this.opts.group > 32) throw new Error(`group ${this.opts.group} out of 1..32`);
    this.sock = new native.NetlinkSocket(
      { protocol: NETLINK_USERSOCK, portId: 0, groups: 0, rcvbufBytes: this.opts.rcvbufBytes },
      (b) => this.onBatch(b),
      (err) => {
        // Multicast sends always "fail" with ECONNREFUSED (the unicast part to port 0
        // has no receiver on USERSOCK) after the broadcast went out: not an error.
        if (err.code === 'ECONNREFUSED' && this.inMulticastSend) return;
        this.sendErrors.push(`${err.code ?? ''} ${err.message}`);
      },
    );
    return this.sock.portId;
  }

  get portId(): number {
    return this.socket.portId;
  }

  get abi(): 3 | 4 {
    return this.opts.abi;
  }

  get group(): number {
    return this.opts.group;
  }

  /** Milliseconds since the simulator was created. */
  now(): number {
    return performance.now() - this.t0;
  }

  private get socket(): NetlinkSocket {
    if (!this.sock) throw new Error('KernelSim not started');
    return this.sock;
  }

  /** iwpm_get_nlmsg_seq: global, pre-incremented, first value 1. */
  nextSeq(): number {
    this.seqCounter = (this.seqCounter + 1) >>> 0;
    return this.seqCounter;
  }

  /** Set while a multicast send runs (the native socket reports send errors synchronously). */
  private inMulticastSend = false;

  /** Send datagrams; returns whether every one was accepted by the kernel (no hard error). */
  private xmit(datagrams: Buffer[], dest: number, groups = 0): { ok: boolean; error?: string } {
    if (this.closed || datagrams.length === 0) return { ok: !this.closed, error: this.closed ? 'closed' : undefined };
    const before = this.socket.stats().sendErrors;
    const errs: string[] = [];
    const saved = this.sendErrors.length;
    this.inMulticastSend = groups !== 0;
    try {
      this.socket.send(datagrams, dest, groups);
    } catch (e) {
      const err = e as Error & { code?: string };
      return { ok: false, error: err.code ?? err.message };
    } finally {
      this.inMulticastSend = false;
    }
    const at = this.now();
    for (const d of datagrams) this.sent.push({ dest, groups, data: d, atMs: at });
    const after = this.socket.stats().sendErrors;
    if (groups) {
      // The broadcast went out; the ECONNREFUSED of the unicast part is expected.
      return { ok: true };
    }
    if (after > before) {
      for (const s of this.sendErrors.slice(saved)) errs.push(s);
      // A unicast failure is what the kernel acts on; keep it out of the unexpected-errors list.
      this.sendErrors.length = saved;
      return { ok: false, error: errs.join('; ') || `send error (${after - before})` };
    }
    return { ok: true };
  }

  // -------------------------------------------------------------------------
  // Kernel-initiated operations.

  /** iwpm_register_pid regardless of state: multicast REG_PID and wait for the answer. */
  regPid(dev: DeviceInfo = {}, client = RDMA_NL_IWCM): Promise<RegPidOutcome> {
    const ifname = dev.ifname ?? this.opts.ifname;
    const ibdev = dev.ibdev ?? this.opts.ibdev;
    const seq = this.nextSeq();
    const msg = encodeKernelRegPid({ seq }, { echoSeq: this.echoSeq, ifname, ibdev, ulib: dev.ulib }, client);
    if (!groupHasListener(this.opts.group)) {
      // nlmsg_multicast -> -ESRCH: "iwpm_register_pid: Unable to send a nlmsg"
      this.userPid = IWPM_PID_UNAVAILABLE;
      return Promise.resolve({ kind: 'unmapped', seq, reason: `REG_PID multicast failed: nobody in group ${this.opts.group} (ESRCH)` });
    }
    const p = this.expect<{ version: number }>({ op: 'reg_pid', seq, client, ibdev });
    const r = this.xmit([msg], 0, 1 << (this.opts.group - 1));
    if (!r.ok) {
      this.cancel(seq);
      this.userPid = IWPM_PID_UNAVAILABLE;
      return Promise.resolve({ kind: 'unmapped', seq, reason: `REG_PID multicast failed: ${r.error}` });
    }
    return p;
  }

  /** iwpm_register_pid would return at once (VALID, or the daemon marked unavailable). */
  private registered(client: number): boolean {
    return this.registration[client] === 'VALID' || this.userPid === IWPM_PID_UNAVAILABLE;
  }

  private pidProblem(): string | undefined {
    return this.userPid <= 0 ? `no valid daemon pid (${this.userPid})` : undefined;
  }

  /** The registration step of iw_cm_map: REG_PID unless VALID or the daemon is marked unavailable. */
  private async register(dev: DeviceInfo, client: number): Promise<string | undefined> {
    if (this.registration[client] !== 'VALID' && this.userPid !== IWPM_PID_UNAVAILABLE) {
      const r = await this.regPid(dev, client);
      if (r.kind !== 'ok') return `REG_PID ${describeOutcome(r)}`;
    }
    if (this.userPid <= 0) return `no valid daemon pid (${this.userPid})`;
    return undefined;
  }

  /** iw_cm_listen → iw_cm_map(active=false) → ADD_MAPPING. */
  async add(local: SockAddr | string | Buffer, o: { flags?: number; dev?: DeviceInfo; client?: number } = {}): Promise<AddOutcome> {
    const client = o.client ?? RDMA_NL_IWCM;
    const flags = o.flags ?? 0;
    const localRaw = Buffer.isBuffer(local) ? local : rawOf(addr(local));
    // Already registered: no await before the send, so requests issued back to back go
    // out in call order (tests rely on it for ordering and barriers).
    const why = this.registered(client) ? this.pidProblem() : await this.register(o.dev ?? {}, client);
    if (why) return { kind: 'unmapped', reason: why };
    // cm_id->mapped = true from here: a mapinfo record is created whatever happens next.
    const out = await this.addMapping(localRaw, flags, client);
    this.mapinfo.push({ client, local: localRaw, mapped: out.kind === 'ok' ? out.mappedRaw : localRaw, flags });
    return out;
  }

  /**
   * The checks iwpm_add_mapping and iwpm_add_and_query_mapping share: a valid daemon
   * pid, a VALID registration, FLAGS only on ABI 4. Returns the request's seq, or the
   * outcome when the kernel would not ask the daemon.
   */
  private mapGate(client: number, flags: number): number | { kind: 'unmapped'; seq?: number; reason: string } {
    if (this.userPid <= 0) return { kind: 'unmapped', reason: 'no valid daemon pid' };
    if (this.registration[client] !== 'VALID') return { kind: 'unmapped', reason: 'Unregistered port mapper client' };
    const seq = this.nextSeq();
    if (flags && this.ulibVersion === IWPM_UABI_VERSION_MIN) {
      return { kind: 'unmapped', seq, reason: 'flags need ABI 4 (quiet -EINVAL)' };
    }
    return seq;
  }

  private addMapping(localRaw: Buffer, flags: number, client: number): Promise<AddOutcome> {
    const gate = this.mapGate(client, flags);
    if (typeof gate !== 'number') return Promise.resolve(gate);
    const seq = gate;
    const msg = encodeKernelAdd(
      { seq },
      { echoSeq: this.echoSeq, local: localRaw, flags: this.ulibVersion > IWPM_UABI_VERSION_MIN ? flags : undefined },
      client,
    );
    const p = this.expect<{ mapped: SockAddr; mappedRaw: Buffer }>({ op: 'add', seq, client, local: localRaw });
    const r = this.xmit([msg], this.userPid >>> 0);
    if (!r.ok) {
      this.cancel(seq);
      this.userPid = IWPM_PID_UNDEFINED;
      return Promise.resolve({ kind: 'unmapped', seq, reason: `Unable to send a nlmsg: ${r.error}` });
    }
    return p;
  }

  /** iw_cm_connect → iw_cm_map(active=true) → QUERY_MAPPING. */
  async query(
    local: SockAddr | string | Buffer,
    remote: SockAddr | string | Buffer,
    o: { flags?: number; dev?: DeviceInfo; client?: number } = {},
  ): Promise<QueryOutcome> {
    const client = o.client ?? RDMA_NL_IWCM;
    const flags = o.flags ?? 0;
    const localRaw = Buffer.isBuffer(local) ? local : rawOf(addr(local));
    const remoteRaw = Buffer.isBuffer(remote) ? remote : rawOf(addr(remote));
    const why = this.registered(client) ? this.pidProblem() : await this.register(o.dev ?? {}, client);
    if (why) return { kind: 'unmapped', reason: why };
    const out = await this.queryMapping(localRaw, remoteRaw, flags, client);
    this.mapinfo.push({ client, local: localRaw, mapped: out.kind === 'ok' ? out.mappedRaw : localRaw, flags });
    return out;
  }

  private queryMapping(localRaw: Buffer, remoteRaw: Buffer, flags: number, client: number): Promise<QueryOutcome> {
    const gate = this.mapGate(client, flags);
    if (typeof gate !== 'number') return Promise.resolve(gate);
    const seq = gate;
    const msg = encodeKernelQuery(
      { seq },
      {
        echoSeq: this.echoSeq,
        local: localRaw,
        remote: remoteRaw,
        flags: this.ulibVersion > IWPM_UABI_VERSION_MIN ? flags : undefined,
      },
      client,
    );
    const p = this.expect<never>({ op: 'query', seq, client, local: localRaw, remote: remoteRaw }) as Promise<QueryOutcome>;
    const r = this.xmit([msg], this.userPid >>> 0);
    if (!r.ok) {
      this.cancel(seq);
      // QUERY send failures do not reset the pid.
      return Promise.resolve({ kind: 'unmapped', seq, reason: `Unable to send a nlmsg: ${r.error}` });
    }
    return p;
  }

  /**
   * destroy_cm_id: drop one mapinfo record for `local` (the one with `mapped`, else the
   * most recent), then iwpm_remove_mapping (sent unless the pid is invalid or the client
   * is UNDEF). Returns the REMOVE's seq, or undefined when nothing was sent.
   */
  remove(local: SockAddr | string | Buffer, o: { mapped?: SockAddr | Buffer; client?: number } = {}): number | undefined {
    const client = o.client ?? RDMA_NL_IWCM;
    const localRaw = Buffer.isBuffer(local) ? local : rawOf(addr(local));
    const mappedRaw = o.mapped ? rawOf(o.mapped) : undefined;
    for (let i = this.mapinfo.length - 1; i >= 0; i--) {
      const r = this.mapinfo[i]!;
      if (r.client === client && sameSockaddr(r.local, localRaw) && (!mappedRaw || sameSockaddr(r.mapped, mappedRaw))) {
        this.mapinfo.splice(i, 1);
        break;
      }
    }
    if (this.userPid <= 0) return undefined;
    if (this.registration[client] === 'UNDEF') return undefined;
    const seq = this.nextSeq();
    const msg = encodeKernelRemove({ seq }, { echoSeq: this.echoSeq, local: localRaw }, client);
    const r = this.xmit([msg], this.userPid >>> 0);
    if (!r.ok) {
      this.userPid = IWPM_PID_UNDEFINED;
      return undefined;
    }
    return seq;
  }

  /**
   * Send MAPINFO_NUM {SEQ 0, SEND_NUM} with a fresh header seq and wait for the
   * daemon's MAPINFO_NUM reply naming it: an ordering barrier (everything sent
   * before has been processed when it comes back).
   */
  sendMapinfoNum(sendNum = 0, o: { timeoutMs?: number; client?: number } = {}): Promise<BarrierOutcome> {
    const seq = this.nextSeq();
    const msg = encodeKernelMapinfoNum({ seq }, sendNum, o.client ?? RDMA_NL_IWCM);
    return new Promise<BarrierOutcome>((resolve) => {
      const b: Barrier = { seq, resolve };
      b.timer = setTimeout(() => {
        this.barriers.delete(seq);
        resolve({ kind: 'timeout', seq });
      }, o.timeoutMs ?? this.opts.replyTimeoutMs);
      this.barriers.set(seq, b);
      const r = this.xmit([msg], this.userPid > 0 ? this.userPid : 0);
      if (!r.ok) {
        clearTimeout(b.timer);
        this.barriers.delete(seq);
        resolve({ kind: 'timeout', seq });
      }
    });
  }

  /** sendMapinfoNum(0) that throws unless answered. */
  async barrier(timeoutMs?: number): Promise<BarrierOutcome & { kind: 'ok' }> {
    const r = await this.sendMapinfoNum(0, { timeoutMs });
    if (r.kind !== 'ok') throw new Error(`barrier MAPINFO_NUM seq ${r.seq} not answered within ${timeoutMs ?? this.opts.replyTimeoutMs} ms`);
    return r;
  }

  /** An unsolicited kernel HELLO (a kernel only sends HELLO as a reply; for tests). */
  sendHello(abi: number, o: { seq?: number; client?: number } = {}): number {
    const seq = o.seq ?? this.nextSeq();
    this.xmit([encodeKernelHello({ seq }, abi, o.client ?? RDMA_NL_IWCM)], this.userPid > 0 ? this.userPid : 0);
    return seq;
  }

  /** Send arbitrary datagrams to the daemon (default: the learned pid). */
  sendRaw(datagrams: Buffer | Buffer[], o: { dest?: number; groups?: number } = {}): { ok: boolean; error?: string } {
    const list = Array.isArray(datagrams) ? datagrams : [datagrams];
    return this.xmit(list, o.dest ?? (this.userPid > 0 ? this.userPid : 0), o.groups ?? 0);
  }

  /**
   * Send a hand-made request and wait for its answer exactly as for add/query/reg_pid:
   * `seq` is the header seq the datagram carries (take it from nextSeq()).
   */
  rawRequest(op: PendingOp, seq: number, datagram: Buffer, check: { ibdev?: string; local?: Buffer; remote?: Buffer } = {}): Promise<RequestOutcome<Record<string, unknown>>> {
    const p = this.awaitReply(op, seq, check);
    const r = this.xmit([datagram], this.userPid > 0 ? this.userPid : 0);
    if (!r.ok) {
      this.cancel(seq);
      return Promise.resolve({ kind: 'unmapped', seq, reason: `send failed: ${r.error}` });
    }
    return p;
  }

  /**
   * Register an outstanding request with header seq `seq` without sending anything (the
   * caller sends it, e.g. several requests in one datagram with sendRaw).
   */
  awaitReply(op: PendingOp, seq: number, check: { ibdev?: string; local?: Buffer; remote?: Buffer } = {}): Promise<RequestOutcome<Record<string, unknown>>> {
    return this.expect<Record<string, unknown>>({ op, seq, client: RDMA_NL_IWCM, ...check });
  }

  /** A second USERSOCK socket (its own port id) to send as a non-kernel sender. */
  openSpoofer(): Spoofer {
    const received: { sender: number; data: Buffer }[] = [];
    const s = new native.NetlinkSocket(
      { protocol: NETLINK_USERSOCK, portId: 0, groups: 0, rcvbufBytes: 0 },
      (b) => {
        for (let i = 0; i < b.count; i++) {
          const off = b.offsets[i]!;
          received.push({ sender: b.senders[i]!, data: Buffer.from(b.data.subarray(off, off + b.lengths[i]!)) });
        }
      },
      () => {},
    );
    this.spoofers.push(s);
    return {
      portId: s.portId,
      received,
      send: (d, dest, groups = 0) => s.send(Array.isArray(d) ? d : [d], dest, groups),
      close: () => s.close(),
    };
  }

  /** Add a record to the kernel's mapinfo table directly (as if a cm_id had been mapped). */
  addMapinfoRecord(local: SockAddr | Buffer | string, mapped: SockAddr | Buffer | string, flags = 0, client = RDMA_NL_IWCM): void {
    const l = Buffer.isBuffer(local) ? local : rawOf(addr(local));
    const m = Buffer.isBuffer(mapped) ? mapped : rawOf(addr(mapped));
    this.mapinfo.push({ client, local: l, mapped: m, flags });
  }

  // -------------------------------------------------------------------------
  // Waiting.

  /** Current log position (use as `from`). */
  mark(): number {
    return this.received.length;
  }

  /** First logged message at or after `from` matching `pred`; rejects after `timeoutMs`. */
  waitFor(pred: (e: ReceivedEntry) => boolean, timeoutMs = 5000, from = 0): Promise<ReceivedEntry> {
    for (let i = from; i < this.received.length; i++) if (pred(this.received[i]!)) return Promise.resolve(this.received[i]!);
    return new Promise((resolve, reject) => {
      const w = {
        pred,
        from,
        resolve: (e: ReceivedEntry) => {
          clearTimeout(timer);
          resolve(e);
        },
      };
      const timer = setTimeout(() => {
        this.waiters = this.waiters.filter((x) => x !== w);
        reject(new Error(`KernelSim.waitFor: nothing matched within ${timeoutMs} ms; received since ${from}:\n${this.describeLog(from)}`));
      }, timeoutMs);
      this.waiters.push(w);
    });
  }

  /** The daemon's handshake: resolves with its MAPINFO request for `client` (default 2). */
  waitForMapinfoRequest(timeoutMs = 10_000, client = RDMA_NL_IWCM, from = 0): Promise<ReceivedEntry> {
    return this.waitFor((e) => e.msg.op === 'mapinfo_req' && e.msg.client === client && !e.rejected, timeoutMs, from);
  }

  /** Wait for the daemon's acknowledgement of a MAPINFO replay (its MAPINFO_NUM reply). */
  async waitForReplayAck(replay: ReplayRecord, timeoutMs = 10_000): Promise<BarrierOutcome> {
    if (replay.ack) return replay.ack;
    if (replay.numSeq === undefined) throw new Error('no MAPINFO_NUM was sent for this replay');
    const seq = replay.numSeq;
    try {
      await this.waitFor((e) => e.msg.op === 'mapinfo_num' && e.msg.seqAttr === seq, timeoutMs);
    } catch {
      return { kind: 'timeout', seq };
    }
    return replay.ack ?? { kind: 'timeout', seq };
  }

  describeLog(from = 0): string {
    return this.received
      .slice(from)
      .map((e) => `  #${e.index} from ${e.sender} ${describeEntry(e)}`)
      .join('\n');
  }

  /** Rejections and violations, one line each (empty when everything the daemon sent was fine). */
  problems(): string[] {
    return [
      ...this.rejections.filter((r) => !r.entry.expectedRefusal).map((r) => `#${r.entry.index} ${describeEntry(r.entry)}`),
      ...this.violations,
      ...this.sendErrors,
    ];
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    for (const p of this.pending.values()) {
      clearTimeout(p.timer);
      p.resolve({ kind: 'timeout', seq: p.seq, closed: true });
    }
    this.pending.clear();
    for (const b of this.barriers.values()) {
      if (b.timer) clearTimeout(b.timer);
      b.resolve?.({ kind: 'timeout', seq: b.seq, closed: true });
    }
    this.barriers.clear();
    for (const t of this.delayed) clearTimeout(t);
    this.delayed.clear();
    for (const s of this.spoofers) s.close();
    this.sock?.close();
  }

  // -------------------------------------------------------------------------
  // Outstanding requests.

  private expect<Ok>(p: Omit<Pending, 'timer' | 'resolve'>): Promise<RequestOutcome<Ok>> {
    return new Promise((resolve) => {
      const timer = setTimeout(() => {
        this.pending.delete(p.seq);
        this.remember({ op: p.op, seq: p.seq, how: 'timed-out', atMs: this.now() });
        resolve({ kind: 'timeout', seq: p.seq });
      }, this.opts.replyTimeoutMs);
      this.pending.set(p.seq, { ...p, timer, resolve: resolve as Pending['resolve'] });
    });
  }

  private cancel(seq: number): void {
    const p = this.pending.get(seq);
    if (p) {
      clearTimeout(p.timer);
      this.pending.delete(seq);
    }
  }

  /**
   * Resolve a waiting request. `answered`: the kernel's callback found it and woke the
   * waiter (a further reply for it would hit the 6.1 bug); false for replies the kernel
   * would have refused before finding the request (policy failures), which the
   * simulator resolves early for convenience.
   */
  private complete(seq: number, o: RequestOutcome<Record<string, unknown>>, answered = true): void {
    const p = this.pending.get(seq);
    if (!p) return;
    clearTimeout(p.timer);
    this.pending.delete(seq);
    if (answered) {
      const by = 'reply' in o ? o.reply.index : undefined;
      this.remember({ op: p.op, seq, how: 'answered', atMs: this.now(), by });
    }
    p.resolve(o);
  }

  private remember(f: Finished): void {
    if (this.finished.size >= MAX_FINISHED) {
      const oldest = this.finished.keys().next();
      if (!oldest.done) this.finished.delete(oldest.value);
    }
    this.finished.set(f.seq, f);
  }

  /** How a request that is no longer waiting ended, if the simulator still knows. */
  finishedRequest(seq: number): { op: PendingOp; how: 'timed-out' | 'answered'; atMs: number } | undefined {
    const f = this.finished.get(seq);
    return f && { op: f.op, how: f.how, atMs: f.atMs };
  }

  /** Outstanding request seqs (for tests). */
  outstanding(): number[] {
    return [...this.pending.keys()];
  }

  // -------------------------------------------------------------------------
  // Receive path: rdma_nl_rcv_skb for each datagram.

  private onBatch(b: NetlinkBatch): void {
    if (this.closed) return;
    for (const e of b.errors) this.violations.push(`receive error ${getSystemErrorName(e)} on the simulator socket`);
    if (b.overruns) this.violations.push(`simulator socket overrun (${b.overruns})`);
    for (let i = 0; i < b.count; i++) {
      const off = b.offsets[i]!;
      const data = Buffer.from(b.data.subarray(off, off + b.lengths[i]!));
      if (b.truncated[i]) this.violations.push(`datagram from ${b.senders[i]} truncated to ${data.length} bytes`);
      this.onDatagram(data, b.senders[i]!);
    }
  }

  private onDatagram(d: Buffer, sender: number): void {
    const dg = this.datagramCount++;
    let off = 0;
    let position = 0;
    const out: { dest: number; data: Buffer; groups?: number }[] = [];
    while (d.length - off >= NLMSG_HDRLEN) {
      const len = d.readUInt32LE(off);
      const header = {
        len,
        type: d.readUInt16LE(off + 4),
        flags: d.readUInt16LE(off + 6),
        seq: d.readUInt32LE(off + 8),
        pid: d.readUInt32LE(off + 12),
      };
      if (len < NLMSG_HDRLEN || len > d.length - off) {
        this.log(
          {
            sender,
            datagram: dg,
            position,
            raw: Buffer.from(d.subarray(off)),
            header,
            msg: { op: 'malformed', reason: `nlmsg_len ${len} with ${d.length - off} bytes left: rest of datagram dropped` },
            answer: { kind: 'none' },
          },
          'malformed netlink header',
        );
        break;
      }
      const raw = Buffer.from(d.subarray(off, off + len));
      this.onMessage(raw, header, sender, dg, position, out);
      position++;
      off += Math.min((len + 3) & ~3, d.length - off);
    }
    if (d.length - off > 0 && d.length - off < NLMSG_HDRLEN && position > 0) {
      this.violations.push(`datagram ${dg} from ${sender}: ${d.length - off} trailing bytes ignored`);
    }
    this.flush(out);
  }

  private flush(out: { dest: number; data: Buffer; groups?: number }[]): void {
    // Consecutive datagrams to the same destination go in one sendmmsg.
    let i = 0;
    while (i < out.length) {
      let j = i + 1;
      while (j < out.length && out[j]!.dest === out[i]!.dest && !out[j]!.groups && !out[i]!.groups) j++;
      const r = this.xmit(
        out.slice(i, j).map((x) => x.data),
        out[i]!.dest,
        out[i]!.groups ?? 0,
      );
      if (!r.ok) this.violations.push(`could not send to ${out[i]!.dest}: ${r.error}`);
      i = j;
    }
  }

  private log(e: Omit<ReceivedEntry, 'index' | 'atMs'>, rejected?: string): ReceivedEntry {
    const entry: ReceivedEntry = { ...e, index: this.received.length, atMs: this.now() };
    if (rejected) {
      entry.rejected = rejected;
      this.rejections.push({ entry, reason: rejected });
    }
    this.received.push(entry);
    const ws = this.waiters;
    this.waiters = [];
    for (const w of ws) {
      if (entry.index >= w.from && w.pred(entry)) w.resolve(entry);
      else this.waiters.push(w);
    }
    return entry;
  }

  private onMessage(
    raw: Buffer,
    header: ReceivedEntry['header'],
    sender: number,
    datagram: number,
    position: number,
    out: { dest: number; data: Buffer; groups?: number }[],
  ): void {
    const msg = decodeDaemonMessage(raw);
    const base = { sender, datagram, position, raw, header, msg };
    const ackFlag = (header.flags & NLM_F_ACK) !== 0;

    if (msg.op === 'skipped') {
      // rdma_nl_rcv_skb: "goto ack" with err 0 → an ack only if NLM_F_ACK.
      if (ackFlag) out.push({ dest: sender, data: this.nlAck(raw, header, sender, 0) });
      this.log({ ...base, answer: ackFlag ? { kind: 'error', errno: 0 } : { kind: 'none' } }, `ignored by the kernel: ${msg.reason}`);
      return;
    }
    const client = (header.type >> 10) & 0x3f;
    const opcode = header.type & 0x3ff;
    const maxOps = this.opts.abi === 4 ? 9 : 8;
    const clientOk = client === RDMA_NL_IWCM || (client === RDMA_NL_C4IW && this.opts.acceptClient3 && this.opts.abi === 3);
    // is_nl_valid + callback lookup; REMOVE_MAPPING (op 3) has no callback in the iwcm table.
    let refuse: string | undefined;
    if (client >= RDMA_NL_NUM_CLIENTS || !clientOk) refuse = `client ${client} has no IWPM callbacks`;
    else if (opcode >= maxOps) refuse = `op ${opcode} >= ${maxOps} ops of ABI ${this.opts.abi}`;
    else if (opcode === OP.REMOVE_MAPPING) refuse = 'REMOVE_MAPPING has no kernel callback';
    if (refuse) {
      this.answerOut(out, header, [{ dest: sender, data: this.nlAck(raw, header, sender, -EINVAL) }]);
      const logged: DaemonMsg = msg.op === 'refused' ? msg : { op: 'refused', client, opcode, reason: refuse };
      const expectedRefusal =
        this.opts.abi === 3 && ((client === RDMA_NL_IWCM && opcode === OP.HELLO) || (client === RDMA_NL_C4IW && opcode === OP.MAPINFO));
      this.log(
        { ...base, msg: logged, answer: { kind: 'error', errno: -EINVAL }, ...(expectedRefusal ? { expectedRefusal } : {}) },
        `kernel answered NLMSG_ERROR(-EINVAL): ${refuse}`,
      );
      return;
    }

    // A dump callback runs, then NLMSG_DONE with its return value.
    const side: { dest: number; data: Buffer; groups?: number }[] = [];
    const { status, rejected, answered } = this.handle(msg, header, sender, side);
    const done = encodeDone(header.seq, sender, status);
    this.answerOut(out, header, this.opts.doneTiming === 'before-handler' ? [{ dest: sender, data: done }, ...side] : [...side, { dest: sender, data: done }]);
    const entry = this.log({ ...base, answer: { kind: 'done', status }, answered }, rejected);
    if (this.pendingCrash) {
      this.crashes.push({ entry, ...this.pendingCrash });
      this.pendingCrash = undefined;
    }
    if (entry.msg.op === 'remote_info' && !rejected) {
      const m = entry.msg;
      this.remoteInfos.push({ client: m.client, local: m.local, remote: m.remote, mappedLocal: m.mappedLocal, mappedRemote: m.mappedRemote, entry });
    }
    // Resolve waiting requests after the entry is logged (so outcomes carry it).
    this.pendingResolution?.(entry);
    this.pendingResolution = undefined;
  }

  private pendingResolution?: (e: ReceivedEntry) => void;
  private readonly delayed = new Set<NodeJS.Timeout>();

  /** Queue what answers one message; answers to HELLO may be held back (handshakeDelayMs). */
  private answerOut(out: { dest: number; data: Buffer; groups?: number }[], header: ReceivedEntry['header'], items: { dest: number; data: Buffer; groups?: number }[]): void {
    const delay = (header.type & 0x3ff) === OP.HELLO ? this.opts.handshakeDelayMs : 0;
    if (!delay) {
      out.push(...items);
      return;
    }
    const t = setTimeout(() => {
      this.delayed.delete(t);
      if (!this.closed) this.flush(items);
    }, delay);
    this.delayed.add(t);
  }

  /** NLMSG_ERROR as netlink_ack builds it (no NETLINK_CAP_ACK: the whole message echoed on error). */
  private nlAck(raw: Buffer, header: ReceivedEntry['header'], sender: number, errno: number): Buffer {
    const echo = errno ? raw.subarray(0, header.len) : raw.subarray(0, NLMSG_HDRLEN);
    const len = NLMSG_HDRLEN + 4 + echo.length;
    const b = Buffer.alloc(len);
    b.writeUInt32LE(len, 0);
    b.writeUInt16LE(NLMSG_ERROR, 4);
    b.writeUInt16LE(errno ? 0 : NLM_F_CAPPED, 6);
    b.writeUInt32LE(header.seq, 8);
    b.writeUInt32LE(sender, 12);
    b.writeInt32LE(errno, 16);
    echo.copy(b, 20);
    return b;
  }

  /** The iwpm_*_cb callbacks. Returns the handler's return value. */
  private handle(
    msg: DaemonMsg,
    header: ReceivedEntry['header'],
    sender: number,
    side: { dest: number; data: Buffer; groups?: number }[],
  ): { status: number; rejected?: string; answered?: ReceivedEntry['answered'] } {
    const client = (header.type >> 10) & 0x3f;
    const pidMismatch = header.pid !== sender ? `header nlmsg_pid ${header.pid} != sender port id ${sender}` : undefined;

    if (msg.op === 'invalid') {
      // Parse failure: -EINVAL. Resolve the request it names at once (the kernel would time out).
      const p = msg.seqAttr !== undefined ? this.pending.get(msg.seqAttr) : undefined;
      if (p && this.userPid > 0 && sender === this.userPid >>> 0) {
        const seq = p.seq;
        this.pendingResolution = (entry) =>
          this.complete(seq, { kind: 'rejected-reply', seq, reason: `reply failed the kernel's policy: ${msg.reason}`, reply: entry }, false);
      }
      return { status: -EINVAL, rejected: msg.reason };
    }

    switch (msg.op) {
      case 'hello': {
        if (pidMismatch) this.violations.push(`HELLO: ${pidMismatch} (the kernel adopts the header value)`);
        this.registration[client] = 'INCOMPL';
        this.echoSeq = header.seq;
        this.ulibVersion = Math.min(IWPM_UABI_VERSION, msg.abi);
        this.userPid = header.pid | 0; // an int in the kernel: port ids >= 2^31 are not valid pids
        side.push({ dest: header.pid, data: encodeKernelHello({ seq: this.nextSeq() }, this.ulibVersion, client) });
        return { status: 0 };
      }
      case 'mapinfo_req': {
        const verOk = this.opts.abi === 3 ? msg.version === 3 : msg.version >= IWPM_UABI_VERSION_MIN;
        if (msg.ulib !== IWPM_ULIB_NAME || !verOk) {
          return { status: -EINVAL, rejected: `MAPINFO request with ulib "${msg.ulib}" version ${msg.version} (ABI ${this.opts.abi} kernel)` };
        }
        if (pidMismatch) this.violations.push(`MAPINFO request: ${pidMismatch} (the kernel adopts the header value)`);
        this.registration[client] = 'INCOMPL';
        this.echoSeq = header.seq;
        this.userPid = header.pid | 0; // an int in the kernel: port ids >= 2^31 are not valid pids
        return { status: this.replay(client, header.seq, side) };
      }
      case 'mapinfo_num': {
        // iwpm_ack_mapping_info_cb only logs; the simulator matches it to its MAPINFO_NUM.
        const strict = this.checkSender(sender, pidMismatch);
        this.echoSeq = header.seq;
        const b = this.barriers.get(msg.seqAttr);
        if (!b) return { status: 0, rejected: strict ?? `MAPINFO_NUM reply for seq ${msg.seqAttr}: no MAPINFO_NUM with that seq outstanding` };
        if (strict) return { status: -EINVAL, rejected: strict };
        this.barriers.delete(msg.seqAttr);
        if (b.timer) clearTimeout(b.timer);
        this.pendingResolution = (entry) => {
          const o: BarrierOutcome = { kind: 'ok', seq: b.seq, sendNum: msg.sendNum, ackNum: msg.ackNum, reply: entry };
          if (b.replay) b.replay.ack = o;
          b.resolve?.(o);
        };
        return { status: 0 };
      }
      case 'remote_info': {
        const strict = this.checkSender(sender, pidMismatch);
        if (strict) return { status: -EINVAL, rejected: strict };
        this.echoSeq = header.seq;
        if (msg.mappedLocal.readUInt16LE(0) !== msg.local.readUInt16LE(0)) {
          return { status: -EINVAL, rejected: 'REMOTE_INFO: mapped local family differs from local family' };
        }
        if (msg.mappedRemote.readUInt16LE(0) !== msg.remote.readUInt16LE(0)) {
          return { status: -EINVAL, rejected: 'REMOTE_INFO: mapped remote family differs from remote family' };
        }
        // Accepted into the remote-info hash; the callback still returns -EINVAL.
        return { status: -EINVAL };
      }
      case 'handle_err': {
        const strict = this.checkSender(sender, pidMismatch);
        if (strict) return { status: -EINVAL, rejected: strict };
        const p = this.pending.get(msg.seqAttr);
        if (!p) {
          // "not all errors have associated requests": return 0.
          return { status: 0 };
        }
        this.echoSeq = header.seq;
        const seq = p.seq;
        this.pendingResolution = (entry) => this.complete(seq, { kind: 'error', seq, code: msg.code, reply: entry });
        return { status: 0, answered: { op: p.op, seq } };
      }
      case 'reg_pid':
      case 'add':
      case 'query': {
        // REG_PID replies are accepted from any sender (the kernel learns the pid from them).
        if (msg.op === 'reg_pid') {
          if (pidMismatch) {
            return { status: -EINVAL, rejected: `REG_PID reply: ${pidMismatch}` };
          }
        } else {
          const strict = this.checkSender(sender, pidMismatch);
          if (strict) return { status: -EINVAL, rejected: strict };
        }
        if (msg.op !== 'reg_pid') this.echoSeq = header.seq;
        const p = this.pending.get(msg.seqAttr);
        if (!p) {
          const f = this.finished.get(msg.seqAttr);
          if (f) return this.lateReply(msg.op, f);
          return { status: -EINVAL, rejected: `${msg.op} reply with SEQ ${msg.seqAttr}: Could not find a matching request` };
        }
        if (p.op !== msg.op) {
          const seq = p.seq;
          const reason = `${msg.op} reply names seq ${seq}, which is a ${p.op} request`;
          this.pendingResolution = (entry) => this.complete(seq, { kind: 'rejected-reply', seq, reason, reply: entry });
          return { status: -EINVAL, rejected: reason };
        }
        const answered = { op: p.op, seq: p.seq };
        const bad = this.checkReply(msg, p, header);
        const seq = p.seq;
        if (bad) {
          // The kernel completes the request with IWPM_USER_LIB_INFO_ERR and returns 0.
          this.pendingResolution = (entry) => this.complete(seq, { kind: 'rejected-reply', seq, reason: bad, reply: entry });
          return { status: 0, rejected: bad, answered };
        }
        this.pendingResolution = (entry) => this.complete(seq, this.success(msg, p, entry));
        return { status: 0, answered };
      }
      default:
        return { status: -EINVAL, rejected: `unexpected ${msg.op}` };
    }
  }

  /**
   * A reply for a request the kernel's waiter is done with: Linux 6.1 finds the request
   * (never freed) and its callback reads/writes the dead iw_cm_map() stack frame.
   * Recorded as a crash; the DONE status sent stays -EINVAL (a real kernel would have
   * oopsed in the daemon's send, or returned 0 after corrupting its stack).
   */
  private lateReply(op: 'reg_pid' | 'add' | 'query', f: Finished): { status: number; rejected: string } {
    const cb = op === 'reg_pid' ? 'iwpm_register_pid_cb' : op === 'add' ? 'iwpm_add_mapping_cb' : 'iwpm_add_and_query_mapping_cb';
    const what =
      f.how === 'timed-out'
        ? `which timed out ${Math.round(this.now() - f.atMs)} ms ago`
        : `which was already answered${f.by !== undefined ? ` by #${f.by}` : ''} ${Math.round(this.now() - f.atMs)} ms ago`;
    const reason =
      `KERNEL CRASH (Linux 6.1): ${op} reply for ${f.op} request seq ${f.seq}, ${what}: ` +
      `${cb} uses the request's req_buffer, a dead stack frame of iw_cm_map() (oops or stack corruption)`;
    this.pendingCrash = { op: f.op, seq: f.seq, how: f.how, finishedAtMs: f.atMs, reason };
    return { status: -EINVAL, rejected: reason };
  }

  private pendingCrash?: Omit<CrashRecord, 'entry'>;

  /** Stricter-than-kernel: replies must come from the learned daemon and carry its port id. */
  private checkSender(sender: number, pidMismatch: string | undefined): string | undefined {
    if (this.userPid <= 0 || sender !== this.userPid >>> 0) return `reply from port id ${sender}, but the daemon is ${this.userPid}`;
    return pidMismatch;
  }

  /** Content checks of iwpm_register_pid_cb / iwpm_add_mapping_cb / iwpm_add_and_query_mapping_cb. */
  private checkReply(msg: DaemonMsg, p: Pending, header: ReceivedEntry['header']): string | undefined {
    if (msg.op === 'reg_pid') {
      if (msg.ibdev !== p.ibdev) return `Incorrect info: ibdev "${msg.ibdev}" != request's "${p.ibdev}"`;
      if (msg.ulib !== IWPM_ULIB_NAME) return `Incorrect info: ulib name "${msg.ulib}"`;
      if (this.opts.abi === 3 ? msg.version !== 3 : msg.version < IWPM_UABI_VERSION_MIN) {
        return `Incorrect info: ULIB_VER ${msg.version} for an ABI ${this.opts.abi} kernel`;
      }
      // Good reply: VALID, pid and version from it.
      this.userPid = header.pid | 0; // an int in the kernel: port ids >= 2^31 are not valid pids
      this.ulibVersion = msg.version;
      this.echoSeq = header.seq;
      this.registration[p.client] = 'VALID';
      return undefined;
    }
    if (msg.op === 'add') {
      if (!sameSockaddr(msg.local, p.local!)) return `RMANAGE local address ${fmtSockaddr(msg.local)} != request's ${fmtSockaddr(p.local!)}`;
      if (msg.mapped.readUInt16LE(0) !== msg.local.readUInt16LE(0)) return `RMANAGE mapped family ${msg.mapped.readUInt16LE(0)} != local family`;
      return undefined;
    }
    if (msg.op === 'query') {
      if (!sameSockaddr(msg.local, p.local!)) return `RQUERY local address ${fmtSockaddr(msg.local)} != request's ${fmtSockaddr(p.local!)}`;
      if (!sameSockaddr(msg.remote, p.remote!)) return `RQUERY remote address ${fmtSockaddr(msg.remote)} != request's ${fmtSockaddr(p.remote!)}`;
      if (msg.mappedLocal.readUInt16LE(0) !== msg.local.readUInt16LE(0) || msg.mappedRemote.readUInt16LE(0) !== msg.remote.readUInt16LE(0)) {
        return 'RQUERY mapped family differs from the local/remote family';
      }
      return undefined;
    }
    return `unexpected ${msg.op}`;
  }

  private success(msg: DaemonMsg, p: Pending, entry: ReceivedEntry): RequestOutcome<Record<string, unknown>> {
    if (msg.op === 'reg_pid') return { kind: 'ok', seq: p.seq, reply: entry, version: msg.version };
    if (msg.op === 'add') return { kind: 'ok', seq: p.seq, reply: entry, mapped: sockaddrOf(msg.mapped), mappedRaw: msg.mapped };
    if (msg.op === 'query') {
      if (msg.err === IWPM_REMOTE_QUERY_REJECT) return { kind: 'error', seq: p.seq, code: IWPM_REMOTE_QUERY_REJECT, reply: entry };
      // iw_cm_check_wildcard: a wildcard mapped remote IP takes the real remote IP.
      let mr = msg.mappedRemote;
      if (isWildcardRaw(mr)) {
        mr = Buffer.from(mr);
        const fam = mr.readUInt16LE(0);
        if (fam === 10) p.remote!.copy(mr, 8, 8, 24);
        else p.remote!.copy(mr, 4, 4, 8);
      }
      return {
        kind: 'ok',
        seq: p.seq,
        reply: entry,
        mapped: sockaddrOf(msg.mappedLocal),
        mappedRaw: msg.mappedLocal,
        mappedRemote: sockaddrOf(mr),
        mappedRemoteRaw: mr,
      };
    }
    return { kind: 'rejected-reply', seq: p.seq, reason: `unexpected ${msg.op}`, reply: entry };
  }

  /** iwpm_send_mapinfo + send_mapinfo_num. Returns the handler's status. */
  private replay(client: number, requestSeq: number, side: { dest: number; data: Buffer }[]): number {
    if (this.mapinfo.length === 0) return 0; // iwpm_mapinfo_available() == 0: nothing at all
    const pid = this.userPid >>> 0;
    const withFlags = this.ulibVersion > IWPM_UABI_VERSION_MIN;
    const rec: ReplayRecord = { requestSeq, client, records: 0, datagrams: [] };
    this.replays.push(rec);
    let cur: Buffer[] = [];
    let bytes = 0;
    const doneBare = encodeDone(0, 0);
    for (const r of this.mapinfo) {
      if (r.client !== client) continue;
      const m = encodeKernelMapinfo({ local: r.local, mapped: r.mapped, flags: withFlags ? r.flags : undefined }, client);
      cur.push(m);
      rec.records++;
      bytes += m.length;
      if (this.opts.mapinfoGoodSize - bytes < m.length * 2) {
        const dgram = Buffer.concat([...cur, doneBare]);
        rec.datagrams.push(dgram);
        side.push({ dest: pid, data: dgram });
        cur = [];
        bytes = 0;
        if (rec.datagrams.length === this.opts.mapinfoMaxDatagrams) {
          rec.truncated = true; // "Insufficient skbs for map info": no MAPINFO_NUM
          return -ENOMEM;
        }
      }
    }
    const last = Buffer.concat([...cur, doneBare]);
    rec.datagrams.push(last);
    side.push({ dest: pid, data: last });
    const numSeq = this.nextSeq();
    rec.numSeq = numSeq;
    this.barriers.set(numSeq, { seq: numSeq, replay: rec });
    side.push({ dest: pid, data: encodeKernelMapinfoNum({ seq: numSeq }, rec.records, client) });
    return 0;
  }
}

// ---------------------------------------------------------------------------

export function describeOutcome(o: { kind: string; code?: number; reason?: string; seq?: number }): string {
  switch (o.kind) {
    case 'error':
      return `failed with code ${o.code}`;
    case 'timeout':
      return `timed out (seq ${o.seq})`;
    case 'rejected-reply':
      return `got a rejected reply: ${o.reason}`;
    case 'unmapped':
      return `not sent: ${o.reason}`;
    default:
      return o.kind;
  }
}

export function describeEntry(e: ReceivedEntry): string {
  const h = e.header;
  const m = e.msg;
  const head = `len ${h.len} type 0x${h.type.toString(16)} flags 0x${h.flags.toString(16)} seq ${h.seq} pid ${h.pid}`;
  let body: string;
  switch (m.op) {
    case 'hello':
      body = `HELLO abi ${m.abi}`;
      break;
    case 'mapinfo_req':
      body = `MAPINFO request client ${m.client} "${m.ulib}" ver ${m.version}`;
      break;
    case 'reg_pid':
      body = `RREG_PID seq ${m.seqAttr} ibdev "${m.ibdev}" ulib "${m.ulib}" ver ${m.version} err ${m.err}`;
      break;
    case 'add':
      body = `RMANAGE seq ${m.seqAttr} ${fmtSockaddr(m.local)} -> ${fmtSockaddr(m.mapped)} err ${m.err}`;
      break;
    case 'query':
    case 'remote_info':
      body = `${m.op === 'query' ? 'RQUERY' : 'REMOTE_INFO'} seq ${m.seqAttr} ${fmtSockaddr(m.local)} -> ${fmtSockaddr(m.remote)} mapped ${fmtSockaddr(m.mappedLocal)} -> ${fmtSockaddr(m.mappedRemote)} err ${m.err}`;
      break;
    case 'handle_err':
      body = `HANDLE_ERR seq ${m.seqAttr} code ${m.code}`;
      break;
    case 'mapinfo_num':
      body = `MAPINFO_NUM seq ${m.seqAttr} send ${m.sendNum} ack ${m.ackNum}`;
      break;
    default:
      body = `${m.op}: ${'reason' in m ? m.reason : ''}`;
  }
  const ans = e.answer.kind === 'done' ? `DONE(${e.answer.status})` : e.answer.kind === 'error' ? `NLMSG_ERROR(${e.answer.errno})` : 'no answer';
  return `[${head}] ${body} -> ${ans}${e.rejected ? ` REJECTED: ${e.rejected}` : ''}`;
}
