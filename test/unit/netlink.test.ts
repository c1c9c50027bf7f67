/**
 * src/codec/netlink.ts: nlmsghdr / nlattr framing, NLMSG_DONE and NLMSG_ERROR
 * payloads (spec §1.2, §1.4). Golden bytes are written by hand.
 */
import { describe, expect, it } from 'vitest';
import {
  NLMSG_DONE,
  NLMSG_ERROR,
  NLM_F_MULTI,
  NLM_F_REQUEST,
  align4,
  bytes,
  decodeDoneStatus,
  decodeError,
  encodeDone,
  encodeMessage,
  parseAttrs,
  readCString,
  readHeader,
  splitMessages,
  str,
  u16,
  u32,
  writeHeader,
} from '../../src/codec/netlink.js';
import { hex, one, prng } from './helpers.js';

describe('align4', () => {
  it('rounds up to a multiple of 4', () => {
    expect([0, 1, 2, 3, 4, 5, 7, 8, 131, 132].map(align4)).toEqual([0, 4, 4, 4, 4, 8, 8, 8, 132, 132]);
  });
});

describe('nlmsghdr', () => {
  const golden = hex`
    00: 28 01 00 00   // nlmsg_len 296 (host order, LE)
    04: 01 08         // nlmsg_type 0x0801
    06: 01 00         // nlmsg_flags NLM_F_REQUEST
    08: 05 00 00 00   // nlmsg_seq 5
    0c: 34 12 00 00   // nlmsg_pid 0x1234
    10:`;
  const h = { len: 296, type: 0x0801, flags: NLM_F_REQUEST, seq: 5, pid: 0x1234 };

  it('reads and writes the 16-byte header in host (little-endian) order', () => {
    expect(readHeader(golden)).toEqual(h);
    const b = Buffer.alloc(16);
    writeHeader(b, h);
    expect(b).toEqual(golden);
  });

  it('reads at an offset and writes 32-bit values modulo 2^32', () => {
    const b = Buffer.concat([Buffer.alloc(3), golden]);
    expect(readHeader(b, 3)).toEqual(h);
    const w = Buffer.alloc(16);
    writeHeader(w, { len: 16, type: 0x10003, flags: 0x10002, seq: 2 ** 32 + 7, pid: -1 });
    expect(readHeader(w)).toEqual({ len: 16, type: 3, flags: 2, seq: 7, pid: 0xffffffff });
  });
});

describe('encodeMessage', () => {
  it('u16 attribute: nla_len 6, two pad bytes, nlmsg_len counts the pad (libnl)', () => {
    const m = encodeMessage({ type: 0x0808, flags: NLM_F_REQUEST, seq: 0, pid: 0x1234 }, [u16(1, 4)]);
    expect(m).toEqual(hex`
      00: 18 00 00 00  08 08  01 00  00 00 00 00  34 12 00 00   // len 24, HELLO, REQUEST, seq 0, pid 0x1234
      10: 06 00 01 00  04 00  00 00                             // nla_len 6, type 1, u16 4, pad
      18:`);
  });

  it('u32, bytes and NUL-terminated strings (strlen+1), each padded to 4', () => {
    const m = encodeMessage({ type: 0x20, flags: 0, seq: 0xdeadbeef, pid: 0 }, [
      u32(1, 0x01020304),
      bytes(2, Buffer.from([0xaa, 0xbb, 0xcc])),
      str(3, 'abc'),
      str(4, 'abcd'),
      str(5, ''),
    ]);
    expect(m).toEqual(hex`
      00: 3c 00 00 00  20 00  00 00  ef be ad de  00 00 00 00   // len 60
      10: 08 00 01 00  04 03 02 01                              // u32 0x01020304, host order
      18: 07 00 02 00  aa bb cc  00                             // 3 bytes + 1 pad
      20: 08 00 03 00  61 62 63 00                              // "abc\0": nla_len 8, no pad
      28: 09 00 04 00  61 62 63 64 00  00 00 00                 // "abcd\0": nla_len 9, 3 pad
      34: 05 00 05 00  00  00 00 00                             // "\0": nla_len 5, 3 pad
      3c:`);
  });

  it('zero attributes: a bare header', () => {
    expect(encodeMessage({ type: 0x0805, flags: 1, seq: 1, pid: 2 }, [])).toEqual(
      hex`10 00 00 00  05 08  01 00  01 00 00 00  02 00 00 00`,
    );
  });
});

