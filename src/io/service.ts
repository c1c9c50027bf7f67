/**
 * Wires the daemon together: netlink socket (native), port reserver (native),
 * the kernel-side core, the peer exchange on UDP, the control socket, the ticker
 * and signals. Everything here is I/O; all decisions are in core/.
 */
import { readFileSync } from 'node:fs';
import type { Logger } from '../core/log.js';
import { IwpmDaemon } from '../core/daemon.js';
import { PortReserver } from '../core/ports.js';
import { type Native, NETLINK_RDMA, NETLINK_USERSOCK, type NetlinkBatch, type NetlinkSocket } from '../native/types.js';
import { ControlServer } from './control.js';
import { type DaemonConfig } from './config.js';
import { inInitialNetns, iwcmLoaded, localPortRange, localReservedPorts } from './sysctl.js';
import { StartupError } from './errors.js';
import { sdNotify } from './systemd.js';
import { startPeer, type PeerHandle } from './peer-wiring.js';
import { LineLogger } from './logger.js';
import { warmUp, type WarmUpResult } from './warmup.js';

/** Netlink receive buffer requested when the config file sets none (bytes). */
export const DEFAULT_NL_RCVBUF_BYTES = 32 * 1024 * 1024;
/** Multicast group of the kernel's REG_PID (RDMA_NL_GROUP_IWPM). */
export const RDMA_NL_GROUP_IWPM = 2;
export const IWARP_PM_PORT = 3935;
/** How often the core's timers are looked at. */
export const TICK_MS = 100;
/** File descriptors the fd table is grown to at start (bounded by RLIMIT_NOFILE). */
export const PREGROW_FDS = 131072;
/** Datagrams drained per netlink wakeup. */
export const NL_RECV_BATCH = 64;
/** Spare unbound sockets per family the addon's port pool keeps (socket() off the main thread). */
export const PORT_POOL_SPARES = 64;
/**
 * Least RLIMIT_NOFILE soft limit with which the port pool is on. Its spares hold up to
 * 2 * PORT_POOL_SPARES fds; under a tight limit (prlimit --nofile=40:40) the daemon
 * runs without it, exactly as before (synchronous socket() and close()).
 */
export const PORT_POOL_MIN_NOFILE = 4096;

export interface ServiceOptions {
  config: DaemonConfig;
  log: Logger;
  /** USERSOCK mode: the simulator's port id. undefined = NETLINK_RDMA, kernel = 0. */
  kernelPort?: number;
  nlGroup: number;
  udpPort: number;
  /** Control socket path, or undefined for none. */
  controlPath?: string;
  systemd: boolean;
  /** Run the JIT warm-up (io/warmup.ts) once started. Default true. */
  warmUp?: boolean;
}

export { StartupError };

export function packageVersion(): string {
  try {
    const pkg = JSON.parse(readFileSync(new URL('../../package.json', import.meta.url), 'utf8')) as { version: string };
    return pkg.version;
  } catch {
    return 'unknown';
  }
}

export class Service {
  daemon!: IwpmDaemon;
  private nl?: NetlinkSocket;
  private peer?: PeerHandle;
  private control?: ControlServer;
  private ticker?: NodeJS.Timeout;
  private readonly startedAtMs = Date.now();
  private stopped = false;
  private warm: 'off' | 'running' | WarmUpResult | { error: string } = 'off';
  ports!: PortReserver;

  constructor(
    private readonly native: Native,
    private readonly opts: ServiceOptions,
  ) {}

