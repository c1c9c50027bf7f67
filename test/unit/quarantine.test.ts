/** The handle quarantine (typed-array ring + open-addressing index) against a plain Set model. */
import { describe, expect, it } from 'vitest';
import { Quarantine } from '../../src/core/peer.js';

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
