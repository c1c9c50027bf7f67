/**
 * struct sockaddr_storage as IWPM carries it: exactly 128 bytes, Linux layout.
 * Family is host order (little-endian), port and address network order.
 *
 *   AF_INET  (2):  0-1 family, 2-3 port, 4-7 address, rest zero
 *   AF_INET6 (10): 0-1 family, 2-3 port, 4-7 flowinfo (network order), 8-23 address,
 *                  24-27 scope id (host order), rest zero
 */

export const AF_INET = 2;
export const AF_INET6 = 10;
export const SOCKADDR_STORAGE_SIZE = 128;

export interface SockAddr {
  family: typeof AF_INET | typeof AF_INET6;
  port: number;
  /** 4 bytes (AF_INET) or 16 bytes (AF_INET6), network order. */
  ip: Buffer;
  /** AF_INET6 only (network-order value as read); 0 for AF_INET. */
  flowinfo: number;
  /** AF_INET6 only; 0 for AF_INET. */
  scopeId: number;
}

export type SockAddrDecode = { ok: true; addr: SockAddr } | { ok: false; reason: string };

/** Decode an address attribute. Needs at least 128 bytes, as the kernel's policy does. */
export function decodeSockaddr(b: Buffer | undefined): SockAddrDecode {
  if (!b) return { ok: false, reason: 'address attribute missing' };
  if (b.length < SOCKADDR_STORAGE_SIZE) {
    return { ok: false, reason: `address attribute is ${b.length} bytes, expected ${SOCKADDR_STORAGE_SIZE}` };
  }
  const family = b[0]! | (b[1]! << 8);
  const port = (b[2]! << 8) | b[3]!;
  if (family === AF_INET) {
    return { ok: true, addr: { family, port, ip: copyBytes(b, 4, 4), flowinfo: 0, scopeId: 0 } };
  }
  if (family === AF_INET6) {
    return {
      ok: true,
      addr: {
        family,
        port,
        ip: copyBytes(b, 8, 16),
        flowinfo: b.readUInt32BE(4),
        scopeId: b.readUInt32LE(24),
      },
    };
  }
  return { ok: false, reason: `unsupported address family ${family}` };
}

/**
 * A copy of b[off, off + n) (from Node's pool: cheaper than Buffer.from for a few bytes).
 * Up to a sockaddr_storage a byte loop beats set(subarray(...)), which makes a view object.
 */
export function copyBytes(b: Uint8Array, off: number, n: number): Buffer {
  const out = Buffer.allocUnsafe(n);
  if (n > SOCKADDR_STORAGE_SIZE) out.set(b.subarray(off, off + n));
  else copyInto(out, 0, b, off, n);
  return out;
}

/**
 * src[srcOff, srcOff + n) to dst[dstOff, dstOff + n), byte by byte: for the few bytes of
 * an address or a peer message, cheaper than set(subarray(...)), which makes a view.
 */
export function copyInto(dst: Uint8Array, dstOff: number, src: Uint8Array, srcOff: number, n: number): void {
  for (let i = 0; i < n; i++) dst[dstOff + i] = src[srcOff + i]!;
}

/**
 * Write `a` as 128 bytes at out[off]. The bytes it does not set (padding, IPv4's
 * zero tail) must already be zero.
 */
export function writeSockaddr(out: Buffer, off: number, a: SockAddr): void {
  out[off] = a.family & 0xff;
  out[off + 1] = a.family >> 8;
  out[off + 2] = (a.port >> 8) & 0xff;
  out[off + 3] = a.port & 0xff;
  const ip = a.ip;
  if (a.family === AF_INET) {
    for (let i = 0; i < 4; i++) out[off + 4 + i] = ip[i]!;
  } else {
    out.writeUInt32BE(a.flowinfo >>> 0, off + 4);
    for (let i = 0; i < 16; i++) out[off + 8 + i] = ip[i]!;
    out.writeUInt32LE(a.scopeId >>> 0, off + 24);
  }
}

/** Encode into a fresh 128-byte buffer; every unused byte is zero. */
export function encodeSockaddr(a: SockAddr): Buffer {
  // pooled and zeroed by hand: Buffer.alloc makes an ArrayBuffer per call (~7x slower)
  const b = Buffer.allocUnsafe(SOCKADDR_STORAGE_SIZE);
  putSockaddr(b, 0, a);
  return b;
}

