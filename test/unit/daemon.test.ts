/**
 * src/core/daemon.ts (IwpmDaemon): driven with encoded kernel messages through
 * onBatch, with the in-memory port binder, a captured sendToKernel, a fake clock
 * and a fake peer side. Everything the daemon sends is decoded with the kernel's
 * acceptance rules (helpers.ts decodeDaemonMessage).
 */
import { describe, expect, it } from 'vitest';
import {
  encodeKernelAdd,
  encodeKernelHello,
  encodeKernelMapinfo,
  encodeKernelMapinfoNum,
  encodeKernelQuery,
  encodeKernelRegPid,
  encodeKernelRemove,
  encodeHello,
  nlType,
} from '../../src/codec/iwpm.js';
import { encodeDone, encodeMessage, u32 } from '../../src/codec/netlink.js';
import { decodeSockaddr, encodeSockaddr, formatAddr } from '../../src/codec/sockaddr.js';
import { HELLO_ATTEMPTS, HELLO_RETRY_MS, IwpmDaemon, type PackedDatagrams, STALL_DROP_MS } from '../../src/core/daemon.js';
import { MemoryLogger } from '../../src/core/log.js';
import type { PeerPort, QueryStart } from '../../src/core/peer-api.js';
import { type PortRange, PortReserver } from '../../src/core/ports.js';
import { FakePortBinder } from '../../src/native/fake.js';
import { type DaemonMessage, decodeDaemon, hex, prng, raw, sa } from './helpers.js';

const PID = 0x1234;
const ULIB = 'iWarpPortMapperUser';

class FakePeer implements PeerPort {
  readonly started: QueryStart[] = [];
  readonly cancelled: number[] = [];
  startQuery(q: QueryStart): void {
    this.started.push(q);
  }
  cancelQuery(id: number): void {
    this.cancelled.push(id);
  }
}

interface HarnessOptions {
  range?: PortRange;
  binder?: FakePortBinder;
  kernelPortId?: number;
  peer?: boolean;
  /** Collect afterReads callbacks (the service runs them with setImmediate). */
  afterReads?: (() => void)[];
}

function harness(o: HarnessOptions = {}) {
  const binder = o.binder ?? new FakePortBinder({ ephemeral: { low: 40000, high: 40999 } });
  const ports = new PortReserver(binder, { range: o.range });
  const sends: Buffer[][] = [];
  const log = new MemoryLogger(true);
  let now = 1_000_000;
  const kernelPortId = o.kernelPortId ?? 0;
  const d = new IwpmDaemon({
    sendToKernel: (dgs) => sends.push(dgs.map((b) => Buffer.from(b))),
    ports,
    log,
    now: () => now,
    portId: PID,
    kernelPortId,
    afterReads: o.afterReads ? (fn) => o.afterReads!.push(fn) : undefined,
  });
  const peer = new FakePeer();
  if (o.peer !== false) d.setPeer(peer);
  let seen = 0;
  const h = {
    d,
    binder,
    ports,
    sends,
    log,
    peer,
    get now() {
      return now;
    },
    advance(ms: number): number {
      now += ms;
      return now;
    },
    /** Everything sent since the last take(), decoded (one message per datagram). */
    take(): DaemonMessage[] {
      const out = sends.slice(seen).flat().map(decodeDaemon);
      seen = sends.length;
      return out;
    },
    /** sendToKernel calls since the last take(). */
    pendingCalls(): number {
      return sends.length - seen;
    },
    /**
     * One receive batch, one kernel datagram per argument, packed as the addon delivers
     * it (back to back in one buffer; here with filler bytes around each, so every
     * datagram sits at an offset and its neighbours are not part of it).
     */
    feed(...dgs: Buffer[]): void {
      d.onPackedBatch(pack(dgs, kernelPortId));
    },
    /** feed() then take(). */
    batch(...dgs: Buffer[]): DaemonMessage[] {
      h.feed(...dgs);
      return h.take();
    },
  };
  return h;
}
type H = ReturnType<typeof harness>;

/** Datagrams as one packed batch: each behind 5 bytes of 0xee filler, all from `sender`. */
function pack(dgs: Buffer[], sender: number, truncated: number[] = []): PackedDatagrams {
  const parts: Buffer[] = [];
  const offsets = new Uint32Array(dgs.length);
  const lengths = new Uint32Array(dgs.length);
  let off = 0;
  dgs.forEach((dg, i) => {
    parts.push(Buffer.alloc(5, 0xee), dg);
    offsets[i] = off + 5;
    lengths[i] = dg.length;
    off += 5 + dg.length;
  });
  parts.push(Buffer.alloc(5, 0xee));
  const t = new Uint8Array(dgs.length);
  for (const i of truncated) t[i] = 1;
  return { count: dgs.length, data: Buffer.concat(parts), offsets, lengths, senders: new Uint32Array(dgs.length).fill(sender), truncated: t };
}

// Kernel messages.
const kHello = (seq: number, abi: number) => encodeKernelHello({ seq }, abi);
const kRegPid = (seq: number, client = 2, o: { ibdev?: string; ulib?: string } = {}) =>
  encodeKernelRegPid({ seq }, { echoSeq: 0, ifname: 'ens1f0', ibdev: o.ibdev ?? 'irdma0', ulib: o.ulib }, client);
const kAdd = (seq: number, local: Buffer, flags: number | undefined = 0, client = 2) =>
  encodeKernelAdd({ seq }, { echoSeq: 0, local, flags }, client);
const kQuery = (seq: number, local: Buffer, remote: Buffer, flags: number | undefined = 0, client = 2) =>
  encodeKernelQuery({ seq }, { echoSeq: 0, local, remote, flags }, client);
const kRemove = (seq: number, local: Buffer, client = 2) => encodeKernelRemove({ seq }, { echoSeq: 0, local }, client);
const kMapinfo = (local: Buffer, mapped: Buffer, flags: number | undefined = 0, client = 2) =>
  encodeKernelMapinfo({ local, mapped, flags }, client);
const kMapinfoNum = (seq: number, n: number, client = 2) => encodeKernelMapinfoNum({ seq }, n, client);
/** NLMSG_ERROR answering a daemon message (header + payload echoed). */
function kError(orig: Buffer, error = -22): Buffer {
  const b = Buffer.alloc(20 + orig.length);
  b.writeUInt32LE(b.length, 0);
  b.writeUInt16LE(2, 4);
  b.writeUInt32LE(orig.readUInt32LE(8), 8); // the failed message's seq
  b.writeUInt32LE(PID, 12);
  b.writeInt32LE(error, 16);
  orig.copy(b, 20);
  return b;
}
const helloSent = (seq = 0) => encodeHello({ seq, pid: PID }, 4);
/** A MAPINFO datagram as the kernel sends it: records, then a bare NLMSG_DONE. */
const mapinfoDatagram = (...recs: Buffer[]) => Buffer.concat([...recs, encodeDone(0, 0)]);

function ready(h: H, abi: 3 | 4): void {
  h.d.start();
  h.take();
  if (abi === 4) h.feed(kHello(1, 4));
  else h.feed(kError(helloSent()));
  h.take();
  expect(h.d.negotiatedAbi).toBe(abi);
}

const mappingOf = (h: H, ip: string, port: number) => h.d.table.findExact(sa(ip, port));

// ---------------------------------------------------------------------------

