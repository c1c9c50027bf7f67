/**
 * SlabArena and BlockPool (src/codec/retain.ts): where kept bytes live.
 */
import { describe, expect, it } from 'vitest';
import { BlockPool, SlabArena, allocRetained, retainCopy } from '../../src/codec/retain.js';

describe('SlabArena', () => {
  it('hands out 8-byte aligned, non-overlapping views of one slab until it is full, then a new slab', () => {
    const a = new SlabArena(64);
    const xs = [a.alloc(10), a.alloc(10), a.alloc(10), a.alloc(10)];
    expect(xs.map((x) => x.byteOffset)).toEqual([0, 16, 32, 48]);
    expect(new Set(xs.map((x) => x.buffer)).size).toBe(1);
    const next = a.alloc(10);
    expect(next.buffer).not.toBe(xs[0]!.buffer);
    expect(next.byteOffset).toBe(0);
    // more than a quarter slab: a buffer of its own
    expect(a.alloc(17).buffer.byteLength).toBe(17);
  });

  it('retained copies are copies, away from Node’s shared pool', () => {
    const src = Buffer.from([1, 2, 3, 4, 5]);
    const c = retainCopy(src, 1, 3);
    expect([...c]).toEqual([2, 3, 4]);
    src.fill(0);
    expect([...c]).toEqual([2, 3, 4]);
    expect(c.buffer).not.toBe(Buffer.allocUnsafe(1).buffer);
    expect(allocRetained(48)).toHaveLength(48);
  });
});

describe('BlockPool', () => {
  it('reuses blocks given back (last in, first out) and counts what is in use', () => {
    const p = new BlockPool(272, 4);
    const a = p.take();
    const b = p.take();
    expect(a).toHaveLength(272);
    expect(a.buffer).toBe(b.buffer);
    expect(p.stats).toEqual({ inUse: 2, spare: 0 });
    p.give(a);
    expect(p.stats).toEqual({ inUse: 1, spare: 1 });
    expect(p.take()).toBe(a);
    expect(p.stats).toEqual({ inUse: 2, spare: 0 });
  });

  it('memory follows the peak in use: churn around a few long-lived blocks needs no new slabs', () => {
    const p = new BlockPool(100, 8);
    const kept: Buffer[] = [];
    for (let i = 0; i < 1000; i++) {
      kept.push(p.take());
      const tmp = [p.take(), p.take(), p.take()];
      for (const t of tmp) p.give(t);
      if (kept.length > 4) p.give(kept.shift()!);
    }
    const slabs = new Set([...kept, p.take(), p.take(), p.take()].map((b) => b.buffer));
    expect(slabs.size).toBe(1); // peak in use is 8 blocks: one slab
  });
});
