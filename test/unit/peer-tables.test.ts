/** The peer's typed-array tables (IntIndex, IntMap, Quarantine, AckTrackers, Lingering) against plain JS models. */
import { describe, expect, it } from 'vitest';
import { IntIndex, IntMap } from '../../src/core/int-index.js';
import { AckTrackers, Lingering, Quarantine } from '../../src/core/peer-tables.js';
import { RawEndpoint } from '../../src/core/peer.js';

/** Deterministic xorshift, so a failure is reproducible. */
function rng(seed: number): () => number {
  let x = seed | 0 || 1;
  return () => {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    return x | 0;
  };
}

class Model {
  ring: { h: number; until: number }[] = [];
  constructor(private readonly cap: number) {}
  has(h: number): boolean {
    return this.ring.some((e) => e.h === h);
  }
  add(h: number, until: number): void {
    if (this.cap === 0 || this.has(h)) return;
    if (this.ring.length === this.cap) this.ring.shift();
    this.ring.push({ h, until });
  }
  expire(now: number): void {
    while (this.ring.length > 0 && this.ring[0]!.until <= now) this.ring.shift();
  }
}

describe('Quarantine', () => {
  it('agrees with a Set model through adds, expiries, capacity evictions and growth', () => {
    for (const [cap, keySpace] of [
      [5000, 1 << 30],
      [300, 600], // many repeats and long probe chains
      [64, 1 << 12],
    ] as const) {
      const q = new Quarantine(cap);
      const m = new Model(cap);
      const r = rng(cap * 7919);
      let now = 0;
      for (let step = 0; step < 30_000; step++) {
        const op = (r() >>> 0) % 10;
        if (op < 6) {
          const h = ((r() >>> 0) % keySpace) - (keySpace >> 1);
          const until = now + 50 + ((r() >>> 0) % 50);
          q.add(h, until);
          m.add(h, until);
        } else if (op < 9) {
          const h = ((r() >>> 0) % keySpace) - (keySpace >> 1);
          expect(q.has(h), `has(${h}) at step ${step}`).toBe(m.has(h));
        } else {
          now += 10;
          q.expire(now);
          m.expire(now);
        }
        expect(q.size).toBe(m.ring.length);
      }
    }
  });

  it('expires in time order and forgets expired handles', () => {
    const q = new Quarantine(100);
    for (let i = 0; i < 50; i++) q.add(i * 1024, 100 + i); // same low bits: one probe chain
    expect(q.size).toBe(50);
    expect(q.nextExpiry()).toBe(100);
    q.expire(124.5);
    expect(q.size).toBe(25);
    for (let i = 0; i < 50; i++) expect(q.has(i * 1024), `handle ${i}`).toBe(i >= 25);
    q.expire(1000);
    expect(q.size).toBe(0);
    expect(q.nextExpiry()).toBeUndefined();
    q.add(7, 5);
    expect(q.has(7)).toBe(true);
    q.clear();
    expect(q.has(7)).toBe(false);
  });

  it('keeps probe chains that wrap around the end of the table intact when entries leave', () => {
    // the index hash (as in Quarantine) and keys whose home slot is the last ones of a 1024-slot table
    const home = (h: number) => (Math.imul(h, 0x9e3779b1) ^ (h >>> 15)) & 1023;
    const at = (slot: number, n: number): number[] => {
      const out: number[] = [];
      for (let h = 1; out.length < n; h++) if (home(h) === slot) out.push(h);
      return out;
    };
    const [a1, a2, a3] = at(1022, 3); // 1022, 1023, then wraps to 0
    const [b1, b2] = at(0, 2); // home 0: displaced past the wrapped chain
    const [c1] = at(1, 1);
    const q = new Quarantine(100);
    let t = 0;
    for (const h of [a1!, a2!, a3!, b1!, b2!, c1!]) q.add(h, ++t);
    for (let k = 1; k <= 6; k++) {
      q.expire(k); // oldest first: each removal shifts the rest of the chain back
      const left = [a1, a2, a3, b1, b2, c1].slice(k);
      for (const h of left) expect(q.has(h!), `after ${k} expiries, handle ${h}`).toBe(true);
      expect(q.size).toBe(6 - k);
    }
  });

  it('capacity 0 remembers nothing; a full ring drops its oldest', () => {
    const z = new Quarantine(0);
    z.add(1, 10);
    expect(z.has(1)).toBe(false);
    const q = new Quarantine(3);
    for (const h of [1, 2, 3, 4]) q.add(h, 10);
    expect([1, 2, 3, 4].map((h) => q.has(h))).toEqual([false, true, true, true]);
  });
});