describe('ABI negotiation', () => {
  it('start() sends HELLO: type 0x0808, seq 0, our port id, ABI 4 (24 bytes)', () => {
    const h = harness();
    h.d.start();
    expect(h.sends).toHaveLength(1);
    expect(h.sends[0]).toEqual([
      hex`18 00 00 00  08 08  01 00  00 00 00 00  34 12 00 00   // len 24, HELLO, REQUEST, seq 0, pid 0x1234
          06 00 01 00  04 00  00 00                             // ABI_VERSION 4`,
    ]);
    expect(h.d.abi.phase).toBe('negotiating');
  });

  it('kernel HELLO (ABI 4) -> ABI 4 and one MAPINFO request to client 2 with ULIB_VER 4', () => {
    const h = harness();
    h.d.start();
    h.take();
    expect(h.batch(kHello(1, 4))).toEqual([{ op: 'mapinfo_req', client: 2, seq: 1, pid: PID, ulib: ULIB, version: 4 }]);
    expect(h.d.negotiatedAbi).toBe(4);
    expect(h.log.has(/ABI 4 negotiated/)).toBe(true);
  });

  it('kernel HELLO with ABI 3 (a kernel that speaks HELLO but answers min) -> ABI 3, MAPINFO to clients 2 and 3', () => {
    const h = harness();
    h.d.start();
    h.take();
    expect(h.batch(kHello(1, 3)).map((m) => m.op === 'mapinfo_req' && [m.client, m.version])).toEqual([
      [2, 3],
      [3, 3],
    ]);
  });

  it('NLMSG_ERROR(-EINVAL) for HELLO -> ABI 3, MAPINFO requests to client 2 (seq 1) and client 3 (seq 0), ULIB_VER 3', () => {
    const h = harness();
    h.d.start();
    h.take();
    const out = h.batch(kError(helloSent()));
    expect(out).toEqual([
      { op: 'mapinfo_req', client: 2, seq: 1, pid: PID, ulib: ULIB, version: 3 },
      { op: 'mapinfo_req', client: 3, seq: 0, pid: PID, ulib: ULIB, version: 3 },
    ]);
    expect(h.sends.at(-1)!.map((b) => b.readUInt16LE(4))).toEqual([0x0806, 0x0c06]);
    expect(h.d.negotiatedAbi).toBe(3);
  });

  it('NLMSG_ERROR for HELLO with another errno still falls back to ABI 3, with an error line', () => {
    const h = harness();
    h.d.start();
    h.take();
    h.feed(kError(helloSent(), -1));
    expect(h.d.negotiatedAbi).toBe(3);
    expect(h.log.has(/errno 1/, 'error')).toBe(true);
  });

  it('NLMSG_ERROR is attributed by the echoed header, not by seq 0 alone', () => {
    const h = harness();
    ready(h, 4);
    // A failure of some other seq-0 message (e.g. a MAPINFO request to the unregistered client 3).
    const mapinfo3 = encodeMessage({ type: 0x0c06, flags: 1, seq: 0, pid: PID }, [u32(1, 0)]);
    expect(h.batch(kError(mapinfo3))).toEqual([]);
    expect(h.d.negotiatedAbi).toBe(4);
    expect(h.d.counters.kernelErrors).toBe(1);
  });

  it('messages arriving during negotiation are held, then answered with the negotiated version (ABI 3)', () => {
    const h = harness();
    h.d.start();
    h.take();
    expect(h.batch(kRegPid(1), kAdd(2, raw('0.0.0.0', 5000), undefined))).toEqual([]);
    expect(h.sends).toHaveLength(1); // only the HELLO so far
    const out = h.batch(kError(helloSent()));
    expect(out.map((m) => m.op)).toEqual(['mapinfo_req', 'mapinfo_req', 'rreg_pid', 'rmanage']);
    expect(out[2]).toMatchObject({ op: 'rreg_pid', kernelSeq: 1, version: 3 });
    expect(out[3]).toMatchObject({ op: 'rmanage', kernelSeq: 2, local: raw('0.0.0.0', 5000), mapped: raw('0.0.0.0', 40000) });
  });

  it('held messages are answered with ABI 4 after a kernel HELLO, in one send for the batch', () => {
    const h = harness();
    h.d.start();
    h.take();
    h.feed(kRegPid(1));
    h.feed(kRegPid(2), kHello(3, 4), kRegPid(4));
    expect(h.pendingCalls()).toBe(1);
    const out = h.take();
    expect(out.map((m) => m.op === 'rreg_pid' ? m.kernelSeq : m.op)).toEqual(['mapinfo_req', 1, 2, 4]);
    expect(out.filter((m) => m.op === 'rreg_pid').every((m) => m.op === 'rreg_pid' && m.version === 4)).toBe(true);
  });

  it('HELLO is retried every HELLO_RETRY_MS, then negotiation gives up assuming ABI 4 and releases held messages', () => {
    const h = harness();
    h.d.start();
    expect(h.take().map((m) => m.op === 'hello' && m.seq)).toEqual([0]);
    h.feed(kRegPid(9));
    h.d.tick(h.advance(HELLO_RETRY_MS - 1));
    expect(h.take()).toEqual([]);
    for (let i = 1; i < HELLO_ATTEMPTS; i++) {
      h.d.tick(h.advance(HELLO_RETRY_MS));
      expect(h.take()).toEqual([{ op: 'hello', client: 2, seq: i, pid: PID, abi: 4 }]);
    }
    h.d.tick(h.advance(HELLO_RETRY_MS));
    const out = h.take();
    expect(out.map((m) => m.op)).toEqual(['mapinfo_req', 'rreg_pid']);
    expect(out[0]).toMatchObject({ version: 4, seq: HELLO_ATTEMPTS });
    expect(out[1]).toMatchObject({ kernelSeq: 9, version: 4 });
    expect(h.d.negotiatedAbi).toBe(4);
    expect(h.log.has(/never answered HELLO/, 'error')).toBe(true);
    h.d.tick(h.advance(10 * HELLO_RETRY_MS));
    expect(h.take()).toEqual([]); // no more HELLOs
  });

  it('a HELLO answered after a retry does not request a second replay', () => {
    const h = harness();
    h.d.start();
    h.d.tick(h.advance(HELLO_RETRY_MS));
    h.take();
    expect(h.batch(kHello(1, 4)).map((m) => m.op)).toEqual(['mapinfo_req']);
    expect(h.batch(kHello(2, 4))).toEqual([]);
  });

  it('HELLO offering ABI > 4 or < 3 -> HANDLE_ERR 17 with its seq; still negotiating', () => {
    const h = harness();
    h.d.start();
    h.take();
    expect(h.batch(kHello(5, 5))).toEqual([{ op: 'handle_err', client: 2, seq: 1, pid: PID, errSeq: 5, code: 17 }]);
    expect(h.batch(kHello(6, 2))).toMatchObject([{ op: 'handle_err', errSeq: 6, code: 17 }]);
    expect(h.d.abi.phase).toBe('negotiating');
  });
});

describe('REG_PID', () => {
  it('answers RREG_PID: kernel seq, the request device name, our ulib, the version, err 0', () => {
    const h = harness();
    ready(h, 4);
    expect(h.batch(kRegPid(77, 2, { ibdev: 'siw_ens1' }))).toEqual([
      { op: 'rreg_pid', client: 2, seq: 2, pid: PID, kernelSeq: 77, ibdev: 'siw_ens1', ulib: ULIB, version: 4, err: 0 },
    ]);
    // Every REG_PID is answered; the reply always carries that request's device name.
    expect(h.batch(kRegPid(78, 2, { ibdev: 'irdma1' }), kRegPid(79))).toMatchObject([
      { op: 'rreg_pid', kernelSeq: 78, ibdev: 'irdma1', seq: 3 },
      { op: 'rreg_pid', kernelSeq: 79, ibdev: 'irdma0', seq: 4 },
    ]);
    expect(h.d.clients.get(2)).toMatchObject({ valid: true, registrations: 3 });
  });

  it('client 3 (ABI 3) gets type 0x0C00 and its own seq counter', () => {
    const h = harness();
    ready(h, 3);
    expect(h.batch(kRegPid(5, 3))).toMatchObject([{ op: 'rreg_pid', client: 3, seq: 1, kernelSeq: 5, version: 3 }]);
    expect(h.sends.at(-1)![0]!.readUInt16LE(4)).toBe(0x0c00);
  });

  it('a different user-library name for a registered client -> HANDLE_ERR 15', () => {
    const h = harness();
    ready(h, 4);
    h.batch(kRegPid(1));
    expect(h.batch(kRegPid(2, 2, { ulib: 'OtherLib' }))).toMatchObject([{ op: 'handle_err', errSeq: 2, code: 15 }]);
  });
});

