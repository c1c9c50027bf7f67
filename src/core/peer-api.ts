/**
 * The boundary between the kernel side of the daemon (core/daemon.ts) and the
 * daemon-to-daemon exchange on UDP 3935 (core/peer.ts + io/udp.ts).
 *
 * The kernel side owns the mapping table; the peer side owns conversations
 * (outstanding REQs on the connecting side, ACCEPT records on the listening side).
 * Neither touches a socket or a timer directly.
 */
import type { SockAddr } from '../codec/sockaddr.js';

/**
 * A listener mapping as the peer side needs it (spec §5.4). Its buffers are the mapping's
 * own and are reused once the mapping is removed: read them during the call, copy what
 * a conversation keeps.
 */
export interface ListenerView {
  /** The mapping's stored local address (wildcard IP for a wildcard listener) and the kernel's raw 128 bytes. */
  local: SockAddr;
  localRaw: Buffer;
  /** The mapped address as returned to the kernel in the ADD reply, and its raw 128 bytes. */
  mapped: SockAddr;
  mappedRaw: Buffer;
  wildcard: boolean;
  /** Netlink client index that owns the mapping (REMOTE_INFO goes to this client). */
  ownerClient: number;
}

/**
 * What the peer side may ask of the mapping table. `addr` is valid only during the call:
 * the peer side reuses the object (and its IP bytes) for the next lookup.
 */
export interface MappingLookup {
  /** Passive side, on REQ: fuzzy lookup of `apipaddr:apport` against local addresses. */
  findListener(addr: SockAddr): ListenerView | undefined;
  /** Passive side, on ACK: fuzzy lookup of `apipaddr:apport` against mapped addresses. */
  findByMapped(addr: SockAddr): ListenerView | undefined;
}

/** A QUERY_MAPPING after the local half is done: the connecting side's request to its peer. */
export interface QueryStart {
  /** Unique id chosen by the kernel side; echoed in the outcome. */
  id: number;
  /** Local (application) address of the connecting cm_id. */
  local: SockAddr;
  /** Its mapped address (what goes on the wire). */
  mapped: SockAddr;
  /** The remote listener address the application connects to (REQ goes to its IP, port 3935). */
  remote: SockAddr;
}

export type QueryOutcome =
  /** ACC: the listener's mapped wire address. */
  | { kind: 'accepted'; mappedRemote: SockAddr }
  /** REJ from the peer: no such listener there. */
  | { kind: 'rejected' }
  /** No answer within the give-up time (the kernel must still be answered before its 10 s). */
  | { kind: 'timeout' }
  /** Could not send at all (no socket for the family, EHOSTUNREACH, ...). */
  | { kind: 'failed'; reason: string };

/** REMOTE_INFO for the passive kernel (spec §2.2 / §5.4). */
export interface RemoteInfo {
  ownerClient: number;
  /** Listener's stored local address, raw 128 bytes (verbatim from the mapping). */
  localRaw: Buffer;
  /** Connecting peer's real address (cpipaddr:cpport). */
  remote: SockAddr;
  /** Listener's stored mapped address, raw 128 bytes. */
  mappedLocalRaw: Buffer;
  /** Connecting peer's mapped address (mapped_cpipaddr:reserved). */
  mappedRemote: SockAddr;
}

/**
 * Callbacks from the peer side into the kernel side. The objects an event passes (the
 * outcome, the RemoteInfo and their addresses) are valid only during the call: the peer
 * side refills them for the next event. Encode at once, or copy what you keep.
 */
export interface PeerEvents {
  queryDone(id: number, outcome: QueryOutcome): void;
  remoteInfo(info: RemoteInfo): void;
}

/** What the kernel side calls on the peer side. */
export interface PeerPort {
  startQuery(q: QueryStart): void;
  /** The kernel side gave up on a query (e.g. daemon shutdown); drop its state. */
  cancelQuery(id: number): void;
}