describe('IntIndex', () => {
  it('agrees with a Map through sets, overwrites, deletes and growth (dense and sparse keys)', () => {
    for (const keySpace of [700, 1 << 20, 2 ** 32]) {
      const ix = new IntIndex();
      const m = new Map<number, number>();
      const r = rng(keySpace % 9973 || 7);
      for (let step = 0; step < 60_000; step++) {
        const key = keySpace === 2 ** 32 ? r() : ((r() >>> 0) % keySpace) - (keySpace >> 1);
        const op = (r() >>> 0) % 4;
        if (op < 2 && m.size < 3000) {
          const v = (r() >>> 0) % 100_000;
          ix.set(key, v);
          m.set(key, v);
        } else if (op === 2) {
          expect(ix.delete(key)).toBe(m.delete(key));
        } else {
          expect(ix.get(key), `get(${key}) at step ${step}`).toBe(m.get(key) ?? -1);
        }
        expect(ix.size).toBe(m.size);
      }
      for (const [k, v] of m) expect(ix.get(k)).toBe(v);
    }
  });
});

describe('IntMap', () => {
  it('agrees with a Map through sets, overwrites, deletes, slot reuse and clear (int32 keys, both signs)', () => {
    for (const keySpace of [300, 2 ** 32]) {
      const im = new IntMap<{ v: number }>();
      const m = new Map<number, { v: number }>();
      const r = rng(keySpace === 300 ? 5 : 11);
      for (let step = 0; step < 60_000; step++) {
        const key = keySpace === 2 ** 32 ? r() : ((r() >>> 0) % keySpace) - (keySpace >> 1);
        const op = (r() >>> 0) % 5;
        if (op < 2 && m.size < 2000) {
          const v = { v: step };
          im.set(key, v);
          m.set(key, v);
        } else if (op < 4) {
          expect(im.delete(key)).toBe(m.delete(key));
        } else {
          expect(im.get(key), `get(${key}) at step ${step}`).toBe(m.get(key));
          expect(im.has(key)).toBe(m.has(key));
        }
        expect(im.size).toBe(m.size);
        if (step === 30_000) {
          im.clear();
          m.clear();
        }
      }
      for (const [k, v] of m) expect(im.get(k)).toBe(v);
    }
  });

  it('a deleted value is no longer referenced: its slot goes to the next key', () => {
    const im = new IntMap<string>();
    for (let k = 0; k < 200; k++) im.set(k, `v${k}`);
    for (let k = 0; k < 200; k++) expect(im.delete(k)).toBe(true);
    expect(im.size).toBe(0);
    expect(im.get(5)).toBeUndefined();
    expect(im.delete(5)).toBe(false);
    im.set(-5, 'again');
    expect(im.get(-5)).toBe('again');
    expect(im.get(5)).toBeUndefined();
  });
});

