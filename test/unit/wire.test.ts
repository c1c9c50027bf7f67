import { describe, expect, it } from 'vitest';
import {
  PM_MESSAGE_SIZE,
  PM_MSG_ACC,
  PM_MSG_ACK,
  PM_MSG_REJ,
  PM_MSG_REQ,
  PM_REQ_SIZE,
  type PeerMessage,
  WIRE_REJECT_KINDS,
  asReply,
  classifyPeerDatagram,
  decodePeerMessage,
  encodePeerMessage,
  replyFromRaw,
  writePeerReq,
  writeReply,
} from '../../src/codec/wire.js';

/** Hex dump lines "00: 04 00 ..." (comments after the 16 bytes are ignored) → bytes. */
function hex(s: string): Buffer {
  const bytes: number[] = [];
  for (const line of s.trim().split('\n')) {
    const body = line.replace(/^\s*[0-9a-f]{2}:\s*/i, '');
    const tokens = body.split(/\s+/).filter((t) => /^[0-9a-f]{2}$/i.test(t));
    bytes.push(...tokens.slice(0, 16).map((t) => parseInt(t, 16)));
  }
  return Buffer.from(bytes);
}

function ip4(s: string): Buffer {
  return Buffer.from(s.split('.').map(Number));
}

function decodeOk(b: Uint8Array): PeerMessage {
  const d = decodePeerMessage(b);
  if (!d.ok) throw new Error(`decode failed: ${d.reason}`);
  return d.msg;
}

// ---------------------------------------------------------------------------
// Spec §5.3 worked example (IPv4): A 192.168.1.10:40000 (mapped 40001) connects to a
// wildcard listener on B 0.0.0.0:5000 mapped 33333, handle 0x0000561234567890.

const SPEC_REQ = hex(`
00: 04 00 9c 41 13 88 9c 40  00 00 56 12 34 56 78 90
10: c0 a8 01 0a 00 00 00 00  00 00 00 00 00 00 00 00   cpipaddr
20: c0 a8 01 14 00 00 00 00  00 00 00 00 00 00 00 00   apipaddr
30: c0 a8 01 0a 00 00 00 00  00 00 00 00 00 00 00 00   mapped_cpipaddr
`);

const SPEC_ACC = hex(`
00: 14 00 00 00 82 35 9c 40  00 00 56 12 34 56 78 90
10: c0 a8 01 0a 00 00 00 00  00 00 00 00 00 00 00 00
20: c0 a8 01 14 00 00 00 00  00 00 00 00 00 00 00 00
`);

const specReq: PeerMessage = {
  type: PM_MSG_REQ,
  ipVersion: 4,
  pmtime: 0,
  mappedCpPort: 40001,
  apPort: 5000,
  cpPort: 40000,
  assocHandle: 0x0000561234567890n,
  cpIp: ip4('192.168.1.10'),
  apIp: ip4('192.168.1.20'),
  mappedCpIp: ip4('192.168.1.10'),
};

const specAcc: PeerMessage = {
  type: PM_MSG_ACC,
  ipVersion: 4,
  pmtime: 0,
  mappedCpPort: 0,
  apPort: 33333,
  cpPort: 40000,
  assocHandle: 0x0000561234567890n,
  cpIp: ip4('192.168.1.10'),
  apIp: ip4('192.168.1.20'),
};

