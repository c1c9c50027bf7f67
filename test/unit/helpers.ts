/**
 * Shared helpers for the unit tests: annotated hex, a seeded PRNG, address
 * shorthands, and a decoder for daemon → kernel messages that applies the checks
 * the kernel's netlink policies apply (spec §1.2, §2.2).
 */
import { type AttrTable, type NlMessage, NLM_F_REQUEST, parseAttrs, splitMessages } from '../../src/codec/netlink.js';
import { type SockAddr, encodeSockaddr, parseIp } from '../../src/codec/sockaddr.js';
import { clientOf, opOf } from '../../src/codec/iwpm.js';

/**
 * Bytes from annotated hex. Per line: `//` starts a comment; `xx:` is an offset
 * label that must equal the number of bytes so far (catches hand-counting errors);
 * `[N x bb]` repeats byte bb N times; everything else must be two hex digits.
 * Usable as a tag (hex`...`) or a function.
 */
export function hex(text: string | TemplateStringsArray, ...values: unknown[]): Buffer {
  const src = typeof text === 'string' ? text : String.raw({ raw: text.raw }, ...values);
  const out: number[] = [];
  for (let line of src.split('\n')) {
    const c = line.indexOf('//');
    if (c >= 0) line = line.slice(0, c);
    line = line.replace(/\[\s*(\d+)\s*x\s*([0-9a-fA-F]{2})\s*\]/g, (_m, n: string, b: string) => ` ${b}`.repeat(Number(n)));
    for (const tok of line.trim().split(/\s+/)) {
      if (!tok) continue;
      const label = /^([0-9a-fA-F]+):$/.exec(tok);
      if (label) {
        const at = parseInt(label[1]!, 16);
        if (at !== out.length) throw new Error(`hex: offset label ${tok} but ${out.length} (0x${out.length.toString(16)}) bytes so far`);
        continue;
      }
      if (!/^[0-9a-fA-F]{2}$/.test(tok)) throw new Error(`hex: bad token "${tok}"`);
      out.push(parseInt(tok, 16));
    }
  }
  return Buffer.from(out);
}

