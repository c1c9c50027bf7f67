/**
 * The workloads. Each keeps a fixed window of outstanding kernel requests, runs a
 * warm-up, a measured interval and a drain (every request gets an outcome: answer,
 * HANDLE_ERR, or the kernel's 10 s timeout), and stops by itself.
 */
import { Histogram } from './hist.js';
import {
  HANDLE_ERR,
  REPLY,
  TIMEOUT,
  addTemplate,
  attrPort,
  queryTemplate,
  removeTemplate,
} from './kernel.js';

const IP = '127.0.0.1';
const IWPM_REMOTE_QUERY_REJECT = 16;

/** FIFO of local ports: a port comes back only after its REMOVE was queued. */
export class PortPool {
  constructor(from, to, exclude = new Set()) {
    this.ring = new Int32Array(to - from + 2);
    this.head = 0;
    this.tail = 0;
    for (let p = from; p <= to; p++) if (!exclude.has(p)) this.put(p);
  }
  get size() {
    return (this.tail - this.head + this.ring.length) % this.ring.length;
  }
  put(p) {
    this.ring[this.tail] = p;
    this.tail = (this.tail + 1) % this.ring.length;
  }
  take() {
    if (this.head === this.tail) return -1;
    const p = this.ring[this.head];
    this.head = (this.head + 1) % this.ring.length;
    return p;
  }
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** Width of the bins of queries()' timeline. */
export const TIMELINE_BIN_MS = 250;

function errCode(attrs) {
  const a = attrs && attrs[2];
  return a && a.length >= 2 ? a.readUInt16LE(0) : -1;
}

/** A Windowed run's issue(): the request `template` makes for the next free local port of `pool`. */
function issuer(k, pool, template, onReply) {
  return () => {
    const port = pool.take();
    if (port < 0) return false;
    const seq = k.nextSeq();
    k.submit(template(seq, port), seq, onReply, port);
    return true;
  };
}

/**
 * Generic windowed driver. `issue()` submits one request (returns false when it cannot);
 * `complete(ok)` must be called by the request's callback. Phases: 0 warm-up,
 * 1 measured, 2 draining (no new requests).
 */
class Windowed {
  constructor(window) {
    this.window = window;
    this.inflight = 0;
    this.phase = 0;
    this.measureStart = 0;
    this.measureEnd = 0;
    this._drained = undefined;
  }

  fill(issue) {
    while (this.phase < 2 && this.inflight < this.window && issue()) this.inflight++;
  }

  /** Called once per finished request; refills the window. */
  finished(issue) {
    this.inflight--;
    if (this.phase < 2) {
      if (issue()) this.inflight++;
    } else if (this.inflight === 0 && this._drained) {
      this._drained();
    }
  }