describe('wire codec: spec §5.3 worked example (IPv4)', () => {
  it('REQ encodes to the 64 spec bytes and back', () => {
    const b = encodePeerMessage(specReq);
    expect(b.length).toBe(64);
    expect(b.toString('hex')).toBe(SPEC_REQ.toString('hex'));
    expect(decodeOk(SPEC_REQ)).toEqual(specReq);
  });

  it('ACC encodes to the 48 spec bytes and back', () => {
    const b = encodePeerMessage(specAcc);
    expect(b.length).toBe(48);
    expect(b.toString('hex')).toBe(SPEC_ACC.toString('hex'));
    expect(decodeOk(SPEC_ACC)).toEqual(specAcc);
  });

  it('ACC built from the REQ as the passive side does (wildcard: IP kept, port replaced)', () => {
    const acc = asReply(decodeOk(SPEC_REQ), PM_MSG_ACC, { apPort: 33333 });
    expect(encodePeerMessage(acc).toString('hex')).toBe(SPEC_ACC.toString('hex'));
  });

  it('ACK is the ACC with byte 0 = 0x24', () => {
    const expected = Buffer.from(SPEC_ACC);
    expected[0] = 0x24;
    const ack = asReply(decodeOk(SPEC_ACC), PM_MSG_ACK);
    expect(encodePeerMessage(ack).toString('hex')).toBe(expected.toString('hex'));
    expect(decodeOk(expected)).toEqual({ ...specAcc, type: PM_MSG_ACK });
  });

  it("REJ is the REQ's first 48 bytes with byte 0 = 0x34 and bytes 2-3 = 0", () => {
    const expected = Buffer.from(SPEC_REQ.subarray(0, 48));
    expected[0] = 0x34;
    expected[2] = 0;
    expected[3] = 0;
    const rej = asReply(decodeOk(SPEC_REQ), PM_MSG_REJ);
    expect(encodePeerMessage(rej).toString('hex')).toBe(expected.toString('hex'));
    expect(decodeOk(expected)).toEqual({
      type: PM_MSG_REJ,
      ipVersion: 4,
      pmtime: 0,
      mappedCpPort: 0,
      apPort: 5000,
      cpPort: 40000,
      assocHandle: 0x0000561234567890n,
      cpIp: ip4('192.168.1.10'),
      apIp: ip4('192.168.1.20'),
    });
  });
});

// ---------------------------------------------------------------------------
// IPv6: A [2001:db8::a]:40000 mapped 40001, B [2001:db8::14]:5000 specific listener
// mapped to [2001:db8::14]:33333, handle 0xfedcba9876543210, pmtime 7 (echoed).

const A6 = Buffer.from('20010db800000000000000000000000a', 'hex');
const B6 = Buffer.from('20010db8000000000000000000000014', 'hex');

const REQ6 = hex(`
00: 06 07 9c 41 13 88 9c 40  fe dc ba 98 76 54 32 10   magic pmtime reserved=40001 apport=5000 cpport=40000 handle
10: 20 01 0d b8 00 00 00 00  00 00 00 00 00 00 00 0a   cpipaddr 2001:db8::a
20: 20 01 0d b8 00 00 00 00  00 00 00 00 00 00 00 14   apipaddr 2001:db8::14
30: 20 01 0d b8 00 00 00 00  00 00 00 00 00 00 00 0a   mapped_cpipaddr
`);
const ACC6 = hex(`
00: 16 07 00 00 82 35 9c 40  fe dc ba 98 76 54 32 10   apport = mapped 33333
10: 20 01 0d b8 00 00 00 00  00 00 00 00 00 00 00 0a
20: 20 01 0d b8 00 00 00 00  00 00 00 00 00 00 00 14
`);
const ACK6 = hex(`
00: 26 07 00 00 82 35 9c 40  fe dc ba 98 76 54 32 10
10: 20 01 0d b8 00 00 00 00  00 00 00 00 00 00 00 0a
20: 20 01 0d b8 00 00 00 00  00 00 00 00 00 00 00 14
`);
const REJ6 = hex(`
00: 36 07 00 00 13 88 9c 40  fe dc ba 98 76 54 32 10   apport = as requested
10: 20 01 0d b8 00 00 00 00  00 00 00 00 00 00 00 0a
20: 20 01 0d b8 00 00 00 00  00 00 00 00 00 00 00 14
`);

