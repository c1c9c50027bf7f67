/**
 * src/core/mappings.ts: exact and fuzzy lookups (spec §4.3) against local and
 * mapped addresses, list order, index consistency under remove / setMapped.
 */
import { describe, expect, it } from 'vitest';
import { type SockAddr, encodeSockaddr, isWildcard, sameAddr } from '../../src/codec/sockaddr.js';
import { type Mapping, MappingTable } from '../../src/core/mappings.js';
import { prng, sa } from './helpers.js';

let ids = 1;
function mk(local: SockAddr, mappedPort: number, extra: Partial<Mapping> = {}): Mapping {
  const mapped = { ...local, port: mappedPort };
  return {
    id: ids++,
    local,
    localRaw: encodeSockaddr(local),
    mapped,
    mappedRaw: encodeSockaddr(mapped),
    wildcard: isWildcard(local),
    ownerClient: 2,
    refCount: 1,
    fd: -1,
    flags: 0,
    source: 'add',
    createdAtMs: 0,
    state: 'bound',
    ...extra,
  };
}

describe('exact lookup', () => {
  it('matches family, IP and port only', () => {
    const t = new MappingTable();
    const m = mk(sa('10.0.0.1', 5000), 33000);
    t.insert(m);
    expect(t.findExact(sa('10.0.0.1', 5000))).toBe(m);
    expect(t.findExact(sa('10.0.0.1', 5001))).toBeUndefined();
    expect(t.findExact(sa('10.0.0.2', 5000))).toBeUndefined();
    expect(t.findExact(sa('0.0.0.0', 5000))).toBeUndefined(); // no wildcard fuzz
    expect(t.findExact(sa('::ffff:a00:1', 5000))).toBeUndefined();
  });

  it('ignores IPv6 flowinfo and scope id', () => {
    const t = new MappingTable();
    const m = mk(sa('fe80::1', 7, { scopeId: 3, flowinfo: 9 }), 8);
    t.insert(m);
    expect(t.findExact(sa('fe80::1', 7))).toBe(m);
  });

  it('IPv4 and IPv6 keys never collide', () => {
    const t = new MappingTable();
    const pairs: [SockAddr, SockAddr][] = [
      [sa('0.0.0.0', 5000), sa('::', 5000)],
      [sa('1.2.3.4', 5), sa('102:304::', 5)],
      [sa('1.2.3.4', 5), sa('::102:304', 5)],
      [sa('0.0.0.5', 0), sa('::5', 0)],
    ];
    for (const [a, b] of pairs) {
      const ma = mk(a, 1);
      const mb = mk(b, 2);
      t.insert(ma);
      t.insert(mb);
      expect(t.findExact(a)).toBe(ma);
      expect(t.findExact(b)).toBe(mb);
      t.remove(ma);
      expect(t.findExact(b)).toBe(mb);
      t.remove(mb);
    }
    expect(t.size).toBe(0);
  });
});

