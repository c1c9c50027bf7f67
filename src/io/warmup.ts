/**
 * JIT warm-up: a freshly started daemon runs its JavaScript in V8's interpreter until
 * the hot functions have run often enough to be compiled, and during that first second
 * a QUERY costs several times what it costs later (bench: ~5k queries/s in the first
 * 500 ms, ~31k/s once warm). The first connection storm after a node boots (an MPI
 * job's start-up) would pay for that.
 *
 * So once started, the service runs a few thousand QUERY round trips through a
 * throwaway copy of the daemon: the same classes (IwpmDaemon, PortReserver, PeerIo,
 * PeerEngine, the codecs), wired to an in-memory kernel, an in-memory port binder and
 * an in-memory UDP network. Nothing of it touches a socket, a port or the real
 * daemon's state; it runs in slices of a few milliseconds (a single round trip while
 * the code is still cold), each followed by a turn of the event loop, so real traffic
 * never waits behind more than one slice.
 */
import { performance } from 'node:perf_hooks';
import {
  RDMA_NL_IWCM,
  RDMA_NL_IWPM_HANDLE_ERR,
  RDMA_NL_IWPM_QUERY_MAPPING,
  encodeKernelAdd,
  encodeKernelHello,
  encodeKernelQuery,
  encodeKernelRegPid,
  encodeKernelRemove,
  nlType,
  opOf,
} from '../codec/iwpm.js';
import { NLMSG_HDRLEN, encodeDone, messageLengthAt, readHeader } from '../codec/netlink.js';
import { encodeSockaddr, parseIp } from '../codec/sockaddr.js';
import { IwpmDaemon, type PackedDatagrams } from '../core/daemon.js';
import { type Logger, nullLogger } from '../core/log.js';
import { PortReserver } from '../core/ports.js';
import { FakePortBinder } from '../native/fake.js';
import type { UdpBatch, UdpSocket, UdpSocketConstructor, UdpSocketOptions, UdpSocketStats } from '../native/types.js';
import { PeerIo } from './udp.js';

/** Round trips the service runs at start (a few hundred ms of CPU on a 2-vCPU VM). */
export const WARMUP_QUERIES = 4096;
/** Most round trips per slice. */
export const WARMUP_SLICE = 16;
/**
 * A slice should take about this long: it starts at one round trip (the first ones run
 * cold, and on an emulated CPU take far longer) and doubles up to WARMUP_SLICE while
 * slices stay below it, halving when one takes longer.
 */
export const WARMUP_SLICE_MS = 4;
/** Wall-clock limit: on a very slow machine (emulation) stop early rather than compete for long. */
export const WARMUP_BUDGET_MS = 2000;

export interface WarmUpOptions {
  /**
   * What the real daemon is built with, so the rehearsal's objects have its shapes
   * (V8 recompiles code that meets an object of a shape it was not compiled for).
   * The logger should write nowhere: the rehearsal logs like a real daemon.
   */
  log?: Logger;
  kernelPortId?: number;
  recvBatchSize?: number;
  queries?: number;
  slice?: number;
  /** Target duration of a slice (default WARMUP_SLICE_MS). */
  sliceMs?: number;
  budgetMs?: number;
  /** Between slices (the service: a turn of the event loop). */
  pause?: () => Promise<void>;
  /** True when the caller wants it to stop (the service is stopping). */
  cancelled?: () => boolean;
}

export interface WarmUpResult {
  /** Round trips answered "accepted", as the kernel would see them. */
  accepted: number;
  /** Answered otherwise (rejected, failed, HANDLE_ERR): 0 unless something is wrong. */
  other: number;
  ms: number;
  /** Stopped by the budget or the caller before `queries`. */
  cut: boolean;
}

const PID = 1;
const LISTEN_PORT = 5000;
const FIRST_LOCAL_PORT = 20000;
const UDP_PORT = 3935;
const HANDLE_ERR_TYPE = nlType(RDMA_NL_IWCM, RDMA_NL_IWPM_HANDLE_ERR);

