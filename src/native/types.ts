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
  /** Most datagrams drained per poll wakeup (recvmmsg vlen), 1..1024. Default 64. */
  batchSize?: number;
  /**
   * Size of each receive slot in bytes (datagrams longer are truncated and flagged),
   * 1..1048576. Default 65536. The socket keeps batchSize * slotBytes bytes of receive slots.
   */
  slotBytes?: number;
}

/**
 * One poll wakeup's worth of received datagrams, delivered in one call. All of it
 * is freshly allocated for this call: keeping references to it is safe.
 */
export interface NetlinkBatch {
  /** Number of datagrams in this batch (may be 0 when only `overruns`/`errors` are set). */
  count: number;
  /** Backing memory, datagrams packed back to back: datagram i is data.subarray(offsets[i], offsets[i] + lengths[i]). */
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
  /** Datagrams received (truncated ones included). */
  received: number;
  /** Datagrams the kernel accepted, immediately or from the queue. */
  sent: number;
  /** Datagrams currently queued in the addon waiting for the receiver to have room. */
  queued: number;
  /** ENOBUFS seen on receive (each may stand for many dropped messages). */
  overruns: number;
  /** Other receive errors. */
  recvErrors: number;
  /** Datagrams that failed for good (reported through onError). */
  sendErrors: number;
  truncated: number;
}

/**
 * While open, the socket keeps the event loop alive and its JS object referenced
 * (like a Node handle); close() releases both. If the environment goes away first
 * (process exit, Worker exit or terminate()), an env cleanup hook closes it.
 */
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
   *
   * Details:
   * - onError runs synchronously inside send() for datagrams that fail right away,
   *   and later (from the loop) for queued ones; `index` is always the datagram's
   *   position in the send() call it came from; `syscall` is "sendmmsg". Failed
   *   datagrams are neither sent nor queued. send() itself throws only for bad
   *   arguments (TypeError) or a closed socket (EBADF).
   * - Once anything is queued, later send() calls queue behind it (returning 0) so
   *   order is kept. Queued datagrams are copied: the caller may reuse its buffers.
   * - Netlink reports a socket writable even while the receiver is full (the sender
   *   is never charged), so after a retry without progress the queue is retried from
   *   a timer with exponential backoff (1 ms doubling up to 64 ms) instead of spinning.
   * - Multicast (destGroups != 0) is also unicast to destPortId by the kernel. On
   *   NETLINK_USERSOCK nothing lives at port id 0, so destPortId = 0 with destGroups
   *   delivers the broadcast AND reports ECONNREFUSED for that datagram; pass the
   *   sender's own portId (it then receives a copy) or ignore that error.
   */
  send(datagrams: readonly Uint8Array[], destPortId?: number, destGroups?: number): number;
  /** Join an extra multicast group by number (NETLINK_ADD_MEMBERSHIP). */
  addMembership(group: number): void;
  stats(): NetlinkSocketStats;
  /** Stop polling and close the fd; datagrams still queued are discarded. Idempotent. */
  close(): void;
}

export interface NetlinkSocketConstructor {
  /**
   * Opens (SOCK_RAW | SOCK_NONBLOCK | SOCK_CLOEXEC), binds, sets the receive buffer,
   * starts a uv_poll on the current env's loop. Throws a SystemError-like Error
   * (errno, code, syscall) on failure, e.g. EPROTONOSUPPORT when the kernel has no
   * NETLINK_RDMA, EADDRINUSE (syscall "bind") when the port id is taken. Bad options
   * throw TypeError.
   *
   * Callbacks run from the event loop (MakeCallback: microtasks and nextTicks run
   * after each); an exception thrown by one becomes an uncaught exception.
   */
  new (
    options: NetlinkSocketOptions,
    onBatch: (batch: NetlinkBatch) => void,
    onError: (err: Error & { errno?: number; code?: string; syscall?: string; index?: number }) => void,
  ): NetlinkSocket;
}