describe('ADD_MAPPING', () => {
  it('new mapping: reserve a port, reply RMANAGE with the local address echoed verbatim', () => {
    const h = harness();
    ready(h, 4);
    const local = raw('fe80::2', 7174, { scopeId: 3, flowinfo: 0x55 });
    const out = h.batch(kAdd(10, local));
    expect(h.binder.calls).toEqual([[{ family: 10, port: 0 }]]);
    // Mapped = local with only the port changed (flowinfo and scope id kept).
    expect(out).toEqual([
      { op: 'rmanage', client: 2, seq: 2, pid: PID, kernelSeq: 10, local, mapped: raw('fe80::2', 40000, { scopeId: 3, flowinfo: 0x55 }), err: 0 },
    ]);
    const m = mappingOf(h, 'fe80::2', 7174)!;
    expect(m).toMatchObject({ refCount: 1, ownerClient: 2, state: 'bound', wildcard: false, source: 'add' });
    expect(h.binder.open.get(m.fd)).toEqual({ family: 10, port: 40000 });
  });

  it('the worked example of spec §2.3: ADD 0.0.0.0:5000 seq 7 -> RMANAGE seq 7 with the mapped port', () => {
    const h = harness({ range: { low: 33333, high: 33333 } });
    ready(h, 4);
    h.batch(kRegPid(6));
    const add = hex`
      00: a4 00 00 00  01 08  01 00  07 00 00 00  00 00 00 00
      10: 08 00 01 00  03 00 00 00
      18: 84 00 02 00  02 00 13 88  00 00 00 00  [120 x 00]
      9c: 08 00 03 00  00 00 00 00`;
    h.feed(add);
    // Our header seq here is 3 (HELLO 0, MAPINFO 1, RREG_PID 2).
    expect(h.sends.at(-1)).toEqual([
      hex`
        00: 28 01 00 00  01 08  01 00  03 00 00 00  34 12 00 00
        10: 08 00 01 00  07 00 00 00
        18: 84 00 02 00  02 00 13 88  00 00 00 00  [120 x 00]
        9c: 84 00 03 00  02 00 82 35  00 00 00 00  [120 x 00]
        120: 06 00 04 00  00 00  00 00`,
    ]);
  });

  it('duplicate specific address -> HANDLE_ERR 12 with the request seq', () => {
    const h = harness();
    ready(h, 4);
    h.batch(kAdd(10, raw('10.0.0.1', 5000)));
    expect(h.batch(kAdd(11, raw('10.0.0.1', 5000)))).toMatchObject([{ op: 'handle_err', client: 2, errSeq: 11, code: 12 }]);
    expect(mappingOf(h, '10.0.0.1', 5000)!.refCount).toBe(1);
  });

  it('the same wildcard again shares the mapped port and counts references', () => {
    const h = harness();
    ready(h, 4);
    const a = h.batch(kAdd(10, raw('0.0.0.0', 5000)));
    const b = h.batch(kAdd(11, raw('0.0.0.0', 5000)));
    expect(a[0]).toMatchObject({ op: 'rmanage', kernelSeq: 10, mapped: raw('0.0.0.0', 40000) });
    expect(b[0]).toMatchObject({ op: 'rmanage', kernelSeq: 11, mapped: raw('0.0.0.0', 40000) });
    expect(h.binder.calls).toHaveLength(1);
    expect(mappingOf(h, '0.0.0.0', 5000)!.refCount).toBe(2);
  });

  it('other collisions on the port -> 12: specific vs wildcard, wildcard vs specific, IPv6 vs IPv4 wildcard', () => {
    const h = harness();
    ready(h, 4);
    h.batch(kAdd(1, raw('0.0.0.0', 5000)), kAdd(2, raw('10.0.0.1', 6000)));
    expect(h.batch(kAdd(3, raw('10.0.0.9', 5000)))).toMatchObject([{ op: 'handle_err', errSeq: 3, code: 12 }]);
    expect(h.batch(kAdd(4, raw('::', 5000)))).toMatchObject([{ op: 'handle_err', errSeq: 4, code: 12 }]);
    expect(h.batch(kAdd(5, raw('0.0.0.0', 6000)))).toMatchObject([{ op: 'handle_err', errSeq: 5, code: 12 }]);
    expect(h.batch(kAdd(6, raw('2001:db8::1', 5000)))).toMatchObject([{ op: 'handle_err', errSeq: 6, code: 12 }]);
    expect(h.d.table.size).toBe(2);
  });

  it('NO_PORT_MAP: mapped = local, nothing bound', () => {
    const h = harness();
    ready(h, 4);
    const local = raw('10.0.0.5', 4791);
    expect(h.batch(kAdd(10, local, 1))).toMatchObject([{ op: 'rmanage', kernelSeq: 10, local, mapped: local }]);
    expect(h.binder.calls).toHaveLength(0);
    expect(mappingOf(h, '10.0.0.5', 4791)).toMatchObject({ fd: -1, state: 'unreserved', flags: 1 });
  });

  it('reservation failure -> HANDLE_ERR 11 and no mapping', () => {
    const h = harness();
    ready(h, 4);
    h.binder.failNext(24); // EMFILE
    expect(h.batch(kAdd(10, raw('10.0.0.1', 5000)))).toMatchObject([{ op: 'handle_err', errSeq: 10, code: 11 }]);
    expect(h.d.table.size).toBe(0);
    // The address is free again afterwards.
    expect(h.batch(kAdd(11, raw('10.0.0.1', 5000)))).toMatchObject([{ op: 'rmanage', kernelSeq: 11 }]);
  });

  it('the ABI 3 layout (no FLAGS) is accepted on ABI 4 too', () => {
    const h = harness();
    ready(h, 4);
    expect(h.batch(kAdd(10, raw('10.0.0.1', 5000), undefined))).toMatchObject([{ op: 'rmanage', kernelSeq: 10 }]);
  });
});

describe('QUERY_MAPPING', () => {
  const L = raw('10.0.0.1', 50000);
  const R = raw('10.0.0.2', 5000);

  it('new mapping, peer exchange started, no reply until the outcome; accepted -> RQUERY err 0', () => {
    const h = harness();
    ready(h, 4);
    expect(h.batch(kQuery(20, L, R))).toEqual([]);
    expect(h.peer.started).toEqual([{ id: 1, local: sa('10.0.0.1', 50000), mapped: sa('10.0.0.1', 40000), remote: sa('10.0.0.2', 5000) }]);
    expect(h.d.pendingQueries).toBe(1);
    h.d.queryDone(1, { kind: 'accepted', mappedRemote: sa('10.0.0.2', 33333) });
    expect(h.pendingCalls()).toBe(1);
    expect(h.take()).toEqual([
      {
        op: 'rquery',
        client: 2,
        seq: 2,
        pid: PID,
        seqAttr: 20,
        local: L,
        remote: R,
        mappedLocal: raw('10.0.0.1', 40000),
        mappedRemote: raw('10.0.0.2', 33333),
        err: 0,
      },
    ]);
    expect(h.d.pendingQueries).toBe(0);
    h.d.queryDone(1, { kind: 'rejected' }); // late or duplicate outcome: ignored
    expect(h.take()).toEqual([]);
  });

  it('rejected -> RQUERY err 16 with MAPPED_REM = the remote address; timeout likewise', () => {
    const h = harness();
    ready(h, 4);
    h.batch(kQuery(20, L, R));
    h.d.queryDone(1, { kind: 'rejected' });
    expect(h.take()).toMatchObject([{ op: 'rquery', seqAttr: 20, mappedLocal: raw('10.0.0.1', 40000), mappedRemote: R, err: 16 }]);
    h.batch(kQuery(21, raw('10.0.0.1', 50001), R));
    h.d.queryDone(2, { kind: 'timeout' });
    expect(h.take()).toMatchObject([{ op: 'rquery', seqAttr: 21, mappedRemote: R, err: 16 }]);
    expect(h.d.counters).toMatchObject({ queriesRejected: 1, queriesTimedOut: 1 });
  });

  it('IPv6: the mapped remote keeps the remote scope id', () => {
    const h = harness();
    ready(h, 4);
    const l6 = raw('fe80::1', 50000, { scopeId: 4 });
    const r6 = raw('fe80::2', 5000, { scopeId: 4 });
    h.batch(kQuery(20, l6, r6));
    h.d.queryDone(1, { kind: 'accepted', mappedRemote: sa('fe80::2', 34000) });
    expect(h.take()).toMatchObject([
      { op: 'rquery', local: l6, remote: r6, mappedLocal: raw('fe80::1', 40000, { scopeId: 4 }), mappedRemote: raw('fe80::2', 34000, { scopeId: 4 }), err: 0 },
    ]);
  });

  it('a QUERY from an address with a non-wildcard mapping shares it (ref count +1, same mapped port)', () => {
    const h = harness();
    ready(h, 4);
    h.batch(kQuery(20, L, R));
    h.batch(kQuery(21, L, raw('10.0.0.3', 6000)));
    expect(h.binder.calls).toHaveLength(1);
    expect(h.peer.started.map((q) => [q.id, q.mapped.port])).toEqual([
      [1, 40000],
      [2, 40000],
    ]);
    expect(mappingOf(h, '10.0.0.1', 50000)!.refCount).toBe(2);
  });

  it('a QUERY matching a wildcard mapping -> HANDLE_ERR 11, ref count unchanged, no peer exchange', () => {
    const h = harness();
    ready(h, 4);
    h.batch(kAdd(1, raw('0.0.0.0', 7000)));
    expect(h.batch(kQuery(22, raw('10.0.0.1', 7000), R))).toMatchObject([{ op: 'handle_err', errSeq: 22, code: 11 }]);
    expect(mappingOf(h, '0.0.0.0', 7000)!.refCount).toBe(1);
    expect(h.peer.started).toHaveLength(0);
  });

  it('reservation failure -> HANDLE_ERR 11, no peer exchange, no mapping', () => {
    const h = harness();
    ready(h, 4);
    h.binder.failNext(98);
    expect(h.batch(kQuery(23, L, R))).toMatchObject([{ op: 'handle_err', errSeq: 23, code: 11 }]);
    expect(h.peer.started).toHaveLength(0);
    expect(h.d.table.size).toBe(0);
  });

  it('NO_PORT_MAP query: mapped = local, no bind, exchange started at once', () => {
    const h = harness();
    ready(h, 4);
    h.batch(kQuery(24, L, R, 1));
    expect(h.binder.calls).toHaveLength(0);
    expect(h.peer.started).toMatchObject([{ mapped: sa('10.0.0.1', 50000) }]);
  });

  it('without a peer side: RQUERY err 16 at once', () => {
    const h = harness({ peer: false });
    ready(h, 4);
    expect(h.batch(kQuery(25, L, R))).toMatchObject([{ op: 'rquery', seqAttr: 25, err: 16, mappedRemote: R }]);
  });

  it('REMOVE of the mapping cancels its outstanding query; a later outcome is dropped', () => {
    const h = harness();
    ready(h, 4);
    h.batch(kQuery(20, L, R));
    expect(h.batch(kRemove(21, L))).toEqual([]);
    expect(h.peer.cancelled).toEqual([1]);
    h.d.queryDone(1, { kind: 'accepted', mappedRemote: sa('10.0.0.2', 1) });
    expect(h.take()).toEqual([]);
  });

  it('QUERY and REMOVE of the same address in one batch: the exchange is never started', () => {
    const h = harness();
    ready(h, 4);
    h.batch(kQuery(20, L, R), kRemove(21, L));
    // A startQuery after the cancel would leave a conversation nobody ends.
    expect(h.peer.started).toEqual([]);
    expect(h.binder.open.size).toBe(0);
  });
});

