/** Shared helpers for the native addon tests: real netlink sockets, collected output. */
import {
  native,
  NETLINK_USERSOCK,
  type NetlinkBatch,
  type NetlinkSocket,
  type NetlinkSocketOptions,
} from '../../src/native/index.js';

export { native, NETLINK_USERSOCK };

export interface Received {
  data: Buffer;
  sender: number;
  groups: number;
  truncated: boolean;
}

export type SendError = Error & { errno?: number; code?: string; syscall?: string; index?: number };

/** A USERSOCK socket that records everything it receives and every error it reports. */
export class Endpoint {
  readonly sock: NetlinkSocket;
  readonly msgs: Received[] = [];
  readonly batchCounts: number[] = [];
  readonly sendErrors: SendError[] = [];
  readonly recvErrors: number[] = [];
  overruns = 0;
  /** Called after each batch has been recorded. */
  onBatch?: (b: NetlinkBatch) => void;

  constructor(opts: Partial<NetlinkSocketOptions> = {}) {
    this.sock = new native.NetlinkSocket(
      { protocol: NETLINK_USERSOCK, portId: 0, groups: 0, rcvbufBytes: 0, ...opts },
      (b) => {
        this.batchCounts.push(b.count);
        for (let i = 0; i < b.count; i++) {
          this.msgs.push({
            data: Buffer.from(b.data.subarray(b.offsets[i]!, b.offsets[i]! + b.lengths[i]!)),
            sender: b.senders[i]!,
            groups: b.groups[i]!,
            truncated: b.truncated[i] === 1,
          });
        }
        this.overruns += b.overruns;
        this.recvErrors.push(...b.errors);
        this.onBatch?.(b);
      },
      (e) => this.sendErrors.push(e),
    );
    open.push(this);
  }

  get portId(): number {
    return this.sock.portId;
  }
}

const open: Endpoint[] = [];

/** Close every Endpoint created so far (call from afterEach). */
export function closeAll(): void {
  for (const e of open.splice(0)) e.sock.close();
}

/** Resolve when `cond()` holds, polling the event loop; reject after `ms`. */
export async function waitFor(cond: () => boolean, ms = 5000, what = 'condition'): Promise<void> {
  const deadline = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > deadline) throw new Error(`timed out after ${ms} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 2));
  }
}

/** Let the event loop turn a few times (for "nothing else arrives" checks). */
export function settle(ms = 50): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

/** Datagram `i` of a numbered series: 4-byte big-endian sequence number + filler. */
export function numbered(i: number, size = 64): Buffer {
  const b = Buffer.alloc(size, i & 0xff);
  b.writeUInt32BE(i, 0);
  return b;
}

export function seqOf(r: Received): number {
  return r.data.readUInt32BE(0);
}