export interface UdpSocketOptions {
  /** 4 = AF_INET, 6 = AF_INET6. */
  family: 4 | 6;
  /**
   * Local address to bind (an IP literal of `family`; IPv6 may carry a `%scope`
   * suffix, interface name or index). Default: the wildcard (0.0.0.0 / ::).
   */
  address?: string;
  /** Local port; 0 = an ephemeral port chosen by the kernel (read it back from `port`). */
  port: number;
  /**
   * IPV6_V6ONLY, set explicitly either way (family 6 only; ignored for 4). Default true:
   * the socket then leaves IPv4 to a family-4 socket on the same port. With false it
   * also receives IPv4, with v4-mapped source addresses (::ffff:a.b.c.d), and sends to
   * IPv4 peers given as v4-mapped addresses.
   */
  v6Only?: boolean;
  /** Receive buffer request in bytes: SO_RCVBUFFORCE, falling back to SO_RCVBUF. 0/absent = leave default. */
  rcvbufBytes?: number;
  /** Send buffer request in bytes: SO_SNDBUFFORCE, falling back to SO_SNDBUF. 0/absent = leave default. */
  sndbufBytes?: number;
  /** Most datagrams drained per poll wakeup (recvmmsg vlen), 1..1024. Default 64. */
  batchSize?: number;
  /**
   * Size of each receive slot in bytes (datagrams longer are truncated and flagged),
   * 1..65536. Default 2048. The socket keeps batchSize * slotBytes bytes of receive slots.
   */
  slotBytes?: number;
}

/**
 * One poll wakeup's worth of received datagrams (at most batchSize), delivered in
 * one call, plus the receive-side errors seen while draining. All of it is freshly
 * allocated for this call: keeping references to it is safe.
 *
 * Addresses use one 16-byte layout everywhere (here and in UdpSocket.send): IPv4 in
 * bytes 0-3 (network order, bytes 4-15 zero), IPv6 all 16 bytes.
 */
export interface UdpBatch {
  /** Number of datagrams in this batch (may be 0 when only `errors` is set). */
  count: number;
  /** Backing memory, datagrams packed back to back: datagram i is data.subarray(offsets[i], offsets[i] + lengths[i]). */
  data: Buffer;
  offsets: Uint32Array;
  /** Bytes actually stored (<= slotBytes). */
  lengths: Uint32Array;
  /** 1 where the datagram was longer than its slot (MSG_TRUNC); lengths[i] is then slotBytes. */
  truncated: Uint8Array;
  /** Source port of each datagram. */
  srcPorts: Uint16Array;
  /** Source address of datagram i in srcAddrs[16*i, 16*i+16). */
  srcAddrs: Buffer;
  /** IPv6 scope id (interface index) of each source address; 0 for IPv4 and global addresses. */
  scopeIds: Uint32Array;
  /**
   * Receive-side errors (negative errno values), oldest first. Normal on UDP: an ICMP
   * port unreachable answering an earlier datagram shows up as -111 (ECONNREFUSED),
   * ICMP host/net unreachable as -113/-101 (the socket sets IP_RECVERR/IPV6_RECVERR so
   * the kernel reports them at all). They never stop polling.
   */
  errors: number[];
  /**
   * Parallel to `errors`: the destination the error is about (the address and port
   * the failed datagram was sent to), same 16-byte layout; all zero (port 0) when
   * the kernel gave none.
   */
  errorAddrs: Buffer;
  errorPorts: Uint16Array;
}

export interface UdpSocketStats {
  /** Datagrams received (truncated ones included). */
  received: number;
  /** Datagrams the kernel accepted, immediately or from the queue. */
  sent: number;
  /** Datagrams currently queued in the addon waiting for the socket to be writable. */
  queued: number;
  /** Receive-side errors (the entries of UdpBatch.errors). */
  recvErrors: number;
  /** Datagrams that failed for good (reported through onError). */
  sendErrors: number;
  truncated: number;
}

/**
 * While open, the socket keeps the event loop alive and its JS object referenced
 * (like a Node handle); close() releases both. If the environment goes away first
 * (process exit, Worker exit or terminate()), an env cleanup hook closes it.
 */
