/**
 * Startup handshake (HELLO -> MAPINFO request -> replay), ABI 3 and 4, and REG_PID:
 * the daemon's messages compared byte for byte with rdma-core's (spec 2.3, 3.1-3.2).
 */
import { afterAll, afterEach, describe, expect, it } from 'vitest';
import { DaemonProc, killAllDaemons } from '../sim/daemon-proc.js';
import { KernelSim } from '../sim/kernel-sim.js';
import { type Rig, X, expectBytes, expectClean, hOf, show, sleep, startRig, stopRig } from './helpers.js';

const GROUP = 8;
let rig: Rig | undefined;

afterEach(async () => {
  await stopRig(rig);
  rig = undefined;
});
afterAll(killAllDaemons);

describe('handshake, ABI 4 kernel', () => {
  it('HELLO (24 bytes, seq 0, ABI 4), then MAPINFO request to client 2 (48 bytes, ULIB_VER 4); nothing to client 3', async () => {
    rig = await startRig({ abi: 4, group: GROUP });
    const { sim, pid } = rig;
    expect(rig.hello, `no HELLO before the MAPINFO request; log:\n${sim.describeLog()}`).toBeDefined();
    const hello = rig.hello!;
    expect(hello.sender).toBe(pid);
    expectBytes(hello.raw, X.hello({ seq: 0, pid }), 'HELLO');
    expect(hello.answer).toEqual({ kind: 'done', status: 0 });
    expect(hello.index).toBeLessThan(rig.mapinfoReq.index);
    expectBytes(rig.mapinfoReq.raw, X.mapinfoReq({ seq: 1, pid }, 4), 'MAPINFO request');
    expect(rig.mapinfoReq.answer).toEqual({ kind: 'done', status: 0 });
    expect(sim.userPid).toBe(pid);
    expect(sim.registration[2]).toBe('INCOMPL');
    expect(sim.ulibVersion).toBe(4);
    await sleep(300);
    expect(sim.received.filter((e) => (e.header.type >> 10) === 3), 'client-3 messages on an ABI 4 kernel').toEqual([]);
    expect(sim.received.filter((e) => e.msg.op === 'mapinfo_req')).toHaveLength(1);
    expect(sim.received.filter((e) => e.msg.op === 'hello')).toHaveLength(1);
    // The daemon runs and is healthy: a barrier is answered, nothing logged as an error.
    await sim.barrier();
    expectClean(sim);
    expect(rig.daemon.grep(/\b(error|warn):/), rig.daemon.tail(20)).toEqual([]);
  });

  it('copes with the kernel sending the DONE before the HELLO reply (order seen under qemu)', async () => {
    rig = await startRig({ abi: 4, group: GROUP, doneTiming: 'before-handler' });
    const r = await rig.sim.add('127.0.0.1:21001');
    expect(r.kind, JSON.stringify(r)).toBe('ok');
    expectClean(rig.sim);
  });

  it('REG_PID reply: type 0x800, SEQ = kernel header seq, IBDEV echoed from the request, ULIB name, ULIB_VER 4, ERR 0 (76 bytes for irdma0)', async () => {
    rig = await startRig({ abi: 4, group: GROUP });
    const { sim, pid } = rig;
    const r = await sim.regPid({ ibdev: 'irdma0', ifname: 'ens1f0' });
    expect(r.kind, JSON.stringify(r)).toBe('ok');
    if (r.kind !== 'ok') return;
    expect(r.reply.sender).toBe(pid);
    expect(r.reply.raw.length).toBe(76);
    expectBytes(r.reply.raw, X.regPidReply(hOf(r.reply), r.seq, 'irdma0', 4), 'RREG_PID');
    expect(sim.registration[2]).toBe('VALID');
    expect(sim.ulibVersion).toBe(4);
    // A second REG_PID from another device: the reply echoes *this* request's device name.
    const long = 'siw_device_name_of_31_chars_xyz';
    expect(long.length).toBe(31);
    const r2 = await sim.regPid({ ibdev: long, ifname: 'eth9' });
    expect(r2.kind, JSON.stringify(r2)).toBe('ok');
    if (r2.kind === 'ok') expectBytes(r2.reply.raw, X.regPidReply(hOf(r2.reply), r2.seq, long, 4), 'RREG_PID (31-char ibdev)');
    expectClean(sim);
  });

  it('REG_PID with another user-library name for a registered client -> HANDLE_ERR 15 (32 bytes, the request seq)', async () => {
    rig = await startRig({ abi: 4, group: GROUP });
    const { sim } = rig;
    expect((await sim.regPid()).kind).toBe('ok');
    const r = await sim.regPid({ ulib: 'SomeOtherPortMapper' });
    expect(r.kind, JSON.stringify(r)).toBe('error');
    if (r.kind !== 'error') return;
    expect(r.code).toBe(15);
    expectBytes(r.reply.raw, X.handleErr(hOf(r.reply), r.seq, 15), 'HANDLE_ERR');
    // and the daemon goes on serving the right name
    expect((await sim.regPid()).kind).toBe('ok');
    expectClean(sim);
  });

  it('the first ADD triggers REG_PID by multicast; the daemon answers it and the ADD', async () => {
    rig = await startRig({ abi: 4, group: GROUP });
    const { sim } = rig;
    expect(sim.registration[2]).toBe('INCOMPL');
    const r = await sim.add('127.0.0.1:21002');
    expect(r.kind, JSON.stringify(r)).toBe('ok');
    const regReply = sim.received.find((e) => e.msg.op === 'reg_pid');
    expect(regReply, sim.describeLog()).toBeDefined();
    expect(regReply!.index).toBeLessThan((r as { reply: { index: number } }).reply.index);
    expectClean(sim);
  });

  it('daemon header seqs: one counter per client index, from 0, +1 per message', async () => {
    rig = await startRig({ abi: 4, group: GROUP });
    const { sim } = rig;
    await sim.add('127.0.0.1:21003');
    await sim.add('127.0.0.1:21003'); // duplicate -> HANDLE_ERR
    await sim.barrier();
    const seqs = sim.received.filter((e) => e.header.type >> 10 === 2).map((e) => e.header.seq);
    expect(seqs, sim.describeLog()).toEqual(seqs.map((_, i) => i));
  });

  it('a kernel HELLO with ABI > 4 -> HANDLE_ERR 17 (IWPM_VERSION_MISMATCH_ERR) with the HELLO seq', async () => {
    rig = await startRig({ abi: 4, group: GROUP });
    const { sim } = rig;
    const from = sim.mark();
    const seq = sim.sendHello(5);
    const e = await sim.waitFor((x) => x.msg.op === 'handle_err', 3000, from).catch(() => undefined);
    expect(e, `no HANDLE_ERR 17 for HELLO(5); received:\n${sim.describeLog(from)}\ndaemon:\n${rig.daemon.tail(10)}`).toBeDefined();
    expectBytes(e!.raw, X.handleErr(hOf(e!), seq, 17), 'HANDLE_ERR 17');
    await sim.barrier();
  });

  it('an unsolicited kernel HELLO (ABI 4) after negotiation leaves the daemon serving', async () => {
    // rdma-core answers any kernel HELLO with a fresh MAPINFO request; a kernel only sends
    // HELLO in reply to the daemon's own, so either reaction is fine: no error, keep serving.
    rig = await startRig({ abi: 4, group: GROUP });
    const { sim } = rig;
    const from = sim.mark();
    sim.sendHello(4);
    await sim.barrier();
    const after = sim.received.slice(from);
    expect(after.filter((e) => e.msg.op === 'handle_err'), sim.describeLog(from)).toEqual([]);
    for (const e of after.filter((x) => x.msg.op === 'mapinfo_req')) expectBytes(e.raw, X.mapinfoReq(hOf(e), 4), 'MAPINFO request');
    expect((await sim.add('127.0.0.1:21005')).kind).toBe('ok');
    expectClean(sim);
  });
});