describe('fuzzy lookup (spec §4.3)', () => {
  it('ports must be equal, whatever else matches', () => {
    const t = new MappingTable();
    t.insert(mk(sa('0.0.0.0', 5000), 33000));
    expect(t.findFuzzy(sa('0.0.0.0', 5001))).toBeUndefined();
    expect(t.findFuzzy(sa('10.0.0.1', 4999))).toBeUndefined();
  });

  it('rule 1: exactly equal address', () => {
    const t = new MappingTable();
    const m = mk(sa('10.0.0.1', 5000), 33000);
    t.insert(m);
    expect(t.findFuzzy(sa('10.0.0.1', 5000))).toBe(m);
    expect(t.findFuzzy(sa('10.0.0.2', 5000))).toBeUndefined(); // different specific IP, same port
    expect(t.findFuzzy(sa('::ffff:a00:1', 5000))).toBeUndefined(); // other family, not wildcard
  });

  it('rule 2: a wildcard mapping matches any IP on its port, even of the other family', () => {
    const t = new MappingTable();
    const m = mk(sa('0.0.0.0', 5000), 33000);
    t.insert(m);
    expect(t.findFuzzy(sa('10.0.0.1', 5000))).toBe(m);
    expect(t.findFuzzy(sa('2001:db8::1', 5000))).toBe(m);
    expect(t.findFuzzy(sa('::', 5000))).toBe(m);
    const t6 = new MappingTable();
    const m6 = mk(sa('::', 4791), 40000);
    t6.insert(m6);
    expect(t6.findFuzzy(sa('192.168.0.1', 4791))).toBe(m6);
  });

  it('rule 3: a wildcard search address matches a specific mapping on the port', () => {
    const t = new MappingTable();
    const m = mk(sa('10.0.0.1', 5000), 33000);
    t.insert(m);
    expect(t.findFuzzy(sa('0.0.0.0', 5000))).toBe(m);
    expect(t.findFuzzy(sa('::', 5000))).toBe(m); // other-family wildcard too
  });

  it('against mapped addresses: rule 2 still uses the LOCAL wildcard flag', () => {
    const t = new MappingTable();
    const wild = mk(sa('0.0.0.0', 5000), 33000);
    const spec = mk(sa('10.0.0.1', 6000), 34000);
    t.insert(wild);
    t.insert(spec);
    // ACK key is the listener's mapped address; the wildcard mapping's mapped IP is 0.0.0.0.
    expect(t.findFuzzy(sa('10.0.0.9', 33000), 'mapped')).toBe(wild);
    expect(t.findFuzzy(sa('10.0.0.1', 34000), 'mapped')).toBe(spec); // rule 1 on mapped
    expect(t.findFuzzy(sa('10.0.0.2', 34000), 'mapped')).toBeUndefined();
    expect(t.findFuzzy(sa('0.0.0.0', 34000), 'mapped')).toBe(spec); // rule 3 on mapped
    // Local ports are not mapped ports.
    expect(t.findFuzzy(sa('10.0.0.1', 6000), 'mapped')).toBeUndefined();
    expect(t.findFuzzy(sa('10.0.0.1', 34000), 'local')).toBeUndefined();
  });

  it('most recently inserted first', () => {
    const t = new MappingTable();
    const a = mk(sa('10.0.0.1', 5000), 33000);
    const b = mk(sa('10.0.0.2', 5000), 33001);
    const c = mk(sa('10.0.0.3', 5000), 33002);
    t.insert(a);
    t.insert(b);
    t.insert(c);
    expect(t.findFuzzy(sa('0.0.0.0', 5000))).toBe(c);
    t.remove(c);
    expect(t.findFuzzy(sa('0.0.0.0', 5000))).toBe(b);
    expect(t.findFuzzy(sa('10.0.0.1', 5000))).toBe(a);
    // A newer wildcard shadows older specific mappings for every search on the port.
    const w = mk(sa('::', 5000), 33003);
    t.insert(w);
    expect(t.findFuzzy(sa('10.0.0.1', 5000))).toBe(w);
  });
});