describe('wire codec: IPv6 golden bytes', () => {
  const base = {
    ipVersion: 6 as const,
    pmtime: 7,
    cpPort: 40000,
    assocHandle: 0xfedcba9876543210n,
    cpIp: A6,
    apIp: B6,
  };
  const cases: [string, Buffer, PeerMessage][] = [
    ['REQ', REQ6, { ...base, type: PM_MSG_REQ, mappedCpPort: 40001, apPort: 5000, mappedCpIp: A6 }],
    ['ACC', ACC6, { ...base, type: PM_MSG_ACC, mappedCpPort: 0, apPort: 33333 }],
    ['ACK', ACK6, { ...base, type: PM_MSG_ACK, mappedCpPort: 0, apPort: 33333 }],
    ['REJ', REJ6, { ...base, type: PM_MSG_REJ, mappedCpPort: 0, apPort: 5000 }],
  ];
  for (const [name, bytes, msg] of cases) {
    it(`${name}: encode == golden, decode(golden) == value`, () => {
      expect(bytes.length).toBe(name === 'REQ' ? PM_REQ_SIZE : PM_MESSAGE_SIZE);
      expect(encodePeerMessage(msg).toString('hex')).toBe(bytes.toString('hex'));
      expect(decodeOk(bytes)).toEqual(msg);
    });
  }

  it('replies derived from the REQ match the golden bytes', () => {
    const req = decodeOk(REQ6);
    const acc = asReply(req, PM_MSG_ACC, { apPort: 33333 });
    expect(encodePeerMessage(acc).toString('hex')).toBe(ACC6.toString('hex'));
    expect(encodePeerMessage(asReply(decodeOk(ACC6), PM_MSG_ACK)).toString('hex')).toBe(ACK6.toString('hex'));
    expect(encodePeerMessage(asReply(req, PM_MSG_REJ)).toString('hex')).toBe(REJ6.toString('hex'));
  });
});

describe('wire codec: IPv4 golden bytes for every type', () => {
  // magic bytes per spec table: REQ 0x04, ACC 0x14, ACK 0x24, REJ 0x34
  const head = (magic: number, reserved: number, apport: number): string =>
    [magic, 0x00, reserved >> 8, reserved & 0xff, apport >> 8, apport & 0xff].map((x) => x.toString(16).padStart(2, '0')).join('') +
    '9c40' + // cpport 40000
    '0000561234567890'; // handle
  const fields =
    'c0a8010a000000000000000000000000' + // cpipaddr 192.168.1.10, zeros after byte 4
    'c0a80114000000000000000000000000'; // apipaddr 192.168.1.20
  const types: [number, number, number][] = [
    [PM_MSG_ACC, 0x14, 33333],
    [PM_MSG_ACK, 0x24, 33333],
    [PM_MSG_REJ, 0x34, 5000],
  ];
  for (const [type, magic, apport] of types) {
    it(`type ${type}: magic 0x${magic.toString(16)}`, () => {
      const golden = head(magic, 0, apport) + fields;
      const msg: PeerMessage = { ...specAcc, type: type as 1 | 2 | 3, apPort: apport };
      expect(encodePeerMessage(msg).toString('hex')).toBe(golden);
      expect(decodeOk(Buffer.from(golden, 'hex'))).toEqual(msg);
    });
  }
  it('REQ: magic 0x04, reserved = mapped cp port', () => {
    const golden = head(0x04, 40001, 5000) + fields + 'c0a8010a000000000000000000000000';
    expect(encodePeerMessage(specReq).toString('hex')).toBe(golden);
  });
});