describe('splitMessages', () => {
  const a = hex`
    00: 14 00 00 00  03 00  02 00  05 00 00 00  34 12 00 00   // DONE, 20 bytes
    10: 00 00 00 00`;
  const b = hex`
    00: 12 00 00 00  20 00  00 00  01 00 00 00  00 00 00 00   // 18 bytes: not 4-aligned
    10: 06 00`;

  it('walks messages that start on 4-byte boundaries (NLMSG_NEXT)', () => {
    const dg = Buffer.concat([b, Buffer.alloc(2), a, b]); // b is padded to 20 before a
    const s = splitMessages(dg);
    expect(s.error).toBeUndefined();
    expect(s.messages.map((m) => m.header.len)).toEqual([18, 20, 18]);
    expect(s.messages[0]!.payload).toEqual(hex`06 00`);
    expect(s.messages[1]!.raw).toEqual(a);
    expect(s.messages[1]!.payload).toEqual(hex`00 00 00 00`);
  });

  it('an empty datagram holds no messages', () => {
    expect(splitMessages(Buffer.alloc(0))).toEqual({ messages: [] });
  });

  it('reports trailing garbage but keeps the messages before it', () => {
    const short = splitMessages(Buffer.concat([a, hex`01 02 03`]));
    expect(short.messages).toHaveLength(1);
    expect(short.error).toMatch(/trailing 3 bytes/);

    const tiny = Buffer.from(a);
    tiny.writeUInt32LE(15, 0);
    expect(splitMessages(tiny)).toEqual({ messages: [], error: expect.stringMatching(/nlmsg_len 15 smaller/) });

    const long = Buffer.from(a);
    long.writeUInt32LE(21, 0);
    expect(splitMessages(long)).toEqual({ messages: [], error: expect.stringMatching(/nlmsg_len 21 exceeds the 20/) });
  });

  it('payload and raw are views sized by nlmsg_len, not by the datagram', () => {
    const dg = Buffer.concat([a, Buffer.alloc(0)]);
    const m = one(dg);
    expect(m.raw.length).toBe(20);
    expect(m.payload.length).toBe(4);
  });
});

describe('parseAttrs', () => {
  it('indexes attributes by type, no family header', () => {
    const p = parseAttrs(
      hex`
        08 00 01 00  07 00 00 00   // 1: u32 7
        06 00 02 00  0c 00  00 00  // 2: u16 12, pad`,
      2,
    );
    expect(p.ok).toBe(true);
    if (!p.ok) return;
    expect(p.attrs[1]).toEqual(hex`07 00 00 00`);
    expect(p.attrs[2]).toEqual(hex`0c 00`); // payload without the pad
  });

  it('ignores types above the maximum, strips NLA_F_NESTED/NET_BYTEORDER, last occurrence wins', () => {
    const p = parseAttrs(
      hex`
        08 00 09 00  01 00 00 00   // type 9 > max: ignored
        08 00 01 80  02 00 00 00   // type 1 | NLA_F_NESTED
        08 00 01 40  03 00 00 00   // type 1 | NLA_F_NET_BYTEORDER: wins`,
      3,
    );
    expect(p.ok && p.attrs.length).toBe(4);
    expect(p.ok && p.attrs[9]).toBeFalsy();
    expect(p.ok && p.attrs[1]).toEqual(hex`03 00 00 00`);
  });

  it('tolerates fewer than 4 trailing bytes and an unpadded last attribute', () => {
    const p = parseAttrs(hex`06 00 01 00  04 00  ff`, 1);
    expect(p.ok && p.attrs[1]).toEqual(hex`04 00`);
  });

  it('rejects nla_len < 4 and attributes running past the end', () => {
    expect(parseAttrs(hex`03 00 01 00  00 00 00 00`, 1)).toEqual({ ok: false, reason: expect.stringMatching(/nla_len 3 < 4/) });
    expect(parseAttrs(hex`09 00 01 00  00 00 00 00`, 1)).toEqual({ ok: false, reason: expect.stringMatching(/runs past/) });
  });

  it('an empty payload parses to an empty table', () => {
    const p = parseAttrs(Buffer.alloc(0), 2);
    expect(p.ok && p.attrs.filter(Boolean)).toEqual([]);
  });
});

