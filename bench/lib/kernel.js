/**
 * A lean "kernel" for benchmarks: plays iw_cm's side of the IWPM netlink protocol
 * over NETLINK_USERSOCK with the project's native NetlinkSocket (batched sendmmsg,
 * batched recvmmsg), just enough for our daemon and for rdma-core's iwpmd (under
 * the nlredirect shim):
 *
 *  - daemon HELLO            -> kernel HELLO(min(4, offered)), then NLMSG_DONE
 *  - daemon MAPINFO request  -> no records (empty kernel table), NLMSG_DONE; "ready"
 *  - every daemon message    -> NLMSG_DONE (20 bytes, seq = the daemon's seq, status 0;
 *                               -EINVAL for REMOTE_INFO, as the real kernel)
 *  - REG_PID                 -> multicast to the daemon's group, reply matched by SEQ
 *  - replies (RREG_PID, RMANAGE, RQUERY, HANDLE_ERR) matched by their SEQ attribute
 *    (attribute 1) against the kernel header seq of the request; 10 s timeout.
 *
 * Requests are stamped with the time of the send() call that carried them, replies
 * with the time the receive batch was handed over: latency = kernel-visible round trip.
 */
import { splitMessages, NLMSG_DONE, NLMSG_ERROR, NLM_F_REQUEST, NLMSG_HDRLEN } from '../../dist/codec/netlink.js';
import {
  decodeDaemonAttrs,
  encodeKernelAdd,
  encodeKernelHello,
  encodeKernelQuery,
  encodeKernelRegPid,
  encodeKernelRemove,
} from '../../dist/codec/iwpm.js';
import { encodeSockaddr, parseIp } from '../../dist/codec/sockaddr.js';
import { NETLINK_USERSOCK } from '../../dist/native/types.js';

export const OP_REG_PID = 0;
export const OP_ADD = 1;
export const OP_QUERY = 2;
export const OP_REMOVE = 3;
export const OP_REMOTE_INFO = 4;
export const OP_HANDLE_ERR = 5;
export const OP_MAPINFO = 6;
export const OP_MAPINFO_NUM = 7;
export const OP_HELLO = 8;
export const KERNEL_WAIT_MS = 10_000;
const EINVAL = 22;

/** Reply kinds passed to request callbacks. */
export const REPLY = 'reply';
export const HANDLE_ERR = 'err';
export const TIMEOUT = 'timeout';

export class BenchKernel {
  /**
   * @param {{ native: any, portId: number, group: number, rcvbufBytes?: number, batchSize?: number, log?: (s: string) => void }} o
   */
  constructor(o) {
    this.group = o.group;
    this.log = o.log ?? (() => {});
    this.seq = 0;
    this.daemonPort = 0;
    this.pending = new Map(); // kernel seq -> entry
    this.unstamped = []; // entries submitted since the last send()
    this.out = []; // datagrams to the daemon, sent in one call by flush()
    this.inBatch = false;
    this.closed = false;
    this.counters = {
      fromDaemon: 0,
      toDaemon: 0,
      remoteInfo: 0,
      unmatched: 0,
      malformed: 0,
      noRequestFlag: 0,
      foreign: 0,
      overruns: 0,
      sendErrors: 0,
      mapinfoNumReplies: 0,
      hellos: 0,
    };
    /** @type {((op: number, m: any) => void) | undefined} */
    this.onOther = undefined;
    let readyResolve;
    this.ready = new Promise((r) => (readyResolve = r));
    this._readyResolve = readyResolve;

    this.nl = new o.native.NetlinkSocket(
      {
        protocol: NETLINK_USERSOCK,
        portId: o.portId,
        groups: 0,
        rcvbufBytes: o.rcvbufBytes ?? 256 * 1024 * 1024,
        batchSize: o.batchSize ?? 256,
        slotBytes: 8192,
      },
      (batch) => this._onBatch(batch),
      (err) => {
        // A multicast on NETLINK_USERSOCK also tries port id 0, where no kernel socket exists.
        if (this._multicasting && err.code === 'ECONNREFUSED') return;
        this.counters.sendErrors++;
        if (this.counters.sendErrors <= 5) this.log(`kernel: send error: ${err.message}`);
      },
    );
    this.portId = this.nl.portId;
    this.timer = setInterval(() => this._expire(), 50);
  }