describe('REMOTE_INFO', () => {
  it('remoteInfo() sends REMOTE_INFO to the owner client with exactly these bytes', () => {
    const h = harness();
    ready(h, 4);
    h.d.remoteInfo({
      ownerClient: 2,
      localRaw: raw('0.0.0.0', 5000),
      remote: sa('10.0.0.1', 40000),
      mappedLocalRaw: raw('0.0.0.0', 33333),
      mappedRemote: sa('10.0.0.1', 33000),
    });
    expect(h.sends.at(-1)).toEqual([
      hex`
        00: 30 02 00 00  04 08  01 00  02 00 00 00  34 12 00 00   // len 560, REMOTE_INFO, seq 2, pid 0x1234
        10: 08 00 01 00  00 00 00 00                              // 1 = 0
        18: 84 00 02 00  02 00 13 88  00 00 00 00  [120 x 00]     // 2 listener local 0.0.0.0:5000
        9c: 84 00 03 00  02 00 9c 40  0a 00 00 01  [120 x 00]     // 3 peer real 10.0.0.1:40000
        120: 84 00 04 00  02 00 82 35  00 00 00 00  [120 x 00]    // 4 listener mapped 0.0.0.0:33333
        1a4: 84 00 05 00  02 00 80 e8  0a 00 00 01  [120 x 00]    // 5 peer mapped 10.0.0.1:33000
        228: 06 00 06 00  00 00  00 00                            // 6 = 0
        230:`,
    ]);
    expect(h.d.counters.remoteInfoSent).toBe(1);
  });

  it('goes to client 3 (type 0x0C04) when client 3 owns the listener', () => {
    const h = harness();
    ready(h, 3);
    h.d.remoteInfo({ ownerClient: 3, localRaw: raw('::', 1), remote: sa('::1', 2), mappedLocalRaw: raw('::', 3), mappedRemote: sa('::1', 4) });
    expect(h.take()).toMatchObject([{ op: 'remote_info', client: 3, seq: 1, remote: raw('::1', 2), mappedRemote: raw('::1', 4) }]);
  });

  it('findListener / findByMapped give the peer side the listener view', () => {
    const h = harness();
    ready(h, 4);
    h.batch(kAdd(1, raw('0.0.0.0', 5000)));
    const v = h.d.findListener(sa('10.0.0.7', 5000))!;
    expect(v).toMatchObject({ local: sa('0.0.0.0', 5000), mapped: sa('0.0.0.0', 40000), wildcard: true, ownerClient: 2 });
    expect(v.mappedRaw).toEqual(raw('0.0.0.0', 40000));
    expect(h.d.findByMapped(sa('10.0.0.7', 40000))).toMatchObject({ local: sa('0.0.0.0', 5000) });
    expect(h.d.findListener(sa('10.0.0.7', 5001))).toBeUndefined();
  });
});

describe('runBatch: peer events grouped into one netlink send', () => {
  const R = raw('10.0.0.2', 5000);

  it('keeps nothing of an event: objects the peer side refills right after the call give the bytes of the call', () => {
    const h = harness();
    ready(h, 4);
    h.batch(kQuery(20, raw('10.0.0.1', 50000), R), kQuery(21, raw('10.0.0.1', 50001), R));
    // one object per kind, reused as PeerEngine does (PeerEvents: valid during the call)
    const accepted = { kind: 'accepted' as const, mappedRemote: sa('10.0.0.2', 33333) };
    const info = { ownerClient: 2, localRaw: raw('0.0.0.0', 5000), remote: sa('10.0.0.9', 1), mappedLocalRaw: raw('0.0.0.0', 6000), mappedRemote: sa('10.0.0.9', 2) };
    const scribble = (...bufs: Buffer[]) => bufs.forEach((b) => b.fill(0xee));
    h.d.runBatch(() => {
      h.d.queryDone(1, accepted);
      scribble(accepted.mappedRemote.ip);
      accepted.mappedRemote = sa('10.0.0.3', 44444);
      h.d.queryDone(2, accepted);
      h.d.remoteInfo(info);
      scribble(info.localRaw, info.remote.ip, info.mappedLocalRaw, info.mappedRemote.ip);
      info.remote.port = 9;
    });
    expect(h.take()).toMatchObject([
      { op: 'rquery', seqAttr: 20, mappedRemote: raw('10.0.0.2', 33333), err: 0 },
      { op: 'rquery', seqAttr: 21, mappedRemote: raw('10.0.0.3', 44444), err: 0 },
      { op: 'remote_info', local: raw('0.0.0.0', 5000), remote: raw('10.0.0.9', 1), mappedLocal: raw('0.0.0.0', 6000), mappedRemote: raw('10.0.0.9', 2) },
    ]);
  });

  it('outcomes and REMOTE_INFOs inside runBatch leave in one send, in order, at its end', () => {
    const h = harness();
    ready(h, 4);
    h.batch(kQuery(20, raw('10.0.0.1', 50000), R), kQuery(21, raw('10.0.0.1', 50001), R), kQuery(22, raw('10.0.0.1', 50002), R));
    h.d.runBatch(() => {
      h.d.queryDone(1, { kind: 'accepted', mappedRemote: sa('10.0.0.2', 33333) });
      h.d.remoteInfo({ ownerClient: 2, localRaw: raw('0.0.0.0', 5000), remote: sa('10.0.0.9', 1), mappedLocalRaw: raw('0.0.0.0', 6000), mappedRemote: sa('10.0.0.9', 2) });
      h.d.queryDone(2, { kind: 'rejected' });
      h.d.queryDone(7, { kind: 'rejected' }); // unknown: nothing
      expect(h.pendingCalls()).toBe(0); // nothing sent yet
    });
    expect(h.pendingCalls()).toBe(1);
    expect(h.take()).toMatchObject([
      { op: 'rquery', seqAttr: 20, err: 0 },
      { op: 'remote_info', remote: raw('10.0.0.9', 1) },
      { op: 'rquery', seqAttr: 21, err: 16 },
    ]);
    // nested: still one send, at the end of the outer one; outside, one send per event as before
    h.d.runBatch(() => {
      h.d.runBatch(() => h.d.queryDone(3, { kind: 'timeout' }));
      h.d.remoteInfo({ ownerClient: 2, localRaw: raw('0.0.0.0', 5000), remote: sa('10.0.0.9', 3), mappedLocalRaw: raw('0.0.0.0', 6000), mappedRemote: sa('10.0.0.9', 4) });
      expect(h.pendingCalls()).toBe(0);
    });
    expect(h.pendingCalls()).toBe(1);
    expect(h.take()).toMatchObject([{ op: 'rquery', seqAttr: 22, err: 16 }, { op: 'remote_info' }]);
    h.d.runBatch(() => {}); // nothing to send: no send
    expect(h.pendingCalls()).toBe(0);
  });

  it('an exception inside still sends what was collected, and the daemon keeps batching correctly afterwards', () => {
    const h = harness();
    ready(h, 4);
    h.batch(kQuery(20, raw('10.0.0.1', 50000), R), kQuery(21, raw('10.0.0.1', 50001), R));
    expect(() =>
      h.d.runBatch(() => {
        h.d.queryDone(1, { kind: 'rejected' });
        throw new Error('boom');
      }),
    ).toThrow('boom');
    expect(h.take()).toMatchObject([{ op: 'rquery', seqAttr: 20 }]);
    h.d.queryDone(2, { kind: 'rejected' });
    expect(h.take()).toMatchObject([{ op: 'rquery', seqAttr: 21 }]);
  });

  it('REMOVE of a mapping without queries leaves the other mappings\' queries alone', () => {
    const h = harness();
    ready(h, 4);
    h.batch(kQuery(20, raw('10.0.0.1', 50000), R), kQuery(21, raw('10.0.0.1', 50000), R), kAdd(22, raw('10.0.0.1', 7000)));
    h.take();
    h.batch(kRemove(23, raw('10.0.0.1', 7000)));
    expect(h.peer.cancelled).toEqual([]);
    expect(h.d.pendingQueries).toBe(2);
    // one of the two queries on the shared mapping answered: the REMOVEs cancel the other
    h.d.queryDone(1, { kind: 'rejected' });
    h.batch(kRemove(24, raw('10.0.0.1', 50000)));
    expect(h.peer.cancelled).toEqual([]); // ref count 2: still mapped
    h.batch(kRemove(25, raw('10.0.0.1', 50000)));
    expect(h.peer.cancelled).toEqual([2]);
    expect(h.d.pendingQueries).toBe(0);
  });
});