  async run(issue, { warmupMs, measureMs, drainMs, cpu }) {
    this.fill(issue);
    await sleep(warmupMs);
    this.phase = 1;
    this.measureStart = performance.now();
    cpu?.start();
    await sleep(measureMs);
    this.phase = 2;
    this.measureEnd = performance.now();
    cpu?.stop();
    if (this.inflight > 0) {
      await Promise.race([new Promise((r) => (this._drained = r)), sleep(drainMs)]);
    }
    return { measuredMs: this.measureEnd - this.measureStart, unfinished: this.inflight };
  }
}

/**
 * ADD (flags 0: a real port reservation) + REMOVE churn of listener mappings on
 * distinct 127.0.0.1 ports. Each ADD answer queues the mapping's REMOVE and the next ADD.
 */
export async function churn(k, o) {
  const add = addTemplate(IP, 0);
  const rem = removeTemplate(IP);
  const pool = new PortPool(o.portFrom, o.portTo);
  const w = new Windowed(o.window);
  const hist = new Histogram();
  let ok = 0;
  let timeouts = 0;
  let badReplies = 0;
  const errors = {};
  const onReply = (kind, attrs, lat, e) => {
    const port = e.tag;
    const measuring = w.phase === 1;
    if (kind === REPLY) {
      if (attrPort(attrs[3]) <= 0) badReplies++;
      k.post(rem(k.nextSeq(), port));
      pool.put(port);
      if (measuring) {
        ok++;
        hist.record(lat);
      }
    } else if (kind === HANDLE_ERR) {
      const c = errCode(attrs);
      if (measuring) errors[c] = (errors[c] ?? 0) + 1;
      pool.put(port);
    } else if (kind === TIMEOUT) {
      if (w.phase >= 1) timeouts++;
      k.post(rem(k.nextSeq(), port)); // the kernel removes what it asked for; port not reused
    }
    w.finished(issue);
  };
  const issue = issuer(k, pool, add, onReply);
  const r = await w.run(issue, o);
  k.flush();
  return {
    ops: ok,
    rate: ok / (r.measuredMs / 1000),
    latency: hist.summary(),
    errors,
    timeouts,
    badReplies,
    unfinished: r.unfinished,
    measuredMs: r.measuredMs,
  };
}

/**
 * Fill the table with `count` listener mappings (127.0.0.1:from..), window `window`.
 * Returns how many were created and how long it took.
 */
export async function fillHeld(k, o) {
  const add = addTemplate(IP, 0);
  let next = o.portFrom;
  const end = o.portFrom + o.count;
  let inflight = 0;
  let ok = 0;
  let timeouts = 0;
  const errors = {};
  const t0 = performance.now();
  let lastReport = t0;
  let lastOk = 0;
  const marks = [];
  return new Promise((resolve) => {
    const finish = () => {
      const ms = performance.now() - t0;
      resolve({ held: ok, errors, timeouts, fillMs: ms, fillRate: ok / (ms / 1000), marks });
    };
    const onReply = (kind, attrs) => {
      inflight--;
      if (kind === REPLY) ok++;
      else if (kind === HANDLE_ERR) {
        const c = errCode(attrs);
        errors[c] = (errors[c] ?? 0) + 1;
      } else timeouts++;
      const now = performance.now();
      if (now - lastReport >= 1000) {
        marks.push({ atMs: Math.round(now - t0), held: ok, rate: Math.round((ok - lastOk) / ((now - lastReport) / 1000)) });
        lastReport = now;
        lastOk = ok;
      }
      if (next < end) issue();
      if (inflight === 0) finish();
    };
    const issue = () => {
      const seq = k.nextSeq();
      k.submit(add(seq, next), seq, onReply, next);
      next++;
      inflight++;
    };
    while (inflight < o.window && next < end) issue();
    if (inflight === 0) finish();
  });
}

/**
 * QUERY round trips through a daemon talking to itself: one listener 127.0.0.1:P
 * (ADD, flags 0), then QUERYs local 127.0.0.1:<distinct port> -> remote 127.0.0.1:P.
 * After each answer the query's local mapping is removed, as the kernel does when the
 * connection goes away.
 */
export async function queries(k, o) {
  const listenerPort = o.listenerPort;
  const add = addTemplate(IP, 0);
  const listener = await new Promise((resolve) => {
    const seq = k.nextSeq();
    k.submit(add(seq, listenerPort), seq, (kind, attrs) => resolve({ kind, mapped: kind === REPLY ? attrPort(attrs[3]) : -1, code: errCode(attrs) }));
  });
  if (listener.kind !== REPLY) throw new Error(`listener ADD failed: ${listener.kind} ${listener.code}`);
  const query = queryTemplate(IP, IP, listenerPort, 0);
  const rem = removeTemplate(IP);
  const pool = new PortPool(o.portFrom, o.portTo, new Set([listenerPort]));
  const w = new Windowed(o.window);
  const hist = new Histogram();
  let accepted = 0;
  let rejected = 0;
  let otherErr = 0;
  let timeouts = 0;
  let wrongMapped = 0;
  const errors = {};
  /** Accepted answers per TIMELINE_BIN_MS of the measured interval. */
  const timeline = [];
  const onReply = (kind, attrs, lat, e) => {
    const port = e.tag;
    const measuring = w.phase === 1;
    if (kind === REPLY) {
      const a6 = attrs[6];
      const err = a6 && a6.length >= 2 ? a6.readUInt16LE(0) : -1;
      if (measuring) {
        if (err === 0) {
          accepted++;
          const bin = Math.floor((performance.now() - w.measureStart) / TIMELINE_BIN_MS);
          timeline[bin] = (timeline[bin] ?? 0) + 1;
          if (attrPort(attrs[5]) !== listener.mapped) wrongMapped++;
        } else if (err === IWPM_REMOTE_QUERY_REJECT) rejected++;
        else otherErr++;
        hist.record(lat);
      }
      pool.put(port);
    } else if (kind === HANDLE_ERR) {
      const c = errCode(attrs);
      if (measuring) errors[c] = (errors[c] ?? 0) + 1;
      pool.put(port);
    } else if (kind === TIMEOUT) {
      if (w.phase >= 1) timeouts++;
      // port not reused: the daemon may still hold state for it
    }
    k.post(rem(k.nextSeq(), port));
    w.finished(issue);
  };
  const issue = issuer(k, pool, query, onReply);
  const r = await w.run(issue, o);
  k.flush();
  return {
    ops: accepted,
    rate: accepted / (r.measuredMs / 1000),
    answeredRate: (accepted + rejected + otherErr) / (r.measuredMs / 1000),
    latency: hist.summary(),
    accepted,
    rejected,
    otherErr,
    errors,
    timeouts,
    wrongMapped,
    unfinished: r.unfinished,
    listenerMapped: listener.mapped,
    measuredMs: r.measuredMs,
    timeline: Array.from(timeline, (n) => n ?? 0),
  };
}
