/**
 * The mapping table: local address → mapped address, with reference counts and the
 * owner client. Indexed so every lookup is O(1) on average:
 *   - exact: canonical key from the address bytes (family, IP, port);
 *   - fuzzy (spec §4.3): every fuzzy rule requires equal ports, so a per-port list
 *     (most recently inserted first, like rdma-core's list order) holds the candidates;
 *   - the same per-port lists over mapped ports for lookups against mapped addresses.
 */
import { type SockAddr, addrKey, isWildcard, sameAddr } from '../codec/sockaddr.js';

export type MappingSource = 'add' | 'query' | 'mapinfo';

export interface Mapping {
  readonly id: number;
  readonly local: SockAddr;
  /** The kernel's 128 bytes for the local address, echoed verbatim in replies. */
  readonly localRaw: Buffer;
  mapped: SockAddr;
  mappedRaw: Buffer;
  /** The local IP is 0.0.0.0 or ::. */
  readonly wildcard: boolean;
  readonly ownerClient: number;
  refCount: number;
  /** Reserving socket, -1 when none (NO_PORT_MAP, or a re-bind that failed). */
  fd: number;
  readonly flags: number;
  readonly source: MappingSource;
  readonly createdAtMs: number;
  /** 'pending' while its port is being reserved within a batch. */
  state: 'pending' | 'bound' | 'unreserved' | 'failed';
  /** Replay generation that created it (MAPINFO), for rebuilding reference counts. */
  readonly replayGen?: number;
  /** The block holding localRaw, mappedRaw and the IP (the daemon's BlockPool); undefined once given back. */
  block?: Buffer;
}

type Key = number | string;

export class MappingTable {
  private readonly exact = new Map<Key, Mapping>();
  private readonly byLocalPort = new Map<number, Mapping[]>();
  private readonly byMappedPort = new Map<number, Mapping[]>();
  private nextId = 1;

  get size(): number {
    return this.exact.size;
  }

  newId(): number {
    return this.nextId++;
  }

  /** Exact match on the local address (family, IP, port). */
  findExact(addr: SockAddr): Mapping | undefined {
    return this.exact.get(addrKey(addr));
  }

  /**
   * Fuzzy match (rdma-core find_iwpm_mapping): ports equal and one of
   * (1) exactly equal, (2) the mapping's local address is a wildcard (whatever the
   * family), (3) the searched address is a wildcard. First match wins, most recent first.
   */
  findFuzzy(addr: SockAddr, against: 'local' | 'mapped' = 'local'): Mapping | undefined {
    const list = (against === 'local' ? this.byLocalPort : this.byMappedPort).get(addr.port);
    if (!list) return undefined;
    const searchWild = isWildcard(addr);
    for (const m of list) {
      const target = against === 'local' ? m.local : m.mapped;
      if (m.wildcard || searchWild || sameAddr(addr, target)) return m;
    }
    return undefined;
  }

  insert(m: Mapping): void {
    this.exact.set(addrKey(m.local), m);
    prepend(this.byLocalPort, m.local.port, m);
    prepend(this.byMappedPort, m.mapped.port, m);
  }

  /** Update the mapped address of a mapping already in the table (its port was just bound). */
  setMapped(m: Mapping, mapped: SockAddr, mappedRaw: Buffer): void {
    drop(this.byMappedPort, m.mapped.port, m);
    m.mapped = mapped;
    m.mappedRaw = mappedRaw;
    prepend(this.byMappedPort, mapped.port, m);
  }

  remove(m: Mapping): boolean {
    const k = addrKey(m.local);
    if (this.exact.get(k) !== m) return false;
    this.exact.delete(k);
    drop(this.byLocalPort, m.local.port, m);
    drop(this.byMappedPort, m.mapped.port, m);
    return true;
  }

  has(m: Mapping): boolean {
    return this.exact.get(addrKey(m.local)) === m;
  }

  list(): Mapping[] {
    return [...this.exact.values()];
  }

  clear(): Mapping[] {
    const all = this.list();
    this.exact.clear();
    this.byLocalPort.clear();
    this.byMappedPort.clear();
    return all;
  }
}

function prepend(index: Map<number, Mapping[]>, port: number, m: Mapping): void {
  const list = index.get(port);
  if (list) list.unshift(m);
  else index.set(port, [m]);
}

function drop(index: Map<number, Mapping[]>, port: number, m: Mapping): void {
  const list = index.get(port);
  if (!list) return;
  const i = list.indexOf(m);
  if (i >= 0) list.splice(i, 1);
  if (list.length === 0) index.delete(port);
}