describe('handshake, ABI 3 kernel', () => {
  it('HELLO refused with NLMSG_ERROR -> MAPINFO requests with ULIB_VER 3 to client 2 (seq 1) and client 3 (seq 0), once', async () => {
    rig = await startRig({ abi: 3, group: GROUP });
    const { sim, pid } = rig;
    expect(rig.hello).toBeDefined();
    expectBytes(rig.hello!.raw, X.hello({ seq: 0, pid }), 'HELLO');
    expect(rig.hello!.answer).toEqual({ kind: 'error', errno: -22 });
    expectBytes(rig.mapinfoReq.raw, X.mapinfoReq({ seq: 1, pid }, 3), 'MAPINFO request (client 2)');
    // A current-era ABI 3 kernel has no client 3 and answers NLMSG_ERROR(-EINVAL) with seq 0:
    // the daemon must not take that as another "ABI 3" signal and start over.
    await sleep(1500);
    const all = sim.received.map(show).join('\n');
    const c3Reqs = sim.received.filter((e) => e.header.type === 0xc06);
    expect(c3Reqs.length, `client-3 MAPINFO requests:\n${all}`).toBe(1);
    expectBytes(c3Reqs[0]!.raw, X.mapinfoReq({ seq: 0, pid }, 3, 3), 'MAPINFO request (client 3)');
    expect(c3Reqs[0]!.answer).toEqual({ kind: 'error', errno: -22 }); // this kernel has no client 3
    expect(sim.received.filter((e) => e.header.type === 0x808).length, all).toBe(1);
    expect(sim.received.filter((e) => e.header.type === 0x806).length, all).toBe(1);
    expect(sim.userPid).toBe(pid);
    expect(sim.ulibVersion).toBe(3);
    await sim.barrier();
  });

  it('legacy kernel with client 3: both MAPINFO requests accepted', async () => {
    const sim = await KernelSim.create({ abi: 3, group: GROUP, acceptClient3: true, replyTimeoutMs: 5000 });
    rig = await startRig({ group: GROUP, sim });
    const c3 = await sim.waitForMapinfoRequest(3000, 3);
    expect(c3.answer).toEqual({ kind: 'done', status: 0 });
    await sim.barrier();
    expectClean(sim);
  });

  it('REG_PID reply carries ULIB_VER 3; ADD has no FLAGS and gets RMANAGE', async () => {
    rig = await startRig({ abi: 3, group: GROUP });
    const { sim } = rig;
    const r = await sim.regPid();
    expect(r.kind, JSON.stringify(r)).toBe('ok');
    if (r.kind === 'ok') expectBytes(r.reply.raw, X.regPidReply(hOf(r.reply), r.seq, 'siw0', 3), 'RREG_PID (ABI 3)');
    expect(sim.ulibVersion).toBe(3);
    const a = await sim.add('127.0.0.1:21004');
    expect(a.kind, JSON.stringify(a)).toBe('ok');
    const sent = sim.sent.find((s) => s.data.readUInt16LE(4) === 0x801)!;
    expect(sent.data.length).toBe(156); // no FLAGS attribute
    if (a.kind === 'ok') {
      expect(a.reply.raw.length).toBe(296);
      expect(a.mapped.port).not.toBe(21004);
    }
    expectClean(sim);
  });
});

