/**
 * The kernel side of the port mapper: every IWPM netlink op, the mapping table,
 * the client registry, ABI negotiation and MAPINFO recovery.
 *
 * No I/O here: netlink output, port binding, the peer exchange and the clock are
 * injected. One call handles one receive batch: messages are processed in arrival
 * order, new port reservations of the batch are made in as few native calls as
 * possible, and all replies of the batch leave in one send.
 */
import {
  IWPM_CREATE_MAPPING_ERR,
  IWPM_DUPLICATE_MAPPING_ERR,
  IWPM_FLAGS_NO_PORT_MAP,
  IWPM_INVALID_NLMSG_ERR,
  IWPM_REMOTE_QUERY_REJECT,
  IWPM_UABI_VERSION,
  IWPM_UABI_VERSION_MIN,
  IWPM_USER_LIB_INFO_ERR,
  IWPM_VERSION_MISMATCH_ERR,
  ERROR_NAMES,
  OP_NAMES,
  RDMA_NL_C4IW,
  RDMA_NL_IWCM,
  RDMA_NL_IWPM_ADD_MAPPING,
  RDMA_NL_IWPM_HANDLE_ERR,
  RDMA_NL_IWPM_HELLO,
  RDMA_NL_IWPM_MAPINFO,
  RDMA_NL_IWPM_MAPINFO_NUM,
  RDMA_NL_IWPM_QUERY_MAPPING,
  RDMA_NL_IWPM_REG_PID,
  RDMA_NL_IWPM_REMOTE_INFO,
  type AddrValue,
  type KernelMessage,
  decodeKernelMessage,
  encodeHandleErr,
  encodeHello,
  encodeManageReply,
  encodeMapinfoNumReply,
  encodeMapinfoRequest,
  encodeQueryReply,
  encodeRegPidReply,
  encodeRemoteInfo,
  nlType,
  type WireAddr,
} from '../codec/iwpm.js';
import { splitMessages } from '../codec/netlink.js';
import {
  type SockAddr,
  addrKey,
  encodeSockaddr,
  formatAddr,
  isWildcard,
  sameAddr,
  withPort,
} from '../codec/sockaddr.js';
import { ClientRegistry } from './clients.js';
import { type Logger, LogLimiter } from './log.js';
import { type Mapping, MappingTable } from './mappings.js';
import type {
  ListenerView,
  MappingLookup,
  PeerEvents,
  PeerPort,
  QueryOutcome,
  RemoteInfo,
} from './peer-api.js';
import type { PortReserver } from './ports.js';

/** How long to wait for the kernel's answer to HELLO before sending it again. */
export const HELLO_RETRY_MS = 1000;
/** HELLOs sent in all before giving up on negotiation (and assuming ABI 4). */
export const HELLO_ATTEMPTS = 3;
/** Most kernel messages held back while the ABI is being negotiated. */
export const MAX_HELD_MESSAGES = 4096;
/**
 * A read that comes after the event loop stood still this long may hold requests the
 * kernel has already given up on (it waits 10 s). Answering those is not just useless:
 * on Linux 6.1 a late ADD/QUERY answer makes the kernel read a dead stack frame and
 * oops (seen under qemu, docs/real-kernel.md). Such requests are dropped unanswered
 * until the socket has been drained.
 */
export const STALL_DROP_MS = 8000;
/** Daemon messages remembered so the kernel's NLMSG_DONE status can be attributed. */
const SENT_MEMORY = 4096;

export interface ReceivedDatagram {
  data: Buffer;
  /** Sender netlink port id (0 = the kernel). */
  sender: number;
  truncated: boolean;
}

export interface DaemonDeps {
  /** Sends datagrams to the kernel, in order, in one call. */
  sendToKernel(datagrams: Buffer[]): void;
  ports: PortReserver;
  log: Logger;
  now(): number;
  /** Our netlink port id (goes into every header's nlmsg_pid). */
  portId: number;
  /** Netlink port id the kernel speaks from: 0, or the simulator's in USERSOCK mode. */
  kernelPortId: number;
  /** Most datagrams one receive batch can hold: a smaller batch means the socket was drained. */
  recvBatchSize?: number;
  /**
   * Runs `fn` after the socket reads of the current event-loop turn (setImmediate).
   * After a stall the timers run before the backlog is read; this tells "no backlog"
   * apart. Without it, the next tick does.
   */
  afterReads?: (fn: () => void) => void;
}

export interface DaemonCounters {
  datagrams: number;
  messages: number;
  byOp: Record<string, number>;
  droppedForeign: number;
  truncated: number;
  overruns: number;
  recvErrors: number;
  invalid: number;
  handleErrSent: Record<string, number>;
  kernelErrors: number;
  kernelRejected: number;
  repliesSent: number;
  queriesStarted: number;
  queriesAccepted: number;
  queriesRejected: number;
  queriesTimedOut: number;
  queriesFailed: number;
  remoteInfoSent: number;
  mapinfoRecords: number;
  mapinfoRebound: number;
  mapinfoFailed: number;
  /** Requests not answered because the kernel had given up on them. */
  lateDropped: number;
}

/** A reply that can only be written once the batch's port reservations are done. */
type Outgoing = Buffer | (() => Buffer | undefined);

