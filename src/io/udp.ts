/**
 * UDP sockets of the peer exchange (spec §5.1), wired to PeerEngine, on the native
 * UdpSocket (recvmmsg / sendmmsg batches, IP_RECVERR).
 *
 *   id 0  server v4  0.0.0.0:port          receives REQ/ACK, sends ACC/REJ
 *   id 1  server v6  [::]:port, V6ONLY     same for IPv6
 *   id 2  client v4  0.0.0.0:0             sends REQ/ACK, receives ACC/REJ
 *   id 3  client v6  [::]:0, V6ONLY
 *
 * Any message is accepted on any socket; replies go out of the socket the message came
 * in on (the engine passes that socket id back as `via`). No SO_REUSEADDR. Large socket
 * buffers so bursts are not dropped. One timer drives the engine's ticker, armed at the
 * engine's next deadline.
 *
 * Batching: each receive batch is fed to the engine in one go, inside `batch` (the kernel
 * side's event grouping: all its netlink output of the batch leaves in one send), and
 * everything the engine sends meanwhile is collected and leaves with one sendmmsg per
 * socket at the end, after the netlink output (REMOTE_INFO before its ACC). The same for
 * a tick. Sends from outside (startQuery while the kernel side handles a netlink batch)
 * are collected until the end of the current callback (a microtask). Addresses travel as
 * bytes: no string is formatted on the hot path.
 *
 * ICMP errors (IP_RECVERR) tell when nobody listens on a peer's port: the live queries
 * to that peer fail at once instead of waiting for the give-up. So does a REQ whose send
 * fails for good (no route).
 *
 * A family that cannot be used (IPv6 disabled or not compiled in) is skipped with a
 * warning; the other keeps working and queries for the missing family fail at once.
 */
import { randomFillSync } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { performance } from 'node:perf_hooks';
import { getSystemErrorName } from 'node:util';
import { AF_INET, AF_INET6, formatIp, parseIp } from '../codec/sockaddr.js';
import { IWARP_PM_PORT } from '../codec/wire.js';
import { LogLimiter, type Logger, nullLogger } from '../core/log.js';
import type { MappingLookup, PeerEvents, PeerPort, QueryStart } from '../core/peer-api.js';
import {
  type PeerEndpoint,
  PeerEngine,
  type PeerLimits,
  type PeerStats,
  type PeerTiming,
  RawEndpoint,
} from '../core/peer.js';
import type { UdpBatch, UdpSocket, UdpSocketConstructor } from '../native/types.js';

/** Requested SO_RCVBUF / SO_SNDBUF (SO_*BUFFORCE when privileged; else capped at net.core.rmem_max / wmem_max). */
export const PEER_SOCKET_BUFFER_BYTES = 4 * 1024 * 1024;
/** Most datagrams read per poll wakeup (recvmmsg). */
export const PEER_RECV_BATCH = 256;
/** Receive slot: peer messages are 48 or 64 bytes; anything longer is malformed anyway (never 48 or 64 after truncation). */
const RECV_SLOT_BYTES = 256;

export const SOCK_SERVER4 = 0;
export const SOCK_SERVER6 = 1;
export const SOCK_CLIENT4 = 2;
export const SOCK_CLIENT6 = 3;
const SOCKET_NAMES = ['server v4', 'server v6', 'client v4', 'client v6'];
const SOCKET_FAMILY: readonly (4 | 6)[] = [4, 6, 4, 6];

const ECONNREFUSED = 111;

/** Errors meaning "this address family is not usable here" (rather than a real failure). */
const FAMILY_UNAVAILABLE = new Set(['EAFNOSUPPORT', 'EPROTONOSUPPORT', 'EADDRNOTAVAIL', 'EPFNOSUPPORT']);

/** Send errors that say the destination cannot be reached at all (a REQ to it fails its queries). */
const UNREACHABLE = new Set(['EHOSTUNREACH', 'ENETUNREACH', 'ECONNREFUSED', 'EACCES', 'EPERM', 'EADDRNOTAVAIL', 'EINVAL']);

