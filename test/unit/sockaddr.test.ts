/**
 * src/codec/sockaddr.ts: the 128-byte struct sockaddr_storage (spec §1.3),
 * comparison helpers, table keys and text forms.
 */
import { isIPv6 } from 'node:net';
import { describe, expect, it } from 'vitest';
import {
  AF_INET,
  AF_INET6,
  SOCKADDR_STORAGE_SIZE,
  addrKey,
  decodeSockaddr,
  encodeSockaddr,
  formatAddr,
  formatIp,
  isWildcard,
  parseIp,
  sameAddr,
  withPort,
} from '../../src/codec/sockaddr.js';
import { hex, prng, sa } from './helpers.js';

const V4 = hex`
  00: 02 00          // sin_family AF_INET, host order
  02: 13 88          // sin_port 5000, network order
  04: c0 a8 01 0a    // sin_addr 192.168.1.10
  08: [120 x 00]     // sin_zero and unused
  80:`;

const V6 = hex`
  00: 0a 00          // sin6_family AF_INET6, host order
  02: 82 35          // sin6_port 33333, network order
  04: 00 01 23 45    // sin6_flowinfo 0x12345, network order
  08: fe 80 00 00 00 00 00 00  02 1b 21 ff fe 01 02 03   // sin6_addr fe80::21b:21ff:fe01:203
  18: 07 00 00 00    // sin6_scope_id 7, host order
  1c: [100 x 00]     // unused
  80:`;

describe('sockaddr_storage encoding', () => {
  it('IPv4: golden 128 bytes both ways', () => {
    const a = { family: AF_INET, port: 5000, ip: Buffer.from([192, 168, 1, 10]), flowinfo: 0, scopeId: 0 } as const;
    expect(encodeSockaddr(a)).toEqual(V4);
    expect(decodeSockaddr(V4)).toEqual({ ok: true, addr: a });
  });

  it('IPv6: golden 128 bytes both ways, flowinfo network order, scope id host order', () => {
    const a = {
      family: AF_INET6,
      port: 33333,
      ip: hex`fe 80 00 00 00 00 00 00 02 1b 21 ff fe 01 02 03`,
      flowinfo: 0x12345,
      scopeId: 7,
    } as const;
    expect(encodeSockaddr(a)).toEqual(V6);
    expect(decodeSockaddr(V6)).toEqual({ ok: true, addr: a });
  });

  it('the decoder ignores unused bytes; the encoder zeroes them', () => {
    const dirty = Buffer.from(V4);
    dirty.fill(0xee, 8);
    const d = decodeSockaddr(dirty);
    expect(d.ok && encodeSockaddr(d.addr)).toEqual(V4);
    const dirty6 = Buffer.from(V6);
    dirty6.fill(0xee, 28);
    const d6 = decodeSockaddr(dirty6);
    expect(d6.ok && encodeSockaddr(d6.addr)).toEqual(V6);
  });

  it('decoded IP is a copy, not a view into the message', () => {
    const b = Buffer.from(V4);
    const d = decodeSockaddr(b);
    b.fill(0);
    expect(d.ok && d.addr.ip).toEqual(Buffer.from([192, 168, 1, 10]));
  });

  it('minimum length 128 (the kernel policy); longer is accepted', () => {
    expect(SOCKADDR_STORAGE_SIZE).toBe(128);
    expect(decodeSockaddr(undefined)).toEqual({ ok: false, reason: 'address attribute missing' });
    for (const n of [0, 2, 8, 16, 28, 127]) {
      expect(decodeSockaddr(V6.subarray(0, n))).toEqual({ ok: false, reason: expect.stringMatching(`is ${n} bytes`) });
    }
    expect(decodeSockaddr(Buffer.concat([V4, Buffer.alloc(4)])).ok).toBe(true);
  });

  it('unknown families are refused', () => {
    for (const fam of [0, 1, 3, 17, 0x0200, 0xffff]) {
      const b = Buffer.from(V4);
      b.writeUInt16LE(fam, 0);
      expect(decodeSockaddr(b)).toEqual({ ok: false, reason: `unsupported address family ${fam}` });
    }
  });
});

describe('comparisons', () => {
  it('isWildcard: 0.0.0.0 and :: only', () => {
    expect(isWildcard(sa('0.0.0.0', 1))).toBe(true);
    expect(isWildcard(sa('::', 1))).toBe(true);
    expect(isWildcard(sa('0.0.0.1', 0))).toBe(false);
    expect(isWildcard(sa('::1', 0))).toBe(false);
    expect(isWildcard(sa('::ffff:0:0', 0))).toBe(false);
  });

  it('sameAddr compares family, IP and port; ignores flowinfo and scope id', () => {
    expect(sameAddr(sa('fe80::1', 9, { scopeId: 2, flowinfo: 5 }), sa('fe80::1', 9))).toBe(true);
    expect(sameAddr(sa('fe80::1', 9), sa('fe80::1', 10))).toBe(false);
    expect(sameAddr(sa('fe80::1', 9), sa('fe80::2', 9))).toBe(false);
    expect(sameAddr(sa('0.0.0.0', 9), sa('::', 9))).toBe(false);
    // Same 4 leading bytes, different family.
    expect(sameAddr(sa('1.2.3.4', 9), { ...sa('102:304::', 9) })).toBe(false);
  });

  it('withPort replaces only the port', () => {
    const a = sa('fe80::1', 9, { scopeId: 3, flowinfo: 1 });
    const b = withPort(a, 1234);
    expect(b).toEqual({ ...a, port: 1234 });
    expect(a.port).toBe(9);
  });
});

