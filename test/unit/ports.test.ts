/**
 * src/core/ports.ts: the port reservation policy, against the in-memory binder of
 * src/native/fake.ts (port held by anyone = EADDRINUSE, port 0 = kernel's choice).
 */
import { describe, expect, it } from 'vitest';
import {
  EACCES,
  EADDRINUSE,
  MAX_PROBES,
  PortReserver,
  parsePortRange,
  parseReservedPorts,
} from '../../src/core/ports.js';
import { FakePortBinder } from '../../src/native/fake.js';

const EMFILE = 24;
const EAFNOSUPPORT = 97;

describe('PortReserver without a range (kernel chooses)', () => {
  it('binds port 0 for every item, all in one native call', () => {
    const b = new FakePortBinder({ ephemeral: { low: 32768, high: 32800 } });
    const r = new PortReserver(b);
    const out = r.reserve([2, 10, 2]);
    expect(b.calls).toEqual([[{ family: 2, port: 0 }, { family: 10, port: 0 }, { family: 2, port: 0 }]]);
    expect(out.map((o) => o.errno)).toEqual([0, 0, 0]);
    expect(out.map((o) => o.port)).toEqual([32768, 32769, 32770]);
    expect(new Set(out.map((o) => o.fd)).size).toBe(3);
    expect(r.stats).toMatchObject({ bindCalls: 1, fallbacks: 0, held: 3 });
  });

  it('an empty request makes no call', () => {
    const b = new FakePortBinder();
    const r = new PortReserver(b);
    expect(r.reserve([])).toEqual([]);
    expect(r.reopen([])).toEqual([]);
    expect(b.calls).toHaveLength(0);
  });

  it('exhaustion of the kernel range: EADDRINUSE, fd -1, counted', () => {
    const b = new FakePortBinder({ ephemeral: { low: 40000, high: 40001 }, busy: [40000, 40001] });
    const r = new PortReserver(b);
    expect(r.reserve([2])).toEqual([{ fd: -1, port: 0, errno: EADDRINUSE }]);
    expect(r.stats.exhausted).toBe(1);
    expect(b.calls).toHaveLength(1); // port 0 failures are final
  });

  it('invalid ranges are ignored (kernel chooses)', () => {
    for (const range of [{ low: 0, high: 10 }, { low: 10, high: 9 }, { low: 1, high: 65536 }]) {
      const b = new FakePortBinder();
      const r = new PortReserver(b, { range });
      r.reserve([2]);
      expect(b.calls[0]).toEqual([{ family: 2, port: 0 }]);
      expect(r.describe().range).toBeUndefined();
    }
  });
});