export interface PeerIoOptions {
  events: PeerEvents;
  lookup: MappingLookup;
  log?: Logger;
  /** Local UDP port of the server sockets (default 3935; 0 = any, see `port` after start). */
  port?: number;
  /** UDP port REQs are sent to (default: the same as `port`, or 3935 when `port` is 0). */
  peerPort?: number;
  /** 'auto' (default): IPv6 unless disabled on this host; 'off': IPv4 only; 'on': required. */
  ipv6?: 'auto' | 'on' | 'off';
  /** 'on' (default): required; 'off': IPv6 only. */
  ipv4?: 'on' | 'off';
  bufferBytes?: number;
  timing?: Partial<PeerTiming>;
  limits?: Partial<PeerLimits>;
  /** Clock in ms (default: performance.now, monotonic). */
  now?: () => number;
  /** Random 64-bit handles as two 32-bit halves (default: node:crypto, cryptoHandleSource). */
  randomHandle?: (out: Uint32Array) => void;
  /** Whether /proc says IPv6 is disabled (tests inject; default reads /proc/sys/net/ipv6). */
  ipv6Disabled?: () => boolean;
  /** The native UdpSocket (default: the addon, loaded by start()). */
  udp?: UdpSocketConstructor;
  /**
   * Runs `fn`, which delivers a batch of events (queryDone, remoteInfo), so the receiver
   * can act on them together (the daemon: one netlink send). Default: just runs it.
   */
  batch?: (fn: () => void) => void;
}

export interface PeerIoStatus {
  port: number;
  ipv4: boolean;
  ipv6: boolean;
  /** Effective receive buffer of the server sockets as the kernel reports it (bytes). */
  recvBufferBytes: number;
}

/**
 * Random handles for PeerEngine (its randomHandle): each call writes the next two words
 * of a pool into out[0] (high half) and out[1] (low half). The pool is refilled by `fill`
 * (node:crypto by default: one syscall per `words / 2` handles) once used up, so no
 * word is handed out twice; a pair of zero words (handle 0) is skipped.
 */
export function cryptoHandleSource(fill: (pool: Uint32Array) => void = randomFillSync, words = 1024): (out: Uint32Array) => void {
  if (!Number.isInteger(words) || words < 2 || words % 2 !== 0) throw new RangeError(`pool size must be an even number >= 2, got ${words}`);
  const pool = new Uint32Array(words);
  let next = words;
  return (out) => {
    for (;;) {
      if (next >= words) {
        fill(pool);
        next = 0;
      }
      const hi = pool[next]!;
      const lo = pool[next + 1]!;
      next += 2;
      if (hi !== 0 || lo !== 0) {
        out[0] = hi;
        out[1] = lo;
        return;
      }
    }
  };
}

export function ipv6DisabledByProc(): boolean {
  try {
    return readFileSync('/proc/sys/net/ipv6/conf/all/disable_ipv6', 'utf8').trim() === '1';
  } catch {
    // no /proc/sys/net/ipv6 at all: IPv6 not compiled in or disabled at boot
    return true;
  }
}


/** A destination given as text only (not from this transport): its bytes and scope id. */
function textAddress(dest: PeerEndpoint): { raw: Buffer; scope: number } | undefined {
  let ip = dest.ip;
  let scope = dest.scopeId ?? 0;
  const pct = ip.indexOf('%');
  if (pct >= 0) {
    const zone = ip.slice(pct + 1);
    ip = ip.slice(0, pct);
    if (/^\d+$/.test(zone)) scope = Number(zone);
    else {
      try {
        scope = Number(readFileSync(`/sys/class/net/${zone}/ifindex`, 'utf8').trim()) || 0;
      } catch {
        return undefined;
      }
    }
  }
  try {
    return { raw: parseIp(ip).ip, scope };
  } catch {
    return undefined;
  }
}

/**
 * Datagrams waiting for one sendmmsg on one socket. The arrays are kept and reused. A
 * destination is read when added (its address, port, scope id), not kept: the engine may
 * pass our own reused source endpoint.
 */
class Outbox {
  readonly datagrams: Buffer[] = [];
  addrs = Buffer.alloc(16 * 64);
  ports = new Uint16Array(64);
  scopes = new Uint32Array(64);