describe('addrKey', () => {
  it('IPv4 keys are numbers, IPv6 keys strings, so the two never collide', () => {
    expect(addrKey(sa('1.2.3.4', 5))).toBe(0x01020304 * 65536 + 5);
    expect(typeof addrKey(sa('::', 0))).toBe('string');
    const k4 = addrKey(sa('0.0.0.0', 0));
    const k6 = addrKey(sa('::', 0));
    expect(k4).not.toBe(k6);
    expect(new Map<number | string, number>([[k4, 4], [k6, 6]]).size).toBe(2);
  });

  it('injective over family, IP and port; independent of flowinfo and scope id', () => {
    const r = prng(42);
    const seen = new Map<number | string, string>();
    const mk = (): ReturnType<typeof sa> => {
      const v6 = r.next() < 0.5;
      // Small alphabets make near-collisions (same bytes, different family/port) likely.
      const ip = v6
        ? Buffer.from(Array.from({ length: 16 }, () => r.pick([0, 1, 2, 255])))
        : Buffer.from(Array.from({ length: 4 }, () => r.pick([0, 1, 2, 255])));
      return { family: v6 ? AF_INET6 : AF_INET, port: r.pick([0, 1, 2, 256, 65535]), ip, flowinfo: r.int(3), scopeId: r.int(3) };
    };
    for (let i = 0; i < 3000; i++) {
      const a = mk();
      const id = `${a.family}/${a.ip.toString('hex')}/${a.port}`;
      const k = addrKey(a);
      const prev = seen.get(k);
      if (prev !== undefined) expect(prev).toBe(id);
      else seen.set(k, id);
    }
    expect(seen.size).toBeGreaterThan(500);
  });
});

describe('text forms', () => {
  it('formats IPv4 and IPv6 (RFC 5952: longest zero run, first on ties, no single-group ::)', () => {
    const cases: [string, string][] = [
      ['0.0.0.0', '0.0.0.0'],
      ['255.1.2.3', '255.1.2.3'],
      ['::', '::'],
      ['::1', '::1'],
      ['1::', '1::'],
      ['2001:db8:0:0:1:0:0:1', '2001:db8::1:0:0:1'],
      ['2001:db8:0:1:1:1:1:1', '2001:db8:0:1:1:1:1:1'],
      ['0:0:1:0:0:0:1:0', '0:0:1::1:0'],
      ['fe80:0000:0000:0000:021b:21ff:fe01:0203', 'fe80::21b:21ff:fe01:203'],
    ];
    for (const [input, out] of cases) expect(formatIp(parseIp(input))).toBe(out);
    expect(formatAddr(sa('10.0.0.1', 5000))).toBe('10.0.0.1:5000');
    expect(formatAddr(sa('::1', 5000))).toBe('[::1]:5000');
  });

  it('parseIp accepts what node:net accepts (for the forms it supports) and rejects the rest', () => {
    const good = ['::', '::1', '1::', '1:2:3:4:5:6:7:8', '1:2:3:4:5:6:7::', '::2:3:4:5:6:7:8', 'FE80::A', '0.0.0.0', '255.255.255.255'];
    for (const g of good) expect(() => parseIp(g), g).not.toThrow();
    const bad = [
      '1::2::3', // two "::"
      '1:2:3:4:5:6:7:8::', // "::" for zero groups
      '::1:2:3:4:5:6:7:8',
      '1:2:3:4:5:6:7',
      '1:2:3:4:5:6:7:8:9',
      ':1:2:3:4:5:6:7',
      '1:::2',
      ':::',
      '12345::',
      'g::',
      '1.2.3',
      '1.2.3.256',
      '1.2.3.4.5',
      '',
      'a.b.c.d',
    ];
    for (const b of bad) {
      expect(() => parseIp(b), b).toThrow(/invalid/);
      if (b.includes(':')) expect(isIPv6(b), b).toBe(false);
    }
  });

  it('parseIp round-trips through formatIp for random IPv6 addresses', () => {
    const r = prng(7);
    for (let i = 0; i < 2000; i++) {
      const ip = Buffer.from(Array.from({ length: 16 }, () => (r.next() < 0.5 ? 0 : r.int(256))));
      const text = formatIp({ family: AF_INET6, ip });
      expect(isIPv6(text), text).toBe(true);
      expect(parseIp(text, 1).ip).toEqual(ip);
    }
  });
});