export interface UdpSocket {
  /** The bound local port (from getsockname). */
  readonly port: number;
  /** The effective receive buffer (getsockopt SO_RCVBUF, as the kernel reports it: twice the request). */
  readonly rcvbufBytes: number;
  /** The effective send buffer (getsockopt SO_SNDBUF). */
  readonly sndbufBytes: number;
  /**
   * Send datagrams[i] to the address in addrs[16*i, 16*i+16) (layout as in UdpBatch),
   * port ports[i], IPv6 scope id scopeIds[i] (absent = 0), with sendmmsg. addrs, ports
   * and scopeIds may be longer than needed (only the first datagrams.length entries are
   * read). Returns how many were sent immediately.
   *
   * - What cannot be sent now (EAGAIN: send buffer full; ENOBUFS) is copied into an
   *   internal queue and sent in order when the socket is writable (ENOBUFS: retried
   *   from a timer, 1 ms doubling to 64 ms); later send() calls queue behind it
   *   (returning 0). Nothing is dropped silently; the caller may reuse its buffers.
   * - A datagram that fails for good (e.g. EHOSTUNREACH, ENETUNREACH, EACCES for a
   *   broadcast address, EINVAL for port 0 or an unroutable source) is counted in
   *   stats().sendErrors and reported through onError with `index` = its position in
   *   the send() call it came from and syscall "sendmmsg"; later datagrams are still
   *   sent. onError runs synchronously inside send() for datagrams that fail right
   *   away, later (from the loop) for queued ones. Failed datagrams are neither sent
   *   nor queued.
   * - An ICMP error for an earlier datagram is reported in a later UdpBatch.errors,
   *   never as a failure of an unrelated datagram in send() (the kernel hands the
   *   pending socket error to whichever send comes next; such a datagram is retried).
   * - Like any UDP sender, a datagram the kernel accepted may still be dropped (by the
   *   receiver's full buffer, the network): the peer protocol's retransmits cover it.
   * - send() itself throws only for bad arguments (TypeError) or a closed socket (EBADF).
   */
  send(datagrams: readonly Uint8Array[], addrs: Uint8Array, ports: Uint16Array, scopeIds?: Uint32Array): number;
  stats(): UdpSocketStats;
  /** Stop polling and close the fd; datagrams still queued are discarded. Idempotent. */
  close(): void;
}

export interface UdpSocketConstructor {
  /**
   * socket(AF_INET/AF_INET6, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC), IPV6_V6ONLY,
   * IP_RECVERR/IPV6_RECVERR, buffers, bind (no SO_REUSEADDR), getsockname; starts a
   * uv_poll on the current env's loop. Throws a SystemError-like Error (errno, code,
   * syscall) on failure: EAFNOSUPPORT (syscall "socket") when the kernel has no IPv6
   * (ipv6.disable=1), EADDRINUSE (syscall "bind") when the port is taken,
   * EADDRNOTAVAIL (syscall "bind") for an address not on this host (e.g. ::1 with IPv6
   * disabled by sysctl). Bad options throw TypeError.
   *
   * Callbacks run from the event loop (MakeCallback: microtasks and nextTicks run
   * after each); an exception thrown by one becomes an uncaught exception.
   */
  new (
    options: UdpSocketOptions,
    onBatch: (batch: UdpBatch) => void,
    onError: (err: Error & { errno?: number; code?: string; syscall?: string; index?: number }) => void,
  ): UdpSocket;
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

/** configurePortPool options. */
export interface PortPoolOptions {
  /**
   * Spare (unbound) sockets kept per family, 0..4096. 0 turns the pool off: reservePorts
   * makes every socket itself and releaseFds closes synchronously (exactly the old
   * behaviour). Default 64.
   */
  spares: number;
}

/** Counters of the process-wide port pool (all environments share one pool). */
export interface PortPoolStats {
  /** Spare AF_INET / AF_INET6 sockets ready now. */
  sparesV4: number;
  sparesV6: number;
  /** reservePorts items that took a spare (a socket put back after a failed bind counts when reused). */
  spareHits: number;
  /** reservePorts items that had to call socket() themselves while the pool was on. */
  spareMisses: number;
  /** Spare sockets the background thread made. */
  created: number;
  /** fds the background thread closed for releaseFds. */
  asyncClosed: number;
  /** fds queued by releaseFds and not closed yet. */
  pendingClose: number;
  /** socket() failures of the background thread (each pauses that family's refill for ~100 ms). */
  refillErrors: number;
  /** The configured spares per family. */
  target: number;
  /** pthread_create's errno if the background thread could not be started (the pool is then off for good), else 0. */
  threadError: number;
}

export interface Native {
  NetlinkSocket: NetlinkSocketConstructor;
  UdpSocket: UdpSocketConstructor;