interface PendingQuery {
  id: number;
  client: number;
  kernelSeq: number;
  localRaw: Buffer;
  remote: WireAddr;
  mapping: Mapping;
  startedAtMs: number;
}

export type AbiState = { phase: 'negotiating'; attempts: number; lastHelloMs: number } | { phase: 'ready'; abi: 3 | 4; assumed?: boolean };

export class IwpmDaemon implements MappingLookup, PeerEvents {
  readonly table = new MappingTable();
  readonly clients = new ClientRegistry();
  readonly counters: DaemonCounters = {
    datagrams: 0,
    messages: 0,
    byOp: {},
    droppedForeign: 0,
    truncated: 0,
    overruns: 0,
    recvErrors: 0,
    invalid: 0,
    handleErrSent: {},
    kernelErrors: 0,
    kernelRejected: 0,
    repliesSent: 0,
    queriesStarted: 0,
    queriesAccepted: 0,
    queriesRejected: 0,
    queriesTimedOut: 0,
    queriesFailed: 0,
    remoteInfoSent: 0,
    mapinfoRecords: 0,
    mapinfoRebound: 0,
    mapinfoFailed: 0,
    lateDropped: 0,
  };
  abi: AbiState = { phase: 'negotiating', attempts: 0, lastHelloMs: 0 };
  private peer?: PeerPort;
  private readonly limiter = new LogLimiter();
  private held: KernelMessage[] = [];
  private readonly queries = new Map<number, PendingQuery>();
  /** Pending queries per mapping, so a REMOVE looks through `queries` only when it has some. */
  private readonly queriesPerMapping = new Map<Mapping, number>();
  private nextQueryId = 1;
  /** Records accepted since the last MAPINFO_NUM, per client. */
  private readonly mapinfoAccepted = new Map<number, number>();
  private replayGen = 0;
  /** Our header seq → op name, so NLMSG_DONE statuses can be attributed. */
  private readonly sentOps = new Map<number, number>();

  // Per-batch state.
  private out: Outgoing[] = [];
  private toReserve: Mapping[] = [];
  private toReopen: Mapping[] = [];
  private toClose: { fd: number; port: number }[] = [];
  private afterReserve: (() => void)[] = [];
  private afterFlush: (() => void)[] = [];
  /** Inside onBatch: replies wait for the batch's single send. */
  private inBatch = false;
  /** Last time the ticker ran: a long gap before a read means the loop stood still. */
  private lastTickMs: number;
  /** Reading a backlog left by a stall: requests in it are dropped unanswered. */
  private stale = false;
  /** Receive batches handled since `stale` was set. */
  private staleBatches = 0;
  /** ADD/QUERY of this batch, by local address, so a REMOVE later in it can withdraw them. */
  private readonly batchRequests = new Map<number | string, (() => void)[]>();
  /** Inside runBatch: peer events wait for its single send. */
  private eventDepth = 0;

  constructor(private readonly deps: DaemonDeps) {
    this.lastTickMs = deps.now();
  }

  setPeer(peer: PeerPort): void {
    this.peer = peer;
  }

  /** Run `fn` (peer events: queryDone, remoteInfo); their netlink messages leave in one send at its end. */
  runBatch(fn: () => void): void {
    this.eventDepth++;
    try {
      fn();
    } finally {
      if (--this.eventDepth === 0) this.finishBatch();
    }
  }

  get negotiatedAbi(): 3 | 4 | undefined {
    return this.abi.phase === 'ready' ? this.abi.abi : undefined;
  }

  /** Announce ourselves: HELLO with ABI 4 (client 2, seq 0 as rdma-core). */
  start(): void {
    this.sendHello();
  }

  private sendHello(): void {
    if (this.abi.phase !== 'negotiating') return;
    this.abi.attempts++;
    this.abi.lastHelloMs = this.deps.now();
    this.deps.sendToKernel([this.msg(RDMA_NL_IWCM, RDMA_NL_IWPM_HELLO, (h) => encodeHello(h, IWPM_UABI_VERSION))]);
  }

  /** Periodic work (HELLO retries). Call every few hundred ms. */
  tick(nowMs: number): void {
    // After SIGSTOP/SIGCONT (or starvation) libuv runs its timers before it reads the
    // sockets, so the stall shows here first; the backlog is read later in this turn.
    const gap = nowMs - this.lastTickMs;
    this.lastTickMs = nowMs;
    if (gap >= STALL_DROP_MS) {
      this.enterStale(gap);
      const settle = (): void => {
        if (this.stale && this.staleBatches === 0) this.stale = false; // nothing was waiting
      };
      if (this.deps.afterReads) this.deps.afterReads(settle);
    } else if (this.stale && this.staleBatches === 0 && !this.deps.afterReads) {
      this.stale = false;
    }
    if (this.abi.phase === 'negotiating' && nowMs - this.abi.lastHelloMs >= HELLO_RETRY_MS) {
      if (this.abi.attempts < HELLO_ATTEMPTS) {
        this.warn('hello', `no answer to HELLO from the kernel after ${HELLO_RETRY_MS} ms; sending it again`);
        this.sendHello();
      } else {
        this.deps.log.error(
          `the kernel never answered HELLO (${HELLO_ATTEMPTS} tries); assuming ABI ${IWPM_UABI_VERSION}. ` +
            'Is iw_cm loaded, and is this the initial network namespace?',
        );
        this.becomeReady(IWPM_UABI_VERSION as 4, true, true);
      }
    }
  }

