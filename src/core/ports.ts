/**
 * Port reservation policy. The kernel's own choice (bind to port 0) costs about
 * 1 ms per call once ~2/3 of the ephemeral range is held, so we choose ports
 * ourselves from ip_local_port_range (skipping ip_local_reserved_ports and ports
 * we already hold), bind them explicitly on the wildcard address, and treat
 * EADDRINUSE as "try the next one". After MAX_PROBES explicit tries a request
 * falls back to the kernel's choice (port 0), which is exact about exhaustion.
 *
 * Pure: the binder (the native addon, or a fake) is injected.
 */
import type { ReserveResult } from '../native/types.js';

export const EADDRINUSE = 98;
export const EACCES = 13;

/** Explicit candidates tried per request before falling back to bind(port 0). */
export const MAX_PROBES = 16;

export interface PortBinder {
  reservePorts(families: Uint8Array, ports: Uint16Array): ReserveResult;
  closeFds(fds: Int32Array): number;
  /** Close off the calling thread (the addon's port pool); release() prefers it when present. */
  releaseFds?(fds: Int32Array): number;
}

export interface PortRange {
  low: number;
  high: number;
}

export interface ReserveOutcome {
  fd: number;
  port: number;
  /** 0 on success, else a positive errno. */
  errno: number;
}

export interface PortReserverOptions {
  /** ip_local_port_range; undefined = always let the kernel choose (port 0). */
  range?: PortRange;
  /** ip_local_reserved_ports. */
  reserved?: ReadonlySet<number>;
  /** Starting point of the cursor (randomise in production). */
  start?: number;
}

export interface PortReserverStats {
  bindCalls: number;
  probesFailed: number;
  fallbacks: number;
  exhausted: number;
  held: number;
}

export class PortReserver {
  private readonly range?: PortRange;
  /** 1 for each port of ip_local_reserved_ports. */
  private readonly reserved = new Uint8Array(65536);
  private reservedCount = 0;
  private cursor: number;
  /** Ports held by our own sockets (any family): how many sockets hold each. */
  private readonly held = new Uint32Array(65536);
  /** Candidates already given out in the current round of reserve(): inRound[p] === round. */
  private readonly inRound = new Uint32Array(65536);
  private roundId = 0;
  readonly stats: PortReserverStats = { bindCalls: 0, probesFailed: 0, fallbacks: 0, exhausted: 0, held: 0 };

  constructor(
    private readonly binder: PortBinder,
    opts: PortReserverOptions = {},
  ) {
    const r = opts.range;
    this.range = r && r.low >= 1 && r.high >= r.low && r.high <= 65535 ? r : undefined;
    for (const p of opts.reserved ?? []) {
      if (Number.isInteger(p) && p >= 0 && p <= 65535 && this.reserved[p] === 0) {
        this.reserved[p] = 1;
        this.reservedCount++;
      }
    }
    this.cursor = this.range ? clamp(opts.start ?? this.range.low, this.range) : 0;
  }

  /** Next candidate from the range, skipping reserved ports, ports we hold and those given out this round. */
  private nextCandidate(): number {
    const r = this.range!;
    const size = r.high - r.low + 1;
    const round = this.roundId;
    for (let i = 0; i < size; i++) {
      const p = this.cursor;
      this.cursor = p >= r.high ? r.low : p + 1;
      if (this.reserved[p] === 0 && this.held[p] === 0 && this.inRound[p] !== round) {
        this.inRound[p] = round;
        return p;
      }
    }
    return 0; // nothing left to try explicitly: the kernel decides
  }