describe('kernel requests that arrive while the ABI is still being negotiated', () => {
  it.each<[3 | 4]>([[4], [3]])('ABI %i: a REG_PID before the HELLO answer is answered with the version the kernel speaks', async (abi) => {
    const sim = await KernelSim.create({ abi, group: GROUP, handshakeDelayMs: 400, replyTimeoutMs: 5000 });
    const daemonP = DaemonProc.start({ kernelPort: sim.portId, group: GROUP });
    await sim.waitFor((e) => e.header.type === 0x808, 15_000);
    const regP = sim.regPid(); // reaches the daemon before the kernel's HELLO answer
    const daemon = await daemonP;
    rig = { sim, daemon, pid: 0, mapinfoReq: await sim.waitForMapinfoRequest(5000) };
    const r = await regP;
    expect(r.kind, `REG_PID during negotiation: ${r.kind}${r.kind === 'rejected-reply' ? `: ${r.reason}` : ''}\n${sim.describeLog()}`).toBe('ok');
    if (r.kind === 'ok') {
      expect(r.version).toBe(abi);
      expectBytes(r.reply.raw, X.regPidReply(hOf(r.reply), r.seq, 'siw0', abi), 'RREG_PID');
    }
    expect((await sim.add('127.0.0.1:21006')).kind).toBe('ok');
    expectClean(sim);
  });
});
