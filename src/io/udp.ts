/**
 * UDP sockets of the peer exchange (spec §5.1), wired to PeerEngine.
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
 * A family that cannot be used (IPv6 disabled or not compiled in) is skipped with a
 * warning; the other keeps working and queries for the missing family fail at once.
 */
import { randomFillSync } from 'node:crypto';
import dgram from 'node:dgram';
import { readFileSync, readdirSync } from 'node:fs';
import { performance } from 'node:perf_hooks';
import { IWARP_PM_PORT } from '../codec/wire.js';
import { LogLimiter, type Logger, nullLogger } from '../core/log.js';
import type { MappingLookup, PeerEvents, PeerPort, QueryStart } from '../core/peer-api.js';
import {
  type PeerEndpoint,
  PeerEngine,
  type PeerLimits,
  type PeerStats,
  type PeerTiming,
} from '../core/peer.js';

/** Requested SO_RCVBUF / SO_SNDBUF (the kernel caps them at net.core.rmem_max / wmem_max). */
export const PEER_SOCKET_BUFFER_BYTES = 4 * 1024 * 1024;

export const SOCK_SERVER4 = 0;
export const SOCK_SERVER6 = 1;
export const SOCK_CLIENT4 = 2;
export const SOCK_CLIENT6 = 3;
const SOCKET_NAMES = ['server v4', 'server v6', 'client v4', 'client v6'];

/** Errors meaning "this address family is not usable here" (rather than a real failure). */
const FAMILY_UNAVAILABLE = new Set(['EAFNOSUPPORT', 'EPROTONOSUPPORT', 'EADDRNOTAVAIL', 'EPFNOSUPPORT']);

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
  /** Random 64-bit handles (default: node:crypto). */
  random64?: () => bigint;
  /** Whether /proc says IPv6 is disabled (tests inject; default reads /proc/sys/net/ipv6). */
  ipv6Disabled?: () => boolean;
}

export interface PeerIoStatus {
  port: number;
  ipv4: boolean;
  ipv6: boolean;
  /** Effective receive buffer of the server sockets as the kernel reports it (bytes). */
  recvBufferBytes: number;
}

