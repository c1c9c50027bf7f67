/**
 * Peer events pass objects that are valid only during the call (PeerEvents): a recorder
 * that looks at them later keeps copies.
 */
import type { SockAddr } from '../../src/codec/sockaddr.js';
import type { QueryOutcome, RemoteInfo } from '../../src/core/peer-api.js';

export function keepAddr(a: SockAddr): SockAddr {
  return { family: a.family, port: a.port, ip: Buffer.from(a.ip), flowinfo: a.flowinfo, scopeId: a.scopeId };
}

export function keepOutcome(o: QueryOutcome): QueryOutcome {
  return o.kind === 'accepted' ? { kind: 'accepted', mappedRemote: keepAddr(o.mappedRemote) } : { ...o };
}

export function keepInfo(i: RemoteInfo): RemoteInfo {
  return {
    ownerClient: i.ownerClient,
    localRaw: Buffer.from(i.localRaw),
    remote: keepAddr(i.remote),
    mappedLocalRaw: Buffer.from(i.mappedLocalRaw),
    mappedRemote: keepAddr(i.mappedRemote),
  };
}