  /**
   * Reserve one new port for each family given (2 = AF_INET, 10 = AF_INET6),
   * all in as few native calls as possible.
   */
  reserve(families: readonly number[]): ReserveOutcome[] {
    const out: ReserveOutcome[] = families.map(() => ({ fd: -1, port: 0, errno: EADDRINUSE }));
    let pending = families.map((_, i) => i);
    let round = 0;
    while (pending.length > 0) {
      const fallback = !this.range || round >= MAX_PROBES;
      this.newRound();
      const ports = new Uint16Array(pending.length);
      for (let j = 0; j < pending.length; j++) ports[j] = fallback ? 0 : this.nextCandidate();
      if (fallback && this.range) this.stats.fallbacks += pending.length;
      const fams = Uint8Array.from(pending.map((i) => families[i]!));
      const res = this.binder.reservePorts(fams, ports);
      this.stats.bindCalls++;
      const retry: number[] = [];
      pending.forEach((i, j) => {
        const errno = res.errnos[j]!;
        if (errno === 0) {
          out[i] = { fd: res.fds[j]!, port: res.ports[j]!, errno: 0 };
          this.hold(res.ports[j]!);
        } else if ((errno === EADDRINUSE || errno === EACCES) && ports[j] !== 0) {
          this.stats.probesFailed++;
          retry.push(i);
        } else {
          out[i] = { fd: -1, port: 0, errno };
          if (errno === EADDRINUSE) this.stats.exhausted++;
        }
      });
      pending = retry;
      round++;
    }
    return out;
  }

  /** Re-bind exact ports (MAPINFO recovery). No retries: the kernel already uses these ports. */
  reopen(items: readonly { family: number; port: number }[]): ReserveOutcome[] {
    if (items.length === 0) return [];
    const res = this.binder.reservePorts(
      Uint8Array.from(items.map((x) => x.family)),
      Uint16Array.from(items.map((x) => x.port)),
    );
    this.stats.bindCalls++;
    return items.map((_, j) => {
      const errno = res.errnos[j]!;
      if (errno === 0) this.hold(res.ports[j]!);
      return { fd: errno === 0 ? res.fds[j]! : -1, port: errno === 0 ? res.ports[j]! : 0, errno };
    });
  }

  /**
   * Close reservation sockets (batched). With releaseFds the close happens on the
   * addon's background thread: the port is free microseconds later, not on return.
   * Nothing here depends on that: our own bookkeeping frees the port now, and a
   * reserve() that probes it before the kernel has let go just gets EADDRINUSE
   * and moves on to the next candidate. (reopen() has no next candidate, but it
   * re-binds ports of a MAPINFO replay, which come from an earlier daemon, not
   * ports this one has just released.)
   */
  release(items: readonly { fd: number; port: number }[]): void {
    const fds = items.filter((x) => x.fd >= 0);
    if (fds.length === 0) return;
    const list = Int32Array.from(fds.map((x) => x.fd));
    if (this.binder.releaseFds) this.binder.releaseFds(list);
    else this.binder.closeFds(list);
    for (const x of fds) this.unhold(x.port);
  }

  /** A fresh round id for inRound (the table is cleared when the ids wrap). */
  private newRound(): void {
    if (++this.roundId > 0xfffffffe) {
      this.inRound.fill(0);
      this.roundId = 1;
    }
  }

  private hold(port: number): void {
    this.held[port]!++;
    this.stats.held++;
  }

  private unhold(port: number): void {
    if (this.held[port]! === 0) return;
    this.held[port]!--;
    this.stats.held--;
  }

  describe(): { range?: PortRange; reservedCount: number; held: number } {
    return { range: this.range, reservedCount: this.reservedCount, held: this.stats.held };
  }
}

function clamp(p: number, r: PortRange): number {
  return p < r.low || p > r.high ? r.low : p;
}

/** Parse /proc/sys/net/ipv4/ip_local_port_range ("32768\t60999"). */
export function parsePortRange(text: string): PortRange | undefined {
  const m = /^\s*(\d+)\s+(\d+)\s*$/.exec(text);
  if (!m) return undefined;
  const low = Number(m[1]);
  const high = Number(m[2]);
  return low >= 1 && high >= low && high <= 65535 ? { low, high } : undefined;
}

/** Parse /proc/sys/net/ipv4/ip_local_reserved_ports ("8080,9000-9010" or empty). */
export function parseReservedPorts(text: string): Set<number> {
  const out = new Set<number>();
  for (const part of text.trim().split(',')) {
    if (!part) continue;
    const m = /^(\d+)(?:-(\d+))?$/.exec(part.trim());
    if (!m) continue;
    const a = Number(m[1]);
    const b = m[2] ? Number(m[2]) : a;
    for (let p = a; p <= b && p <= 65535; p++) out.add(p);
  }
  return out;
}