describe('wire codec: receive rules', () => {
  it('ignores bytes 4-15 of IPv4 address fields (rdma-core sends stack garbage there)', () => {
    const dirty = Buffer.from(SPEC_REQ);
    for (const off of [16, 32, 48]) for (let i = 4; i < 16; i++) dirty[off + i] = 0xa5 ^ i;
    expect(decodeOk(dirty)).toEqual(specReq);
    // and we send zeros there
    expect(encodePeerMessage(decodeOk(dirty)).equals(SPEC_REQ)).toBe(true);
  });

  it('accepts a 64-byte ACC/ACK/REJ and ignores its last 16 bytes', () => {
    const long = Buffer.concat([SPEC_ACC, Buffer.alloc(16, 0xee)]);
    expect(decodeOk(long)).toEqual(specAcc);
  });

  it('rejects wrong lengths, without throwing', () => {
    for (const n of [0, 1, 47, 49, 63, 65, 100, 4096]) {
      const d = decodePeerMessage(Buffer.alloc(n, 0x04));
      expect(d.ok).toBe(false);
      if (!d.ok) expect(d.kind).toBe('length');
    }
  });

  it('rejects a 48-byte REQ', () => {
    const d = decodePeerMessage(SPEC_REQ.subarray(0, 48));
    expect(d).toMatchObject({ ok: false, kind: 'reqLength' });
  });

  it('rejects IP versions other than 4 and 6', () => {
    for (const v of [0, 1, 2, 3, 5, 7, 8, 15]) {
      const b = Buffer.from(SPEC_ACC);
      b[0] = 0x10 | v;
      expect(decodePeerMessage(b)).toMatchObject({ ok: false, kind: 'ipVersion' });
    }
  });

  it('rejects protocol versions other than 0', () => {
    for (const v of [1, 2, 3]) {
      const b = Buffer.from(SPEC_ACC);
      b[0] = (v << 6) | 0x14;
      expect(decodePeerMessage(b)).toMatchObject({ ok: false, kind: 'version' });
    }
  });

  it('decodes from a Uint8Array view at an offset (no shared state with the input)', () => {
    const backing = new Uint8Array(200);
    backing.set(SPEC_REQ, 100);
    const view = backing.subarray(100, 164);
    const m = decodeOk(view);
    expect(m).toEqual(specReq);
    backing.fill(0);
    expect(m).toEqual(specReq);
  });
});

// ---------------------------------------------------------------------------
// Property tests (seeded, reproducible).