/**
 * b's bytes in a Buffer made the way the addon makes its Buffers (node::Buffer::New: a
 * Uint8Array given Buffer.prototype), which V8 gives another map than Buffer.alloc's.
 * Code compiled for one map is thrown away ("wrong map") the first time it sees the
 * other, so the rehearsal must hand out the addon's kind.
 */
function addonLike(b: Buffer): Buffer {
  return Object.setPrototypeOf(new Uint8Array(b.buffer, b.byteOffset, b.length), Buffer.prototype) as Buffer;
}

/** Datagrams back to back in one addon-made Buffer, with their offsets and lengths, as the addon delivers a batch. */
function packed(dgs: readonly Buffer[]): { data: Buffer; offsets: Uint32Array; lengths: Uint32Array } {
  const offsets = new Uint32Array(dgs.length);
  const lengths = new Uint32Array(dgs.length);
  let off = 0;
  dgs.forEach((d, i) => {
    offsets[i] = off;
    lengths[i] = d.length;
    off += d.length;
  });
  return { data: addonLike(Buffer.concat(dgs)), offsets, lengths };
}

export async function warmUp(o: WarmUpOptions = {}): Promise<WarmUpResult> {
  const total = o.queries ?? WARMUP_QUERIES;
  const slice = Math.max(1, o.slice ?? WARMUP_SLICE);
  const sliceMs = o.sliceMs ?? WARMUP_SLICE_MS;
  const budget = o.budgetMs ?? WARMUP_BUDGET_MS;
  const pause = o.pause ?? (() => new Promise<void>((r) => setImmediate(r)));
  const t0 = performance.now();

  const log = o.log ?? nullLogger;
  const kernel = new MemKernel(o.kernelPortId ?? 0);
  const net = new MemNet();
  // the deps in the order the service gives them
  const daemon = new IwpmDaemon({
    sendToKernel: (dgs) => kernel.receive(dgs),
    ports: new PortReserver(new FakePortBinder(), { range: { low: 32768, high: 60999 } }),
    log,
    now: () => performance.now(),
    portId: PID,
    kernelPortId: o.kernelPortId ?? 0,
    recvBatchSize: o.recvBatchSize ?? 64,
    afterReads: (fn) => setImmediate(fn),
  });
  const io = new PeerIo({
    events: daemon,
    lookup: daemon,
    log,
    port: UDP_PORT,
    ipv4: 'on',
    ipv6: 'on',
    ipv6Disabled: () => false,
    udp: net.constructorFor(),
    batch: (fn) => daemon.runBatch(fn),
  });
  let accepted = 0;
  let other = 0;
  let done = 0;
  let cut = false;
  try {
    await io.start();
    daemon.setPeer(io);
    daemon.start();
    kernel.answerDaemon(daemon); // DONE for our HELLO; the kernel's HELLO next
    daemon.onPackedBatch(kernel.batch([encodeKernelHello(kernel.header(), 4)]));
    daemon.onPackedBatch(kernel.batch([encodeKernelRegPid(kernel.header(), { echoSeq: 1, ifname: 'lo', ibdev: 'warmup0' })]));
    const listeners = [parseIp('127.0.0.1', LISTEN_PORT), parseIp('::1', LISTEN_PORT)].map(encodeSockaddr);
    daemon.onPackedBatch(kernel.batch(listeners.map((local, i) => encodeKernelAdd(kernel.header(), { echoSeq: 10 + i, local, flags: 0 }))));
    kernel.answerDaemon(daemon);

    let port = FIRST_LOCAL_PORT;
    let size = 1;
    for (let round = 0; done < total; round++) {
      const sliceStart = performance.now();
      if (o.cancelled?.() || performance.now() - t0 > budget) {
        cut = true;
        break;
      }
      const n = Math.min(size, total - done);
      // both families; with and without a port reservation (flags 1: IWPM_FLAGS_NO_PORT_MAP, as siw asks)
      const v6 = round % 2 === 1;
      const flags = (round >> 1) % 2;
      const ip = v6 ? '::1' : '127.0.0.1';
      const remote = listeners[v6 ? 1 : 0]!;
      const locals: Buffer[] = [];
      for (let i = 0; i < n; i++) locals.push(encodeSockaddr(parseIp(ip, port++)));
      if (port > 60000) port = FIRST_LOCAL_PORT;
      // QUERYs, then the exchange with ourselves over the in-memory network
      daemon.onPackedBatch(kernel.batch(locals.map((local, i) => encodeKernelQuery(kernel.header(), { echoSeq: i, local, remote, flags }))));
      for (let step = 0; step < 8 && (kernel.pending() > 0 || net.pending() > 0 || step === 0); step++) {
        await Promise.resolve(); // PeerIo flushes REQs from a microtask
        net.pump();
        const r = kernel.answerDaemon(daemon);
        accepted += r.accepted;
        other += r.other;
      }
      // the connections end: their mappings go
      daemon.onPackedBatch(kernel.batch(locals.map((local, i) => encodeKernelRemove(kernel.header(), { echoSeq: i, local }))));
      kernel.answerDaemon(daemon);
      done += n;
      size = performance.now() - sliceStart < sliceMs ? Math.min(size * 2, slice) : Math.max(1, size >> 1);
      await pause();
    }
  } finally {
    await io.close();
    daemon.shutdown();
  }
  return { accepted, other, ms: performance.now() - t0, cut };
}

