/**
 * Starts the daemon-to-daemon exchange (UDP) and connects it to the kernel side.
 * TEMPORARY: the UDP peer (core/peer.ts + io/udp.ts) is being wired in; until then
 * QUERY_MAPPING is answered with IWPM_REMOTE_QUERY_REJECT ("peer exchange is not running").
 */
import type { IwpmDaemon } from '../core/daemon.js';
import type { Logger } from '../core/log.js';

export interface PeerHandle {
  close(): Promise<void>;
  stats(): unknown;
  describe(): unknown;
}

export async function startPeer(o: { daemon: IwpmDaemon; log: Logger; port: number }): Promise<PeerHandle | undefined> {
  o.log.warn(`peer exchange on UDP ${o.port} is not available in this build: QUERY_MAPPING is answered with a reject`);
  return undefined;
}