describe('REMOVE_MAPPING', () => {
  it('owner removes: ref count to 0, socket closed via the binder, never an answer', () => {
    const h = harness();
    ready(h, 4);
    h.batch(kAdd(1, raw('10.0.0.1', 5000)));
    const fd = mappingOf(h, '10.0.0.1', 5000)!.fd;
    expect(h.batch(kRemove(2, raw('10.0.0.1', 5000)))).toEqual([]);
    expect(h.pendingCalls()).toBe(0);
    expect(h.binder.closed).toEqual([fd]);
    expect(h.binder.open.size).toBe(0);
    expect(h.d.table.size).toBe(0);
    expect(h.ports.stats.held).toBe(0);
  });

  it('reference counting: a shared wildcard is released by the last REMOVE', () => {
    const h = harness();
    ready(h, 4);
    h.batch(kAdd(1, raw('0.0.0.0', 5000)), kAdd(2, raw('0.0.0.0', 5000)));
    h.batch(kRemove(3, raw('0.0.0.0', 5000)));
    expect(mappingOf(h, '0.0.0.0', 5000)!.refCount).toBe(1);
    expect(h.binder.closed).toEqual([]);
    h.batch(kRemove(4, raw('0.0.0.0', 5000)));
    expect(h.d.table.size).toBe(0);
    expect(h.binder.closed).toHaveLength(1);
    h.batch(kRemove(5, raw('0.0.0.0', 5000))); // unknown now: ignored
    expect(h.binder.closed).toHaveLength(1);
  });

  it('exact lookup only: a REMOVE for a specific address does not touch a wildcard mapping', () => {
    const h = harness();
    ready(h, 4);
    h.batch(kAdd(1, raw('0.0.0.0', 5000)));
    h.batch(kRemove(2, raw('10.0.0.1', 5000)));
    expect(mappingOf(h, '0.0.0.0', 5000)!.refCount).toBe(1);
  });

  it('another client index cannot remove it; unknown addresses are ignored silently', () => {
    const h = harness();
    ready(h, 3);
    h.batch(kAdd(1, raw('10.0.0.1', 5000), undefined, 2));
    expect(h.batch(kRemove(2, raw('10.0.0.1', 5000), 3))).toEqual([]);
    expect(mappingOf(h, '10.0.0.1', 5000)!.refCount).toBe(1);
    expect(h.log.has(/owned by client 2: ignored/)).toBe(true);
    expect(h.batch(kRemove(3, raw('10.9.9.9', 1)))).toEqual([]);
    expect(h.binder.closed).toEqual([]);
  });

  it('the port is free for a new reservation after the REMOVE', () => {
    const h = harness({ range: { low: 45000, high: 45000 } });
    ready(h, 4);
    expect(h.batch(kAdd(1, raw('10.0.0.1', 5000)))).toMatchObject([{ op: 'rmanage', mapped: raw('10.0.0.1', 45000) }]);
    h.batch(kRemove(2, raw('10.0.0.1', 5000)));
    expect(h.batch(kAdd(3, raw('10.0.0.2', 5000)))).toMatchObject([{ op: 'rmanage', mapped: raw('10.0.0.2', 45000) }]);
  });
});