  get count(): number {
    return this.datagrams.length;
  }

  /** False when the destination has no usable address. */
  add(dest: PeerEndpoint, bytes: Buffer): boolean {
    const i = this.datagrams.length;
    let raw = dest.raw;
    let scope = dest.scopeId ?? 0;
    if (raw === undefined) {
      const t = textAddress(dest);
      if (!t) return false;
      raw = t.raw;
      scope = t.scope;
    }
    if (i === this.ports.length) this.grow();
    const a = this.addrs;
    const off = 16 * i;
    if (raw.length === 4) {
      a[off] = raw[0]!;
      a[off + 1] = raw[1]!;
      a[off + 2] = raw[2]!;
      a[off + 3] = raw[3]!;
      for (let k = 4; k < 16; k++) a[off + k] = 0;
    } else {
      for (let k = 0; k < 16; k++) a[off + k] = raw[k]!;
    }
    this.ports[i] = dest.port;
    this.scopes[i] = scope;
    this.datagrams.push(bytes);
    return true;
  }

  clear(): void {
    this.datagrams.length = 0;
  }

  private grow(): void {
    const n = this.ports.length * 2;
    const addrs = Buffer.alloc(16 * n);
    this.addrs.copy(addrs);
    this.addrs = addrs;
    const ports = new Uint16Array(n);
    ports.set(this.ports);
    this.ports = ports;
    const scopes = new Uint32Array(n);
    scopes.set(this.scopes);
    this.scopes = scopes;
  }
}

type SendError = Error & { errno?: number; code?: string; syscall?: string; index?: number };

export class PeerIo implements PeerPort {
  readonly engine: PeerEngine;
  private readonly log: Logger;
  private readonly limiter = new LogLimiter();
  private readonly now: () => number;
  private readonly group: (fn: () => void) => void;
  private readonly sockets: (UdpSocket | undefined)[] = [undefined, undefined, undefined, undefined];
  private readonly outboxes = [new Outbox(), new Outbox(), new Outbox(), new Outbox()];
  /** The source of every datagram received on socket id, reused (the engine copies what it keeps). */
  private readonly sources = SOCKET_FAMILY.map((f) => new RawEndpoint(f, Buffer.alloc(f === 4 ? 4 : 16), 0));
  /** Datagrams in the outboxes. */
  private queued = 0;
  /** Inside a receive batch or a tick: sends wait for its end. */
  private depth = 0;
  private flushQueued = false;
  /** The outbox being sent (send errors reported synchronously name their datagram by index). */
  private flushing: Outbox | undefined;
  private readonly unreachable: { family: 4 | 6; raw: Buffer; port: number; reason: string }[] = [];
  private timer: NodeJS.Timeout | undefined;
  private armedAt = Infinity;
  private closed = false;
  private status: PeerIoStatus | undefined;
  private sendErrors = 0;
  private recvErrors = 0;
  private icmpRefused = 0;
  private truncated = 0;

  constructor(private readonly opts: PeerIoOptions) {
    this.log = opts.log ?? nullLogger;
    this.now = opts.now ?? (() => performance.now());
    this.group = opts.batch ?? ((fn) => fn());
    const port = opts.port ?? IWARP_PM_PORT;
    this.engine = new PeerEngine({
      now: this.now,
      randomHandle: opts.randomHandle ?? cryptoHandleSource(),
      send: (dest, bytes, via) => this.send(dest, bytes, via),
      events: opts.events,
      lookup: opts.lookup,
      peerPort: opts.peerPort ?? (port === 0 ? IWARP_PM_PORT : port),
      timing: opts.timing,
      limits: opts.limits,
      log: this.log,
    });
  }