/** mulberry32: small, fast, seeded; good enough to generate test inputs reproducibly. */
export function prng(seed: number): { next(): number; int(n: number): number; bytes(n: number): Buffer; pick<T>(a: readonly T[]): T } {
  let s = seed >>> 0;
  const next = (): number => {
    s = (s + 0x6d2b79f5) >>> 0;
    let t = s;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
  const int = (n: number): number => Math.floor(next() * n);
  return {
    next,
    int,
    bytes(n: number): Buffer {
      const b = Buffer.alloc(n);
      for (let i = 0; i < n; i++) b[i] = int(256);
      return b;
    },
    pick<T>(a: readonly T[]): T {
      return a[int(a.length)]!;
    },
  };
}

export function sa(ip: string, port: number, extra: Partial<Pick<SockAddr, 'flowinfo' | 'scopeId'>> = {}): SockAddr {
  return { ...parseIp(ip, port), ...extra };
}

/** 128-byte sockaddr_storage for ip:port. */
export function raw(ip: string, port: number, extra: Partial<Pick<SockAddr, 'flowinfo' | 'scopeId'>> = {}): Buffer {
  return encodeSockaddr(sa(ip, port, extra));
}

/** The one message of a datagram (fails the test if there is not exactly one). */
export function one(datagram: Buffer): NlMessage {
  const s = splitMessages(datagram);
  if (s.error || s.messages.length !== 1) throw new Error(`expected exactly one message: ${s.error ?? s.messages.length}`);
  return s.messages[0]!;
}

// ---------------------------------------------------------------------------
// Kernel-side validation of what the daemon sends.

/**
 * The kernel's NLA_NUL_STRING check with .len = 31 (lib/nlattr.c validate_nla):
 * a NUL within the first min(attrlen, len+1) bytes, then after dropping one
 * trailing NUL the length must be <= len.
 */
export function kernelNulStringOk(payload: Buffer, len = 31): boolean {
  const minlen = Math.min(payload.length, len + 1);
  if (minlen === 0 || payload.subarray(0, minlen).indexOf(0) < 0) return false;
  let n = payload.length;
  if (payload[n - 1] === 0) n--;
  return n <= len;
}

export type DaemonMessage =
  | { op: 'rreg_pid'; client: number; seq: number; pid: number; kernelSeq: number; ibdev: string; ulib: string; version: number; err: number }
  | { op: 'rmanage'; client: number; seq: number; pid: number; kernelSeq: number; local: Buffer; mapped: Buffer; err: number }
  | {
      op: 'rquery' | 'remote_info';
      client: number;
      seq: number;
      pid: number;
      seqAttr: number;
      local: Buffer;
      remote: Buffer;
      mappedLocal: Buffer;
      mappedRemote: Buffer;
      err: number;
    }
  | { op: 'handle_err'; client: number; seq: number; pid: number; errSeq: number; code: number }
  | { op: 'mapinfo_req'; client: number; seq: number; pid: number; ulib: string; version: number }
  | { op: 'mapinfo_num'; client: number; seq: number; pid: number; kernelSeq: number; sendNum: number; ackNum: number }
  | { op: 'hello'; client: number; seq: number; pid: number; abi: number }
  | { op: 'invalid'; reason: string };

type Kind = 'u16' | 'u32' | 'addr' | 'nulstr';

function need(a: AttrTable, specs: [number, Kind][]): string | undefined {
  for (const [t, k] of specs) {
    const v = a[t];
    if (!v) return `attribute ${t} missing`;
    if (k === 'u16' && v.length < 2) return `attribute ${t} shorter than u16`;
    if (k === 'u32' && v.length < 4) return `attribute ${t} shorter than u32`;
    if (k === 'addr' && v.length < 128) return `address attribute ${t} is ${v.length} bytes`;
    if (k === 'nulstr' && !kernelNulStringOk(v)) return `string attribute ${t} fails NLA_NUL_STRING(31)`;
  }
  return undefined;
}

const cstr = (b: Buffer): string => {
  const i = b.indexOf(0);
  return b.toString('latin1', 0, i < 0 ? b.length : i);
};

/**
 * Decode one daemon → kernel message the way the kernel would accept it (types by op,
 * all attributes mandatory, policy sizes, NLM_F_REQUEST set). Never throws.
 */
export function decodeDaemonMessage(m: NlMessage): DaemonMessage {
  const { type, flags, seq, pid } = m.header;
  if (!(flags & NLM_F_REQUEST)) return { op: 'invalid', reason: 'NLM_F_REQUEST missing' };
  const client = clientOf(type);
  const op = opOf(type);
  const p = parseAttrs(m.payload, 6);
  if (!p.ok) return { op: 'invalid', reason: p.reason };
  const a = p.attrs;
  const h = { client, seq, pid };
  const bad = (r: string | undefined): DaemonMessage | undefined => (r ? { op: 'invalid', reason: r } : undefined);
  switch (op) {
    case 0:
      return (
        bad(need(a, [[1, 'u32'], [2, 'nulstr'], [3, 'nulstr'], [4, 'u16'], [5, 'u16']])) ?? {
          op: 'rreg_pid',
          ...h,
          kernelSeq: a[1]!.readUInt32LE(0),
          ibdev: cstr(a[2]!),
          ulib: cstr(a[3]!),
          version: a[4]!.readUInt16LE(0),
          err: a[5]!.readUInt16LE(0),
        }
      );
    case 1:
      return (
        bad(need(a, [[1, 'u32'], [2, 'addr'], [3, 'addr'], [4, 'u16']])) ?? {
          op: 'rmanage',
          ...h,
          kernelSeq: a[1]!.readUInt32LE(0),
          local: Buffer.from(a[2]!),
          mapped: Buffer.from(a[3]!),
          err: a[4]!.readUInt16LE(0),
        }
      );
    case 2:
    case 4:
      return (
        bad(need(a, [[1, 'u32'], [2, 'addr'], [3, 'addr'], [4, 'addr'], [5, 'addr'], [6, 'u16']])) ?? {
          op: op === 2 ? 'rquery' : 'remote_info',
          ...h,
          seqAttr: a[1]!.readUInt32LE(0),
          local: Buffer.from(a[2]!),
          remote: Buffer.from(a[3]!),
          mappedLocal: Buffer.from(a[4]!),
          mappedRemote: Buffer.from(a[5]!),
          err: a[6]!.readUInt16LE(0),
        }
      );
    case 5:
      return (
        bad(need(a, [[1, 'u32'], [2, 'u16']])) ?? { op: 'handle_err', ...h, errSeq: a[1]!.readUInt32LE(0), code: a[2]!.readUInt16LE(0) }
      );
    case 6:
      return bad(need(a, [[1, 'nulstr'], [2, 'u16']])) ?? { op: 'mapinfo_req', ...h, ulib: cstr(a[1]!), version: a[2]!.readUInt16LE(0) };
    case 7:
      return (
        bad(need(a, [[1, 'u32'], [2, 'u32'], [3, 'u32']])) ?? {
          op: 'mapinfo_num',
          ...h,
          kernelSeq: a[1]!.readUInt32LE(0),
          sendNum: a[2]!.readUInt32LE(0),
          ackNum: a[3]!.readUInt32LE(0),
        }
      );
    case 8:
      return bad(need(a, [[1, 'u16']])) ?? { op: 'hello', ...h, abi: a[1]!.readUInt16LE(0) };
    default:
      return { op: 'invalid', reason: `op ${op} is not sent by a daemon` };
  }
}

/** Decode a daemon datagram that must hold exactly one message. */
export function decodeDaemon(datagram: Buffer): DaemonMessage {
  return decodeDaemonMessage(one(datagram));
}