describe('MAPINFO replay', () => {
  it('re-binds the exact recorded ports, rebuilds reference counts from identical records, acks the count', () => {
    const h = harness();
    ready(h, 4);
    const out = h.batch(
      mapinfoDatagram(
        kMapinfo(raw('0.0.0.0', 5000), raw('0.0.0.0', 33333)),
        kMapinfo(raw('0.0.0.0', 5000), raw('0.0.0.0', 33333)), // second device of the same wildcard listen
        kMapinfo(raw('10.0.0.1', 40000), raw('10.0.0.1', 33334)),
      ),
      kMapinfoNum(30, 3),
    );
    expect(out).toEqual([{ op: 'mapinfo_num', client: 2, seq: 2, pid: PID, kernelSeq: 30, sendNum: 3, ackNum: 3 }]);
    expect(h.binder.calls.flat()).toEqual([
      { family: 2, port: 33333 },
      { family: 2, port: 33334 },
    ]);
    expect(mappingOf(h, '0.0.0.0', 5000)).toMatchObject({ refCount: 2, state: 'bound', source: 'mapinfo', ownerClient: 2 });
    expect(mappingOf(h, '10.0.0.1', 40000)).toMatchObject({ refCount: 1, state: 'bound', mapped: sa('10.0.0.1', 33334) });
    expect(h.binder.heldPorts()).toEqual(new Set([33333, 33334]));
    // Afterwards the kernel's new ADD of the same wildcard shares the recovered port.
    expect(h.batch(kAdd(31, raw('0.0.0.0', 5000)))).toMatchObject([{ op: 'rmanage', mapped: raw('0.0.0.0', 33333) }]);
    expect(mappingOf(h, '0.0.0.0', 5000)!.refCount).toBe(3);
    // And the ref counts drive release: three REMOVEs close it.
    h.batch(kRemove(32, raw('0.0.0.0', 5000)), kRemove(33, raw('0.0.0.0', 5000)));
    expect(h.binder.heldPorts().has(33333)).toBe(true);
    h.batch(kRemove(34, raw('0.0.0.0', 5000)));
    expect(h.binder.heldPorts().has(33333)).toBe(false);
  });

  it('collision -> HANDLE_ERR 12 seq 0, not counted, and the rest of the datagram is still processed', () => {
    const h = harness();
    ready(h, 4);
    h.batch(kAdd(1, raw('10.0.0.1', 6000))); // mapped 40000
    const out = h.batch(
      mapinfoDatagram(
        kMapinfo(raw('10.0.0.1', 6000), raw('10.0.0.1', 35000)),
        kMapinfo(raw('10.0.0.2', 7000), raw('10.0.0.2', 35001)),
      ),
      kMapinfoNum(40, 2),
    );
    expect(out).toMatchObject([
      { op: 'handle_err', client: 2, errSeq: 0, code: 12 },
      { op: 'mapinfo_num', kernelSeq: 40, sendNum: 2, ackNum: 1 },
    ]);
    expect(mappingOf(h, '10.0.0.2', 7000)).toMatchObject({ state: 'bound', mapped: sa('10.0.0.2', 35001) });
    expect(mappingOf(h, '10.0.0.1', 6000)).toMatchObject({ mapped: sa('10.0.0.1', 40000) });
  });

  it('failed re-bind -> HANDLE_ERR 11 seq 0, mapping kept as unreserved, not counted', () => {
    const h = harness();
    ready(h, 4);
    h.binder.busy.add(35002);
    const out = h.batch(
      mapinfoDatagram(kMapinfo(raw('10.0.0.3', 7001), raw('10.0.0.3', 35002)), kMapinfo(raw('10.0.0.3', 7002), raw('10.0.0.3', 35003))),
      kMapinfoNum(41, 2),
    );
    expect(out).toMatchObject([
      { op: 'handle_err', errSeq: 0, code: 11 },
      { op: 'mapinfo_num', sendNum: 2, ackNum: 1 },
    ]);
    const m = mappingOf(h, '10.0.0.3', 7001)!;
    expect(m).toMatchObject({ state: 'unreserved', fd: -1, mapped: sa('10.0.0.3', 35002) });
    // Still answered to peers and removable.
    expect(h.d.findListener(sa('10.0.0.3', 7001))).toBeDefined();
    h.batch(kRemove(42, raw('10.0.0.3', 7001)));
    expect(mappingOf(h, '10.0.0.3', 7001)).toBeUndefined();
    expect(h.binder.closed).toEqual([]);
  });

  it('an identical record for a mapping made by ADD is counted but does not add a reference', () => {
    const h = harness();
    ready(h, 4);
    h.batch(kAdd(1, raw('10.0.0.1', 6000)));
    const out = h.batch(mapinfoDatagram(kMapinfo(raw('10.0.0.1', 6000), raw('10.0.0.1', 40000))), kMapinfoNum(2, 1));
    expect(out).toMatchObject([{ op: 'mapinfo_num', ackNum: 1 }]);
    expect(mappingOf(h, '10.0.0.1', 6000)!.refCount).toBe(1);
  });

  it('NO_PORT_MAP records bind nothing and are counted', () => {
    const h = harness();
    ready(h, 4);
    const out = h.batch(mapinfoDatagram(kMapinfo(raw('10.0.0.1', 4791), raw('10.0.0.1', 4791), 1)), kMapinfoNum(3, 1));
    expect(out).toMatchObject([{ op: 'mapinfo_num', ackNum: 1 }]);
    expect(h.binder.calls).toHaveLength(0);
    expect(mappingOf(h, '10.0.0.1', 4791)).toMatchObject({ state: 'unreserved', flags: 1 });
  });

  it('ABI 3 replay for the legacy client 3: records without FLAGS, owner 3, reply type 0x0C07', () => {
    const h = harness();
    ready(h, 3);
    const out = h.batch(mapinfoDatagram(kMapinfo(raw('::', 4000), raw('::', 36000), undefined, 3)), kMapinfoNum(5, 1, 3));
    expect(out).toEqual([{ op: 'mapinfo_num', client: 3, seq: 1, pid: PID, kernelSeq: 5, sendNum: 1, ackNum: 1 }]);
    expect(h.sends.at(-1)![0]!.readUInt16LE(4)).toBe(0x0c07);
    expect(mappingOf(h, '::', 4000)).toMatchObject({ ownerClient: 3, state: 'bound' });
    h.batch(kRemove(6, raw('::', 4000), 3));
    expect(h.d.table.size).toBe(0);
    expect(h.binder.open.size).toBe(0);
  });

  it('records and MAPINFO_NUM in separate batches; the count restarts with the next replay', () => {
    const h = harness();
    ready(h, 4);
    h.batch(mapinfoDatagram(kMapinfo(raw('10.0.0.1', 1000), raw('10.0.0.1', 37000))));
    h.batch(mapinfoDatagram(kMapinfo(raw('10.0.0.1', 1001), raw('10.0.0.1', 37001))));
    expect(h.batch(kMapinfoNum(7, 2))).toMatchObject([{ op: 'mapinfo_num', sendNum: 2, ackNum: 2 }]);
    expect(h.batch(kMapinfoNum(8, 0))).toMatchObject([{ op: 'mapinfo_num', sendNum: 0, ackNum: 0 }]);
  });
});

describe('invalid and unknown messages', () => {
  it('a malformed ADD -> HANDLE_ERR 10 with the header seq', () => {
    const h = harness();
    ready(h, 4);
    const bad = encodeMessage({ type: 0x0801, flags: 1, seq: 55, pid: 0 }, [u32(1, 0), { type: 2, v: { kind: 'bytes', value: Buffer.alloc(100) } }]);
    expect(h.batch(bad)).toEqual([{ op: 'handle_err', client: 2, seq: 2, pid: PID, errSeq: 55, code: 10 }]);
    expect(h.d.counters.invalid).toBe(1);
  });

  it('unknown ops (9, REMOTE_INFO and HANDLE_ERR from the kernel) -> HANDLE_ERR 10 with the header seq, per client', () => {
    const h = harness();
    ready(h, 3);
    const msgs = [
      encodeMessage({ type: nlType(2, 9), flags: 1, seq: 60, pid: 0 }, []),
      encodeMessage({ type: nlType(2, 4), flags: 1, seq: 61, pid: 0 }, []),
      encodeMessage({ type: nlType(3, 5), flags: 1, seq: 62, pid: 0 }, []),
    ];
    expect(h.batch(...msgs)).toMatchObject([
      { op: 'handle_err', client: 2, errSeq: 60, code: 10 },
      { op: 'handle_err', client: 2, errSeq: 61, code: 10 },
      { op: 'handle_err', client: 3, errSeq: 62, code: 10 },
    ]);
  });

  it('a malformed MAPINFO record -> HANDLE_ERR 10 seq 0; the other records still count', () => {
    const h = harness();
    ready(h, 4);
    const bad = encodeKernelMapinfo({ local: raw('10.0.0.1', 1), mapped: raw('::1', 2), flags: 0 });
    const out = h.batch(mapinfoDatagram(bad, kMapinfo(raw('10.0.0.1', 3), raw('10.0.0.1', 38000))), kMapinfoNum(9, 2));
    expect(out).toMatchObject([
      { op: 'handle_err', errSeq: 0, code: 10 },
      { op: 'mapinfo_num', ackNum: 1 },
    ]);
  });

  it('a datagram with a broken tail: complete messages are handled, the rest counted', () => {
    const h = harness();
    ready(h, 4);
    const dg = Buffer.concat([kRegPid(70), hex`ff ff 00 00 01 08`]);
    expect(h.batch(dg)).toMatchObject([{ op: 'rreg_pid', kernelSeq: 70 }]);
    expect(h.d.counters.invalid).toBe(1);
  });

  it('truncated datagrams are counted and their complete messages handled', () => {
    const h = harness();
    ready(h, 4);
    h.d.onBatch([{ data: kRegPid(71), sender: 0, truncated: true }]);
    expect(h.take()).toMatchObject([{ op: 'rreg_pid', kernelSeq: 71 }]);
    expect(h.d.counters.truncated).toBe(1);
  });
});

