/**
 * The start-up JIT warm-up (src/io/warmup.ts): a throwaway daemon, peer exchange and
 * codecs driven through in-memory stand-ins. It must really run the QUERY path (every
 * rehearsed query accepted, as the kernel would see it), stop when told to, and leave
 * nothing behind (no timer, no handle).
 */
import { describe, expect, it } from 'vitest';
import { warmUp } from '../../src/io/warmup.js';
import { MemoryLogger } from '../../src/core/log.js';

const timers = (): number => process.getActiveResourcesInfo().filter((r) => r === 'Timeout').length;

describe('warmUp', () => {
  it('answers every rehearsed QUERY "accepted", both families, with and without port reservations', async () => {
    const before = timers();
    const log = new MemoryLogger(false);
    const r = await warmUp({ queries: 200, slice: 16, log });
    expect(r).toMatchObject({ accepted: 200, other: 0, cut: false });
    // 200 in slices of 16: 13 rounds, so IPv4 and IPv6, flags 0 and 1 all ran
    expect(r.ms).toBeGreaterThan(0);
    // the rehearsal daemon logs like a real one (the service gives it a logger writing nowhere)
    expect(log.has(/client 2 registered: device warmup0/)).toBe(true);
    expect(log.lines.filter((l) => l.level === 'warn' || l.level === 'error')).toEqual([]);
    expect(timers()).toBe(before);
  });

  it('stops between slices when cancelled, and when its time is up', async () => {
    let slices = 0;
    // slices of 1, 2, 4 (each doubles while quicker than sliceMs), then cancelled
    const r = await warmUp({ queries: 10_000, slice: 8, sliceMs: Infinity, cancelled: () => slices++ >= 3 });
    expect(r).toMatchObject({ accepted: 7, other: 0, cut: true });
    const r0 = await warmUp({ queries: 10_000, budgetMs: 0 });
    expect(r0).toMatchObject({ accepted: 0, cut: true });
  });

  it('yields to the event loop between slices, which grow from one round trip while quick and shrink when slow', async () => {
    const sizes = async (sliceMs: number): Promise<number> => {
      let turns = 0;
      const r = await warmUp({ queries: 64, slice: 16, sliceMs, pause: () => new Promise<void>((res) => setImmediate(() => (turns++, res()))) });
      expect(r.accepted).toBe(64);
      return turns;
    };
    expect(await sizes(Infinity)).toBe(8); // 1 2 4 8 16 16 16 1
    expect(await sizes(0)).toBe(64); // every slice too slow: one round trip each
  });
});