/** The kernel's side: packs its messages as the addon delivers them, answers each daemon message with DONE. */
class MemKernel {
  private seq = 100;
  private inbox: Buffer[] = [];

  constructor(private readonly portId: number) {}

  header(): { seq: number } {
    return { seq: this.seq++ };
  }

  receive(dgs: Buffer[]): void {
    for (const d of dgs) this.inbox.push(Buffer.from(d));
  }

  pending(): number {
    return this.inbox.length;
  }

  /** A receive batch built property by property in the addon's order, so that it has the addon's object shape. */
  batch(dgs: Buffer[]): PackedDatagrams {
    const n = dgs.length;
    const { data, offsets, lengths } = packed(dgs);
    const b: Record<string, unknown> = {};
    b.count = n;
    b.data = data;
    b.offsets = offsets;
    b.lengths = lengths;
    b.senders = new Uint32Array(n).fill(this.portId);
    b.groups = new Uint32Array(n);
    b.truncated = new Uint8Array(n);
    b.overruns = 0;
    b.errors = [];
    return b as unknown as PackedDatagrams;
  }

  /** DONE for every message the daemon sent (the kernel's dump machinery does that); counts its QUERY replies. */
  answerDaemon(daemon: IwpmDaemon): { accepted: number; other: number } {
    let accepted = 0;
    let other = 0;
    const dones: Buffer[] = [];
    for (const d of this.inbox.splice(0)) {
      for (let off = 0; off < d.length; ) {
        const len = messageLengthAt(d, off, d.length);
        if (typeof len === 'string') break;
        const h = readHeader(d, off);
        if (h.type >= 0x10 && opOf(h.type) === RDMA_NL_IWPM_QUERY_MAPPING) {
          // the reply's last attribute is its u16 error code: 0 = accepted
          if (d.readUInt16LE(off + len - 4) === 0 && len > NLMSG_HDRLEN) accepted++;
          else other++;
        } else if (h.type === HANDLE_ERR_TYPE) {
          other++;
        }
        dones.push(encodeDone(h.seq, PID));
        off += len;
      }
    }
    if (dones.length > 0) daemon.onPackedBatch(this.batch(dones));
    return { accepted, other };
  }
}

interface Queued {
  bytes: Buffer;
  srcPort: number;
}