  /** Receive-side problems the socket reported for a batch. */
  noteReceiveTrouble(overruns: number, errors: readonly number[]): void {
    if (overruns > 0) {
      this.counters.overruns += overruns;
      this.warn('overrun', `netlink receive queue overrun (ENOBUFS x${overruns}): the kernel dropped messages to us`);
    }
    if (errors.length > 0) {
      this.counters.recvErrors += errors.length;
      this.warn('recverr', `netlink receive errors (${errors.join(', ')}); still reading`);
    }
  }

  /** One receive batch from the netlink socket. */
  onBatch(datagrams: readonly ReceivedDatagram[]): void {
    const gap = this.deps.now() - this.lastTickMs;
    if (gap >= STALL_DROP_MS) this.enterStale(gap);
    if (this.stale) this.staleBatches++;
    this.batchRequests.clear();
    this.inBatch = true;
    try {
      this.receiveBatch(datagrams);
    } finally {
      this.inBatch = false;
    }
    this.finishBatch();
    if (this.stale && datagrams.length < (this.deps.recvBatchSize ?? 64)) this.stale = false;
  }

  private enterStale(gapMs: number): void {
    if (!this.stale) {
      this.deps.log.warn(
        `the daemon stood still for ${Math.round(gapMs)} ms: requests read before the netlink socket drains ` +
          'are not answered (the kernel gave up on them after 10 s; a late answer can crash it)',
      );
    }
    this.stale = true;
    this.staleBatches = 0;
  }

  private receiveBatch(datagrams: readonly ReceivedDatagram[]): void {
    for (const d of datagrams) {
      this.counters.datagrams++;
      if (d.sender !== this.deps.kernelPortId) {
        this.counters.droppedForeign++;
        this.warn('foreign', `dropped a netlink datagram from port id ${d.sender}: only the kernel may talk to us`);
        continue;
      }
      if (d.truncated) {
        this.counters.truncated++;
        this.warn('trunc', `netlink datagram truncated to ${d.data.length} bytes; processing its complete messages`);
      }
      const split = splitMessages(d.data);
      if (split.error) {
        this.counters.invalid++;
        this.warn('split', `malformed netlink datagram: ${split.error}`);
      }
      for (const m of split.messages) this.handle(decodeKernelMessage(m));
    }
  }

  // ---------------------------------------------------------------------------

  private handle(k: KernelMessage): void {
    this.counters.messages++;
    const name = k.op;
    this.counters.byOp[name] = (this.counters.byOp[name] ?? 0) + 1;
    if (this.deps.log.debugEnabled) this.deps.log.debug(`kernel -> ${describe(k)}`);
    switch (k.op) {
      case 'hello':
        return this.onHello(k);
      case 'error':
        return this.onNlError(k);
      case 'done':
        return this.onDone(k);
      case 'noop':
        return;
    }
    // Everything else depends on the negotiated version.
    if (this.abi.phase === 'negotiating') {
      if (this.held.length >= MAX_HELD_MESSAGES) {
        this.warn('held', `dropping ${k.op}: too many kernel messages waiting for ABI negotiation`);
        return;
      }
      this.held.push(k);
      return;
    }
    this.dispatch(k);
  }

  private dispatch(k: KernelMessage): void {
    if (this.stale && (k.op === 'reg_pid' || k.op === 'add' || k.op === 'query')) {
      this.counters.lateDropped++;
      this.warn('late', `not answering ${k.op} seq ${k.header.seq}: it waited out the stall, the kernel has given up on it`);
      return;
    }
    switch (k.op) {
      case 'reg_pid':
        return this.onRegPid(k);
      case 'add': {
        const from = this.out.length;
        this.onAdd(k);
        return this.trackRequest(k, from);
      }
      case 'query': {
        const from = this.out.length;
        const ticket = this.onQuery(k);
        return this.trackRequest(k, from, ticket);
      }
      case 'remove':
        this.withdrawRequests(k);
        return this.onRemove(k);
      case 'mapinfo':
        return this.onMapinfo(k);
      case 'mapinfo_num':
        return this.onMapinfoNum(k);
      case 'invalid':
        this.counters.invalid++;
        this.warn('invalid', `invalid ${opName(k.opcode)} from the kernel (seq ${k.header.seq}): ${k.reason}`);
        return this.handleErr(k.client, k.header.seq, IWPM_INVALID_NLMSG_ERR);
      case 'unknown_op':
        this.counters.invalid++;
        this.warn('unknown', `unknown IWPM op ${k.opcode} (type 0x${k.header.type.toString(16)}) from the kernel`);
        return this.handleErr(k.client, k.header.seq, IWPM_INVALID_NLMSG_ERR);
      default:
        return;
    }
  }

  private onHello(k: Extract<KernelMessage, { op: 'hello' }>): void {
    if (k.abi > IWPM_UABI_VERSION) {
      this.deps.log.error(`kernel HELLO offers ABI ${k.abi}, newer than ours (${IWPM_UABI_VERSION})`);
      this.handleErr(k.client, k.header.seq, IWPM_VERSION_MISMATCH_ERR);
      return;
    }
    if (k.abi < IWPM_UABI_VERSION_MIN) {
      this.deps.log.error(`kernel HELLO offers ABI ${k.abi}, older than ${IWPM_UABI_VERSION_MIN}`);
      this.handleErr(k.client, k.header.seq, IWPM_VERSION_MISMATCH_ERR);
      return;
    }
    const wasReady = this.abi.phase === 'ready';
    this.becomeReady(k.abi as 3 | 4, !wasReady);
  }

