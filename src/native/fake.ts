/**
 * In-memory stand-in for the port-binding part of the addon (reservePorts /
 * closeFds / releaseFds), for pure unit tests of core/ and for the start-up warm-up's
 * rehearsal (io/warmup.ts), which must bind nothing. It models what matters to the
 * reservation policy: a port held by anyone (any family: no IPV6_V6ONLY, so an
 * IPv6 reservation also blocks IPv4 and vice versa) cannot be bound again,
 * port 0 means "the kernel picks a free port from the ephemeral range", and
 * any item can be made to fail with a chosen errno.
 */
import type { Native, ReserveResult } from './types.js';

export const AF_INET = 2;
export const AF_INET6 = 10;
const EADDRINUSE = 98;
const EAFNOSUPPORT = 97;
const EMFILE = 24;

export interface FakeBindRequest {
  family: number;
  port: number;
}

export interface FakePortBinderOptions {
  /** Ports held by other processes (bind to them fails with EADDRINUSE). */
  busy?: Iterable<number>;
  /** Range the fake "kernel" picks from for port 0. Default 32768-60999 (Linux default). */
  ephemeral?: { low: number; high: number };
  /** Most reservation fds open at once; beyond it reservePorts fails with EMFILE. Default unlimited. */
  maxFds?: number;
  /** First fd number handed out. Default 100. */
  firstFd?: number;
  /**
   * Called for every item before the normal rules: return a positive errno to
   * make that item fail, or 0/undefined to proceed.
   */
  failWith?: (req: FakeBindRequest, callIndex: number) => number | undefined;
}

export class FakePortBinder implements Pick<Native, 'reservePorts' | 'closeFds' | 'releaseFds'> {
  /** fd -> what it holds. */
  readonly open = new Map<number, FakeBindRequest>();
  /** Ports held by other processes; tests may add/remove at will. */
  readonly busy: Set<number>;
  /** Every reservePorts call, as given. */
  readonly calls: FakeBindRequest[][] = [];
  /** Every fd passed to closeFds or releaseFds (including unknown ones). */
  readonly closed: number[] = [];
  /** Every fd passed to releaseFds (negative ones skipped), in order. */
  readonly released: number[] = [];
  private readonly ephemeral: { low: number; high: number };
  private readonly maxFds: number;
  private readonly failWith?: FakePortBinderOptions['failWith'];
  /** Queued one-shot failures, consumed by the next items in order. */
  private readonly nextFailures: number[] = [];
  /** port -> how many of our fake sockets hold it. */
  private readonly held = new Map<number, number>();
  private nextFd: number;
  private ephemeralCursor: number;

  constructor(opts: FakePortBinderOptions = {}) {
    this.busy = new Set(opts.busy ?? []);
    this.ephemeral = opts.ephemeral ?? { low: 32768, high: 60999 };
    this.maxFds = opts.maxFds ?? Infinity;
    this.failWith = opts.failWith;
    this.nextFd = opts.firstFd ?? 100;
    this.ephemeralCursor = this.ephemeral.low;
  }

  /** Make the next `count` items (across calls) fail with `errno`. */
  failNext(errno: number, count = 1): void {
    for (let i = 0; i < count; i++) this.nextFailures.push(errno);
  }

  /** Ports currently held by our fake sockets. */
  heldPorts(): Set<number> {
    return new Set(this.held.keys());
  }

  isTaken(port: number): boolean {
    return this.busy.has(port) || this.held.has(port);
  }

  reservePorts(families: Uint8Array, ports: Uint16Array): ReserveResult {
    if (families.length !== ports.length) throw new TypeError('reservePorts(families, ports) of equal length');
    const n = families.length;
    const out: ReserveResult = { fds: new Int32Array(n), ports: new Uint16Array(n), errnos: new Int32Array(n) };
    const callIndex = this.calls.length;
    this.calls.push(Array.from(families, (family, i) => ({ family, port: ports[i]! })));
    for (let i = 0; i < n; i++) {
      const req = { family: families[i]!, port: ports[i]! };
      const errno = this.bindOne(req, callIndex);
      if (errno > 0) {
        out.fds[i] = -1;
        out.errnos[i] = errno;
      } else {
        const fd = this.nextFd++;
        this.open.set(fd, req);
        this.held.set(req.port, (this.held.get(req.port) ?? 0) + 1);
        out.fds[i] = fd;
        out.ports[i] = req.port;
      }
    }
    return out;
  }

  /** Returns a positive errno, or 0 with req.port set to the bound port. */
  private bindOne(req: FakeBindRequest, callIndex: number): number {
    const injected = this.nextFailures.shift() ?? this.failWith?.(req, callIndex) ?? 0;
    if (injected > 0) return injected;
    if (req.family !== AF_INET && req.family !== AF_INET6) return EAFNOSUPPORT;
    if (this.open.size >= this.maxFds) return EMFILE;
    if (req.port !== 0) return this.isTaken(req.port) ? EADDRINUSE : 0;
    const { low, high } = this.ephemeral;
    for (let k = 0; k <= high - low; k++) {
      const p = this.ephemeralCursor;
      this.ephemeralCursor = p >= high ? low : p + 1;
      if (!this.isTaken(p)) {
        req.port = p;
        return 0;
      }
    }
    return EADDRINUSE;
  }

  /**
   * The real one closes on a background thread; here the effect is immediate (the
   * fake has no time), and the fds are recorded in both `closed` and `released`.
   * Returns how many fds were taken, like the addon.
   */
  releaseFds(fds: Int32Array): number {
    const taken = Array.from(fds).filter((fd) => fd >= 0);
    this.released.push(...taken);
    this.closeFds(Int32Array.from(taken));
    return taken.length;
  }

  closeFds(fds: Int32Array): number {
    let closed = 0;
    for (const fd of fds) {
      if (fd < 0) continue;
      this.closed.push(fd);
      const req = this.open.get(fd);
      if (!req) continue;
      this.open.delete(fd);
      const n = this.held.get(req.port) ?? 0;
      if (n <= 1) this.held.delete(req.port);
      else this.held.set(req.port, n - 1);
      closed++;
    }
    return closed;
  }
}
