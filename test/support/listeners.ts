/**
 * A MappingLookup for peer tests, over the real MappingTable (spec §4.3 fuzzy rules),
 * without the kernel side: listeners are added directly.
 */
import { type SockAddr, encodeSockaddr, isWildcard, parseIp } from '../../src/codec/sockaddr.js';
import { type Mapping, MappingTable } from '../../src/core/mappings.js';
import type { ListenerView, MappingLookup } from '../../src/core/peer-api.js';

export class TestListeners implements MappingLookup {
  readonly table = new MappingTable();
  lookups = 0;

  /** Add a listener "ip:port" mapped to mappedPort (mapped IP = local IP, as the daemon does). */
  add(ip: string, port: number, mappedPort: number, ownerClient = 2): Mapping {
    const local = parseIp(ip, port);
    const mapped: SockAddr = { ...local, port: mappedPort };
    const m: Mapping = {
      id: this.table.newId(),
      local,
      localRaw: encodeSockaddr(local),
      mapped,
      mappedRaw: encodeSockaddr(mapped),
      wildcard: isWildcard(local),
      ownerClient,
      refCount: 1,
      fd: -1,
      flags: 0,
      source: 'add',
      createdAtMs: 0,
      state: 'bound',
    };
    this.table.insert(m);
    return m;
  }

  remove(m: Mapping): void {
    this.table.remove(m);
  }

  findListener(addr: SockAddr): ListenerView | undefined {
    this.lookups++;
    return this.table.findFuzzy(addr, 'local'); // the mapping itself, as the daemon answers
  }

  findByMapped(addr: SockAddr): ListenerView | undefined {
    return this.table.findFuzzy(addr, 'mapped');
  }
}
