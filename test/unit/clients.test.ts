/**
 * src/core/clients.ts: the 64 netlink client indices, REG_PID bookkeeping, and
 * the per-client header sequence counter (spec §1.4, §2.5 REG_PID, §6.6).
 */
import { describe, expect, it } from 'vitest';
import { ClientRegistry, MAX_CLIENTS } from '../../src/core/clients.js';

const ULIB = 'iWarpPortMapperUser';

describe('ClientRegistry', () => {
  it('tracks exactly 64 client indices (6-bit field)', () => {
    const c = new ClientRegistry();
    expect(MAX_CLIENTS).toBe(64);
    for (let i = 0; i < 64; i++) expect(c.get(i)).toMatchObject({ index: i, valid: false, nextSeq: 0 });
    expect(c.get(64)).toBeUndefined();
    expect(c.get(-1)).toBeUndefined();
    expect(c.registered()).toEqual([]);
  });

  it('every index 0..63 can register; out-of-range indices are refused', () => {
    const c = new ClientRegistry();
    for (let i = 0; i < 64; i++) expect(c.register(i, { ifname: '', ibdev: `d${i}`, ulib: ULIB }, i)).toEqual({ ok: true, first: true });
    expect(c.registered()).toHaveLength(64);
    expect(c.register(64, { ifname: '', ibdev: '', ulib: ULIB }, 0)).toEqual({ ok: false, reason: expect.stringMatching(/out of range/) });
    expect(c.register(-1, { ifname: '', ibdev: '', ulib: ULIB }, 0).ok).toBe(false);
  });

  it('first registration records the data; later ones update device names and counters', () => {
    const c = new ClientRegistry();
    expect(c.register(2, { ifname: 'ens1', ibdev: 'irdma0', ulib: ULIB }, 100)).toEqual({ ok: true, first: true });
    expect(c.register(2, { ifname: 'ens2', ibdev: 'irdma1', ulib: ULIB }, 200)).toEqual({ ok: true, first: false });
    expect(c.get(2)).toMatchObject({ valid: true, ifname: 'ens2', ibdev: 'irdma1', ulib: ULIB, registrations: 2, lastRegisteredAtMs: 200 });
    expect(c.registered().map((x) => x.index)).toEqual([2]);
  });

  it('a different user-library name for a registered client is refused and changes nothing', () => {
    const c = new ClientRegistry();
    c.register(2, { ifname: 'ens1', ibdev: 'irdma0', ulib: ULIB }, 100);
    const r = c.register(2, { ifname: 'x', ibdev: 'y', ulib: 'SomethingElse' }, 300);
    expect(r).toEqual({ ok: false, reason: expect.stringMatching(/SomethingElse.*iWarpPortMapperUser/) });
    expect(c.get(2)).toMatchObject({ ifname: 'ens1', ibdev: 'irdma0', ulib: ULIB, registrations: 1, lastRegisteredAtMs: 100 });
    // Other clients are independent.
    expect(c.register(3, { ifname: '', ibdev: 'cxgb4_0', ulib: 'SomethingElse' }, 0)).toEqual({ ok: true, first: true });
  });

  it('header seq: per client, starts at 0, post-increment', () => {
    const c = new ClientRegistry();
    expect([c.takeSeq(2), c.takeSeq(2), c.takeSeq(3), c.takeSeq(2), c.takeSeq(3)]).toEqual([0, 1, 0, 2, 1]);
    expect(c.get(2)!.nextSeq).toBe(3);
  });

  it('header seq wraps at 2^32', () => {
    const c = new ClientRegistry();
    c.get(2)!.nextSeq = 0xfffffffe;
    expect([c.takeSeq(2), c.takeSeq(2), c.takeSeq(2)]).toEqual([0xfffffffe, 0xffffffff, 0]);
  });

  it('takeSeq masks the index to 6 bits (never throws)', () => {
    const c = new ClientRegistry();
    expect(c.takeSeq(64 + 2)).toBe(0);
    expect(c.takeSeq(2)).toBe(1);
    expect(c.takeSeq(63)).toBe(0);
  });
});
