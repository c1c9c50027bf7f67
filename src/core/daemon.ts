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
  type DaemonHeader,
  decodeKernelMessageAt,
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
import { align4, messageLengthAt } from '../codec/netlink.js';
import { BlockPool } from '../codec/retain.js';
import {
  SOCKADDR_STORAGE_SIZE,
  type SockAddr,
  formatAddr,
  isWildcard,
  putSockaddr,
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
/** Bytes a mapping keeps: the kernel's local address, the mapped address (128 each), the IP (4 or 16). */
const MAPPING_BLOCK = 2 * SOCKADDR_STORAGE_SIZE + 16;

/** Daemon messages remembered so the kernel's NLMSG_DONE status can be attributed (a power of 2). */
const SENT_MEMORY = 4096;

export interface ReceivedDatagram {
  data: Buffer;
  /** Sender netlink port id (0 = the kernel). */
  sender: number;
  truncated: boolean;
}

/** One read of the netlink socket as the addon delivers it: datagram i is data[offsets[i], offsets[i] + lengths[i]). */
export interface PackedDatagrams {
  count: number;
  data: Buffer;
  offsets: Uint32Array;
  lengths: Uint32Array;
  senders: Uint32Array;
  /** 1 where the datagram was cut to its slot. */
  truncated: Uint8Array;
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
/** A reply ready to go, one built at the end of the batch, or a withdrawn one. */
type Outgoing = Buffer | (() => Buffer | undefined) | undefined;

/** A QUERY_MAPPING from its arrival until its answer to the kernel. */
interface PendingQuery {
  /** 0 until it starts (its mapping has a port). */
  id: number;
  client: number;
  kernelSeq: number;
  local: SockAddr;
  localRaw: Buffer;
  remote: WireAddr;
  mapping: Mapping;
  startedAtMs: number;
  /** A REMOVE later in its batch withdrew it. */
  withdrawn: boolean;
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
  /** Op of each recent message we sent, by header seq (slot seq % SENT_MEMORY; op + 1, 0 = none). */
  private readonly sentSeq = new Uint32Array(SENT_MEMORY);
  private readonly sentOp = new Uint16Array(SENT_MEMORY);
  private readonly hdr: DaemonHeader = { seq: 0, pid: 0 };
  /** Where mappings keep their bytes: one block each, reused once the mapping is gone. */
  private readonly mappingBlocks = new BlockPool(MAPPING_BLOCK);
  /** Blocks of mappings removed in this batch: reusable once its replies are built and sent. */
  private blocksToFree: Buffer[] = [];

  // Per-batch state.
  private out: Outgoing[] = [];
  private toReserve: Mapping[] = [];
  private toReopen: Mapping[] = [];
  private toClose: { fd: number; port: number }[] = [];
  private afterReserve: (() => void)[] = [];
  /** Queries waiting for their mapping's port (this batch's reservations). */
  private awaitingPort: PendingQuery[] = [];
  /** Queries that go to the peer once this batch's replies are sent. */
  private toStart: PendingQuery[] = [];
  /** Inside onBatch: replies wait for the batch's single send. */
  private inBatch = false;
  /** Last time the ticker ran: a long gap before a read means the loop stood still. */
  private lastTickMs: number;
  /** Reading a backlog left by a stall: requests in it are dropped unanswered. */
  private stale = false;
  /** Receive batches handled since `stale` was set. */
  private staleBatches = 0;
  /**
   * ADD/QUERY of this batch (local address, the replies they produced as out[from, to),
   * the query), so a REMOVE later in it can withdraw them. Parallel arrays, `batchCount` used.
   */
  private readonly batchLocal: (SockAddr | undefined)[] = [];
  private readonly batchFrom: number[] = [];
  private readonly batchTo: number[] = [];
  private readonly batchQuery: (PendingQuery | undefined)[] = [];
  private batchCount = 0;
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
    this.deps.sendToKernel([encodeHello(this.header(RDMA_NL_IWCM, RDMA_NL_IWPM_HELLO), IWPM_UABI_VERSION)]);
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
    this.beginRead();
    try {
      for (const d of datagrams) this.receiveDatagram(d.data, 0, d.data.length, d.sender, d.truncated);
    } finally {
      this.endRead(datagrams.length);
    }
  }

  /** onBatch for the addon's packed batch (no per-datagram objects). */
  onPackedBatch(b: PackedDatagrams): void {
    this.beginRead();
    try {
      for (let i = 0; i < b.count; i++) {
        const off = b.offsets[i]!;
        this.receiveDatagram(b.data, off, off + b.lengths[i]!, b.senders[i]!, b.truncated[i] === 1);
      }
    } finally {
      this.endRead(b.count);
    }
  }

  private beginRead(): void {
    const gap = this.deps.now() - this.lastTickMs;
    if (gap >= STALL_DROP_MS) this.enterStale(gap);
    if (this.stale) this.staleBatches++;
    this.batchCount = 0;
    this.inBatch = true;
  }

  private endRead(count: number): void {
    this.inBatch = false;
    this.finishBatch();
    if (this.stale && count < (this.deps.recvBatchSize ?? 64)) this.stale = false;
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

  /** The datagram at data[start, end): each of its messages, in order. */
  private receiveDatagram(data: Buffer, start: number, end: number, sender: number, truncated: boolean): void {
    this.counters.datagrams++;
    if (sender !== this.deps.kernelPortId) {
      this.counters.droppedForeign++;
      this.warn('foreign', `dropped a netlink datagram from port id ${sender}: only the kernel may talk to us`);
      return;
    }
    if (truncated) {
      this.counters.truncated++;
      this.warn('trunc', `netlink datagram truncated to ${end - start} bytes; processing its complete messages`);
    }
    let off = start;
    while (off < end) {
      const len = messageLengthAt(data, off, end);
      if (typeof len === 'string') {
        this.counters.invalid++;
        this.warn('split', `malformed netlink datagram: ${len}`);
        return;
      }
      this.handle(decodeKernelMessageAt(data, off, len));
      off += align4(len);
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
        const q = this.onQuery(k);
        return this.trackRequest(k, from, q);
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
    const op = this.takeSentOp(k.header.seq);
    if (k.status === undefined || k.status === 0) return;
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
      const reqs = [encodeMapinfoRequest(this.header(RDMA_NL_IWCM, RDMA_NL_IWPM_MAPINFO), RDMA_NL_IWCM, abi)];
      if (abi === 3) reqs.push(encodeMapinfoRequest(this.header(RDMA_NL_C4IW, RDMA_NL_IWPM_MAPINFO), RDMA_NL_C4IW, abi));
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
    const h = this.header(k.client, RDMA_NL_IWPM_REG_PID);
    this.out.push(encodeRegPidReply(h, k.client, { kernelSeq: k.header.seq, ibdev: k.ibdev, version }));
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
      const h = this.header(k.client, RDMA_NL_IWPM_ADD_MAPPING);
      this.out.push(encodeManageReply(h, k.client, { kernelSeq: seq, local: k.local.raw, mapped: m.mappedRaw }));
      return;
    }
    this.out.push(() => {
      if (m.state === 'failed') return this.errMsg(k.client, seq, IWPM_CREATE_MAPPING_ERR);
      const h = this.header(k.client, RDMA_NL_IWPM_ADD_MAPPING);
      return encodeManageReply(h, k.client, { kernelSeq: seq, local: k.local.raw, mapped: m.mappedRaw });
    });
  }

  private onQuery(k: Extract<KernelMessage, { op: 'query' }>): PendingQuery | undefined {
    const seq = k.header.seq;
    let m = this.findLive(k.local.addr);
    if (m) {
      if (m.wildcard) {
        this.warn('qwild', `QUERY from ${formatAddr(k.local.addr)} matches the wildcard listener ${formatAddr(m.local)}`);
        this.handleErr(k.client, seq, IWPM_CREATE_MAPPING_ERR);
        return undefined;
      }
      m.refCount++;
    } else {
      m = this.createMapping(k.local, k.client, k.flags, 'query');
    }
    const q: PendingQuery = {
      id: 0,
      client: k.client,
      kernelSeq: seq,
      local: k.local.addr,
      localRaw: k.local.raw,
      remote: k.remote,
      mapping: m,
      startedAtMs: 0,
      withdrawn: false,
    };
    if (m.state !== 'pending') {
      this.startQuery(q);
      return q;
    }
    // Answered with HANDLE_ERR in arrival order if the reservation fails.
    const mapping = m;
    this.out.push(() => (mapping.state === 'failed' ? this.errMsg(k.client, seq, IWPM_CREATE_MAPPING_ERR) : undefined));
    this.awaitingPort.push(q);
    return q;
  }

  /** Its mapping has a port (or failed): hand it to the peer exchange once this batch's replies are out. */
  private startQuery(q: PendingQuery): void {
    if (q.mapping.state === 'failed' || q.withdrawn) return;
    q.id = this.nextQueryId++;
    q.startedAtMs = this.deps.now();
    this.counters.queriesStarted++;
    if (!this.peer) {
      this.completeQuery(q, { kind: 'failed', reason: 'peer exchange is not running' });
      return;
    }
    this.queries.set(q.id, q);
    this.queriesPerMapping.set(q.mapping, (this.queriesPerMapping.get(q.mapping) ?? 0) + 1);
    this.toStart.push(q);
  }

  /** Remember the replies an ADD/QUERY of this batch produced (out[from..]) so a REMOVE can withdraw them. */
  private trackRequest(k: Extract<KernelMessage, { op: 'add' | 'query' }>, from: number, q?: PendingQuery): void {
    const i = this.batchCount++;
    this.batchLocal[i] = k.local.addr;
    this.batchFrom[i] = from;
    this.batchTo[i] = this.out.length;
    this.batchQuery[i] = q;
  }

  /**
   * The kernel sends REMOVE for a cm_id only after its ADD/QUERY wait ended: an
   * ADD/QUERY for the same address earlier in this read was given up on (we read it
   * after the kernel's 10 s). Its answer would be late, so it is withdrawn.
   */
  private withdrawRequests(k: Extract<KernelMessage, { op: 'remove' }>): void {
    const local = k.local.addr;
    let n = 0;
    for (let i = 0; i < this.batchCount; i++) {
      const l = this.batchLocal[i];
      if (l === undefined || !sameAddr(l, local)) continue;
      this.batchLocal[i] = undefined;
      n++;
      for (let j = this.batchFrom[i]!; j < this.batchTo[i]!; j++) this.out[j] = undefined;
      const q = this.batchQuery[i];
      if (q === undefined) continue;
      q.withdrawn = true;
      if (q.id !== 0) this.dropQuery(q.id);
    }
    if (n === 0) return;
    this.counters.lateDropped += n;
    this.warn('withdraw', `REMOVE ${formatAddr(local)} follows its own request in one read: the kernel gave up on it; not answering`);
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
    this.forget(m);
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
    const h = this.header(k.client, RDMA_NL_IWPM_MAPINFO_NUM);
    this.out.push(encodeMapinfoNumReply(h, k.client, { kernelSeq: k.header.seq, sendNum: k.sendNum, ackNum }));
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
    // A mapping may live as long as its connection: its bytes (the kernel's local address,
    // the mapped address, the IP) get a block of their own, away from short-lived messages.
    const block = this.mappingBlocks.take();
    const localRaw = block.subarray(0, SOCKADDR_STORAGE_SIZE);
    const n = local.raw.copy(localRaw, 0, 0, SOCKADDR_STORAGE_SIZE);
    if (n < SOCKADDR_STORAGE_SIZE) localRaw.fill(0, n); // the decoder's copies are always 128 bytes
    const a = local.addr;
    const ip = block.subarray(2 * SOCKADDR_STORAGE_SIZE, 2 * SOCKADDR_STORAGE_SIZE + a.ip.length);
    a.ip.copy(ip);
    const own: SockAddr = { family: a.family, port: a.port, ip, flowinfo: a.flowinfo, scopeId: a.scopeId };
    // Built from zeroed bytes: family, IP, flowinfo and scope id of the local address, the mapped port.
    const mapped = withPort(own, mappedPort);
    const mappedRaw = block.subarray(SOCKADDR_STORAGE_SIZE, 2 * SOCKADDR_STORAGE_SIZE);
    putSockaddr(mappedRaw, 0, mapped);
    return {
      id: this.table.newId(),
      local: own,
      localRaw,
      mapped,
      mappedRaw,
      wildcard: isWildcard(local.addr),
      ownerClient: client,
      refCount: 1,
      fd: -1,
      flags,
      source,
      createdAtMs: this.deps.now(),
      state: 'pending',
      replayGen: source === 'mapinfo' ? this.replayGen : undefined,
      block,
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
    const waiting = this.awaitingPort;
    if (waiting.length > 0) {
      this.awaitingPort = [];
      for (const q of waiting) this.startQuery(q);
    }
  }

  /** A mapping left the table: its block is given back at the end of the batch. */
  private forget(m: Mapping): void {
    if (m.block === undefined) return;
    this.blocksToFree.push(m.block);
    m.block = undefined;
  }

  private settle(m: Mapping, r: { fd: number; port: number; errno: number }, how: 'reserve' | 'reopen'): void {
    if (r.errno === 0) {
      m.fd = r.fd;
      m.state = 'bound';
      if (how === 'reserve') {
        // the mapped address changes only its port: rewrite it in place
        const mapped = withPort(m.local, r.port);
        putSockaddr(m.mappedRaw, 0, mapped);
        this.table.setMapped(m, mapped, m.mappedRaw);
      }
      return;
    }
    const code = errnoName(r.errno);
    if (how === 'reserve') {
      m.state = 'failed';
      this.table.remove(m);
      this.forget(m);
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
    const start = this.toStart;
    const peer = this.peer;
    if (start.length > 0 && peer) {
      this.toStart = [];
      // A REMOVE later in the same batch may have cancelled one already.
      for (const q of start) {
        if (this.queries.get(q.id) === q) peer.startQuery({ id: q.id, local: q.local, mapped: q.mapping.mapped, remote: q.remote.addr });
      }
    }
    // Nothing of this batch reads a removed mapping's bytes any more (the peer side copies
    // what it keeps): their blocks can be reused.
    if (this.blocksToFree.length > 0) {
      for (const b of this.blocksToFree) this.mappingBlocks.give(b);
      this.blocksToFree = [];
    }
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
    // the mapping itself (no copy per lookup): the peer side only reads it during the call
    return m && m.state !== 'pending' && m.state !== 'failed' ? m : undefined;
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
    this.out.push(encodeQueryReply(this.header(q.client, RDMA_NL_IWPM_QUERY_MAPPING), q.client, r));
  }

  remoteInfo(info: RemoteInfo): void {
    this.counters.remoteInfoSent++;
    const client = info.ownerClient;
    this.out.push(
      encodeRemoteInfo(this.header(client, RDMA_NL_IWPM_REMOTE_INFO), client, {
        local: info.localRaw,
        remote: info.remote,
        mappedLocal: info.mappedLocalRaw,
        mappedRemote: info.mappedRemote,
      }),
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

  /**
   * The header of our next message to `client` (its next seq; our port id), remembering
   * the op for DONE attribution. One object reused for every message: encode at once.
   */
  private header(client: number, op: number): DaemonHeader {
    const seq = this.clients.takeSeq(client);
    const slot = seq & (SENT_MEMORY - 1);
    this.sentSeq[slot] = seq;
    this.sentOp[slot] = op + 1;
    const h = this.hdr;
    h.seq = seq;
    h.pid = this.deps.portId;
    return h;
  }

  /** The op we sent with header seq `seq` (forgotten once asked for), if still remembered. */
  private takeSentOp(seq: number): number | undefined {
    const slot = seq & (SENT_MEMORY - 1);
    const op = this.sentOp[slot]!;
    if (op === 0 || this.sentSeq[slot] !== seq >>> 0) return undefined;
    this.sentOp[slot] = 0;
    return op - 1;
  }


  private errMsg(client: number, errSeq: number, code: number): Buffer {
    const name = ERROR_NAMES[code] ?? String(code);
    this.counters.handleErrSent[name] = (this.counters.handleErrSent[name] ?? 0) + 1;
    return encodeHandleErr(this.header(client, RDMA_NL_IWPM_HANDLE_ERR), client, errSeq, code);
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

  /** Where mappings keep their bytes: blocks in use (one per mapping) and given back for reuse. */
  storageStats(): { mappingBlocks: number; spareBlocks: number; blockBytes: number } {
    const st = this.mappingBlocks.stats;
    return { mappingBlocks: st.inUse, spareBlocks: st.spare, blockBytes: MAPPING_BLOCK };
  }

  get pendingQueries(): number {
    return this.queries.size;
  }
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