  /** Open the sockets. Rejects only when no family at all can be used, or on a real error (port in use). */
  async start(): Promise<PeerIoStatus> {
    if (this.status) return this.status;
    const Udp = this.opts.udp ?? (await import('../native/index.js')).native.UdpSocket;
    if (this.status) return this.status;
    const port = this.opts.port ?? IWARP_PM_PORT;
    const want4 = (this.opts.ipv4 ?? 'on') === 'on';
    let want6 = this.opts.ipv6 ?? 'auto';
    if (want6 === 'auto' && (this.opts.ipv6Disabled ?? ipv6DisabledByProc)()) {
      this.log.warn('peer: IPv6 is disabled on this host; the peer exchange runs on IPv4 only');
      want6 = 'off';
    }
    const bufferBytes = this.opts.bufferBytes ?? PEER_SOCKET_BUFFER_BYTES;
    const open = (id: number, localPort: number): UdpSocket => {
      const s = new Udp(
        {
          family: SOCKET_FAMILY[id]!,
          port: localPort,
          v6Only: true,
          rcvbufBytes: bufferBytes,
          sndbufBytes: bufferBytes,
          batchSize: PEER_RECV_BATCH,
          slotBytes: RECV_SLOT_BYTES,
        },
        (batch) => this.onBatch(id, batch),
        (err) => this.onSendError(id, err),
      );
      this.sockets[id] = s;
      return s;
    };
    let serverPort = port;
    try {
      if (want4) {
        serverPort = open(SOCK_SERVER4, serverPort).port;
        open(SOCK_CLIENT4, 0);
      }
      if (want6 !== 'off') {
        try {
          serverPort = open(SOCK_SERVER6, serverPort).port;
          open(SOCK_CLIENT6, 0);
        } catch (e) {
          const code = (e as NodeJS.ErrnoException).code ?? '';
          if (want6 === 'on' || !FAMILY_UNAVAILABLE.has(code) || !want4) throw e;
          this.closeSocket(SOCK_SERVER6);
          this.closeSocket(SOCK_CLIENT6);
          this.log.warn(`peer: IPv6 is not available (${code}); the peer exchange runs on IPv4 only`);
        }
      }
    } catch (e) {
      for (let i = 0; i < 4; i++) this.closeSocket(i);
      throw e;
    }
    let recv = 0;
    for (let id = 0; id < 4; id++) {
      const s = this.sockets[id];
      if (!s) continue;
      recv = Math.max(recv, s.rcvbufBytes);
      // Linux reports twice the value set
      if (id === SOCK_SERVER4 && s.rcvbufBytes < bufferBytes) {
        this.log.warn(`peer: UDP receive buffer is ${s.rcvbufBytes} bytes, asked for ${bufferBytes} (net.core.rmem_max limits it)`);
      }
    }
    const ipv4 = !!this.sockets[SOCK_SERVER4];
    const ipv6 = !!this.sockets[SOCK_SERVER6];
    this.status = { port: serverPort, ipv4, ipv6, recvBufferBytes: recv };
    this.log.info(
      `peer: listening on UDP port ${serverPort} (${[ipv4 && 'IPv4', ipv6 && 'IPv6'].filter(Boolean).join(' and ')}), ` +
        `sending REQs to port ${this.engine.peerPort}`,
    );
    this.arm();
    return this.status;
  }

  // Receiving -----------------------------------------------------------------

  private onBatch(id: number, batch: UdpBatch): void {
    if (this.closed) return;
    this.depth++;
    try {
      if (batch.errors.length > 0) this.onReceiveErrors(id, batch);
      if (batch.count > 0) this.group(() => this.feed(id, batch));
    } catch (e) {
      this.log.error(`peer: internal error while handling a UDP batch: ${(e as Error).stack ?? e}`);
    } finally {
      this.depth--;
    }
    if (this.depth === 0) this.settle();
  }

  /** Every datagram of the batch to the engine, in place, sources as bytes (no text, no per-datagram object). */
  private feed(id: number, batch: UdpBatch): void {
    const { data, offsets, lengths, srcAddrs, srcPorts, scopeIds, truncated } = batch;
    const engine = this.engine;
    const src = this.sources[id]!;
    const raw = src.raw;
    const ipLen = raw.length;
    for (let i = 0; i < batch.count; i++) {
      const a = 16 * i;
      // a truncated datagram keeps the slot length (never 48 or 64): the engine drops it as malformed
      if (truncated[i] === 1) this.truncated++;
      for (let k = 0; k < ipLen; k++) raw[k] = srcAddrs[a + k]!;
      src.reuse(srcPorts[i]!, scopeIds[i]!);
      try {
        engine.receiveAt(data, offsets[i]!, lengths[i]!, src, id);
      } catch (e) {
        // never die on input
        this.log.error(`peer: internal error on a datagram from ${src.ip}:${src.port}: ${(e as Error).stack ?? e}`);
      }
    }
  }