/** crypto random 64-bit values, drawn from a refilled pool (one syscall per 512 handles). */
export function cryptoRandom64(): () => bigint {
  const pool = Buffer.alloc(4096);
  let off = pool.length;
  return () => {
    if (off >= pool.length) {
      randomFillSync(pool);
      off = 0;
    }
    const v = pool.readBigUInt64LE(off);
    off += 8;
    return v;
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

/** Interface name for an IPv6 scope id (dgram wants "addr%ifname"); cached, refreshed on a miss. */
class ScopeNames {
  private names = new Map<number, string>();
  get(index: number): string | undefined {
    let n = this.names.get(index);
    if (n === undefined) {
      this.refresh();
      n = this.names.get(index);
    }
    return n;
  }
  private refresh(): void {
    const m = new Map<number, string>();
    try {
      for (const name of readdirSync('/sys/class/net')) {
        try {
          m.set(Number(readFileSync(`/sys/class/net/${name}/ifindex`, 'utf8').trim()), name);
        } catch {
          /* interface vanished */
        }
      }
    } catch {
      /* no sysfs */
    }
    this.names = m;
  }
}

/** dgram's default lookup (dns.lookup) defers every send by a tick even for IP literals. */
function literalLookup(
  address: string,
  _opts: unknown,
  cb: (err: NodeJS.ErrnoException | null, address: string, family: number) => void,
): void {
  cb(null, address, address.includes(':') ? 6 : 4);
}

function bindUdp(type: 'udp4' | 'udp6', port: number): Promise<dgram.Socket> {
  return new Promise((resolve, reject) => {
    let s: dgram.Socket;
    try {
      s = dgram.createSocket({
        type,
        ipv6Only: type === 'udp6',
        reuseAddr: false,
        lookup: literalLookup as never,
      });
    } catch (e) {
      reject(e);
      return;
    }
    const onError = (e: Error): void => {
      try {
        s.close();
      } catch {
        /* not open */
      }
      reject(e);
    };
    s.once('error', onError);
    s.bind({ port, address: type === 'udp4' ? '0.0.0.0' : '::', exclusive: true }, () => {
      s.off('error', onError);
      resolve(s);
    });
  });
}

export class PeerIo implements PeerPort {
  readonly engine: PeerEngine;
  private readonly log: Logger;
  private readonly limiter = new LogLimiter();
  private readonly now: () => number;
  private readonly sockets: (dgram.Socket | undefined)[] = [undefined, undefined, undefined, undefined];
  private readonly scopes = new ScopeNames();
  private timer: NodeJS.Timeout | undefined;
  private armedAt = Infinity;
  private closed = false;
  private status: PeerIoStatus | undefined;
  private sendErrors = 0;
  private readonly onSent = (err: Error | null): void => {
    if (!err) return;
    this.sendErrors++;
    const code = (err as NodeJS.ErrnoException).code ?? err.message;
    const suffix = this.limiter.admit(`send:${code}`, this.now());
    if (suffix !== undefined) this.log.warn(`peer: UDP send failed: ${err.message}${suffix}`);
  };

  constructor(private readonly opts: PeerIoOptions) {
    this.log = opts.log ?? nullLogger;
    this.now = opts.now ?? (() => performance.now());
    const port = opts.port ?? IWARP_PM_PORT;
    this.engine = new PeerEngine({
      now: this.now,
      random64: opts.random64 ?? cryptoRandom64(),
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
    const port = this.opts.port ?? IWARP_PM_PORT;
    const want4 = (this.opts.ipv4 ?? 'on') === 'on';
    let want6 = this.opts.ipv6 ?? 'auto';
    if (want6 === 'auto' && (this.opts.ipv6Disabled ?? ipv6DisabledByProc)()) {
      this.log.warn('peer: IPv6 is disabled on this host; the peer exchange runs on IPv4 only');
      want6 = 'off';
    }
    let serverPort = port;
    try {
      if (want4) {
        this.sockets[SOCK_SERVER4] = await bindUdp('udp4', serverPort);
        serverPort = this.sockets[SOCK_SERVER4].address().port;
        this.sockets[SOCK_CLIENT4] = await bindUdp('udp4', 0);
      }
      if (want6 !== 'off') {
        try {
          this.sockets[SOCK_SERVER6] = await bindUdp('udp6', serverPort);
          serverPort = this.sockets[SOCK_SERVER6].address().port;
          this.sockets[SOCK_CLIENT6] = await bindUdp('udp6', 0);
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
      recv = Math.max(recv, this.setup(s, id));
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

  private setup(s: dgram.Socket, id: number): number {
    const want = this.opts.bufferBytes ?? PEER_SOCKET_BUFFER_BYTES;
    try {
      s.setRecvBufferSize(want);
      s.setSendBufferSize(want);
    } catch (e) {
      this.log.warn(`peer: cannot size the ${SOCKET_NAMES[id]} socket buffers: ${(e as Error).message}`);
    }
    let got = 0;
    try {
      got = s.getRecvBufferSize();
      // Linux reports twice the requested value (bookkeeping overhead)
      if (got < want && id === SOCK_SERVER4) {
        this.log.warn(`peer: UDP receive buffer is ${got} bytes, asked for ${want} (net.core.rmem_max limits it)`);
      }
    } catch {
      /* closed */
    }
    const family: 4 | 6 = id === SOCK_SERVER4 || id === SOCK_CLIENT4 ? 4 : 6;
    s.on('message', (msg: Buffer, rinfo: dgram.RemoteInfo) => {
      this.engine.receive(msg, { family, ip: rinfo.address, port: rinfo.port }, id);
      this.arm();
    });
    s.on('error', (e: Error) => {
      const suffix = this.limiter.admit(`sockerr:${id}`, this.now());
      if (suffix !== undefined) this.log.warn(`peer: ${SOCKET_NAMES[id]} socket error: ${e.message}${suffix}`);
    });
    return got;
  }

  private send(dest: PeerEndpoint, bytes: Buffer, via: number | undefined): boolean {
    const s = via !== undefined ? this.sockets[via] : this.sockets[dest.family === 4 ? SOCK_CLIENT4 : SOCK_CLIENT6];
    if (!s) return false;
    let address = dest.ip;
    if (dest.scopeId && !address.includes('%')) {
      const name = this.scopes.get(dest.scopeId);
      if (name) address = `${address}%${name}`;
    }
    s.send(bytes, dest.port, address, this.onSent);
    return true;
  }

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
    try {
      this.engine.tick(this.now());
    } catch (e) {
      this.log.error(`peer: ticker failed: ${(e as Error).stack ?? e}`);
    }
    this.arm();
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

  stats(): PeerStats & { udpSendErrors: number; port?: number; ipv4: boolean; ipv6: boolean } {
    return {
      ...this.engine.stats(),
      udpSendErrors: this.sendErrors,
      port: this.status?.port,
      ipv4: !!this.sockets[SOCK_SERVER4],
      ipv6: !!this.sockets[SOCK_SERVER6],
    };
  }

  private closeSocket(id: number): Promise<void> {
    const s = this.sockets[id];
    this.sockets[id] = undefined;
    if (!s) return Promise.resolve();
    return new Promise((resolve) => {
      try {
        s.close(() => resolve());
      } catch {
        resolve();
      }
    });
  }

  /** Close the sockets and stop the timer; peer state is dropped. */
  async close(): Promise<void> {
    this.closed = true;
    if (this.timer) clearTimeout(this.timer);
    this.timer = undefined;
    this.engine.clear();
    await Promise.all([0, 1, 2, 3].map((id) => this.closeSocket(id)));
  }
}