describe('AckTrackers', () => {
  const AF_INET = 2;
  const AF_INET6 = 10;
  /** an ACC-like buffer naming port at 6 and the IP at 16 */
  function acc(port: number, ip: number[]): Buffer {
    const b = Buffer.alloc(48);
    b.writeUInt16BE(port, 6);
    Buffer.from(ip).copy(b, 16);
    return b;
  }

  it('finds a tracker only for its handle and connecting address (IPv4 and IPv6)', () => {
    const t = new AckTrackers(100);
    const v4 = [10, 0, 0, 7];
    const v6 = [0xfe, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 9];
    t.add(1, 0x11, 0x22, AF_INET, 5000, Buffer.from(v4), 100);
    t.add(2, 0x33, 0x44, AF_INET6, 6000, Buffer.from(v6), 100);
    expect(t.find(1, 0x11, 0x22, AF_INET, acc(5000, v4), 6, 16)).toBeGreaterThanOrEqual(0);
    expect(t.find(1, 0x11, 0x23, AF_INET, acc(5000, v4), 6, 16)).toBe(-1); // other low half
    expect(t.find(1, 0x11, 0x22, AF_INET, acc(5001, v4), 6, 16)).toBe(-1); // other port
    expect(t.find(1, 0x11, 0x22, AF_INET, acc(5000, [10, 0, 0, 8]), 6, 16)).toBe(-1); // other IP
    expect(t.find(1, 0x11, 0x22, AF_INET6, acc(5000, v4), 6, 16)).toBe(-1); // other family
    expect(t.find(2, 0x33, 0x44, AF_INET6, acc(6000, v6), 6, 16)).toBeGreaterThanOrEqual(0);
    const last = [...v6];
    last[15] = 10;
    expect(t.find(2, 0x33, 0x44, AF_INET6, acc(6000, last), 6, 16)).toBe(-1); // last IPv6 word differs
    expect(t.find(3, 0x33, 0x44, AF_INET6, acc(6000, v6), 6, 16)).toBe(-1); // unknown key
  });

  it('handle halves of 2^31 and above (unsigned on the wire, int32 in the table) match', () => {
    const t = new AckTrackers(10);
    const b = acc(7, [10, 1, 1, 1]);
    t.add(5, 0xfedcba98, 0x80000000, AF_INET, 7, Buffer.from([10, 1, 1, 1]), 1);
    expect(t.find(5, 0xfedcba98, 0x80000000, AF_INET, b, 6, 16)).toBeGreaterThanOrEqual(0);
    expect(t.find(5, 0xfedcba98, 0x80000001, AF_INET, b, 6, 16)).toBe(-1);
  });

  it('expires in time order, a refresh extends, and max evicts the oldest live tracker', () => {
    const t = new AckTrackers(3);
    const ip = Buffer.from([127, 0, 0, 1]);
    const b = acc(1, [127, 0, 0, 1]);
    for (const k of [1, 2, 3]) t.add(k, k, k, AF_INET, 1, ip, 10 * k);
    t.refresh(t.find(1, 1, 1, AF_INET, b, 6, 16), 100); // 1 now lives to 100
    expect(t.size).toBe(3);
    expect(t.add(4, 4, 4, AF_INET, 1, ip, 110)).toBe(2); // full: the oldest live one (2) goes
    const gone: number[] = [];
    t.expire(35, (k) => gone.push(k));
    expect(gone).toEqual([3]); // 1's stale copy (until 10) is skipped, 2 was evicted
    expect(t.has(1)).toBe(true);
    t.expire(100, (k) => gone.push(k));
    expect(gone).toEqual([3, 1]);
    t.expire(110, (k) => gone.push(k));
    expect(gone).toEqual([3, 1, 4]);
    expect(t.size).toBe(0);
  });

  it('keeps every live tracker through ring growth with many refreshes', () => {
    const t = new AckTrackers(5000);
    const ip = Buffer.from([192, 0, 2, 1]);
    const b = acc(9, [192, 0, 2, 1]);
    let now = 0;
    for (let k = 0; k < 3000; k++) t.add(k * 7919, k, -k, AF_INET, 9, ip, now + 1000);
    for (let round = 0; round < 5; round++) {
      now += 10;
      for (let k = 0; k < 3000; k += 3) t.refresh(t.find(k * 7919, k, -k, AF_INET, b, 6, 16), now + 1000);
    }
    const gone: number[] = [];
    t.expire(1000, (k) => gone.push(k)); // those never refreshed
    expect(gone.length).toBe(2000);
    expect(t.size).toBe(1000);
    for (let k = 0; k < 3000; k++) expect(t.find(k * 7919, k, -k, AF_INET, b, 6, 16) >= 0, `tracker ${k}`).toBe(k % 3 === 0);
  });
});