describe('PortReserver with a range', () => {
  it('walks the range from the start point, one call per batch, wrapping at the top', () => {
    const b = new FakePortBinder();
    const r = new PortReserver(b, { range: { low: 40000, high: 40004 }, start: 40003 });
    expect(r.reserve([2, 2]).map((o) => o.port)).toEqual([40003, 40004]);
    expect(r.reserve([10]).map((o) => o.port)).toEqual([40000]);
    expect(b.calls).toEqual([[{ family: 2, port: 40003 }, { family: 2, port: 40004 }], [{ family: 10, port: 40000 }]]);
  });

  it('a start point outside the range begins at the low end', () => {
    const b = new FakePortBinder();
    const r = new PortReserver(b, { range: { low: 40000, high: 40004 }, start: 39999 });
    expect(r.reserve([2])[0]!.port).toBe(40000);
  });

  it('skips ip_local_reserved_ports', () => {
    const b = new FakePortBinder();
    const r = new PortReserver(b, { range: { low: 40000, high: 40009 }, reserved: new Set([40001, 40003]) });
    expect(r.reserve([2, 2, 2]).map((o) => o.port)).toEqual([40000, 40002, 40004]);
    expect(r.describe()).toEqual({ range: { low: 40000, high: 40009 }, reservedCount: 2, held: 3 });
  });

  it('skips ports it already holds (any family) and reuses released ones', () => {
    const b = new FakePortBinder();
    const r = new PortReserver(b, { range: { low: 40000, high: 40003 } });
    const first = r.reserve([2, 10, 2]); // 40000..40002
    expect(first.map((o) => o.port)).toEqual([40000, 40001, 40002]);
    r.release([first[1]!]);
    expect(b.closed).toEqual([first[1]!.fd]);
    // Cursor at 40003; 40000 is held, 40001 free again, 40002 held.
    expect(r.reserve([2, 2]).map((o) => o.port)).toEqual([40003, 40001]);
    expect(b.calls.at(-1)).toEqual([{ family: 2, port: 40003 }, { family: 2, port: 40001 }]);
    expect(r.stats.probesFailed).toBe(0); // never asked the binder for a held port
  });

  it('EADDRINUSE from someone else: next candidate in the next round, only for the failed items', () => {
    const b = new FakePortBinder({ busy: [40001, 40003] });
    const r = new PortReserver(b, { range: { low: 40000, high: 40009 } });
    const out = r.reserve([2, 2, 2]);
    expect(out.map((o) => [o.port, o.errno])).toEqual([
      [40000, 0],
      [40004, 0],
      [40002, 0],
    ]);
    expect(b.calls).toEqual([
      [{ family: 2, port: 40000 }, { family: 2, port: 40001 }, { family: 2, port: 40002 }],
      [{ family: 2, port: 40003 }],
      [{ family: 2, port: 40004 }],
    ]);
    expect(r.stats).toMatchObject({ probesFailed: 2, bindCalls: 3, fallbacks: 0 });
  });

  it('EACCES is treated like EADDRINUSE (try another port)', () => {
    const b = new FakePortBinder({ failWith: (req) => (req.port === 40000 ? EACCES : 0) });
    const r = new PortReserver(b, { range: { low: 40000, high: 40009 } });
    expect(r.reserve([2])[0]).toMatchObject({ port: 40001, errno: 0 });
  });

  it(`falls back to port 0 after ${MAX_PROBES} failed explicit rounds`, () => {
    const busy = Array.from({ length: 100 }, (_, i) => 40000 + i);
    const b = new FakePortBinder({ busy, ephemeral: { low: 50000, high: 50010 } });
    const r = new PortReserver(b, { range: { low: 40000, high: 40099 } });
    const out = r.reserve([2]);
    expect(out[0]).toMatchObject({ port: 50000, errno: 0 });
    expect(b.calls).toHaveLength(MAX_PROBES + 1);
    expect(b.calls.slice(0, MAX_PROBES).map((c) => c[0]!.port)).toEqual(busy.slice(0, MAX_PROBES));
    expect(b.calls.at(-1)).toEqual([{ family: 2, port: 0 }]);
    expect(r.stats).toMatchObject({ probesFailed: MAX_PROBES, fallbacks: 1, exhausted: 0 });
  });

  it('total exhaustion after the fallback reports EADDRINUSE', () => {
    const b = new FakePortBinder({ busy: [40000, 40001, 50000], ephemeral: { low: 50000, high: 50000 } });
    const r = new PortReserver(b, { range: { low: 40000, high: 40001 } });
    expect(r.reserve([10])).toEqual([{ fd: -1, port: 0, errno: EADDRINUSE }]);
    expect(r.stats.exhausted).toBe(1);
    expect(b.calls.at(-1)).toEqual([{ family: 10, port: 0 }]);
  });

  it('when every port of the range is reserved or held it asks the kernel right away', () => {
    const b = new FakePortBinder({ ephemeral: { low: 50000, high: 50010 } });
    const r = new PortReserver(b, { range: { low: 40000, high: 40001 }, reserved: new Set([40000]) });
    expect(r.reserve([2, 2]).map((o) => o.port)).toEqual([40001, 50000]);
    expect(b.calls).toEqual([[{ family: 2, port: 40001 }, { family: 2, port: 0 }]]);
  });

  it('other errors (EMFILE, EAFNOSUPPORT) are final for that item only, no retry', () => {
    const b = new FakePortBinder();
    const r = new PortReserver(b, { range: { low: 40000, high: 40009 } });
    b.failNext(EMFILE);
    const out = r.reserve([2, 2]);
    expect(out).toEqual([
      { fd: -1, port: 0, errno: EMFILE },
      { fd: expect.any(Number), port: 40001, errno: 0 },
    ]);
    expect(b.calls).toHaveLength(1);
    const out2 = r.reserve([99]);
    expect(out2[0]!.errno).toBe(EAFNOSUPPORT);
    expect(r.stats.held).toBe(1);
  });
});