describe('packed batches', () => {
  it('each datagram is read within its own bounds, with its own sender and truncation flag', () => {
    const h = harness();
    ready(h, 4);
    const b = pack([kRegPid(72), kAdd(2, raw('10.0.0.1', 5001)), kRegPid(73)], 0, [2]);
    b.senders[1] = 4321;
    h.d.onPackedBatch(b);
    expect(h.take()).toMatchObject([
      { op: 'rreg_pid', kernelSeq: 72 },
      { op: 'rreg_pid', kernelSeq: 73 },
    ]);
    expect(h.d.counters.droppedForeign).toBe(1);
    expect(h.d.counters.truncated).toBe(1);
    expect(h.d.table.size).toBe(0);
  });

  it('a mapping keeps its own copies of its addresses: reusing the batch memory changes nothing', () => {
    const h = harness();
    ready(h, 4);
    const b = pack([kAdd(5, raw('10.0.0.9', 6000)), kQuery(6, raw('10.0.0.9', 6001), raw('10.0.0.7', 7000))], 0);
    h.d.onPackedBatch(b);
    h.take();
    b.data.fill(0xff);
    const pool = Buffer.allocUnsafe(1).buffer;
    const maps = h.d.table.list();
    expect(maps).toHaveLength(2);
    for (const m of maps) {
      for (const bytes of [m.localRaw, m.mappedRaw, m.local.ip, m.mapped.ip]) {
        expect(bytes.buffer).not.toBe(b.data.buffer);
        // not Node's shared pool either, whose slab short-lived messages share
        expect(bytes.buffer).not.toBe(pool);
      }
      expect(decodeSockaddr(m.localRaw)).toEqual({ ok: true, addr: m.local });
      expect(decodeSockaddr(m.mappedRaw)).toEqual({ ok: true, addr: m.mapped });
    }
    expect(maps.map((m) => formatAddr(m.local)).sort()).toEqual(['10.0.0.9:6000', '10.0.0.9:6001']);
    expect(maps.every((m) => m.mapped.port !== 0 && m.state === 'bound')).toBe(true);
  });
});

describe('mapping storage', () => {
  it("a removed mapping's block is reused only after its batch", () => {
    const h = harness();
    ready(h, 4);
    h.batch(kAdd(10, raw('10.0.0.1', 5000)));
    const a = h.d.table.findExact(sa('10.0.0.1', 5000))!;
    const blockA = a.block!;
    expect(blockA).toBeDefined();
    // REMOVE A and ADD B in one read: B must not get A's block while that read may still use it
    const out = h.batch(kRemove(11, raw('10.0.0.1', 5000)), kAdd(12, raw('10.0.0.2', 5001)));
    const b = h.d.table.findExact(sa('10.0.0.2', 5001))!;
    expect(b.block).not.toBe(blockA);
    expect(a.block).toBeUndefined();
    expect(out).toMatchObject([{ op: 'rmanage', kernelSeq: 12, local: raw('10.0.0.2', 5001), mapped: encodeSockaddr(b.mapped) }]);
    // the next read's new mapping gets it, written afresh
    h.batch(kAdd(13, raw('10.0.0.3', 5002)));
    const c = h.d.table.findExact(sa('10.0.0.3', 5002))!;
    expect(c.block).toBe(blockA);
    expect(decodeSockaddr(c.localRaw)).toEqual({ ok: true, addr: sa('10.0.0.3', 5002) });
    expect(decodeSockaddr(c.mappedRaw)).toEqual({ ok: true, addr: c.mapped });
    expect(formatAddr(b.local)).toBe('10.0.0.2:5001'); // B untouched
  });

  it('long-lived mappings among many short-lived ones share few slabs (memory follows the live count)', () => {
    const h = harness();
    ready(h, 4);
    let seq = 100;
    for (let i = 0; i < 200; i++) {
      h.batch(kAdd(seq++, raw('10.1.0.1', 1000 + i)));
      for (let j = 0; j < 10; j++) {
        h.batch(kAdd(seq++, raw('10.2.0.1', 3000 + j)));
        h.batch(kRemove(seq++, raw('10.2.0.1', 3000 + j)));
      }
    }
    const maps = h.d.table.list();
    expect(maps).toHaveLength(200);
    // 32 blocks per slab: 200 live mappings fit in 7 slabs when freed blocks are reused
    // (a bump allocator would leave about one live mapping in each of ~70 slabs)
    expect(new Set(maps.map((m) => m.localRaw.buffer)).size).toBeLessThanOrEqual(8);
  });
});

describe('senders', () => {
  it('datagrams from a port id other than the kernel are dropped and counted', () => {
    const h = harness();
    ready(h, 4);
    h.d.onBatch([{ data: kAdd(1, raw('10.0.0.1', 5000)), sender: 4321, truncated: false }]);
    expect(h.take()).toEqual([]);
    expect(h.pendingCalls()).toBe(0);
    expect(h.d.counters.droppedForeign).toBe(1);
    expect(h.d.table.size).toBe(0);
    expect(h.binder.calls).toHaveLength(0);
  });

  it('in USERSOCK mode the simulator port id is the kernel, and port id 0 is foreign', () => {
    const h = harness({ kernelPortId: 777 });
    h.d.start();
    h.take();
    h.d.onBatch([{ data: kHello(1, 4), sender: 0, truncated: false }]);
    expect(h.d.abi.phase).toBe('negotiating');
    expect(h.d.counters.droppedForeign).toBe(1);
    h.d.onBatch([{ data: kHello(1, 4), sender: 777, truncated: false }]);
    expect(h.d.negotiatedAbi).toBe(4);
  });
});

describe('batching', () => {
  it('N ADDs in one batch: one reservePorts call with N items, replies in arrival order, one send', () => {
    for (const range of [undefined, { low: 41000, high: 41999 }]) {
      const h = harness({ range });
      ready(h, 4);
      const N = 25;
      const seqs = Array.from({ length: N }, (_, i) => 300 + i);
      h.feed(...seqs.map((s, i) => kAdd(s, raw('10.0.0.1', 6000 + i))));
      expect(h.binder.calls).toHaveLength(1);
      expect(h.binder.calls[0]).toHaveLength(N);
      expect(h.pendingCalls()).toBe(1);
      const out = h.take();
      expect(out.map((m) => m.op === 'rmanage' && m.kernelSeq)).toEqual(seqs);
      const ports = out.map((m) => (m.op === 'rmanage' ? m.mapped.readUInt16BE(2) : 0));
      expect(new Set(ports).size).toBe(N);
      // Header seqs increase in send order.
      const hs = out.map((m) => (m.op === 'rmanage' ? m.seq : -1));
      expect(hs).toEqual([...hs].sort((a, b) => a - b));
    }
  });

  it('a mixed batch is answered in arrival order in one send', () => {
    const h = harness();
    ready(h, 4);
    h.batch(kAdd(1, raw('0.0.0.0', 9000)));
    h.feed(
      kAdd(10, raw('10.0.0.1', 5000)),
      kRegPid(11),
      kAdd(12, raw('10.0.0.1', 5000)), // duplicate of the pending one
      kQuery(13, raw('10.0.0.1', 9000), raw('10.0.0.2', 1)), // wildcard -> 11
      encodeMessage({ type: nlType(2, 9), flags: 1, seq: 14, pid: 0 }, []),
      kAdd(15, raw('10.0.0.1', 5001)),
      kQuery(16, raw('10.0.0.1', 7000), raw('10.0.0.2', 1)), // started after the send
    );
    expect(h.pendingCalls()).toBe(1);
    const out = h.take();
    expect(out.map((m) => [m.op, m.op === 'handle_err' ? m.errSeq : 'kernelSeq' in m ? m.kernelSeq : -1])).toEqual([
      ['rmanage', 10],
      ['rreg_pid', 11],
      ['handle_err', 12],
      ['handle_err', 13],
      ['handle_err', 14],
      ['rmanage', 15],
    ]);
    expect(out.map((m) => (m.op === 'handle_err' ? m.code : 0))).toEqual([0, 0, 12, 11, 10, 0]);
    expect(h.peer.started).toHaveLength(1);
  });
});

describe('NLMSG_DONE statuses', () => {
  it('status 0 and bare DONE are quiet; a failure for our message is counted; REMOTE_INFO -EINVAL is expected', () => {
    const h = harness();
    ready(h, 4);
    h.batch(kRegPid(1)); // our seq 2
    h.batch(encodeDone(2, PID, 0), encodeDone(0, 0));
    expect(h.d.counters.kernelRejected).toBe(0);
    h.d.remoteInfo({ ownerClient: 2, localRaw: raw('::', 1), remote: sa('::1', 2), mappedLocalRaw: raw('::', 3), mappedRemote: sa('::1', 4) });
    h.take(); // our seq 3
    h.batch(encodeDone(3, PID, -22));
    expect(h.d.counters.kernelRejected).toBe(0);
    h.batch(kRegPid(4)); // our seq 4
    h.batch(encodeDone(4, PID, -22));
    expect(h.d.counters.kernelRejected).toBe(1);
    expect(h.log.has(/returned -22 for our REG_PID/)).toBe(true);
  });
});