  /** ICMP errors about earlier datagrams (IP_RECVERR). Port unreachable for a REQ: nobody serves that peer. */
  private onReceiveErrors(id: number, batch: UdpBatch): void {
    const family = SOCKET_FAMILY[id]!;
    for (let i = 0; i < batch.errors.length; i++) {
      this.recvErrors++;
      const errno = -batch.errors[i]!;
      const port = batch.errorPorts[i]!;
      if (errno === ECONNREFUSED && port !== 0) {
        this.icmpRefused++;
        const n = this.engine.destinationFailed(family, batch.errorAddrs, 16 * i, port, 'ICMP port unreachable: no port mapper there');
        if (n > 0) continue;
      }
      const what = port !== 0 ? ` about ${addrText(family, batch.errorAddrs, 16 * i)}:${port}` : '';
      const name = errnoName(errno);
      if (errno === ECONNREFUSED) {
        // a reply to a peer that is gone: normal on UDP
        if (this.log.debugEnabled) this.log.debug(`peer: ${SOCKET_NAMES[id]} socket: ${name}${what}`);
        continue;
      }
      const suffix = this.limiter.admit(`recverr:${name}`, this.now());
      if (suffix !== undefined) this.log.warn(`peer: ${SOCKET_NAMES[id]} socket: ${name}${what}${suffix}`);
    }
  }

  // Sending -------------------------------------------------------------------

  private send(dest: PeerEndpoint, bytes: Buffer, via: number | undefined): boolean {
    const id = via !== undefined ? via : dest.family === 4 ? SOCK_CLIENT4 : SOCK_CLIENT6;
    if (this.sockets[id] === undefined || !this.outboxes[id]!.add(dest, bytes)) return false;
    this.queued++;
    if (this.depth === 0 && !this.flushQueued) {
      // from outside a batch (the kernel side starting queries): at the end of the current callback
      this.flushQueued = true;
      queueMicrotask(this.flushTask);
    }
    return true;
  }

  private readonly flushTask = (): void => {
    this.flushQueued = false;
    if (this.depth === 0) this.settle();
  };

  /** End of a batch: everything collected leaves (one sendmmsg per socket), then the timer is re-armed. */
  private settle(): void {
    this.flush();
    if (this.unreachable.length > 0) {
      const list = this.unreachable.splice(0);
      for (const u of list) this.engine.destinationFailed(u.family, u.raw, 0, u.port, u.reason);
    }
    this.arm();
  }

  private flush(): void {
    if (this.queued === 0) return;
    this.queued = 0;
    for (let id = 0; id < 4; id++) {
      const box = this.outboxes[id]!;
      if (box.count === 0) continue;
      const s = this.sockets[id];
      if (s) {
        this.flushing = box;
        try {
          s.send(box.datagrams, box.addrs, box.ports, box.scopes);
        } catch (e) {
          this.sendErrors += box.count;
          const suffix = this.limiter.admit('sendthrow', this.now());
          if (suffix !== undefined) this.log.warn(`peer: UDP send on the ${SOCKET_NAMES[id]} socket failed: ${(e as Error).message}${suffix}`);
        } finally {
          this.flushing = undefined;
        }
      }
      box.clear();
    }
  }