describe('reopen (MAPINFO recovery) and release', () => {
  it('binds exactly the given ports in one call; failures are per item, no retry', () => {
    const b = new FakePortBinder({ busy: [33334] });
    const r = new PortReserver(b, { range: { low: 33333, high: 33340 } });
    const out = r.reopen([
      { family: 2, port: 33333 },
      { family: 10, port: 33334 },
      { family: 10, port: 33335 },
    ]);
    expect(b.calls).toEqual([[{ family: 2, port: 33333 }, { family: 10, port: 33334 }, { family: 10, port: 33335 }]]);
    expect(out.map((o) => [o.port, o.errno, o.fd >= 0])).toEqual([
      [33333, 0, true],
      [0, EADDRINUSE, false],
      [33335, 0, true],
    ]);
    // Re-opened ports are held: new reservations skip them.
    expect(r.reserve([2]).map((o) => o.port)).toEqual([33336]);
    expect(r.stats.held).toBe(3);
  });

  it('release closes the fds in one call, skips fd -1, and unholds the ports', () => {
    const b = new FakePortBinder();
    const r = new PortReserver(b, { range: { low: 40000, high: 40001 } });
    const [a, c] = r.reserve([2, 2]);
    r.release([a!, { fd: -1, port: 12345 }, c!]);
    expect(b.closed).toEqual([a!.fd, c!.fd]);
    expect(b.released).toEqual([a!.fd, c!.fd]); // through releaseFds: the binder has it
    expect(b.open.size).toBe(0);
    expect(r.stats.held).toBe(0);
    r.release([{ fd: -1, port: 1 }]);
    expect(b.closed).toHaveLength(2); // nothing to close: no call
    expect(r.reserve([2, 2]).map((o) => o.port).sort()).toEqual([40000, 40001]);
  });

  it('releasing a port that is not held changes nothing (no underflow of the count)', () => {
    const b = new FakePortBinder();
    const r = new PortReserver(b, { range: { low: 40000, high: 40002 } });
    const [x] = r.reserve([2]);
    expect(x!.port).toBe(40000);
    r.release([x!]);
    r.release([{ fd: 999, port: 40000 }]); // released twice: no longer held
    expect(r.stats.held).toBe(0);
    expect(r.reserve([2, 2]).map((o) => o.port)).toEqual([40001, 40002]);
    expect(r.stats.held).toBe(2);
    r.release([{ fd: 998, port: 40000 }]);
    expect(r.stats.held).toBe(2);
    // the cursor wraps to 40000, which is free: held ports 40001/40002 are skipped
    expect(r.reserve([2]).map((o) => o.port)).toEqual([40000]);
  });

  it('release falls back to closeFds for a binder without releaseFds', () => {
    const fake = new FakePortBinder();
    const calls: string[] = [];
    const binder = {
      reservePorts: (f: Uint8Array, p: Uint16Array) => fake.reservePorts(f, p),
      closeFds: (fds: Int32Array) => (calls.push(`close ${Array.from(fds)}`), fake.closeFds(fds)),
    };
    const r = new PortReserver(binder, { range: { low: 40000, high: 40001 } });
    const [a] = r.reserve([2]);
    r.release([a!]);
    expect(calls).toEqual([`close ${a!.fd}`]);
    expect(fake.released).toEqual([]);
    expect(r.stats.held).toBe(0);
  });
});

describe('parsePortRange', () => {
  it('parses the procfs format', () => {
    expect(parsePortRange('32768\t60999\n')).toEqual({ low: 32768, high: 60999 });
    expect(parsePortRange('  1024   65535  ')).toEqual({ low: 1024, high: 65535 });
    expect(parsePortRange('5 5')).toEqual({ low: 5, high: 5 });
  });

  it('rejects malformed or impossible ranges', () => {
    for (const t of ['', '\n', '1024', '60999 32768', '0 100', '1 65536', 'a b', '1024 2048 4096', '-1 5', '1024-2048', '1.5 2']) {
      expect(parsePortRange(t), JSON.stringify(t)).toBeUndefined();
    }
  });
});

describe('parseReservedPorts', () => {
  const p = (t: string): number[] => [...parseReservedPorts(t)].sort((a, b) => a - b);

  it('parses lists and ranges', () => {
    expect(p('')).toEqual([]);
    expect(p('\n')).toEqual([]);
    expect(p('8080\n')).toEqual([8080]);
    expect(p('8080,9000-9002')).toEqual([8080, 9000, 9001, 9002]);
    expect(p(' 80 , 90 ')).toEqual([80, 90]);
    expect(p('80,')).toEqual([80]);
    expect(p('65534-70000')).toEqual([65534, 65535]);
    expect(p('1-65535')).toHaveLength(65535);
  });

  it('skips malformed parts and keeps the good ones', () => {
    expect(p('abc,80')).toEqual([80]);
    expect(p('9010-9000,81')).toEqual([81]);
    expect(p('1-2-3,-5,5-,82')).toEqual([82]);
    expect(p('70000,83')).toEqual([83]);
    expect(p('0x50,84')).toEqual([84]);
  });
});