  private onNlError(k: Extract<KernelMessage, { op: 'error' }>): void {
    const orig = k.original;
    const helloType = nlType(RDMA_NL_IWCM, RDMA_NL_IWPM_HELLO);
    const forHello = orig ? orig.type === helloType : k.header.seq === 0;
    // A late rejection after we gave up waiting still tells us the kernel speaks ABI 3.
    if (forHello && (this.abi.phase === 'negotiating' || this.abi.assumed)) {
      if (k.error === -22) {
        this.deps.log.info('the kernel rejected HELLO (EINVAL): it speaks IWPM ABI 3');
        this.becomeReady(3);
      } else {
        this.deps.log.error(`the kernel rejected HELLO with errno ${-k.error}; falling back to ABI 3`);
        this.becomeReady(3);
      }
      return;
    }
    this.counters.kernelErrors++;
    this.warn(
      'nlerr',
      `the kernel refused our message (seq ${k.header.seq}${orig ? `, type 0x${orig.type.toString(16)}` : ''}): errno ${-k.error}`,
    );
  }

  private onDone(k: Extract<KernelMessage, { op: 'done' }>): void {
    // A bare NLMSG_DONE (no status) ends a MAPINFO datagram. A DONE with a status
    // follows every message we send; REMOTE_INFO is always answered with -EINVAL.
    if (k.status === undefined || k.status === 0) {
      this.sentOps.delete(k.header.seq);
      return;
    }
    const op = this.sentOps.get(k.header.seq);
    this.sentOps.delete(k.header.seq);
    if (op === RDMA_NL_IWPM_REMOTE_INFO && k.status === -22) return;
    this.counters.kernelRejected++;
    this.warn(
      'done',
      `the kernel's handler returned ${k.status} for our ${op === undefined ? 'message' : opName(op)} (seq ${k.header.seq})`,
    );
  }

  private becomeReady(abi: 3 | 4, requestMapinfo = true, assumed = false): void {
    this.abi = { phase: 'ready', abi, assumed };
    this.deps.log.info(`IWPM ABI ${abi} negotiated`);
    if (requestMapinfo) {
      // Ask the kernel to replay its mappings (recovery after a restart).
      const reqs = [this.msg(RDMA_NL_IWCM, RDMA_NL_IWPM_MAPINFO, (h) => encodeMapinfoRequest(h, RDMA_NL_IWCM, abi))];
      if (abi === 3) reqs.push(this.msg(RDMA_NL_C4IW, RDMA_NL_IWPM_MAPINFO, (h) => encodeMapinfoRequest(h, RDMA_NL_C4IW, abi)));
      this.replayGen++;
      this.out.push(...reqs);
    }
    const held = this.held;
    this.held = [];
    for (const k of held) this.dispatch(k);
    // becomeReady may be called outside a batch (tick): flush now. Inside one,
    // onBatch flushes at its end (one send per batch).
    if (!this.inBatch) this.finishBatch();
  }

  private onRegPid(k: Extract<KernelMessage, { op: 'reg_pid' }>): void {
    const r = this.clients.register(k.client, { ifname: k.ifname, ibdev: k.ibdev, ulib: k.ulib }, this.deps.now());
    if (!r.ok) {
      this.warn('regpid', `REG_PID from client ${k.client} (${k.ibdev}) refused: ${r.reason}`);
      return this.handleErr(k.client, k.header.seq, IWPM_USER_LIB_INFO_ERR);
    }
    if (r.first) this.deps.log.info(`client ${k.client} registered: device ${k.ibdev || '?'} (${k.ifname || 'no netdev'})`);
    const version = this.negotiatedAbi ?? IWPM_UABI_VERSION;
    this.reply(k.client, RDMA_NL_IWPM_REG_PID, (h) =>
      encodeRegPidReply(h, k.client, { kernelSeq: k.header.seq, ibdev: k.ibdev, version }),
    );
  }

  private onAdd(k: Extract<KernelMessage, { op: 'add' }>): void {
    const local = k.local;
    const found = this.findLive(local.addr);
    if (found) {
      if (found.wildcard && sameAddr(found.local, local.addr)) {
        found.refCount++;
        return this.replyManage(k, found);
      }
      this.warn(
        'dup',
        `ADD ${formatAddr(local.addr)} collides with the mapping of ${formatAddr(found.local)} -> ${formatAddr(found.mapped)}`,
      );
      return this.handleErr(k.client, k.header.seq, IWPM_DUPLICATE_MAPPING_ERR);
    }
    const m = this.createMapping(local, k.client, k.flags, 'add');
    this.replyManage(k, m);
  }

