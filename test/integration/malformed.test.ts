/**
 * Hostile and broken input on the netlink socket: the daemon answers malformed kernel
 * requests with HANDLE_ERR 10 (IWPM_INVALID_NLMSG_ERR) carrying the request's header
 * seq (rdma-core), drops what it cannot frame, ignores non-kernel senders, and keeps
 * serving after all of it.
 */
import { randomBytes } from 'node:crypto';
import { afterAll, afterEach, beforeEach, describe, expect, it } from 'vitest';
import { encodeKernelAdd, encodeKernelRegPid } from '../../src/codec/iwpm.js';
import { a16, a32, abytes, afixed, nlmsg, sa4 } from '../sim/bytes.js';
import { killAllDaemons } from '../sim/daemon-proc.js';
import type { ReceivedEntry } from '../sim/kernel-sim.js';
import { type Rig, X, expectBytes, expectClean, hOf, localPort, rawBind, sleep, startRig, stopRig } from './helpers.js';

const GROUP = 10;
let rig: Rig;

beforeEach(async () => {
  rig = await startRig({ abi: 4, group: GROUP, replyTimeoutMs: 3000 });
  // Registered, so requests are served.
  const r = await rig.sim.regPid();
  if (r.kind !== 'ok') throw new Error(`REG_PID failed: ${JSON.stringify(r.kind)}`);
});
afterEach(async () => {
  await stopRig(rig);
});
afterAll(killAllDaemons);

const K = (op: number, seq: number) => ({ type: 0x800 | op, flags: 1, seq, pid: 0 });
const ulib = () => afixed(4, 'iWarpPortMapperUser', 32);

/** Send `bytes` as a kernel request with header seq `seq`; expect exactly HANDLE_ERR 10 naming it. */
async function expectInvalid(seq: number, bytes: Buffer): Promise<void> {
  const { sim } = rig;
  const from = sim.mark();
  sim.sendRaw(bytes);
  await sim.barrier();
  const answers = sim.received.slice(from).filter((e) => e.msg.op !== 'mapinfo_num' || e.msg.seqAttr === seq);
  const errs = answers.filter((e) => e.msg.op === 'handle_err');
  expect(errs.length, `expected one HANDLE_ERR 10 for seq ${seq}; got:\n${sim.describeLog(from)}\ndaemon:\n${rig.daemon.tail(8)}`).toBe(1);
  const e = errs[0]!;
  expectBytes(e.raw, X.handleErr(hOf(e), seq, 10), 'HANDLE_ERR 10');
  expect(answers.filter((x) => x !== e), 'anything else sent for a malformed request').toEqual([]);
}

/** Nothing but the barrier's answer comes back. */
async function expectSilence(send: () => void): Promise<ReceivedEntry[]> {
  const { sim } = rig;
  const from = sim.mark();
  send();
  await sim.barrier();
  const extra = sim.received.slice(from).filter((e) => e.msg.op !== 'mapinfo_num');
  expect(extra, `expected no answer; got:\n${sim.describeLog(from)}`).toEqual([]);
  return extra;
}

/** The daemon still maps. */
async function stillServing(): Promise<void> {
  const r = await rig.sim.add(`127.0.0.1:${localPort()}`);
  expect(r.kind, `daemon stopped serving; log:\n${rig.daemon.tail(15)}`).toBe('ok');
}

describe('framing errors: dropped without an answer', () => {
  it('datagram shorter than a netlink header', async () => {
    await expectSilence(() => rig.sim.sendRaw(Buffer.from([0x10, 0, 0, 0, 1, 8, 1, 0, 5, 0])));
    await stillServing();
  });
  it('nlmsg_len larger than the datagram', async () => {
    const m = encodeKernelAdd({ seq: rig.sim.nextSeq() }, { echoSeq: 0, local: sa4('127.0.0.1', localPort()), flags: 0 });
    m.writeUInt32LE(m.length + 200, 0);
    await expectSilence(() => rig.sim.sendRaw(m));
    await stillServing();
  });
  it('nlmsg_len smaller than the header', async () => {
    const m = encodeKernelAdd({ seq: rig.sim.nextSeq() }, { echoSeq: 0, local: sa4('127.0.0.1', localPort()), flags: 0 });
    m.writeUInt32LE(8, 0);
    await expectSilence(() => rig.sim.sendRaw(m));
    await stillServing();
  });
  it('empty datagram and random garbage (200 datagrams)', async () => {
    const junk = [Buffer.alloc(0), ...Array.from({ length: 200 }, (_, i) => randomBytes(1 + ((i * 37) % 700)))];
    // random bytes can form a valid-looking header; only require that nothing crashes and mapping goes on
    rig.sim.sendRaw(junk);
    await rig.sim.barrier();
    await stillServing();
    expect(rig.daemon.exited).toBeUndefined();
  });
  it('control messages (NLMSG_NOOP, a bare NLMSG_DONE, NLMSG_ERROR with seq != 0) are ignored', async () => {
    const noop = nlmsg({ type: 1, flags: 0, seq: 0, pid: 0 });
    const bareDone = nlmsg({ type: 3, flags: 2, seq: 0, pid: 0 });
    const err = nlmsg({ type: 2, flags: 0, seq: 77, pid: rig.pid }, a32(0, -22 >>> 0));
    await expectSilence(() => rig.sim.sendRaw([noop, bareDone, err]));
    await stillServing();
  });
});