  async start(): Promise<void> {
    const { log, kernelPort } = this.opts;
    const usersock = kernelPort !== undefined;

    const lim = this.native.raiseNofileLimit();
    const grown = this.native.pregrowFdTable(Math.min(PREGROW_FDS, lim.soft));
    log.debug(`RLIMIT_NOFILE ${lim.soft}/${lim.hard}; fd table grown to ${grown}`);
    const poolOn = lim.soft === -1 || lim.soft >= PORT_POOL_MIN_NOFILE;
    this.native.configurePortPool({ spares: poolOn ? PORT_POOL_SPARES : 0 });
    log.info(
      poolOn
        ? `port pool on: ${PORT_POOL_SPARES} spare sockets per family, closes on a background thread`
        : `port pool off (RLIMIT_NOFILE ${lim.soft} < ${PORT_POOL_MIN_NOFILE}): socket() and close() on the main thread`,
    );

    if (!usersock && inInitialNetns() === false) {
      throw new StartupError(
        'iwpmd must run in the initial network namespace: the kernel talks to the port mapper only there',
      );
    }

    const range = localPortRange();
    const reserved = localReservedPorts();
    this.ports = new PortReserver(this.native, {
      range,
      reserved,
      start: range ? range.low + Math.floor(Math.random() * (range.high - range.low + 1)) : undefined,
    });
    log.info(
      range
        ? `reserving ports from ${range.low}-${range.high} (${reserved.size} reserved ports skipped)`
        : 'ip_local_port_range unreadable: the kernel chooses reserved ports',
    );

    const kernelPortId = kernelPort ?? 0;
    const rcvbufBytes = this.opts.config.nlSockRbufSize || DEFAULT_NL_RCVBUF_BYTES;
    const open = (portId: number): NetlinkSocket =>
      new this.native.NetlinkSocket(
        {
          protocol: usersock ? NETLINK_USERSOCK : NETLINK_RDMA,
          portId,
          groups: 1 << (this.opts.nlGroup - 1),
          rcvbufBytes,
          batchSize: NL_RECV_BATCH,
        },
        (batch) => this.onBatch(batch),
        (err) => log.warn(`netlink send failed${err.index !== undefined ? ` (datagram ${err.index})` : ''}: ${err.message}`),
      );
    try {
      // Port id = our pid, as rdma-core binds it. The kernel keeps the daemon's id in a
      // signed int and ignores ids <= 0, so an autobound id of 2^31 or more would make
      // it silently stop mapping: fall back to autobind only when that gives a usable id.
      try {
        this.nl = open(this.native.getpid());
      } catch (e) {
        if ((e as { code?: string }).code !== 'EADDRINUSE') throw e;
        this.nl = open(0);
        if (this.nl.portId >= 0x80000000) {
          this.nl.close();
          throw new StartupError(
            `netlink port id ${this.native.getpid()} (our pid) is taken and the kernel offered ${this.nl.portId}, ` +
              'which iw_cm cannot use (it must be below 2^31)',
          );
        }
        log.warn(`netlink port id ${this.native.getpid()} is taken by another socket; using ${this.nl.portId}`);
      }
    } catch (e) {
      if (e instanceof StartupError) throw e;
      const err = e as Error & { code?: string };
      if (!usersock && (err.code === 'EPROTONOSUPPORT' || err.code === 'EAFNOSUPPORT')) {
        throw new StartupError(
          `this kernel has no NETLINK_RDMA (${err.code}): load the RDMA core and iWARP connection manager ` +
            '(modprobe ib_core iw_cm) and run iwpmd in the initial network namespace',
        );
      }
      throw new StartupError(`cannot open the netlink socket: ${err.message}`);
    }
    const nl = this.nl;
    log.info(
      `netlink ${usersock ? `USERSOCK (kernel simulator at port id ${kernelPortId}, group ${this.opts.nlGroup})` : 'RDMA'}` +
        ` port id ${nl.portId}, receive buffer ${nl.rcvbufBytes} bytes via ${nl.rcvbufOption}`,
    );
    if (!usersock && !iwcmLoaded()) log.warn('the iw_cm module is not loaded yet; the kernel loads it on our HELLO');

    this.daemon = new IwpmDaemon({
      sendToKernel: (d) => {
        nl.send(d, kernelPortId, 0);
      },
      ports: this.ports,
      log,
      now: () => performance.now(),
      portId: nl.portId,
      kernelPortId,
      recvBatchSize: NL_RECV_BATCH,
      afterReads: (fn) => setImmediate(fn),
    });

    this.peer = await startPeer({ daemon: this.daemon, log, port: this.opts.udpPort });

    if (this.opts.controlPath) {
      this.control = new ControlServer(this.opts.controlPath, (cmd) => this.control_(cmd));
      try {
        await this.control.start();
      } catch (e) {
        log.warn(`control socket ${this.opts.controlPath} unavailable: ${(e as Error).message}`);
        this.control = undefined;
      }
    }

    this.daemon.start();
    this.ticker = setInterval(() => this.daemon.tick(performance.now()), TICK_MS);
    if (this.opts.systemd) sdNotify(this.native.unixDatagramSend, 'READY=1');
    log.info(`iwpmd ${packageVersion()} started (pid ${process.pid})`);
    if (this.opts.warmUp !== false) {
      this.warm = 'running';
      setImmediate(() => void this.warmUp());
    }
  }