function rng(seed: number): () => number {
  // mulberry32
  let s = seed >>> 0;
  return () => {
    s = (s + 0x6d2b79f5) >>> 0;
    let t = s;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

function randomBytes(r: () => number, n: number): Buffer {
  const b = Buffer.alloc(n);
  for (let i = 0; i < n; i++) b[i] = Math.floor(r() * 256);
  return b;
}

function randomMessage(r: () => number): PeerMessage {
  const ipVersion = r() < 0.5 ? 4 : 6;
  const n = ipVersion === 4 ? 4 : 16;
  const type = Math.floor(r() * 4) as 0 | 1 | 2 | 3;
  const u16 = (): number => Math.floor(r() * 65536);
  const handle = randomBytes(r, 8).readBigUInt64BE(0);
  const base = {
    ipVersion: ipVersion as 4 | 6,
    pmtime: Math.floor(r() * 256),
    mappedCpPort: u16(),
    apPort: u16(),
    cpPort: u16(),
    assocHandle: handle,
    cpIp: randomBytes(r, n),
    apIp: randomBytes(r, n),
  };
  return type === PM_MSG_REQ ? { ...base, type, mappedCpIp: randomBytes(r, n) } : { ...base, type };
}

describe('wire codec: properties', () => {
  it('decode(encode(x)) == x for 10,000 random messages', () => {
    const r = rng(0x1badcafe);
    for (let i = 0; i < 10_000; i++) {
      const m = randomMessage(r);
      const b = encodePeerMessage(m);
      expect(b.length).toBe(m.type === PM_MSG_REQ ? 64 : 48);
      const d = decodePeerMessage(b);
      if (!d.ok) throw new Error(`message ${i} failed to decode: ${d.reason}`);
      expect(d.msg).toEqual(m);
      // and encode(decode(b)) == b
      expect(encodePeerMessage(d.msg).equals(b)).toBe(true);
    }
  });

  it('random bytes of any length never throw, and accepted ones re-encode consistently', () => {
    const r = rng(42);
    let accepted = 0;
    for (let i = 0; i < 30_000; i++) {
      const len = r() < 0.7 ? (r() < 0.5 ? 48 : 64) : Math.floor(r() * 130);
      const b = randomBytes(r, len);
      if (r() < 0.5) b[0] = (b[0]! & 0x30) | (r() < 0.5 ? 4 : 6); // often plausible magic
      let d: ReturnType<typeof decodePeerMessage>;
      expect(() => (d = decodePeerMessage(b))).not.toThrow();
      if (d!.ok) {
        accepted++;
        const again = decodePeerMessage(encodePeerMessage(d!.msg));
        expect(again.ok && again.msg).toEqual(d!.msg);
      } else {
        expect(typeof d!.reason).toBe('string');
      }
    }
    expect(accepted).toBeGreaterThan(1000);
  });
});

describe('wire codec: raw fast paths agree with decode/encode', () => {
  it('classifyPeerDatagram accepts exactly what decodePeerMessage accepts, with the same reason', () => {
    const r = rng(7);
    for (let i = 0; i < 30_000; i++) {
      const len = r() < 0.8 ? (r() < 0.5 ? 48 : 64) : Math.floor(r() * 100);
      const b = randomBytes(r, len);
      if (r() < 0.7 && len > 0) b[0] = (b[0]! & 0x30) | (r() < 0.5 ? 4 : 6) | (r() < 0.1 ? 0x40 : 0);
      const c = classifyPeerDatagram(b);
      const d = decodePeerMessage(b);
      if (d.ok) {
        if (c !== ((d.msg.type << 4) | d.msg.ipVersion)) throw new Error(`classify ${c} for ${b.toString('hex')}`);
      } else if (c >= 0 || WIRE_REJECT_KINDS[-c - 1] !== d.kind) {
        throw new Error(`classify ${c} but decode says ${d.kind} for ${b.toString('hex')}`);
      }
    }
  });

  it('replyFromRaw == encode(asReply(decode(raw))) for REJ/ACC from REQs and ACK from ACCs, garbage included', () => {
    const r = rng(11);
    for (let i = 0; i < 10_000; i++) {
      const m = randomMessage(r);
      const raw = encodePeerMessage(m);
      if (m.ipVersion === 4) for (const off of [16, 32, 48]) if (off < raw.length) raw.fill(0xa5, off + 4, off + 16);
      const d = decodePeerMessage(raw);
      if (!d.ok) throw new Error('undecodable');
      const ap = { ip: randomBytes(r, m.ipVersion === 4 ? 4 : 16), port: Math.floor(r() * 65536) };
      for (const t of [PM_MSG_ACC, PM_MSG_ACK, PM_MSG_REJ] as const) {
        const want = encodePeerMessage(asReply(d.msg, t, t === PM_MSG_ACC ? { apIp: ap.ip, apPort: ap.port } : {}));
        const got = replyFromRaw(raw, t, t === PM_MSG_ACC ? ap : undefined);
        if (!got.equals(want)) throw new Error(`type ${t}: ${got.toString('hex')} != ${want.toString('hex')}`);
      }
    }
  });

  it('the spec §5.3 ACC and REJ from the spec REQ', () => {
    expect(replyFromRaw(SPEC_REQ, PM_MSG_ACC, { ip: ip4('192.168.1.20'), port: 33333 }).equals(SPEC_ACC)).toBe(true);
    const ack = replyFromRaw(SPEC_ACC, PM_MSG_ACK);
    expect(ack[0]).toBe(0x24);
    expect(ack.subarray(1).equals(SPEC_ACC.subarray(1))).toBe(true);
  });
});

describe('wire codec: writers without message objects', () => {
  const halvesOf = (h: bigint): [number, number] => [Number(h >> 32n), Number(h & 0xffffffffn)];

  it('writePeerReq == encodePeerMessage for the spec REQ and 10,000 random REQs, over whatever the buffer held', () => {
    const [hi, lo] = halvesOf(specReq.assocHandle);
    const out = Buffer.alloc(64, 0xee);
    const cp = { ip: specReq.cpIp, port: specReq.cpPort };
    const ap = { ip: specReq.apIp, port: specReq.apPort };
    const mapped = { ip: ip4('192.168.1.10'), port: specReq.mappedCpPort };
    expect(writePeerReq(out, 4, hi, lo, cp, ap, mapped).equals(SPEC_REQ)).toBe(true);
    const r = rng(0xfeed);
    for (let i = 0; i < 10_000; i++) {
      const m = randomMessage(r);
      if (m.type !== PM_MSG_REQ) continue;
      m.pmtime = 0; // a REQ we send: pmtime 0
      const dirty = randomBytes(r, 64);
      const [h, l] = halvesOf(m.assocHandle);
      const got = writePeerReq(dirty, m.ipVersion, h, l, { ip: m.cpIp, port: m.cpPort }, { ip: m.apIp, port: m.apPort }, { ip: m.mappedCpIp, port: m.mappedCpPort });
      expect(got).toBe(dirty);
      const want = encodePeerMessage(m);
      if (!got.equals(want)) throw new Error(`REQ ${i}: ${got.toString('hex')} != ${want.toString('hex')}`);
    }
  });

  it('writePeerReq: handle halves of 2^31 and above go on the wire unsigned', () => {
    const out = writePeerReq(Buffer.alloc(64), 4, 0xffffffff, 0x80000000, { ip: ip4('10.0.0.1'), port: 1 }, { ip: ip4('10.0.0.2'), port: 2 }, { ip: ip4('10.0.0.1'), port: 3 });
    expect(out.subarray(8, 16).toString('hex')).toBe('ffffffff80000000');
    expect(decodeOk(out).assocHandle).toBe(0xffffffff80000000n);
  });

  it('writeReply reads the datagram at an offset, writes all 48 bytes, and agrees with replyFromRaw', () => {
    const r = rng(5);
    for (let i = 0; i < 5_000; i++) {
      const m = randomMessage(r);
      const raw = encodePeerMessage(m);
      const off = 1 + Math.floor(r() * 40);
      const batch = randomBytes(r, off + raw.length + 7);
      raw.copy(batch, off);
      const ap = { ip: randomBytes(r, m.ipVersion === 4 ? 4 : 16), port: Math.floor(r() * 65536) };
      for (const t of [PM_MSG_ACC, PM_MSG_ACK, PM_MSG_REJ] as const) {
        const withAp = t === PM_MSG_ACC;
        const want = replyFromRaw(raw, t, withAp ? ap : undefined);
        const got = writeReply(randomBytes(r, 48), batch, off, t, withAp ? ap.ip : undefined, withAp ? ap.port : 0);
        if (!got.equals(want)) throw new Error(`type ${t} at ${off}: ${got.toString('hex')} != ${want.toString('hex')}`);
      }
    }
  });

  it('classifyPeerDatagram of b[off, off + len) == classifyPeerDatagram of that slice', () => {
    const r = rng(9);
    for (let i = 0; i < 10_000; i++) {
      const len = r() < 0.8 ? (r() < 0.5 ? 48 : 64) : Math.floor(r() * 100);
      const off = Math.floor(r() * 20);
      const b = randomBytes(r, off + len + Math.floor(r() * 20));
      if (r() < 0.7 && len > 0) b[off] = (b[off]! & 0x30) | (r() < 0.5 ? 4 : 6);
      expect(classifyPeerDatagram(b, off, len)).toBe(classifyPeerDatagram(b.subarray(off, off + len)));
    }
  });
});