describe('attribute errors -> HANDLE_ERR 10 with the request seq', () => {
  it('ADD without MANAGE_ADDR (missing attribute)', async () => {
    const seq = rig.sim.nextSeq();
    await expectInvalid(seq, nlmsg(K(1, seq), a32(1, 0), a32(3, 0)));
  });
  it('ADD with a 16-byte address (sockaddr_in instead of sockaddr_storage)', async () => {
    const seq = rig.sim.nextSeq();
    await expectInvalid(seq, nlmsg(K(1, seq), a32(1, 0), abytes(2, sa4('127.0.0.1', localPort()).subarray(0, 16)), a32(3, 0)));
  });
  it('ADD whose address attribute runs past the end of the message', async () => {
    const seq = rig.sim.nextSeq();
    const full = nlmsg(K(1, seq), a32(1, 0), abytes(2, sa4('127.0.0.1', localPort())));
    const cut = Buffer.from(full.subarray(0, 16 + 8 + 100)); // nla_len still says 132
    cut.writeUInt32LE(cut.length, 0);
    await expectInvalid(seq, cut);
  });
  it('ADD with a 2-byte SEQ attribute (u32 too short)', async () => {
    const seq = rig.sim.nextSeq();
    await expectInvalid(seq, nlmsg(K(1, seq), a16(1, 0), abytes(2, sa4('127.0.0.1', localPort())), a32(3, 0)));
  });
  it('QUERY without REMOTE_ADDR', async () => {
    const seq = rig.sim.nextSeq();
    await expectInvalid(seq, nlmsg(K(2, seq), a32(1, 0), abytes(2, sa4('127.0.0.1', localPort())), a32(4, 0)));
  });
  it('REG_PID without ULIB_NAME', async () => {
    const seq = rig.sim.nextSeq();
    await expectInvalid(seq, nlmsg(K(0, seq), a32(1, 0), afixed(2, 'eth0', 16), afixed(3, 'siw0', 32)));
  });
  it('REG_PID with an IBDEV_NAME of 32 chars and no NUL (cannot be echoed within the kernel policy)', async () => {
    const seq = rig.sim.nextSeq();
    const ib = abytes(3, Buffer.alloc(32, 0x61));
    const from = rig.sim.mark();
    rig.sim.sendRaw(nlmsg(K(0, seq), a32(1, 0), afixed(2, 'eth0', 16), ib, ulib()));
    await rig.sim.barrier();
    // Either HANDLE_ERR 10, or a reply the kernel accepts; never a reply the kernel rejects.
    const got = rig.sim.received.slice(from);
    expect(got.filter((e) => e.rejected), rig.sim.describeLog(from)).toEqual([]);
  });
  it('MAPINFO_NUM without SEND_NUM', async () => {
    const seq = rig.sim.nextSeq();
    await expectInvalid(seq, nlmsg(K(7, seq), a32(1, 0)));
  });
  it('HELLO without ABI_VERSION', async () => {
    const seq = rig.sim.nextSeq();
    await expectInvalid(seq, nlmsg(K(8, seq), a32(2, 4)));
  });
  it('REMOVE with a short address (the kernel ignores the HANDLE_ERR, but it is what rdma-core sends)', async () => {
    const seq = rig.sim.nextSeq();
    await expectInvalid(seq, nlmsg(K(3, seq), a32(1, 0), abytes(2, Buffer.alloc(28))));
  });
  it('after all that, mapping works and nothing sent was rejected by the kernel', async () => {
    const seq = rig.sim.nextSeq();
    await expectInvalid(seq, nlmsg(K(1, seq), a32(1, 0)));
    await stillServing();
    expectClean(rig.sim);
  });
});