  /** Compile the hot paths before the first connection storm (io/warmup.ts); real traffic goes first. */
  private async warmUp(): Promise<void> {
    const log = this.opts.log;
    try {
      const r = await warmUp({
        // the real daemon's kind of logger (the same object shapes), writing nowhere
        log: new LineLogger('error', () => {}),
        kernelPortId: this.opts.kernelPort ?? 0,
        recvBatchSize: NL_RECV_BATCH,
        cancelled: () => this.stopped,
      });
      this.warm = r;
      const how = `${r.accepted} QUERY round trips rehearsed in memory in ${r.ms.toFixed(0)} ms`;
      if (r.other > 0) log.warn(`JIT warm-up: ${how}, but ${r.other} were not accepted (a bug: please report)`);
      else log.info(`JIT warm-up: ${how}${r.cut ? ' (cut short by its time limit)' : ''}`);
    } catch (e) {
      this.warm = { error: (e as Error).message };
      log.warn(`JIT warm-up failed (the daemon works, only its first connections are slower): ${(e as Error).stack ?? e}`);
    }
  }

  private onBatch(batch: NetlinkBatch): void {
    if (this.stopped) return;
    if (batch.overruns > 0 || batch.errors.length > 0) this.daemon.noteReceiveTrouble(batch.overruns, batch.errors);
    if (batch.count === 0) return;
    try {
      this.daemon.onPackedBatch(batch);
    } catch (e) {
      // Never die on input: log and keep serving.
      this.opts.log.error(`internal error while handling a netlink batch: ${(e as Error).stack ?? e}`);
    }
  }

  private control_(cmd: string[]): unknown {
    const [verb, what] = cmd;
    if (verb !== 'show') return { error: `unknown command "${cmd.join(' ')}"` };
    switch (what) {
      case 'mappings':
        return this.daemon.describeMappings();
      case 'clients':
        return this.daemon.clients.registered();
      case 'stats':
        return this.stats();
      case 'status':
      case undefined:
        return this.status();
      default:
        return { error: `unknown object "${what}" (mappings, clients, stats, status)` };
    }
  }

  status(): Record<string, unknown> {
    return {
      version: packageVersion(),
      pid: process.pid,
      uptimeMs: Date.now() - this.startedAtMs,
      netlink: this.opts.kernelPort === undefined ? 'rdma' : `usersock:${this.opts.kernelPort}`,
      portId: this.nl?.portId,
      abi: this.daemon.negotiatedAbi ?? 'negotiating',
      mappings: this.daemon.table.size,
      pendingQueries: this.daemon.pendingQueries,
      udpPort: this.opts.udpPort,
      peer: this.peer?.describe(),
      warmUp: this.warm,
    };
  }

  stats(): Record<string, unknown> {
    return {
      daemon: this.daemon.counters,
      netlink: this.nl?.stats(),
      ports: this.ports.stats,
      portPool: this.native.portPoolStats(),
      peer: this.peer?.stats(),
      memory: this.memory(),
    };
  }

  /** Process memory (bytes) and the mappings' share of it. */
  private memory(): Record<string, number> {
    const m = process.memoryUsage();
    const st = this.daemon.storageStats();
    return {
      rss: m.rss,
      heapUsed: m.heapUsed,
      heapTotal: m.heapTotal,
      external: m.external,
      arrayBuffers: m.arrayBuffers,
      mappingBlocks: st.mappingBlocks,
      spareMappingBlocks: st.spareBlocks,
      mappingBlockBytes: (st.mappingBlocks + st.spareBlocks) * st.blockBytes,
    };
  }

  /** The mapping table as log lines (SIGUSR1), like rdma-core's dump. */
  dumpMappings(): void {
    const maps = this.daemon.describeMappings();
    this.opts.log.warn(`mapping table: ${maps.length} mapping(s)`);
    maps.forEach((m, i) =>
      this.opts.log.warn(
        `Mapping #${i + 1}: local ${m.local} mapped ${m.mapped} refs ${m.refCount} client ${m.ownerClient}` +
          ` flags ${m.flags} ${m.state}${m.wildcard ? ' wildcard' : ''}`,
      ),
    );
  }

  /** Release every reserved port and close every socket. Idempotent. */
  async stop(): Promise<void> {
    if (this.stopped) return;
    this.stopped = true;
    if (this.opts.systemd) sdNotify(this.native.unixDatagramSend, 'STOPPING=1');
    if (this.ticker) clearInterval(this.ticker);
    const released = this.daemon?.shutdown() ?? 0;
    await this.peer?.close();
    this.control?.close();
    this.nl?.close();
    this.opts.log.info(`stopped; released ${released} reserved port(s)`);
  }
}