  private onSendError(id: number, err: SendError): void {
    this.sendErrors++;
    const code = err.code ?? err.message;
    // reported inside send(): the index names the datagram; later (queued ones) it is gone
    const box = this.flushing;
    const i = box !== undefined && box === this.outboxes[id] && err.index !== undefined && err.index < box.count ? err.index : -1;
    const family = SOCKET_FAMILY[id]!;
    if (i >= 0 && id >= SOCK_CLIENT4 && UNREACHABLE.has(code)) {
      const raw = Buffer.from(box!.addrs.subarray(16 * i, 16 * i + (family === 4 ? 4 : 16)));
      this.unreachable.push({ family, raw, port: box!.ports[i]!, reason: `send failed: ${code}` });
    }
    const suffix = this.limiter.admit(`send:${code}`, this.now());
    if (suffix !== undefined) {
      let to = '';
      if (i >= 0) {
        const scope = box!.scopes[i]!;
        to = ` to ${addrText(family, box!.addrs, 16 * i)}${scope ? `%${scope}` : ''}:${box!.ports[i]!}`;
      }
      this.log.warn(`peer: UDP send${to} failed: ${err.message}${suffix}`);
    }
  }

  // Timer ---------------------------------------------------------------------

  /** Re-arm the single timer if the engine's next deadline moved earlier (or it was idle). */
  private arm(): void {
    if (this.closed) return;
    const d = this.engine.nextDeadline();
    if (d === undefined) {
      if (this.timer) clearTimeout(this.timer);
      this.timer = undefined;
      this.armedAt = Infinity;
      return;
    }
    if (this.timer && this.armedAt <= d) return;
    if (this.timer) clearTimeout(this.timer);
    this.armedAt = d;
    this.timer = setTimeout(this.onTimer, Math.max(0, Math.ceil(d - this.now())));
  }

  private readonly onTimer = (): void => {
    this.timer = undefined;
    this.armedAt = Infinity;
    if (this.closed) return;
    this.depth++;
    try {
      this.group(() => this.engine.tick(this.now()));
    } catch (e) {
      this.log.error(`peer: ticker failed: ${(e as Error).stack ?? e}`);
    } finally {
      this.depth--;
    }
    if (this.depth === 0) this.settle();
    else this.arm();
  };

  // PeerPort ------------------------------------------------------------------

  startQuery(q: QueryStart): void {
    this.engine.startQuery(q);
    this.arm();
  }

  cancelQuery(id: number): void {
    this.engine.cancelQuery(id);
  }

  setPeerPort(port: number): void {
    this.engine.setPeerPort(port);
  }

  stats(): PeerStats & {
    udpSendErrors: number;
    udpRecvErrors: number;
    icmpPortUnreachable: number;
    udpTruncated: number;
    udpSent: number;
    udpReceived: number;
    udpQueued: number;
    port?: number;
    ipv4: boolean;
    ipv6: boolean;
  } {
    let sent = 0;
    let received = 0;
    let queued = 0;
    for (const s of this.sockets) {
      if (!s) continue;
      const st = s.stats();
      sent += st.sent;
      received += st.received;
      queued += st.queued;
    }
    return {
      ...this.engine.stats(),
      udpSendErrors: this.sendErrors,
      udpRecvErrors: this.recvErrors,
      icmpPortUnreachable: this.icmpRefused,
      udpTruncated: this.truncated,
      udpSent: sent,
      udpReceived: received,
      udpQueued: queued,
      port: this.status?.port,
      ipv4: !!this.sockets[SOCK_SERVER4],
      ipv6: !!this.sockets[SOCK_SERVER6],
    };
  }

  private closeSocket(id: number): void {
    const s = this.sockets[id];
    this.sockets[id] = undefined;
    this.outboxes[id]!.clear();
    try {
      s?.close();
    } catch {
      /* already closed */
    }
  }

  /** Close the sockets and stop the timer; peer state and unsent datagrams are dropped. */
  async close(): Promise<void> {
    this.closed = true;
    if (this.timer) clearTimeout(this.timer);
    this.timer = undefined;
    this.engine.clear();
    this.queued = 0;
    this.unreachable.length = 0;
    for (let id = 0; id < 4; id++) this.closeSocket(id);
  }
}

function addrText(family: 4 | 6, b: Buffer, off: number): string {
  return formatIp({ family: family === 4 ? AF_INET : AF_INET6, ip: b.subarray(off, off + (family === 4 ? 4 : 16)) });
}

function errnoName(errno: number): string {
  try {
    return getSystemErrorName(-errno);
  } catch {
    return `errno ${errno}`;
  }
}
