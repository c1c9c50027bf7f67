/**
 * The whole native surface, in one place. The C++ addon (native/) implements it;
 * src/native/index.ts loads it with `bindings`; src/native/fake.ts is a test double.
 *
 * The addon knows nothing about IWPM: it moves datagrams and binds ports.
 * Hot paths return negative errno values in typed arrays; TypeScript maps them
 * with util.getSystemErrorName. Errors that are thrown carry errno, code and
 * syscall, like Node's own SystemError.
 */

/** Protocols we open netlink sockets with. */
export const NETLINK_RDMA = 20;
export const NETLINK_USERSOCK = 2;

export interface NetlinkSocketOptions {
  /** Netlink protocol: NETLINK_RDMA (20) in production, NETLINK_USERSOCK (2) for tests. */
  protocol: number;
  /** Local port id to bind. 0 = let the kernel choose (autobind); read it back from `portId`. */
  portId: number;
  /** Multicast group bitmask for bind() (bit 1 = group 1, bit 2 = group 2, ...). */
  groups: number;
  /** Receive buffer request in bytes: SO_RCVBUFFORCE, falling back to SO_RCVBUF. 0 = leave default. */
  rcvbufBytes: number;
  /** Most datagrams drained per poll wakeup (recvmmsg vlen). Default 64. */
  batchSize?: number;
  /** Size of each receive slot in bytes (datagrams longer are truncated and flagged). Default 65536. */
  slotBytes?: number;
}

/** One poll wakeup's worth of received datagrams, delivered in one call. */
export interface NetlinkBatch {
  /** Number of datagrams in this batch (may be 0 when only `overruns` is set). */
  count: number;
  /** Backing memory: datagram i is data.subarray(offsets[i], offsets[i] + lengths[i]). */
  data: Buffer;
  offsets: Uint32Array;
  /** Bytes actually stored (<= slotBytes). */
  lengths: Uint32Array;
  /** Sender port id (sockaddr_nl.nl_pid) of each datagram. 0 = the kernel. */
  senders: Uint32Array;
  /** Sender multicast groups (sockaddr_nl.nl_groups) of each datagram. */
  groups: Uint32Array;
  /** 1 where the datagram was longer than its slot (MSG_TRUNC); lengths[i] is then the slot size. */
  truncated: Uint8Array;
  /** How many ENOBUFS (receive queue overrun: the kernel dropped messages) were seen while draining. */
  overruns: number;
  /** Other receive errors seen while draining (negative errno values, e.g. -22 EINVAL, a known 6.1 race). */
  errors: number[];
}

export interface NetlinkSocketStats {
  received: number;
  sent: number;
  /** Datagrams currently queued in the addon waiting for writability. */
  queued: number;
  overruns: number;
  recvErrors: number;
  sendErrors: number;
  truncated: number;
}

export interface NetlinkSocket {
  /** The bound port id (from getsockname). */
  readonly portId: number;
  /** The effective receive buffer (getsockopt SO_RCVBUF, as the kernel reports it). */
  readonly rcvbufBytes: number;
  /** Which option set the receive buffer: "SO_RCVBUFFORCE", "SO_RCVBUF" or "default". */
  readonly rcvbufOption: string;
  /**
   * Send datagrams (sendmmsg) to port id `destPortId` (0 = kernel) and multicast
   * groups `destGroups` (bitmask, 0 = unicast). Whatever cannot be sent now
   * (EAGAIN/ENOBUFS) is copied into an internal queue and sent when the socket is
   * writable, in order; nothing is dropped silently. Returns how many were sent
   * immediately (the rest are queued). A hard error (e.g. ECONNREFUSED: no socket
   * at destPortId) for a datagram is counted in stats().sendErrors and reported
   * through the onError callback with the datagram index; later datagrams are
   * still sent.
   */
  send(datagrams: Buffer[], destPortId?: number, destGroups?: number): number;
  /** Join an extra multicast group by number (NETLINK_ADD_MEMBERSHIP). */
  addMembership(group: number): void;
  stats(): NetlinkSocketStats;
  /** Stop polling and close the fd. Idempotent. */
  close(): void;
}

export interface NetlinkSocketConstructor {
  /**
   * Opens (SOCK_RAW | SOCK_NONBLOCK | SOCK_CLOEXEC), binds, sets the receive buffer,
   * starts a uv_poll on the current env's loop. Throws a SystemError-like Error
   * (errno, code, syscall) on failure, e.g. EPROTONOSUPPORT when the kernel has no
   * NETLINK_RDMA.
   */
  new (
    options: NetlinkSocketOptions,
    onBatch: (batch: NetlinkBatch) => void,
    onError: (err: Error & { errno?: number; code?: string; syscall?: string; index?: number }) => void,
  ): NetlinkSocket;
}

/**
 * Result of a batched reservation: element i answers request i.
 * fds[i] >= 0 and errnos[i] == 0 on success; fds[i] == -1 and errnos[i] > 0 (positive errno) on failure.
 */
export interface ReserveResult {
  fds: Int32Array;
  ports: Uint16Array;
  errnos: Int32Array;
}

export interface Native {
  NetlinkSocket: NetlinkSocketConstructor;

  /**
   * Batched TCP port reservation: for each i, socket(families[i], SOCK_STREAM|SOCK_CLOEXEC, 0)
   * and bind() to the family's wildcard address (0.0.0.0 / ::) at ports[i] (0 = kernel's
   * choice), no listen, no SO_REUSEADDR, no IPV6_V6ONLY; getsockname for the bound port.
   * families[i] is 2 (AF_INET) or 10 (AF_INET6). One call, N syscalls pairs, no JS per item.
   */
  reservePorts(families: Uint8Array, ports: Uint16Array): ReserveResult;

  /** Batched close(). Negative or unknown fds are ignored. Returns how many closed without error. */
  closeFds(fds: Int32Array): number;

  /** Raise RLIMIT_NOFILE soft limit to the hard limit. Returns the limits after the change. */
  raiseNofileLimit(): { soft: number; hard: number };

  /**
   * Grow the process fd table once so it holds at least `count` descriptors
   * (dup a descriptor to count-1, then close it). Returns the fd number used, or -errno.
   */
  pregrowFdTable(count: number): number;

  /** Send one datagram on an AF_UNIX SOCK_DGRAM socket to `path` ('@' prefix = abstract). For sd_notify and /dev/log. Returns 0 or -errno. */
  unixDatagramSend(path: string, data: Buffer): number;

  /** getpid() of this process. */
  getpid(): number;
}