describe('Lingering', () => {
  const ACC = (n: number) => Buffer.alloc(48, n);
  const peer = (ip: number[], scope = 0) => new RawEndpoint(ip.length === 4 ? 4 : 6, Buffer.from(ip), 1000, scope);
  const W = Buffer.from([192, 0, 2, 5]);

  it('finds finished conversations by handle, wire address and peer; shares keys across peers', () => {
    const l = new Lingering(100);
    const p1 = peer([10, 0, 0, 1]);
    const p2 = peer([10, 0, 0, 2]);
    l.add(42, 0x90000000, 1, 5000, W, p1, ACC(1), 10);
    l.add(42, 0x90000000, 1, 5000, W, p2, ACC(2), 11); // same handle, another peer
    l.add(42, 7, 7, 5000, W, p1, ACC(3), 12); // same key, other handle
    const seen: number[] = [];
    for (let i = l.first(42); i >= 0; i = l.after(i)) {
      if (!l.sameHandle(i, 0x90000000, 1)) continue;
      expect(l.sameWire(i, 5000, W, 0, 4)).toBe(true);
      expect(l.sameWire(i, 5001, W, 0, 4)).toBe(false);
      if (l.samePeer(i, p1)) seen.push(l.accCopy(i, Buffer.alloc(48))[0]!);
      if (l.samePeer(i, p2)) seen.push(l.accCopy(i, Buffer.alloc(48))[0]!);
    }
    expect(seen.sort()).toEqual([1, 2]);
    expect(l.first(43)).toBe(-1);
  });

  it('same peer: bytes and scope id, or the text for peers given without bytes', () => {
    const l = new Lingering(10);
    const v6 = [0xfe, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 9];
    l.add(1, 1, 1, 1, W, peer(v6, 3), ACC(0), 10);
    l.add(2, 1, 1, 1, W, { ip: '10.9.9.9' }, ACC(0), 10);
    expect(l.samePeer(l.first(1), peer(v6, 3))).toBe(true);
    expect(l.samePeer(l.first(1), peer(v6, 4))).toBe(false);
    expect(l.samePeer(l.first(1), { ip: 'fe80::9%3' })).toBe(true); // text against stored bytes
    expect(l.samePeer(l.first(2), { ip: '10.9.9.9' })).toBe(true);
    expect(l.samePeer(l.first(2), peer([10, 9, 9, 9]))).toBe(true); // bytes against stored text
    expect(l.samePeer(l.first(2), { ip: '10.9.9.8' })).toBe(false);
  });

  it('keeps copies: the wire IP, peer bytes and ACC given to add may be reused afterwards', () => {
    const l = new Lingering(4);
    const wire = Buffer.from([192, 0, 2, 7]);
    const p = peer([10, 0, 0, 1]);
    const acc = ACC(5);
    l.add(3, 1, 2, 5000, wire, p, acc, 10);
    wire.fill(0);
    p.raw.fill(0);
    acc.fill(0);
    const i = l.first(3);
    expect(l.sameWire(i, 5000, Buffer.from([192, 0, 2, 7]), 0, 4)).toBe(true);
    expect(l.samePeer(i, peer([10, 0, 0, 1]))).toBe(true);
    expect(l.accCopy(i, Buffer.alloc(48, 0xff)).equals(ACC(5))).toBe(true);
  });

  it('expires in time order; a full table drops its oldest; links to reused slots end the chain', () => {
    const l = new Lingering(3);
    const p = peer([10, 0, 0, 1]);
    l.add(9, 1, 1, 1, W, p, ACC(1), 10);
    l.add(9, 2, 2, 1, W, p, ACC(2), 20);
    l.add(8, 3, 3, 1, W, p, ACC(3), 30);
    l.add(7, 4, 4, 1, W, p, ACC(4), 40); // full: the first (key 9, handle 1) goes, its slot is reused
    const chain = (k: number) => {
      const out: number[] = [];
      for (let i = l.first(k); i >= 0; i = l.after(i)) out.push(l.accCopy(i, Buffer.alloc(48))[0]!);
      return out;
    };
    expect(chain(9)).toEqual([2]);
    expect(l.size).toBe(3);
    l.expire(30);
    expect([chain(9), chain(8), chain(7)]).toEqual([[], [], [4]]);
    l.expire(40);
    expect(l.size).toBe(0);
    expect(chain(7)).toEqual([]);
  });
});
