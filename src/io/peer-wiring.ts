/**
 * Starts the daemon-to-daemon exchange (UDP, io/udp.ts + core/peer.ts) and connects it
 * to the kernel side: the daemon is the mapping lookup and receives the outcomes and
 * REMOTE_INFOs; the daemon's QUERY_MAPPINGs go to the peer engine.
 */
import type { IwpmDaemon } from '../core/daemon.js';
import type { Logger } from '../core/log.js';
import type { UdpSocketConstructor } from '../native/types.js';
import { StartupError } from './errors.js';
import { PeerIo, type PeerIoStatus } from './udp.js';

export interface PeerHandle {
  close(): Promise<void>;
  stats(): unknown;
  describe(): unknown;
}

export async function startPeer(o: {
  daemon: IwpmDaemon;
  log: Logger;
  port: number;
  /** The native UdpSocket (default: the addon). */
  udp?: UdpSocketConstructor;
}): Promise<PeerHandle | undefined> {
  const daemon = o.daemon;
  const io = new PeerIo({
    events: daemon,
    lookup: daemon,
    log: o.log,
    port: o.port,
    udp: o.udp,
    // all netlink output of one UDP batch (or tick) leaves in one send
    batch: (fn) => daemon.runBatch(fn),
  });
  let status: PeerIoStatus;
  try {
    status = await io.start();
  } catch (e) {
    const err = e as NodeJS.ErrnoException;
    const why = err.code === 'EADDRINUSE' ? 'the port is in use (is another iwpmd running?)' : err.message;
    throw new StartupError(`cannot open the peer UDP port ${o.port}: ${why}`);
  }
  o.daemon.setPeer(io);
  return {
    close: () => io.close(),
    stats: () => io.stats(),
    describe: () => ({ ...status, peerPort: io.engine.peerPort, timing: io.engine.timing }),
  };
}