  /**
   * Batched TCP port reservation: for each i, socket(families[i], SOCK_STREAM|SOCK_CLOEXEC, 0)
   * and bind() to the family's wildcard address (0.0.0.0 / ::) at ports[i] (0 = kernel's
   * choice), no listen, no SO_REUSEADDR, no IPV6_V6ONLY; getsockname for the bound port.
   * families[i] is 2 (AF_INET) or 10 (AF_INET6); any other family fails that item with
   * EAFNOSUPPORT. Arrays of other types or different lengths throw TypeError.
   * One call, N syscalls pairs, no JS per item.
   *
   * With the port pool on (see configurePortPool), an item takes a spare socket of its
   * family when one is ready (made the same way by a background thread) and only
   * bind()s; a socket whose bind fails with EADDRINUSE/EACCES goes back to the spares
   * (it is still unbound). Spares of a family are kept only once that family has been
   * reserved. When socket() fails with EMFILE/ENFILE the pool gives back every fd it
   * holds (spares, queued closes) and the item retries once: the pool never causes an
   * EMFILE the pool-less code would not have. Results are the same either way.
   */
  reservePorts(families: Uint8Array, ports: Uint16Array): ReserveResult;

  /** Batched close(). Negative fds are skipped, unknown ones fail (EBADF) and are not counted. Returns how many closed without error. */
  closeFds(fds: Int32Array): number;

  /**
   * Batched close() off the calling thread: the fds are handed to the port pool's
   * background thread, which closes them in order (within microseconds normally),
   * so the port is free a little after this returns, not when it returns. The caller
   * must not use the fds afterwards. With the pool off (spares 0) and nothing still
   * queued, closes them synchronously instead. Negative fds are skipped. Returns how
   * many fds were taken (not how many closed without error: that is not known yet).
   * A non-Int32Array throws TypeError.
   */
  releaseFds(fds: Int32Array): number;

  /**
   * Configure the process-wide port pool (shared by every environment). Lowering
   * `spares` closes the surplus spares at once. The background thread starts on first
   * use. Bad options throw TypeError.
   */
  configurePortPool(options: PortPoolOptions): void;

  /** Counters of the port pool. */
  portPoolStats(): PortPoolStats;

  /** Raise RLIMIT_NOFILE soft limit to the hard limit. Returns the limits after the change (-1 = unlimited). */
  raiseNofileLimit(): { soft: number; hard: number };

  /**
   * Grow the process fd table once so it holds at least `count` descriptors
   * (dup a descriptor to count-1, then close it). Returns the fd number used, or -errno.
   * count is clamped to the RLIMIT_NOFILE soft limit (raise it first); an fd already
   * open at count-1 is left alone (the next free one above is used). count < 1 is a TypeError.
   */
  pregrowFdTable(count: number): number;

  /**
   * Send one datagram on an AF_UNIX SOCK_DGRAM socket to `path` ('@' prefix = abstract).
   * For sd_notify and /dev/log. Returns 0 or -errno: -ENOENT / -ECONNREFUSED when
   * nobody is bound there, -EAGAIN when the receiver's queue is full (the socket is
   * non-blocking: the event loop never stalls), -EINVAL for an empty path,
   * -ENAMETOOLONG beyond 107 bytes.
   */
  unixDatagramSend(path: string, data: Buffer): number;

  /** getpid() of this process. */
  getpid(): number;
}
