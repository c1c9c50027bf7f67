/** cryptoHandleSource: the pool PeerIo draws its 64-bit handles from (two 32-bit halves each). */
import { describe, expect, it } from 'vitest';
import { cryptoHandleSource } from '../../src/io/udp.js';

const draw = (next: (out: Uint32Array) => void): [number, number] => {
  const out = new Uint32Array(2);
  next(out);
  return [out[0]!, out[1]!];
};

describe('cryptoHandleSource', () => {
  it('hands out the pool two words at a time, refilling only when used up: no word twice', () => {
    let counter = 0;
    let fills = 0;
    const next = cryptoHandleSource((pool) => {
      fills++;
      for (let i = 0; i < pool.length; i++) pool[i] = ++counter;
    }, 8);
    const got: [number, number][] = [];
    for (let i = 0; i < 10; i++) got.push(draw(next));
    // 4 handles per fill of 8 words; consecutive words, across refills too
    expect(got).toEqual(Array.from({ length: 10 }, (_, i) => [2 * i + 1, 2 * i + 2]));
    expect(fills).toBe(3);
  });

  it('never yields handle 0 (both halves zero); a single zero half is a valid handle', () => {
    const words = [0, 0, 1, 0, 0, 0, 0, 0, 0, 7, 0, 0, 5, 6, 0, 0];
    let fills = 0;
    const next = cryptoHandleSource((pool) => {
      fills++;
      pool.set(words.slice((fills - 1) * 8, fills * 8));
    }, 8);
    expect([draw(next), draw(next), draw(next)]).toEqual([
      [1, 0],
      [0, 7],
      [5, 6],
    ]);
    expect(fills).toBe(2);
  });

  it('node:crypto by default: 200,000 handles, none 0, all distinct (across 391 refills)', () => {
    const next = cryptoHandleSource();
    const seen = new Set<bigint>();
    let highBit = 0;
    for (let i = 0; i < 200_000; i++) {
      const [hi, lo] = draw(next);
      expect(hi !== 0 || lo !== 0).toBe(true);
      seen.add((BigInt(hi) << 32n) | BigInt(lo));
      if (hi >= 0x80000000) highBit++;
    }
    expect(seen.size).toBe(200_000);
    // uniform halves: about half have the top bit set (far outside 45-55% is not random)
    expect(highBit).toBeGreaterThan(90_000);
    expect(highBit).toBeLessThan(110_000);
  });

  it('refuses a pool that cannot hold whole handles', () => {
    for (const words of [0, 1, 3, 2.5, -2]) expect(() => cryptoHandleSource(undefined, words)).toThrow(RangeError);
  });
});
