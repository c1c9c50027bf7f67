/**
 * Hand-rolled netlink/IWPM byte builders for tests: deliberately independent of
 * src/codec, so expected bytes are not produced by the code under test.
 * Layout per spec 1.2-1.3: host-order (little-endian) header and integer
 * attributes, nla_len excludes padding, nlmsg_len includes the last attribute's
 * padding (libnl, rdma-core).
 */

export function attr(type: number, payload: Buffer): Buffer {
  const len = 4 + payload.length;
  const b = Buffer.alloc((len + 3) & ~3);
  b.writeUInt16LE(len, 0);
  b.writeUInt16LE(type, 2);
  payload.copy(b, 4);
  return b;
}

export const a16 = (type: number, v: number): Buffer => {
  const p = Buffer.alloc(2);
  p.writeUInt16LE(v, 0);
  return attr(type, p);
};
export const a32 = (type: number, v: number): Buffer => {
  const p = Buffer.alloc(4);
  p.writeUInt32LE(v >>> 0, 0);
  return attr(type, p);
};
/** NUL-terminated string of strlen+1 bytes (nla_put_string). */
export const astr = (type: number, s: string): Buffer => attr(type, Buffer.from(s + '\0', 'latin1'));
/** Fixed-size NUL-padded char array (what the kernel sends). */
export const afixed = (type: number, s: string, size: number): Buffer => {
  const p = Buffer.alloc(size);
  p.write(s, 'latin1');
  return attr(type, p);
};
export const abytes = attr;

export interface Hdr {
  type: number;
  flags: number;
  seq: number;
  pid: number;
}

/** Header + attributes; nlmsg_len = everything including the last attribute's padding. */
export function nlmsg(h: Hdr, ...attrs: Buffer[]): Buffer {
  const body = Buffer.concat(attrs);
  const b = Buffer.alloc(16 + body.length);
  b.writeUInt32LE(b.length, 0);
  b.writeUInt16LE(h.type, 4);
  b.writeUInt16LE(h.flags, 6);
  b.writeUInt32LE(h.seq >>> 0, 8);
  b.writeUInt32LE(h.pid >>> 0, 12);
  body.copy(b, 16);
  return b;
}

/** struct sockaddr_in in a zeroed 128-byte sockaddr_storage. */
export function sa4(ip: string, port: number): Buffer {
  const b = Buffer.alloc(128);
  b.writeUInt16LE(2, 0);
  b.writeUInt16BE(port, 2);
  ip.split('.').forEach((x, i) => (b[4 + i] = Number(x)));
  return b;
}

/** struct sockaddr_in6 in a zeroed 128-byte sockaddr_storage (full or "::"-compressed literal). */
export function sa6(ip: string, port: number, scopeId = 0, flowinfo = 0): Buffer {
  const b = Buffer.alloc(128);
  b.writeUInt16LE(10, 0);
  b.writeUInt16BE(port, 2);
  b.writeUInt32BE(flowinfo, 4);
  const [h, t] = ip.includes('::') ? ip.split('::') : [ip, undefined];
  const head = h ? h.split(':') : [];
  const tail = t ? t.split(':') : [];
  const groups = [...head, ...Array(8 - head.length - tail.length).fill('0'), ...tail];
  groups.forEach((g, i) => b.writeUInt16BE(parseInt(g, 16), 8 + 2 * i));
  b.writeUInt32LE(scopeId, 24);
  return b;
}

/** Same address with another port. */
export function withPortRaw(sa: Buffer, port: number): Buffer {
  const b = Buffer.from(sa);
  b.writeUInt16BE(port, 2);
  return b;
}

/** Parse "00 01 ab ..." (whitespace and "[n x 00]" runs allowed) into bytes. */
export function fromHex(s: string): Buffer {
  const expanded = s.replace(/\[(\d+) x ([0-9a-f]{2})\]/gi, (_m, n: string, v: string) => `${v} `.repeat(Number(n)));
  return Buffer.from(expanded.replace(/[^0-9a-f]/gi, ''), 'hex');
}

/** Hex dump, 16 bytes a line, with offsets (for readable failure messages). */
export function hexdump(b: Buffer): string {
  const lines: string[] = [];
  for (let i = 0; i < b.length; i += 16) {
    lines.push(
      `${i.toString(16).padStart(4, '0')}: ${[...b.subarray(i, i + 16)].map((x) => x.toString(16).padStart(2, '0')).join(' ')}`,
    );
  }
  return lines.join('\n');
}

/** A readable description of the first differences between two buffers ('' when equal). */
export function byteDiff(actual: Buffer, expected: Buffer): string {
  if (actual.equals(expected)) return '';
  const out: string[] = [];
  if (actual.length !== expected.length) out.push(`length ${actual.length}, expected ${expected.length}`);
  const n = Math.max(actual.length, expected.length);
  let shown = 0;
  for (let i = 0; i < n && shown < 12; i++) {
    if (actual[i] !== expected[i]) {
      out.push(`byte 0x${i.toString(16)}: got ${hexByte(actual[i])}, expected ${hexByte(expected[i])}`);
      shown++;
    }
  }
  return `${out.join('; ')}\nactual:\n${hexdump(actual)}\nexpected:\n${hexdump(expected)}`;
}

const hexByte = (x: number | undefined): string => (x === undefined ? '--' : x.toString(16).padStart(2, '0'));