describe('operator surface', () => {
  it('describeMappings and shutdown (releases every reserved port)', () => {
    const h = harness();
    ready(h, 4);
    h.batch(kAdd(1, raw('0.0.0.0', 5000)), kAdd(2, raw('10.0.0.1', 6000), 1), kQuery(3, raw('10.0.0.1', 50000), raw('10.0.0.2', 1)));
    expect(h.d.describeMappings().map((m) => [m.local, m.mapped, m.reserved])).toEqual(
      expect.arrayContaining([
        ['0.0.0.0:5000', '0.0.0.0:40000', true],
        ['10.0.0.1:6000', '10.0.0.1:6000', false],
        ['10.0.0.1:50000', '10.0.0.1:40001', true],
      ]),
    );
    expect(h.d.shutdown()).toBe(2);
    expect(h.binder.open.size).toBe(0);
    expect(h.peer.cancelled).toEqual([1]);
    expect(h.d.table.size).toBe(0);
  });
});

describe('the daemon never dies on what it receives (seeded)', () => {
  it('random and mutated datagrams: no exception, and everything sent passes the kernel checks', () => {
    const h = harness({ range: { low: 42000, high: 42999 } });
    ready(h, 4);
    const r = prng(31337);
    const addrs = [raw('0.0.0.0', 5000), raw('10.0.0.1', 5000), raw('::', 5000), raw('10.0.0.1', 5001), raw('fe80::1', 5001, { scopeId: 2 })];
    const valid = (): Buffer => {
      const a = r.pick(addrs);
      const seq = r.int(1000);
      switch (r.int(7)) {
        case 0:
          return kAdd(seq, a, r.pick([0, 1, undefined]), r.pick([2, 3]));
        case 1:
          return kQuery(seq, a, r.pick(addrs), r.pick([0, 1, undefined]));
        case 2:
          return kRemove(seq, a, r.pick([2, 3]));
        case 3:
          return mapinfoDatagram(kMapinfo(a, encodeSockaddr({ ...sa('0.0.0.0', 0), family: a.readUInt16LE(0) === 2 ? 2 : 10, ip: Buffer.alloc(a.readUInt16LE(0) === 2 ? 4 : 16), port: 30000 + r.int(20) })));
        case 4:
          return kMapinfoNum(seq, r.int(5));
        case 5:
          return kRegPid(seq, r.pick([2, 3]), { ulib: r.next() < 0.1 ? 'x' : undefined });
        default:
          return r.next() < 0.5 ? kHello(seq, r.int(6)) : encodeDone(r.int(10), PID, r.pick([0, -22, undefined]));
      }
    };
    for (let i = 0; i < 3000; i++) {
      const dgs: Buffer[] = [];
      for (let k = 1 + r.int(4); k > 0; k--) {
        let b = valid();
        const mode = r.int(4);
        if (mode === 1) {
          b = Buffer.from(b);
          for (let f = 1 + r.int(3); f > 0; f--) b[r.int(b.length)] = r.int(256);
        } else if (mode === 2) {
          b = b.subarray(0, r.int(b.length + 1));
        } else if (mode === 3) {
          b = r.bytes(r.int(80));
        }
        dgs.push(b);
      }
      expect(() => h.d.onBatch(dgs.map((data) => ({ data, sender: 0, truncated: r.next() < 0.05 })))).not.toThrow();
      if (r.next() < 0.05) {
        for (const id of h.peer.started.map((q) => q.id)) h.d.queryDone(id, r.pick([{ kind: 'rejected' as const }, { kind: 'timeout' as const }]));
      }
      if (r.next() < 0.01) h.d.tick(h.advance(5000));
    }
    const sent = h.take();
    expect(sent.length).toBeGreaterThan(1000);
    expect(sent.filter((m) => m.op === 'invalid')).toEqual([]);
    // Every reserved port belongs to exactly one live mapping (no leak, no double use).
    const live = h.d.table.list().filter((m) => m.fd >= 0);
    expect(new Set(live.map((m) => m.fd))).toEqual(new Set(h.binder.open.keys()));
    h.d.shutdown();
    expect(h.binder.open.size).toBe(0);
  });
});

describe('requests the kernel has given up on (a late answer can oops a 6.1 kernel)', () => {
  const local = () => raw('192.0.2.1', 7000);
  const remote = () => raw('192.0.2.2', 5000);

  it('ADD then REMOVE of the same address in one read: the ADD is not answered, nothing stays held', () => {
    const h = harness();
    ready(h, 4);
    const out = h.batch(kAdd(7, local()), kRemove(8, local()));
    expect(out).toEqual([]);
    expect(h.d.table.size).toBe(0);
    expect(h.binder.heldPorts().size).toBe(0);
    expect(h.d.counters.lateDropped).toBe(1);
    // the next ADD of that address is answered normally
    expect(h.batch(kAdd(9, local())).map((m) => m.op)).toEqual(['rmanage']);
  });

  it('QUERY then REMOVE of the same address in one read: no query is started and nothing is answered', () => {
    const h = harness();
    ready(h, 4);
    const out = h.batch(kQuery(7, local(), remote()), kRemove(8, local()));
    expect(out).toEqual([]);
    expect(h.peer.started).toEqual([]);
    expect(h.d.pendingQueries).toBe(0);
    expect(h.d.table.size).toBe(0);
  });

  it('a REMOVE in a later read does not withdraw an answer already sent', () => {
    const h = harness();
    ready(h, 4);
    expect(h.batch(kAdd(7, local())).map((m) => m.op)).toEqual(['rmanage']);
    expect(h.batch(kRemove(8, local()))).toEqual([]);
    expect(h.d.counters.lateDropped).toBe(0);
  });

  it(`after the loop stood still for ${STALL_DROP_MS} ms, REG_PID/ADD/QUERY read before the socket drains are dropped`, () => {
    const h = harness();
    ready(h, 4);
    h.d.tick(h.now);
    h.advance(STALL_DROP_MS + 500);
    // a full batch (64 datagrams): the socket may hold more of the backlog
    const full = Array.from({ length: 64 }, (_, i) => kAdd(100 + i, raw('192.0.2.1', 8000 + i)));
    expect(h.batch(...full)).toEqual([]);
    // the ticker runs again, but the backlog is not drained yet: still dropped
    h.d.tick(h.now);
    expect(h.batch(kRegPid(200), kQuery(201, local(), remote()))).toEqual([]);
    expect(h.peer.started).toEqual([]);
    expect(h.d.counters.lateDropped).toBe(66);
    expect(h.log.has(/stood still for \d+ ms/, 'warn')).toBe(true);
    // that batch was not full: the socket is drained, fresh requests are answered
    expect(h.batch(kAdd(300, local())).map((m) => m.op)).toEqual(['rmanage']);
  });

  it('a short stall (the kernel is still waiting) drops nothing', () => {
    const h = harness();
    ready(h, 4);
    h.d.tick(h.now);
    h.advance(STALL_DROP_MS - 1000);
    expect(h.batch(kAdd(7, local())).map((m) => m.op)).toEqual(['rmanage']);
    expect(h.d.counters.lateDropped).toBe(0);
  });
});

describe('stall seen by the ticker (SIGCONT: libuv runs timers before it reads the sockets)', () => {
  it('the backlog read right after the stalled tick is dropped; the turn after it answers again', () => {
    const deferred: (() => void)[] = [];
    const h = harness({ afterReads: deferred });
    ready(h, 4);
    h.d.tick(h.now);
    h.advance(STALL_DROP_MS + 3000);
    h.d.tick(h.now); // timers phase: the stall is seen here
    expect(h.batch(kAdd(7, raw('192.0.2.1', 7000)), kQuery(8, raw('192.0.2.1', 7001), raw('192.0.2.2', 5000)))).toEqual([]);
    deferred.splice(0).forEach((f) => f()); // check phase
    expect(h.d.counters.lateDropped).toBe(2);
    expect(h.peer.started).toEqual([]);
    expect(h.batch(kAdd(9, raw('192.0.2.1', 7002))).map((m) => m.op)).toEqual(['rmanage']);
  });

  it('no backlog: the stall ends with that loop turn and the next request is answered', () => {
    const deferred: (() => void)[] = [];
    const h = harness({ afterReads: deferred });
    ready(h, 4);
    h.d.tick(h.now);
    h.advance(STALL_DROP_MS + 3000);
    h.d.tick(h.now);
    deferred.splice(0).forEach((f) => f()); // nothing was read in between
    h.advance(50);
    expect(h.batch(kAdd(7, raw('192.0.2.1', 7000))).map((m) => m.op)).toEqual(['rmanage']);
    expect(h.d.counters.lateDropped).toBe(0);
  });
});