  private replyManage(k: Extract<KernelMessage, { op: 'add' }>, m: Mapping): void {
    const seq = k.header.seq;
    if (m.state !== 'pending') {
      this.reply(k.client, RDMA_NL_IWPM_ADD_MAPPING, (h) =>
        encodeManageReply(h, k.client, { kernelSeq: seq, local: k.local.raw, mapped: m.mappedRaw }),
      );
      return;
    }
    this.out.push(() => {
      if (m.state === 'failed') return this.errMsg(k.client, seq, IWPM_CREATE_MAPPING_ERR);
      return this.msg(k.client, RDMA_NL_IWPM_ADD_MAPPING, (h) =>
        encodeManageReply(h, k.client, { kernelSeq: seq, local: k.local.raw, mapped: m.mappedRaw }),
      );
    });
  }

  private onQuery(k: Extract<KernelMessage, { op: 'query' }>): QueryTicket {
    const seq = k.header.seq;
    const ticket: QueryTicket = { withdrawn: false };
    let m = this.findLive(k.local.addr);
    if (m) {
      if (m.wildcard) {
        this.warn('qwild', `QUERY from ${formatAddr(k.local.addr)} matches the wildcard listener ${formatAddr(m.local)}`);
        this.handleErr(k.client, seq, IWPM_CREATE_MAPPING_ERR);
        return ticket;
      }
      m.refCount++;
    } else {
      m = this.createMapping(k.local, k.client, k.flags, 'query');
    }
    const mapping = m;
    const start = (): void => {
      if (mapping.state === 'failed' || ticket.withdrawn) return;
      const q: PendingQuery = {
        id: this.nextQueryId++,
        client: k.client,
        kernelSeq: seq,
        localRaw: k.local.raw,
        remote: k.remote,
        mapping,
        startedAtMs: this.deps.now(),
      };
      this.counters.queriesStarted++;
      const peer = this.peer;
      if (!peer) {
        this.completeQuery(q, { kind: 'failed', reason: 'peer exchange is not running' });
        return;
      }
      this.queries.set(q.id, q);
      ticket.queryId = q.id;
      this.queriesPerMapping.set(mapping, (this.queriesPerMapping.get(mapping) ?? 0) + 1);
      this.afterFlush.push(() => {
        // A REMOVE later in the same batch may have cancelled it already.
        if (this.queries.has(q.id)) peer.startQuery({ id: q.id, local: k.local.addr, mapped: mapping.mapped, remote: k.remote.addr });
      });
    };
    if (mapping.state !== 'pending') {
      start();
      return ticket;
    }
    // Answered with HANDLE_ERR in arrival order if the reservation fails.
    this.out.push(() => (mapping.state === 'failed' ? this.errMsg(k.client, seq, IWPM_CREATE_MAPPING_ERR) : undefined));
    this.afterReserve.push(start);
    return ticket;
  }

  /** Remember the replies an ADD/QUERY of this batch produced (out[from..]) so a REMOVE can withdraw them. */
  private trackRequest(k: Extract<KernelMessage, { op: 'add' | 'query' }>, from: number, ticket?: QueryTicket): void {
    const to = this.out.length;
    const key = addrKey(k.local.addr);
    const cancel = (): void => {
      for (let i = from; i < to; i++) this.out[i] = () => undefined;
      if (!ticket) return;
      ticket.withdrawn = true;
      if (ticket.queryId !== undefined) this.dropQuery(ticket.queryId);
    };
    const list = this.batchRequests.get(key);
    if (list) list.push(cancel);
    else this.batchRequests.set(key, [cancel]);
  }

  /**
   * The kernel sends REMOVE for a cm_id only after its ADD/QUERY wait ended: an
   * ADD/QUERY for the same address earlier in this read was given up on (we read it
   * after the kernel's 10 s). Its answer would be late, so it is withdrawn.
   */
  private withdrawRequests(k: Extract<KernelMessage, { op: 'remove' }>): void {
    const key = addrKey(k.local.addr);
    const list = this.batchRequests.get(key);
    if (!list) return;
    this.batchRequests.delete(key);
    for (const cancel of list) cancel();
    this.counters.lateDropped += list.length;
    this.warn('withdraw', `REMOVE ${formatAddr(k.local.addr)} follows its own request in one read: the kernel gave up on it; not answering`);
  }

  private onRemove(k: Extract<KernelMessage, { op: 'remove' }>): void {
    const m = this.table.findExact(k.local.addr);
    if (!m) {
      if (this.deps.log.debugEnabled) this.deps.log.debug(`REMOVE ${formatAddr(k.local.addr)}: no such mapping (ignored)`);
      return;
    }
    if (m.ownerClient !== k.client) {
      this.warn('rmowner', `REMOVE ${formatAddr(k.local.addr)} from client ${k.client}, owned by client ${m.ownerClient}: ignored`);
      return;
    }
    if (m.state === 'pending') this.flushReservations();
    m.refCount--;
    if (m.refCount > 0) return;
    this.table.remove(m);
    if (m.fd >= 0) this.toClose.push({ fd: m.fd, port: m.mapped.port });
    m.fd = -1;
    this.cancelQueriesOf(m);
  }

