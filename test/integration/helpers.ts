/**
 * Shared setup for the daemon integration suite: a KernelSim plus the built daemon
 * started against it, expected daemon -> kernel bytes (rdma-core's layouts, built by
 * hand in test/sim/bytes.ts, not by src/codec), and host port probes.
 */
import { execFileSync } from 'node:child_process';
import { createServer } from 'node:net';
import { expect } from 'vitest';
import { native } from '../../src/native/index.js';
import { a16, a32, abytes, astr, byteDiff, nlmsg } from '../sim/bytes.js';
import { DaemonProc, type DaemonOptions } from '../sim/daemon-proc.js';
import { type DoneTiming, KernelSim, type ReceivedEntry, describeEntry } from '../sim/kernel-sim.js';

export const ULIB = 'iWarpPortMapperUser';
export const EADDRINUSE = 98;

export interface Rig {
  sim: KernelSim;
  daemon: DaemonProc;
  /** The daemon's netlink port id (learned from its HELLO / MAPINFO request). */
  pid: number;
  /** The daemon's HELLO and MAPINFO request as received. */
  hello?: ReceivedEntry;
  mapinfoReq: ReceivedEntry;
}

export interface RigOptions {
  abi?: 3 | 4;
  group: number;
  replyTimeoutMs?: number;
  doneTiming?: DoneTiming;
  daemon?: Partial<DaemonOptions>;
  /** An existing simulator (restart tests). */
  sim?: KernelSim;
}

/** Start a simulator (unless given) and a daemon, and wait for the daemon's MAPINFO request. */
export async function startRig(o: RigOptions): Promise<Rig> {
  const sim = o.sim ?? (await KernelSim.create({ abi: o.abi ?? 4, group: o.group, replyTimeoutMs: o.replyTimeoutMs ?? 5000, doneTiming: o.doneTiming }));
  const from = sim.mark();
  const daemon = await DaemonProc.start({ kernelPort: sim.portId, group: o.group, ...o.daemon });
  let mapinfoReq: ReceivedEntry;
  try {
    mapinfoReq = await sim.waitForMapinfoRequest(15_000, 2, from);
  } catch (e) {
    throw new Error(`${(e as Error).message}\ndaemon log:\n${daemon.tail(40)}`);
  }
  const hello = sim.received.slice(from).find((e) => e.header.type === 0x808);
  return { sim, daemon, pid: mapinfoReq.sender, hello, mapinfoReq };
}

export async function stopRig(r: Rig | undefined): Promise<void> {
  if (!r) return;
  r.sim.close();
  await r.daemon.kill();
}

/** Fail with readable bytes when a received message differs from the expected one. */
export function expectBytes(actual: Buffer, expected: Buffer, what = 'message'): void {
  const d = byteDiff(actual, expected);
  expect(d, `${what} differs from rdma-core's bytes: ${d}`).toBe('');
}

/** Nothing rejected, no violations: everything the daemon sent was acceptable to the kernel. */
export function expectClean(sim: KernelSim): void {
  expect(sim.problems(), `kernel simulator problems:\n${sim.problems().join('\n')}\nlog:\n${sim.describeLog()}`).toEqual([]);
}

// ---------------------------------------------------------------------------
// Expected daemon -> kernel messages (rdma-core layouts, spec 2.2-2.3). `seq` is the
// daemon's header seq, `pid` its port id.

type H = { seq: number; pid: number };
const hdr = (type: number, h: H) => ({ type, flags: 1, seq: h.seq, pid: h.pid });

export const X = {
  hello: (h: H, abi = 4) => nlmsg(hdr(0x808, h), a16(1, abi)),
  mapinfoReq: (h: H, version: number, client = 2) => nlmsg(hdr((client << 10) | 6, h), astr(1, ULIB), a16(2, version)),
  regPidReply: (h: H, kseq: number, ibdev: string, version: number) =>
    nlmsg(hdr(0x800, h), a32(1, kseq), astr(2, ibdev), astr(3, ULIB), a16(4, version), a16(5, 0)),
  rmanage: (h: H, kseq: number, local: Buffer, mapped: Buffer) => nlmsg(hdr(0x801, h), a32(1, kseq), abytes(2, local), abytes(3, mapped), a16(4, 0)),
  rquery: (h: H, kseq: number, local: Buffer, remote: Buffer, mappedLocal: Buffer, mappedRemote: Buffer, err = 0) =>
    nlmsg(hdr(0x802, h), a32(1, kseq), abytes(2, local), abytes(3, remote), abytes(4, mappedLocal), abytes(5, mappedRemote), a16(6, err)),
  remoteInfo: (h: H, local: Buffer, remote: Buffer, mappedLocal: Buffer, mappedRemote: Buffer) =>
    nlmsg(hdr(0x804, h), a32(1, 0), abytes(2, local), abytes(3, remote), abytes(4, mappedLocal), abytes(5, mappedRemote), a16(6, 0)),
  handleErr: (h: H, kseq: number, code: number, client = 2) => nlmsg(hdr((client << 10) | 5, h), a32(1, kseq), a16(2, code)),
  mapinfoNumReply: (h: H, kseq: number, send: number, ack: number) => nlmsg(hdr(0x807, h), a32(1, kseq), a32(2, send), a32(3, ack)),
};