describe('index consistency', () => {
  it('remove drops the mapping from every index; removing twice or a stranger fails', () => {
    const t = new MappingTable();
    const m = mk(sa('10.0.0.1', 5000), 33000);
    t.insert(m);
    expect(t.has(m)).toBe(true);
    expect(t.remove(m)).toBe(true);
    expect(t.has(m)).toBe(false);
    expect(t.size).toBe(0);
    expect(t.findExact(m.local)).toBeUndefined();
    expect(t.findFuzzy(sa('0.0.0.0', 5000))).toBeUndefined();
    expect(t.findFuzzy(sa('0.0.0.0', 33000), 'mapped')).toBeUndefined();
    expect(t.remove(m)).toBe(false);
    // A different object with the same key is not "in" the table.
    const m2 = mk(sa('10.0.0.1', 5000), 33001);
    t.insert(m2);
    expect(t.remove(m)).toBe(false);
    expect(t.findExact(m.local)).toBe(m2);
    expect(t.findFuzzy(sa('0.0.0.0', 33001), 'mapped')).toBe(m2);
  });

  it('setMapped moves the mapping between mapped-port indexes', () => {
    const t = new MappingTable();
    const m = mk(sa('10.0.0.1', 5000), 5000); // pending: mapped = local until the port is bound
    t.insert(m);
    expect(t.findFuzzy(sa('10.0.0.1', 5000), 'mapped')).toBe(m);
    const mapped = sa('10.0.0.1', 40000);
    t.setMapped(m, mapped, encodeSockaddr(mapped));
    expect(m.mapped).toEqual(mapped);
    expect(m.mappedRaw).toEqual(encodeSockaddr(mapped));
    expect(t.findFuzzy(sa('10.0.0.1', 5000), 'mapped')).toBeUndefined();
    expect(t.findFuzzy(sa('10.0.0.1', 40000), 'mapped')).toBe(m);
    expect(t.findFuzzy(sa('10.0.0.1', 5000), 'local')).toBe(m); // local index untouched
    t.remove(m);
    expect(t.findFuzzy(sa('10.0.0.1', 40000), 'mapped')).toBeUndefined();
  });

  it('list, clear, newId', () => {
    const t = new MappingTable();
    const a = mk(sa('10.0.0.1', 1), 2);
    const b = mk(sa('::1', 1), 3);
    t.insert(a);
    t.insert(b);
    expect(new Set(t.list())).toEqual(new Set([a, b]));
    expect(new Set(t.clear())).toEqual(new Set([a, b]));
    expect(t.size).toBe(0);
    expect(t.findFuzzy(sa('0.0.0.0', 1))).toBeUndefined();
    expect(t.findFuzzy(sa('0.0.0.0', 2), 'mapped')).toBeUndefined();
    const i = t.newId();
    expect(t.newId()).toBe(i + 1);
  });

  it('agrees with a plain most-recent-first list (rdma-core model) under random operations', () => {
    const r = prng(2024);
    const t = new MappingTable();
    // Model: rdma-core's single list for local lookups; for mapped lookups the order
    // is "most recently inserted or re-mapped first" (setMapped happens when the port
    // is bound, i.e. when rdma-core would insert).
    let localList: Mapping[] = [];
    let mappedList: Mapping[] = [];
    const ips4 = ['0.0.0.0', '10.0.0.1', '10.0.0.2'];
    const ips6 = ['::', '2001:db8::1', 'fe80::1'];
    const ports = [5000, 5001, 5002];
    const randAddr = (): SockAddr => sa(r.next() < 0.5 ? r.pick(ips4) : r.pick(ips6), r.pick(ports));
    const fuzzy = (list: Mapping[], a: SockAddr, against: 'local' | 'mapped'): Mapping | undefined =>
      list.find((m) => {
        const tgt = against === 'local' ? m.local : m.mapped;
        return tgt.port === a.port && (sameAddr(a, tgt) || m.wildcard || isWildcard(a));
      });
    for (let i = 0; i < 4000; i++) {
      const op = r.int(4);
      if (op === 0) {
        const a = randAddr();
        if (!t.findExact(a)) {
          const m = mk(a, r.pick(ports));
          t.insert(m);
          localList = [m, ...localList];
          mappedList = [m, ...mappedList];
        }
      } else if (op === 1 && localList.length > 0) {
        const m = r.pick(localList);
        expect(t.remove(m)).toBe(true);
        localList = localList.filter((x) => x !== m);
        mappedList = mappedList.filter((x) => x !== m);
      } else if (op === 2 && localList.length > 0) {
        const m = r.pick(localList);
        const np = { ...m.local, port: r.pick(ports) };
        t.setMapped(m, np, encodeSockaddr(np));
        mappedList = [m, ...mappedList.filter((x) => x !== m)];
      } else {
        const a = randAddr();
        expect(t.findFuzzy(a, 'local')).toBe(fuzzy(localList, a, 'local'));
        expect(t.findFuzzy(a, 'mapped')).toBe(fuzzy(mappedList, a, 'mapped'));
        expect(t.findExact(a)).toBe(localList.find((m) => sameAddr(m.local, a)));
      }
      expect(t.size).toBe(localList.length);
    }
  });
});