  nextSeq() {
    this.seq = (this.seq + 1) >>> 0 || 1;
    return this.seq;
  }

  /**
   * Queue a request that expects an answer. `cb(kind, attrs, latencyMs, entry)` is called
   * once: kind REPLY (attrs = the reply's attribute table), HANDLE_ERR (attrs[2] = code),
   * or TIMEOUT (no answer within 10 s).
   */
  submit(buf, seq, cb, tag) {
    const e = { seq, t0: 0, cb, tag };
    this.pending.set(seq, e);
    this.unstamped.push(e);
    this.out.push(buf);
    if (!this.inBatch) this._scheduleFlush();
    return e;
  }

  /** Queue a message that gets no answer (REMOVE). */
  post(buf) {
    this.out.push(buf);
    if (!this.inBatch) this._scheduleFlush();
  }

  _scheduleFlush() {
    if (this._flushScheduled) return;
    this._flushScheduled = true;
    setImmediate(() => {
      this._flushScheduled = false;
      this.flush();
    });
  }

  flush() {
    if (this.closed || this.out.length === 0) return;
    const out = this.out;
    this.out = [];
    const now = performance.now();
    for (const e of this.unstamped) e.t0 = now;
    this.unstamped = [];
    this.counters.toDaemon += out.length;
    this.nl.send(out, this.daemonPort, 0);
  }

  /** REG_PID by multicast to the daemon's group; resolves with the reply kind. */
  regPid(ibdev = 'bench0', ifname = 'bench0') {
    return new Promise((resolve) => {
      const seq = this.nextSeq();
      const buf = encodeKernelRegPid({ seq }, { echoSeq: 0, ifname, ibdev });
      const e = { seq, t0: performance.now(), cb: (kind, attrs) => resolve({ kind, attrs }) };
      this.pending.set(seq, e);
      this._multicasting = true;
      try {
        this.nl.send([buf], 0, 1 << (this.group - 1));
      } finally {
        this._multicasting = false;
      }
    });
  }

  _onBatch(batch) {
    const now = performance.now();
    if (batch.overruns) this.counters.overruns += batch.overruns;
    this.inBatch = true;
    try {
      for (let i = 0; i < batch.count; i++) {
        const off = batch.offsets[i];
        const sender = batch.senders[i];
        if (this.daemonPort !== 0 && sender !== this.daemonPort) {
          this.counters.foreign++;
          continue;
        }
        const split = splitMessages(batch.data.subarray(off, off + batch.lengths[i]));
        if (split.error) this.counters.malformed++;
        for (const m of split.messages) this._onMessage(m, sender, now);
      }
    } finally {
      this.inBatch = false;
    }
    this.flush();
  }

  _done(seq, status) {
    const b = Buffer.allocUnsafe(NLMSG_HDRLEN + 4);
    b.writeUInt32LE(20, 0);
    b.writeUInt16LE(NLMSG_DONE, 4);
    b.writeUInt16LE(2, 6); // NLM_F_MULTI
    b.writeUInt32LE(seq, 8);
    b.writeUInt32LE(this.daemonPort, 12);
    b.writeInt32LE(status, 16);
    this.out.push(b);
  }