describe('NLMSG_DONE', () => {
  it('20-byte dump completion with status (spec §2.3 worked example)', () => {
    const golden = hex`
      00: 14 00 00 00   // len 20
      04: 03 00         // NLMSG_DONE
      06: 02 00         // NLM_F_MULTI
      08: 05 00 00 00   // seq 5 (the daemon's message)
      0c: 34 12 00 00   // pid 0x1234 (the daemon's port id)
      10: 00 00 00 00   // s32 status 0
      14:`;
    expect(encodeDone(5, 0x1234, 0)).toEqual(golden);
    const m = one(golden);
    expect(m.header).toEqual({ len: 20, type: NLMSG_DONE, flags: NLM_F_MULTI, seq: 5, pid: 0x1234 });
    expect(decodeDoneStatus(m)).toBe(0);
  });

  it('negative status round-trips', () => {
    const b = encodeDone(9, 1, -22);
    expect(b.subarray(16)).toEqual(hex`ea ff ff ff`);
    expect(decodeDoneStatus(one(b))).toBe(-22);
  });

  it('bare 16-byte terminator of a MAPINFO datagram has no status', () => {
    const golden = hex`10 00 00 00  03 00  02 00  00 00 00 00  00 00 00 00`;
    expect(encodeDone(0, 0)).toEqual(golden);
    expect(decodeDoneStatus(one(golden))).toBeUndefined();
  });
});

describe('NLMSG_ERROR', () => {
  const golden = hex`
    00: 2c 00 00 00  02 00  00 00  00 00 00 00  34 12 00 00   // len 44, NLMSG_ERROR, seq 0, pid 0x1234
    10: ea ff ff ff                                           // error -22 (EINVAL)
    14: 18 00 00 00  08 08  01 00  00 00 00 00  34 12 00 00   // echoed header: HELLO len 24 seq 0
    24: 06 00 01 00  04 00  00 00                             // echoed payload: ABI_VERSION 4
    2c:`;

  it('decodes the errno and the echoed original header', () => {
    const m = one(golden);
    expect(m.header.type).toBe(NLMSG_ERROR);
    expect(decodeError(m)).toEqual({
      error: -22,
      original: { len: 24, type: 0x0808, flags: NLM_F_REQUEST, seq: 0, pid: 0x1234 },
    });
  });

  it('without the echoed message (NETLINK_CAP_ACK) only the errno', () => {
    const m = one(hex`14 00 00 00  02 00  00 01  03 00 00 00  00 00 00 00  ff ff ff ff`);
    expect(decodeError(m)).toEqual({ error: -1, original: undefined });
  });

  it('shorter than 4 payload bytes: undefined', () => {
    expect(decodeError(one(hex`12 00 00 00 02 00 00 00 00 00 00 00 00 00 00 00 ea ff`))).toBeUndefined();
  });
});

describe('readCString', () => {
  it('stops at the first NUL; no NUL means the whole buffer', () => {
    expect(readCString(Buffer.from('ens1\0junk'))).toBe('ens1');
    expect(readCString(Buffer.from('abcdefghijklmnop'))).toBe('abcdefghijklmnop');
    expect(readCString(Buffer.alloc(16))).toBe('');
    expect(readCString(Buffer.alloc(0))).toBe('');
  });
});

describe('robustness (seeded random input)', () => {
  it('splitMessages and parseAttrs never throw, and every message lies inside the datagram', () => {
    const r = prng(0x5eed01);
    for (let i = 0; i < 3000; i++) {
      const n = r.int(200);
      const dg = r.bytes(n);
      // Make plausible lengths common.
      if (n >= 4 && r.next() < 0.7) dg.writeUInt32LE(16 + r.int(n), 0);
      const s = splitMessages(dg);
      let covered = 0;
      for (const m of s.messages) {
        expect(m.header.len).toBeGreaterThanOrEqual(16);
        expect(m.raw.length).toBe(m.header.len);
        covered += align4(m.header.len);
        const p = parseAttrs(m.payload, 1 + r.int(8));
        expect(typeof p.ok).toBe('boolean');
      }
      if (!s.error) expect(covered).toBeGreaterThanOrEqual(n);
      const q = parseAttrs(dg, r.int(10));
      if (q.ok) expect(q.attrs.length).toBeGreaterThan(0);
    }
  });
});