/** `a` as 128 bytes at out[off], whatever they held: every unused byte zeroed. */
export function putSockaddr(out: Buffer, off: number, a: SockAddr): void {
  out.fill(0, off, off + SOCKADDR_STORAGE_SIZE);
  writeSockaddr(out, off, a);
}

export function isWildcard(a: SockAddr): boolean {
  for (let i = 0; i < a.ip.length; i++) if (a.ip[i] !== 0) return false;
  return true;
}

/** Same family, IP and port (what the kernel's iwpm_compare_sockaddr and rdma-core compare). */
export function sameAddr(a: SockAddr, b: SockAddr): boolean {
  return a.family === b.family && a.port === b.port && a.ip.equals(b.ip);
}

export function withPort(a: SockAddr, port: number): SockAddr {
  // spelled out: an object spread is several times slower on this hot path
  return { family: a.family, port, ip: a.ip, flowinfo: a.flowinfo, scopeId: a.scopeId };
}

/**
 * Canonical table key from bytes: IPv4 address and port fit exactly in a JS number
 * (48 bits); IPv6 keys are strings. Numbers and strings never collide in a Map.
 */
export function addrKey(a: SockAddr): number | string {
  if (a.family === AF_INET) return a.ip.readUInt32BE(0) * 65536 + a.port;
  return a.ip.toString('latin1') + String.fromCharCode(a.port);
}

export function formatIp(a: Pick<SockAddr, 'family' | 'ip'>): string {
  if (a.family === AF_INET) return `${a.ip[0]}.${a.ip[1]}.${a.ip[2]}.${a.ip[3]}`;
  const groups: string[] = [];
  for (let i = 0; i < 16; i += 2) groups.push(a.ip.readUInt16BE(i).toString(16));
  // compress the longest run of zero groups (RFC 5952)
  let bestStart = -1;
  let bestLen = 0;
  for (let i = 0; i < 8; ) {
    if (groups[i] !== '0') {
      i++;
      continue;
    }
    let j = i;
    while (j < 8 && groups[j] === '0') j++;
    if (j - i > bestLen && j - i > 1) {
      bestStart = i;
      bestLen = j - i;
    }
    i = j;
  }
  if (bestStart < 0) return groups.join(':');
  const head = groups.slice(0, bestStart).join(':');
  const tail = groups.slice(bestStart + bestLen).join(':');
  return `${head}::${tail}`;
}

export function formatAddr(a: SockAddr): string {
  return a.family === AF_INET ? `${formatIp(a)}:${a.port}` : `[${formatIp(a)}]:${a.port}`;
}

/** Parse "1.2.3.4" or an IPv6 literal into a SockAddr (for tests, config and tools). */
export function parseIp(ip: string, port = 0): SockAddr {
  if (ip.includes(':')) {
    const b = Buffer.alloc(16);
    const halves = ip.split('::');
    // At most one "::", and it stands for at least one zero group.
    if (halves.length > 2) throw new Error(`invalid IPv6 address ${ip}`);
    const [headS, tailS] = halves.length === 2 ? halves : [ip, undefined];
    const head = headS ? headS.split(':') : [];
    const tail = tailS !== undefined && tailS !== '' ? tailS.split(':') : [];
    if (tailS === undefined ? head.length !== 8 : head.length + tail.length > 7) {
      throw new Error(`invalid IPv6 address ${ip}`);
    }
    const groups = [...head, ...new Array<string>(8 - head.length - tail.length).fill('0'), ...tail];
    groups.forEach((g, i) => {
      const v = parseInt(g, 16);
      if (!/^[0-9a-fA-F]{1,4}$/.test(g) || Number.isNaN(v)) throw new Error(`invalid IPv6 address ${ip}`);
      b.writeUInt16BE(v, i * 2);
    });
    return { family: AF_INET6, port, ip: b, flowinfo: 0, scopeId: 0 };
  }
  const parts = ip.split('.');
  if (parts.length !== 4 || parts.some((p) => !/^\d{1,3}$/.test(p) || Number(p) > 255)) {
    throw new Error(`invalid IPv4 address ${ip}`);
  }
  return { family: AF_INET, port, ip: Buffer.from(parts.map(Number)), flowinfo: 0, scopeId: 0 };
}
