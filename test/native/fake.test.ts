/**
 * The in-memory FakePortBinder (for pure unit tests of core/) must behave like
 * the real addon where core/ depends on it: the same scenarios run against both.
 */
import { afterEach, describe, expect, it } from 'vitest';
import { FakePortBinder } from '../../src/native/fake.js';
import { native } from '../../src/native/index.js';

const AF_INET = 2;
const AF_INET6 = 10;
const EADDRINUSE = 98;
const EAFNOSUPPORT = 97;
const EMFILE = 24;

type Binder = Pick<typeof native, 'reservePorts' | 'closeFds' | 'releaseFds'>;

const realFds: number[] = [];
afterEach(() => {
  native.closeFds(Int32Array.from(realFds.splice(0)));
});

const binders: [string, () => Binder][] = [
  ['real addon', () => native],
  ['FakePortBinder', () => new FakePortBinder()],
];

for (const [name, make] of binders) {
  describe(`binder contract: ${name}`, () => {
    const reserve = (b: Binder, fams: number[], ports: number[]) => {
      const r = b.reservePorts(Uint8Array.from(fams), Uint16Array.from(ports));
      if (b === native) for (const fd of r.fds) if (fd >= 0) realFds.push(fd);
      return r;
    };

    it('port 0 gets distinct ports; a held port cannot be taken again in either family', () => {
      const b = make();
      const r = reserve(b, [AF_INET, AF_INET6], [0, 0]);
      expect(Array.from(r.errnos)).toEqual([0, 0]);
      expect(r.ports[0]).not.toBe(r.ports[1]);
      const again = reserve(b, [AF_INET6, AF_INET], [r.ports[0]!, r.ports[1]!]);
      expect(Array.from(again.errnos)).toEqual([EADDRINUSE, EADDRINUSE]);
      expect(Array.from(again.fds)).toEqual([-1, -1]);
    });

    it('closeFds releases: the same port can be reserved again', () => {
      const b = make();
      const r = reserve(b, [AF_INET], [0]);
      expect(b.closeFds(Int32Array.from([r.fds[0]!, -1]))).toBe(1);
      realFds.length = 0;
      const again = reserve(b, [AF_INET], [r.ports[0]!]);
      expect(again.errnos[0]).toBe(0);
      expect(again.ports[0]).toBe(r.ports[0]);
    });

    it('releaseFds releases (the addon within microseconds): the same port can be reserved again', async () => {
      const b = make();
      const r = reserve(b, [AF_INET, AF_INET6], [0, 0]);
      expect(b.releaseFds(Int32Array.from([r.fds[0]!, -1, r.fds[1]!]))).toBe(2);
      realFds.length = 0;
      const deadline = Date.now() + 1000;
      let again = reserve(b, [AF_INET, AF_INET6], [r.ports[0]!, r.ports[1]!]);
      while (!again.errnos.every((e) => e === 0) && Date.now() < deadline) {
        b.closeFds(again.fds.filter((fd) => fd >= 0));
        realFds.length = 0;
        await new Promise((res) => setTimeout(res, 2));
        again = reserve(b, [AF_INET, AF_INET6], [r.ports[0]!, r.ports[1]!]);
      }
      expect(Array.from(again.errnos)).toEqual([0, 0]);
      expect(Array.from(again.ports)).toEqual([r.ports[0], r.ports[1]]);
    });

    it('per-item errors: EAFNOSUPPORT for other families; mismatched lengths throw', () => {
      const b = make();
      const r = reserve(b, [7, AF_INET], [0, 0]);
      expect(Array.from(r.errnos)).toEqual([EAFNOSUPPORT, 0]);
      expect(() => b.reservePorts(new Uint8Array(2), new Uint16Array(1))).toThrow(TypeError);
    });
  });
}

describe('FakePortBinder extras', () => {
  it('treats busy ports as taken and picks port-0 ports from the ephemeral range', () => {
    const f = new FakePortBinder({ busy: [40000], ephemeral: { low: 40000, high: 40002 } });
    const r = f.reservePorts(Uint8Array.from([2, 2, 2]), Uint16Array.from([0, 0, 0]));
    expect(Array.from(r.ports)).toEqual([40001, 40002, 0]);
    expect(Array.from(r.errnos)).toEqual([0, 0, EADDRINUSE]);
    expect(f.reservePorts(Uint8Array.from([10]), Uint16Array.from([40000])).errnos[0]).toBe(EADDRINUSE);
    expect(f.heldPorts()).toEqual(new Set([40001, 40002]));
    expect(f.calls).toHaveLength(2);
  });

  it('injects failures: failNext, failWith, maxFds', () => {
    const f = new FakePortBinder({ maxFds: 2, failWith: (req) => (req.port === 1234 ? 13 : 0) });
    f.failNext(EMFILE);
    const r = f.reservePorts(Uint8Array.from([2, 2, 2, 2]), Uint16Array.from([0, 1234, 0, 0]));
    expect(Array.from(r.errnos)).toEqual([EMFILE, 13, 0, 0]);
    expect(f.reservePorts(Uint8Array.from([2]), Uint16Array.from([0])).errnos[0]).toBe(EMFILE);
    expect(f.open.size).toBe(2);
    expect(f.closeFds(r.fds)).toBe(2);
    expect(f.open.size).toBe(0);
    expect(f.closed).toEqual(Array.from(r.fds).filter((fd) => fd >= 0));
  });
});