  private onMapinfo(k: Extract<KernelMessage, { op: 'mapinfo' }>): void {
    this.counters.mapinfoRecords++;
    const found = this.findLive(k.local.addr);
    if (found) {
      if (sameAddr(found.local, k.local.addr) && sameAddr(found.mapped, k.mapped.addr)) {
        // The kernel keeps one record per user (e.g. one per device for a wildcard
        // listener): rebuild the reference count from a replay into a fresh mapping.
        if (found.replayGen === this.replayGen && found.source === 'mapinfo') found.refCount++;
        this.acceptRecord(k.client);
        return;
      }
      this.warn(
        'mapdup',
        `MAPINFO ${formatAddr(k.local.addr)} -> ${formatAddr(k.mapped.addr)} collides with ${formatAddr(found.local)} -> ${formatAddr(found.mapped)}`,
      );
      this.counters.mapinfoFailed++;
      return this.handleErr(k.client, 0, IWPM_DUPLICATE_MAPPING_ERR);
    }
    const noPortMap = (k.flags & IWPM_FLAGS_NO_PORT_MAP) !== 0;
    const m = this.newMapping(k.local, k.client, k.flags, 'mapinfo', k.mapped.addr.port);
    if (noPortMap) {
      m.state = 'unreserved';
      this.table.insert(m);
      this.acceptRecord(k.client);
      return;
    }
    m.state = 'pending';
    this.table.insert(m);
    this.toReopen.push(m);
    this.afterReserve.push(() => {
      if (m.state === 'bound') {
        this.counters.mapinfoRebound++;
        this.acceptRecord(k.client);
      } else {
        this.counters.mapinfoFailed++;
      }
    });
    // rdma-core answers a failed re-bind with HANDLE_ERR 11, seq 0 (the kernel only logs it).
    this.out.push(() => (m.state === 'bound' ? undefined : this.errMsg(k.client, 0, IWPM_CREATE_MAPPING_ERR)));
  }

  private acceptRecord(client: number): void {
    this.mapinfoAccepted.set(client, (this.mapinfoAccepted.get(client) ?? 0) + 1);
  }

  private onMapinfoNum(k: Extract<KernelMessage, { op: 'mapinfo_num' }>): void {
    // Reservations of the replay must be done before we count them.
    this.flushReservations();
    const ackNum = this.mapinfoAccepted.get(k.client) ?? 0;
    this.mapinfoAccepted.set(k.client, 0);
    if (ackNum !== k.sendNum) {
      this.deps.log.warn(`MAPINFO replay: the kernel sent ${k.sendNum} records, ${ackNum} recovered`);
    } else if (k.sendNum > 0) {
      this.deps.log.info(`MAPINFO replay: all ${k.sendNum} records recovered`);
    }
    this.reply(k.client, RDMA_NL_IWPM_MAPINFO_NUM, (h) =>
      encodeMapinfoNumReply(h, k.client, { kernelSeq: k.header.seq, sendNum: k.sendNum, ackNum }),
    );
  }

  // ---------------------------------------------------------------------------
  // Mappings and reservations

  /** Fuzzy lookup that first settles a pending reservation it would depend on. */
  private findLive(addr: SockAddr): Mapping | undefined {
    let m = this.table.findFuzzy(addr, 'local');
    if (m && m.state === 'pending') {
      this.flushReservations();
      m = this.table.findFuzzy(addr, 'local');
    }
    return m;
  }

  private newMapping(
    local: WireAddr,
    client: number,
    flags: number,
    source: Mapping['source'],
    mappedPort: number,
  ): Mapping {
    // Built from zeroed bytes: family, IP, flowinfo and scope id of the local address, the mapped port.
    const mapped = withPort(local.addr, mappedPort);
    const raw = encodeSockaddr(mapped);
    return {
      id: this.table.newId(),
      local: local.addr,
      localRaw: local.raw,
      mapped,
      mappedRaw: raw,
      wildcard: isWildcard(local.addr),
      ownerClient: client,
      refCount: 1,
      fd: -1,
      flags,
      source,
      createdAtMs: this.deps.now(),
      state: 'pending',
      replayGen: source === 'mapinfo' ? this.replayGen : undefined,
    };
  }

  private createMapping(local: WireAddr, client: number, flags: number, source: 'add' | 'query'): Mapping {
    const noPortMap = (flags & IWPM_FLAGS_NO_PORT_MAP) !== 0;
    const m = this.newMapping(local, client, flags, source, local.addr.port);
    if (noPortMap) {
      m.state = 'unreserved';
    } else {
      this.toReserve.push(m);
    }
    this.table.insert(m);
    return m;
  }

  /** Make the batch's pending reservations now (one native call each for new and re-opened ports). */
  private flushReservations(): void {
    if (this.toClose.length > 0) {
      this.deps.ports.release(this.toClose);
      this.toClose = [];
    }
    const fresh = this.toReserve;
    const reopen = this.toReopen;
    this.toReserve = [];
    this.toReopen = [];
    if (fresh.length > 0) {
      const res = this.deps.ports.reserve(fresh.map((m) => m.local.family));
      fresh.forEach((m, i) => this.settle(m, res[i]!, 'reserve'));
    }
    if (reopen.length > 0) {
      const res = this.deps.ports.reopen(reopen.map((m) => ({ family: m.local.family, port: m.mapped.port })));
      reopen.forEach((m, i) => this.settle(m, res[i]!, 'reopen'));
    }
    const after = this.afterReserve;
    this.afterReserve = [];
    for (const f of after) f();
  }