/** Header seq and pid of a received message (for building its expected twin). */
export const hOf = (e: ReceivedEntry): H => ({ seq: e.header.seq, pid: e.header.pid });

export function show(e: ReceivedEntry | undefined): string {
  return e ? describeEntry(e) : '(none)';
}

// ---------------------------------------------------------------------------
// Host port probes.

/**
 * Try a host TCP listen on `host:port` (what another program would do), then close it.
 * Resolves 'ok' or the error code (e.g. 'EADDRINUSE').
 */
export function tcpBind(port: number, host = '0.0.0.0'): Promise<string> {
  return new Promise((resolve) => {
    const srv = createServer();
    srv.once('error', (e: NodeJS.ErrnoException) => resolve(e.code ?? String(e)));
    srv.listen({ port, host, exclusive: true }, () => srv.close(() => resolve('ok')));
  });
}

/** A plain bind() without SO_REUSEADDR through the addon (family 2 or 10); returns 0 or the errno. */
export function rawBind(port: number, family: 2 | 10 = 2): number {
  const r = native.reservePorts(Uint8Array.of(family), Uint16Array.of(port));
  if (r.errnos[0] === 0) native.closeFds(Int32Array.of(r.fds[0]!));
  return r.errnos[0]!;
}

/** Who has TCP port `port` bound (ss output), for failure messages. */
export function portHolders(port: number): string {
  try {
    return execFileSync('ss', ['-tanpH', `( sport = :${port} )`], { encoding: 'utf8', timeout: 5000 }).trim() || '(ss shows no socket)';
  } catch (e) {
    return `(ss failed: ${(e as Error).message})`;
  }
}

/**
 * The daemon no longer holds `port`: a plain bind succeeds (names the holder if not).
 * The daemon closes released sockets on a background thread (the addon's port pool),
 * so the port is free microseconds after the reply, not with it: poll up to ~1 s.
 */
export async function expectReleased(port: number, family: 2 | 10 = 2): Promise<void> {
  const deadline = Date.now() + 1000;
  let e = rawBind(port, family);
  while (e !== 0 && Date.now() < deadline) {
    await sleep(5);
    e = rawBind(port, family);
  }
  if (e !== 0) expect.fail(`port ${port} (family ${family}) is still in use after 1 s (errno ${e}); holders:\n${portHolders(port)}`);
}

/** Hold `port` with a bound (not listening) socket, like the daemon does; returns the fd. */
export function holdPort(port: number, family: 2 | 10 = 2): number {
  const r = native.reservePorts(Uint8Array.of(family), Uint16Array.of(port));
  if (r.errnos[0] !== 0) throw new Error(`cannot hold port ${port}: errno ${r.errnos[0]}`);
  return r.fds[0]!;
}

export function releaseFds(...fds: number[]): void {
  native.closeFds(Int32Array.from(fds));
}

/**
 * Application-side ("local") TCP ports for requests: the daemon never binds them (unless a
 * test asks for NO_PORT_MAP checks), so they just have to be distinct and outside the
 * ephemeral range the daemon reserves from. Spread by pid so parallel files differ.
 */
let localCursor = 10_000 + ((process.pid * 37) % 15_000);
export function localPort(): number {
  localCursor = localCursor >= 29_999 ? 10_000 : localCursor + 1;
  return localCursor;
}

/**
 * `n` TCP ports above the ephemeral range that a plain bind can take right now (for
 * mapinfo records the test writes itself: the daemon re-binds exactly these ports).
 */
let highCursor = 61_000 + ((process.pid * 13) % 2000);
export function freeHighPorts(n: number): number[] {
  const out: number[] = [];
  for (let tries = 0; out.length < n && tries < 4 * n + 100; tries++) {
    highCursor = highCursor >= 65_000 ? 61_000 : highCursor + 1;
    if (rawBind(highCursor, 10) === 0) out.push(highCursor);
  }
  if (out.length < n) throw new Error(`only ${out.length} of ${n} free ports above 61000`);
  return out;
}

/** A TCP port that is free right now (bind 0, close). */
export async function freeTcpPort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = createServer();
    srv.once('error', reject);
    srv.listen({ port: 0, host: '0.0.0.0' }, () => {
      const p = (srv.address() as { port: number }).port;
      srv.close(() => resolve(p));
    });
  });
}

export const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