/** Loopback UDP between in-memory sockets, delivered in batches when pumped. */
class MemNet {
  private readonly sockets = new Map<string, MemSocket>();
  private nextPort = 40000;
  private queued = 0;

  constructorFor(): UdpSocketConstructor {
    const net = this;
    return class extends MemSocket {
      constructor(opts: UdpSocketOptions, onBatch: (b: UdpBatch) => void, onError: (e: Error) => void) {
        super(net, opts, onBatch, onError);
      }
    } as unknown as UdpSocketConstructor;
  }

  bind(s: MemSocket, family: 4 | 6, port: number): number {
    const p = port === 0 ? this.nextPort++ : port;
    this.sockets.set(`${family}:${p}`, s);
    return p;
  }

  unbind(family: 4 | 6, port: number): void {
    this.sockets.delete(`${family}:${port}`);
  }

  send(family: 4 | 6, port: number, bytes: Uint8Array, srcPort: number): void {
    const s = this.sockets.get(`${family}:${port}`);
    if (!s) return; // nobody there: lost, as UDP would
    s.inbox.push({ bytes: Buffer.from(bytes), srcPort });
    this.queued++;
  }

  pending(): number {
    return this.queued;
  }

  pump(): void {
    for (let round = 0; round < 4 && this.queued > 0; round++) {
      for (const s of [...this.sockets.values()]) {
        if (s.inbox.length === 0) continue;
        const q = s.inbox.splice(0);
        this.queued -= q.length;
        s.deliver(q);
      }
    }
  }
}

class MemSocket implements UdpSocket {
  readonly port: number;
  // memory has room for whatever PeerIo asks (it warns below its request)
  readonly rcvbufBytes = 1 << 30;
  readonly sndbufBytes = 1 << 30;
  readonly inbox: Queued[] = [];
  private readonly family: 4 | 6;
  private readonly stat: UdpSocketStats = { received: 0, sent: 0, queued: 0, recvErrors: 0, sendErrors: 0, truncated: 0 };
  private closed = false;

  constructor(
    private readonly net: MemNet,
    opts: UdpSocketOptions,
    private readonly onBatch: (b: UdpBatch) => void,
    _onError: (e: Error) => void,
  ) {
    this.family = opts.family;
    this.port = net.bind(this, opts.family, opts.port);
  }

  send(datagrams: readonly Uint8Array[], _addrs: Uint8Array, ports: Uint16Array): number {
    for (let i = 0; i < datagrams.length; i++) this.net.send(this.family, ports[i]!, datagrams[i]!, this.port);
    this.stat.sent += datagrams.length;
    return datagrams.length;
  }

  deliver(q: Queued[]): void {
    if (this.closed) return;
    const n = q.length;
    const { data, offsets, lengths } = packed(q.map((d) => d.bytes));
    const srcPorts = new Uint16Array(n);
    const srcAddrs = addonLike(Buffer.alloc(16 * n));
    for (let i = 0; i < n; i++) {
      srcPorts[i] = q[i]!.srcPort;
      if (this.family === 4) srcAddrs.set([127, 0, 0, 1], 16 * i);
      else srcAddrs[16 * i + 15] = 1;
    }
    this.stat.received += n;
    // property by property in the addon's order (its object shape)
    const b: Record<string, unknown> = {};
    b.count = n;
    b.data = data;
    b.offsets = offsets;
    b.lengths = lengths;
    b.truncated = new Uint8Array(n);
    b.srcPorts = srcPorts;
    b.srcAddrs = srcAddrs;
    b.scopeIds = new Uint32Array(n);
    b.errors = [];
    b.errorAddrs = addonLike(Buffer.alloc(0));
    b.errorPorts = new Uint16Array(0);
    this.onBatch(b as unknown as UdpBatch);
  }

  stats(): UdpSocketStats {
    return { ...this.stat };
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.net.unbind(this.family, this.port);
  }
}