describe('other odd requests', () => {
  it('unknown ops (9, 100, and kernel-to-daemon REMOTE_INFO / HANDLE_ERR): no answer, or HANDLE_ERR 10 naming them', async () => {
    const { sim } = rig;
    for (const op of [9, 100, 4, 5]) {
      const seq = sim.nextSeq();
      const from = sim.mark();
      sim.sendRaw(nlmsg(K(op, seq), a32(1, 0), a16(2, 0)));
      await sim.barrier();
      for (const e of sim.received.slice(from).filter((x) => x.msg.op !== 'mapinfo_num')) {
        expect(e.msg.op, `answer to unknown op ${op}: ${sim.describeLog(from)}`).toBe('handle_err');
        expectBytes(e.raw, X.handleErr(hOf(e), seq, 10), `HANDLE_ERR for op ${op}`);
      }
    }
    await stillServing();
    expectClean(sim);
  });

  it('ADD with an unsupported address family (AF_UNIX): an error code, no mapping', async () => {
    const seq = rig.sim.nextSeq();
    const bad = sa4('127.0.0.1', localPort());
    bad.writeUInt16LE(1, 0);
    const r = await rig.sim.rawRequest('add', seq, encodeKernelAdd({ seq }, { echoSeq: 0, local: bad, flags: 0 }), { local: bad });
    expect(r.kind, JSON.stringify(r.kind)).toBe('error');
    if (r.kind === 'error') expect([10, 11]).toContain(r.code);
    await stillServing();
  });

  it('two ADDs in one datagram: both answered, in order', async () => {
    const { sim } = rig;
    const s1 = sim.nextSeq();
    const s2 = sim.nextSeq();
    const l1 = sa4('127.0.0.1', localPort());
    const l2 = sa4('127.0.0.1', localPort());
    const p1 = sim.awaitReply('add', s1, { local: l1 });
    const p2 = sim.awaitReply('add', s2, { local: l2 });
    sim.sendRaw(Buffer.concat([encodeKernelAdd({ seq: s1 }, { echoSeq: 0, local: l1, flags: 0 }), encodeKernelAdd({ seq: s2 }, { echoSeq: 0, local: l2, flags: 0 })]));
    const [r1, r2] = await Promise.all([p1, p2]);
    expect(r1.kind).toBe('ok');
    expect(r2.kind).toBe('ok');
    if (r1.kind === 'ok' && r2.kind === 'ok') expect(r1.reply.index).toBeLessThan(r2.reply.index);
  });

  it('REG_PID with the longest names (15-char IF_NAME, 31-char IBDEV) gets an answer the kernel accepts', async () => {
    const seq = rig.sim.nextSeq();
    const r = await rig.sim.rawRequest('reg_pid', seq, encodeKernelRegPid({ seq }, { echoSeq: 0, ifname: 'x'.repeat(15), ibdev: 'y'.repeat(31) }), {
      ibdev: 'y'.repeat(31),
    });
    expect(r.kind, JSON.stringify(r.kind)).toBe('ok');
  });
});

describe('non-kernel senders', () => {
  it('messages from another port id are dropped and counted; the daemon keeps serving the kernel', async () => {
    const { sim, daemon, pid } = rig;
    const spoof = sim.openSpoofer();
    const P = localPort();
    const local = sa4('127.0.0.1', P);
    const before = (daemon.ctl('show', 'stats') as { daemon: { droppedForeign: number } }).daemon.droppedForeign;
    const from = sim.mark();
    spoof.send(encodeKernelAdd({ seq: 4242 }, { echoSeq: 0, local, flags: 0 }), pid);
    spoof.send(encodeKernelRegPid({ seq: 4243 }, { echoSeq: 0, ifname: 'eth0', ibdev: 'evil0' }), pid);
    spoof.send(nlmsg({ type: 0x808, flags: 1, seq: 4244, pid: 0 }, a16(1, 4)), pid);
    await sim.barrier();
    await sleep(100);
    expect(spoof.received, 'the spoofer got an answer').toEqual([]);
    expect(sim.received.slice(from).map((e) => e.msg.op)).toEqual(['mapinfo_num']);
    const after = (daemon.ctl('show', 'stats') as { daemon: { droppedForeign: number } }).daemon.droppedForeign;
    expect(after - before).toBe(3);
    // the spoofed ADD created nothing: the kernel's ADD of the same address is not a duplicate
    const r = await sim.add(local);
    expect(r.kind).toBe('ok');
    if (r.kind === 'ok') expect(rawBind(r.mapped.port)).not.toBe(0);
    expectClean(sim);
  });
});