  _onMessage(m, sender, now) {
    const h = m.header;
    this.counters.fromDaemon++;
    if (h.type === NLMSG_DONE || h.type === NLMSG_ERROR || h.type < 0x10) return;
    if ((h.flags & NLM_F_REQUEST) === 0) {
      // The real kernel skips these: no callback, no NLMSG_DONE.
      this.counters.noRequestFlag++;
      return;
    }
    const op = h.type & 0x3ff;
    if (op === OP_HELLO) {
      this.counters.hellos++;
      if (this.daemonPort === 0) this.daemonPort = sender;
      const offered = m.payload.length >= 6 ? m.payload.readUInt16LE(4) : 4;
      this.out.push(encodeKernelHello({ seq: this.nextSeq() }, Math.min(4, offered)));
      this._done(h.seq, 0);
      return;
    }
    if (op === OP_MAPINFO) {
      if (this.daemonPort === 0) this.daemonPort = sender;
      this._done(h.seq, 0); // empty table: no records, no MAPINFO_NUM
      this._readyResolve(this.daemonPort);
      return;
    }
    if (op === OP_REMOTE_INFO) {
      this.counters.remoteInfo++;
      this._done(h.seq, -EINVAL); // iwpm_remote_info_cb returns -EINVAL even on success
      if (this.onOther) this.onOther(op, m);
      return;
    }
    this._done(h.seq, 0);
    if (op === OP_MAPINFO_NUM) {
      this.counters.mapinfoNumReplies++;
      return;
    }
    if (op !== OP_REG_PID && op !== OP_ADD && op !== OP_QUERY && op !== OP_HANDLE_ERR) {
      if (this.onOther) this.onOther(op, m);
      return;
    }
    const attrs = decodeDaemonAttrs(m);
    const seqAttr = attrs && attrs[1];
    if (!seqAttr || seqAttr.length < 4) {
      this.counters.malformed++;
      return;
    }
    const e = this.pending.get(seqAttr.readUInt32LE(0));
    if (!e) {
      this.counters.unmatched++; // late (after the 10 s wait) or bogus: the kernel drops it
      return;
    }
    this.pending.delete(e.seq);
    e.cb(op === OP_HANDLE_ERR ? HANDLE_ERR : REPLY, attrs, now - e.t0, e);
  }

  _expire() {
    if (this.pending.size === 0) return;
    const now = performance.now();
    const limit = now - KERNEL_WAIT_MS;
    const expired = [];
    for (const e of this.pending.values()) {
      if (e.t0 === 0) continue;
      if (e.t0 > limit) break; // insertion order = send order
      expired.push(e);
    }
    if (expired.length === 0) return;
    this.inBatch = true;
    try {
      for (const e of expired) {
        this.pending.delete(e.seq);
        e.cb(TIMEOUT, undefined, now - e.t0, e);
      }
    } finally {
      this.inBatch = false;
    }
    this.flush();
  }

  stats() {
    return { ...this.counters, socket: this.nl.stats() };
  }

  close() {
    if (this.closed) return;
    this.closed = true;
    clearInterval(this.timer);
    this.nl.close();
  }
}

// ---------------------------------------------------------------------------
// Message templates: built once with the project's codecs, then copied and
// patched (header seq, address port) per request.

const SEQ_OFF = 8;

function findAddrAttr(buf, attrType) {
  let off = NLMSG_HDRLEN;
  while (off + 4 <= buf.length) {
    const len = buf.readUInt16LE(off);
    const type = buf.readUInt16LE(off + 2);
    if (type === attrType) return off + 4;
    off += (len + 3) & ~3;
  }
  throw new Error(`attribute ${attrType} not found in template`);
}

export function sockaddr(ip, port) {
  return encodeSockaddr(parseIp(ip, port));
}

/**
 * A message encoded once with port 1 in its local address (attribute 2); the returned
 * function copies it with the header seq and that port patched.
 */
function patchable(t) {
  const portOff = findAddrAttr(t, 2) + 2;
  return (seq, port) => {
    const b = Buffer.allocUnsafe(t.length);
    t.copy(b);
    b.writeUInt32LE(seq, SEQ_OFF);
    b.writeUInt16BE(port, portOff);
    return b;
  };
}

/** ADD_MAPPING (ABI 4, FLAGS present) for ip:<port>. */
export function addTemplate(ip, flags = 0) {
  return patchable(encodeKernelAdd({ seq: 0 }, { echoSeq: 0, local: sockaddr(ip, 1), flags }));
}

export function removeTemplate(ip) {
  return patchable(encodeKernelRemove({ seq: 0 }, { echoSeq: 0, local: sockaddr(ip, 1) }));
}

/** QUERY_MAPPING (ABI 4) local ip:<port> -> remote remoteIp:remotePort. */
export function queryTemplate(ip, remoteIp, remotePort, flags = 0) {
  return patchable(
    encodeKernelQuery({ seq: 0 }, { echoSeq: 0, local: sockaddr(ip, 1), remote: sockaddr(remoteIp, remotePort), flags }),
  );
}

/** Port (host order) of a 128-byte sockaddr attribute, or -1. */
export function attrPort(a) {
  return a && a.length >= 4 ? a.readUInt16BE(2) : -1;
}