  private settle(m: Mapping, r: { fd: number; port: number; errno: number }, how: 'reserve' | 'reopen'): void {
    if (r.errno === 0) {
      m.fd = r.fd;
      m.state = 'bound';
      if (how === 'reserve') {
        const mapped = withPort(m.local, r.port);
        this.table.setMapped(m, mapped, encodeSockaddr(mapped));
      }
      return;
    }
    const code = errnoName(r.errno);
    if (how === 'reserve') {
      m.state = 'failed';
      this.table.remove(m);
      this.warn('reserve', `cannot reserve a TCP port for ${formatAddr(m.local)}: ${code}`);
    } else {
      // The kernel keeps using this port whatever we do: keep the mapping (so peers
      // are answered and REMOVE works) but report it as unreserved.
      m.state = 'unreserved';
      this.deps.log.warn(
        `MAPINFO recovery: cannot re-reserve port ${m.mapped.port} for ${formatAddr(m.local)} (${code}); ` +
          'the kernel keeps using it unreserved',
      );
    }
  }

  private finishBatch(): void {
    this.flushReservations();
    const out = this.out;
    this.out = [];
    const datagrams: Buffer[] = [];
    for (const o of out) {
      const b = typeof o === 'function' ? o() : o;
      if (b) datagrams.push(b);
    }
    if (datagrams.length > 0) {
      this.counters.repliesSent += datagrams.length;
      this.deps.sendToKernel(datagrams);
    }
    const after = this.afterFlush;
    this.afterFlush = [];
    for (const f of after) f();
  }

  // ---------------------------------------------------------------------------
  // Peer side callbacks (MappingLookup, PeerEvents)

  findListener(addr: SockAddr): ListenerView | undefined {
    return this.settledView(addr, 'local');
  }

  findByMapped(addr: SockAddr): ListenerView | undefined {
    return this.settledView(addr, 'mapped');
  }

  /** Fuzzy lookup for the peer side; a mapping whose port is not settled is not a listener yet. */
  private settledView(addr: SockAddr, against: 'local' | 'mapped'): ListenerView | undefined {
    const m = this.table.findFuzzy(addr, against);
    return m && m.state !== 'pending' && m.state !== 'failed' ? listenerView(m) : undefined;
  }

  queryDone(id: number, outcome: QueryOutcome): void {
    const q = this.queries.get(id);
    if (!q) return;
    this.dropQuery(id);
    this.completeQuery(q, outcome);
    if (this.eventDepth === 0) this.finishBatch();
  }

  /** Forget a pending query (its answer will not be sent). */
  private dropQuery(id: number): void {
    const q = this.queries.get(id);
    if (!q) return;
    this.queries.delete(id);
    const n = this.queriesPerMapping.get(q.mapping) ?? 0;
    if (n > 1) this.queriesPerMapping.set(q.mapping, n - 1);
    else this.queriesPerMapping.delete(q.mapping);
  }

  private completeQuery(q: PendingQuery, outcome: QueryOutcome): void {
    let mappedRemote: AddrValue = q.remote.raw;
    let err = 0;
    switch (outcome.kind) {
      case 'accepted':
        this.counters.queriesAccepted++;
        mappedRemote = withRawAddr(q.remote.raw, outcome.mappedRemote);
        break;
      case 'rejected':
        this.counters.queriesRejected++;
        err = IWPM_REMOTE_QUERY_REJECT;
        break;
      case 'timeout':
        this.counters.queriesTimedOut++;
        err = IWPM_REMOTE_QUERY_REJECT;
        this.warn('qtimeout', `no answer from the port mapper at ${formatAddr(q.remote.addr)}; the connection goes unmapped`);
        break;
      case 'failed':
        this.counters.queriesFailed++;
        err = IWPM_REMOTE_QUERY_REJECT;
        this.warn('qfail', `query to ${formatAddr(q.remote.addr)} failed: ${outcome.reason}`);
        break;
    }
    if (this.deps.log.debugEnabled) {
      this.deps.log.debug(
        `QUERY ${formatAddr(q.mapping.local)} -> ${formatAddr(q.remote.addr)}: ${outcome.kind}` +
          (outcome.kind === 'accepted' ? ` (mapped remote ${formatAddr(outcome.mappedRemote)})` : ''),
      );
    }
    const r = { seqAttr: q.kernelSeq, local: q.localRaw, remote: q.remote.raw, mappedLocal: q.mapping.mappedRaw, mappedRemote, err };
    this.out.push(this.msg(q.client, RDMA_NL_IWPM_QUERY_MAPPING, (h) => encodeQueryReply(h, q.client, r)));
  }

  remoteInfo(info: RemoteInfo): void {
    this.counters.remoteInfoSent++;
    const client = info.ownerClient;
    this.out.push(
      this.msg(client, RDMA_NL_IWPM_REMOTE_INFO, (h) =>
        encodeRemoteInfo(h, client, {
          local: info.localRaw,
          remote: info.remote,
          mappedLocal: info.mappedLocalRaw,
          mappedRemote: info.mappedRemote,
        }),
      ),
    );
    if (this.eventDepth === 0) this.finishBatch();
  }

  private cancelQueriesOf(m: Mapping): void {
    if (!this.queriesPerMapping.delete(m)) return;
    for (const [id, q] of this.queries) {
      if (q.mapping === m) {
        this.queries.delete(id);
        this.peer?.cancelQuery(id);
      }
    }
  }

  // ---------------------------------------------------------------------------
  // Output helpers

  /** Build a daemon message with this client's next header seq; remembers the op for DONE attribution. */
  private msg(client: number, op: number, build: (h: { seq: number; pid: number }) => Buffer): Buffer {
    const seq = this.clients.takeSeq(client);
    if (this.sentOps.size >= SENT_MEMORY) this.sentOps.clear();
    this.sentOps.set(seq, op);
    return build({ seq, pid: this.deps.portId });
  }

  private reply(client: number, op: number, build: (h: { seq: number; pid: number }) => Buffer): void {
    this.out.push(this.msg(client, op, build));
  }

  private errMsg(client: number, errSeq: number, code: number): Buffer {
    const name = ERROR_NAMES[code] ?? String(code);
    this.counters.handleErrSent[name] = (this.counters.handleErrSent[name] ?? 0) + 1;
    return this.msg(client, RDMA_NL_IWPM_HANDLE_ERR, (h) => encodeHandleErr(h, client, errSeq, code));
  }

  private handleErr(client: number, errSeq: number, code: number): void {
    this.out.push(this.errMsg(client, errSeq, code));
  }

  private warn(key: string, msg: string): void {
    const suffix = this.limiter.admit(key, this.deps.now());
    if (suffix !== undefined) this.deps.log.warn(msg + suffix);
  }

  // ---------------------------------------------------------------------------
  // Operator surface

  describeMappings(): MappingInfo[] {
    return this.table.list().map((m) => ({
      local: formatAddr(m.local),
      mapped: formatAddr(m.mapped),
      wildcard: m.wildcard,
      refCount: m.refCount,
      ownerClient: m.ownerClient,
      flags: m.flags,
      reserved: m.fd >= 0,
      state: m.state,
      source: m.source,
      ageMs: this.deps.now() - m.createdAtMs,
    }));
  }

  /** Release every reserved port (shutdown). */
  shutdown(): number {
    for (const id of this.queries.keys()) this.peer?.cancelQuery(id);
    this.queries.clear();
    this.queriesPerMapping.clear();
    const all = this.table.clear();
    const held = all.filter((m) => m.fd >= 0).map((m) => ({ fd: m.fd, port: m.mapped.port }));
    held.push(...this.toClose);
    this.toClose = [];
    this.deps.ports.release(held);
    for (const m of all) m.fd = -1;
    return held.length;
  }

  get pendingQueries(): number {
    return this.queries.size;
  }
}

interface QueryTicket {
  withdrawn: boolean;
  queryId?: number;
}

export interface MappingInfo {
  local: string;
  mapped: string;
  wildcard: boolean;
  refCount: number;
  ownerClient: number;
  flags: number;
  reserved: boolean;
  state: string;
  source: string;
  ageMs: number;
}

/** What the peer side sees of a mapping (MappingLookup answers). */
export function listenerView(m: Mapping): ListenerView {
  return {
    local: m.local,
    localRaw: m.localRaw,
    mapped: m.mapped,
    mappedRaw: m.mappedRaw,
    wildcard: m.wildcard,
    ownerClient: m.ownerClient,
  };
}

/** The kernel's address with IP and port replaced (keeps IPv6 scope id); encoded from zeroed bytes. */
function withRawAddr(raw: Buffer, a: SockAddr): SockAddr {
  if (a.family === 10 && raw.readUInt16LE(0) === 10) {
    return { family: a.family, port: a.port, ip: a.ip, flowinfo: a.flowinfo, scopeId: raw.readUInt32LE(24) };
  }
  return a;
}

function opName(op: number): string {
  return OP_NAMES[op] ?? `op ${op}`;
}

function errnoName(errno: number): string {
  const names: Record<number, string> = { 98: 'EADDRINUSE', 13: 'EACCES', 24: 'EMFILE', 23: 'ENFILE', 97: 'EAFNOSUPPORT', 12: 'ENOMEM', 99: 'EADDRNOTAVAIL' };
  return names[errno] ?? `errno ${errno}`;
}

function describe(k: KernelMessage): string {
  const h = k.header;
  const base = `${k.op} client ${k.client} seq ${h.seq}`;
  switch (k.op) {
    case 'reg_pid':
      return `${base} dev ${k.ibdev} if ${k.ifname} ulib ${k.ulib}`;
    case 'add':
      return `${base} ${formatAddr(k.local.addr)} flags ${k.flags}`;
    case 'query':
      return `${base} ${formatAddr(k.local.addr)} -> ${formatAddr(k.remote.addr)} flags ${k.flags}`;
    case 'remove':
      return `${base} ${formatAddr(k.local.addr)}`;
    case 'mapinfo':
      return `${base} ${formatAddr(k.local.addr)} -> ${formatAddr(k.mapped.addr)} flags ${k.flags}`;
    case 'mapinfo_num':
      return `${base} send_num ${k.sendNum}`;
    case 'hello':
      return `${base} abi ${k.abi}`;
    case 'done':
      return `${base} status ${k.status ?? '-'}`;
    case 'error':
      return `${base} errno ${-k.error}`;
    case 'invalid':
      return `${base} ${opName(k.opcode)}: ${k.reason}`;
    case 'unknown_op':
      return `${base} opcode ${k.opcode}`;
    default:
      return base;
  }
}

