/**
 * Restart recovery through the kernel's MAPINFO replay (spec 3.3): a daemon killed
 * with SIGKILL loses its reservations; the next daemon's HELLO/MAPINFO request makes
 * the kernel replay its table and every replayed port must be reserved again. A port
 * that cannot be re-bound (the test holds it) is reported (log, HANDLE_ERR 11 seq 0 as
 * rdma-core, not counted in the MAPINFO_NUM ack), and every other record, including
 * the rest of the same datagram, is still recovered.
 */
import { afterAll, afterEach, describe, expect, it } from 'vitest';
import { sa4, sa6, withPortRaw } from '../sim/bytes.js';
import { killAllDaemons } from '../sim/daemon-proc.js';
import { type AddOutcome, type DoneTiming, KernelSim, type ReplayRecord } from '../sim/kernel-sim.js';
import {
  EADDRINUSE,
  type Rig,
  X,
  expectBytes,
  expectClean,
  expectReleased,
  freeHighPorts,
  hOf,
  holdPort,
  localPort,
  rawBind,
  releaseFds,
  startRig,
  stopRig,
} from './helpers.js';

const GROUP = 12;
let rigs: Rig[] = [];
const heldFds: number[] = [];

afterEach(async () => {
  if (heldFds.length) releaseFds(...heldFds.splice(0));
  for (const r of rigs) await stopRig(r);
  rigs = [];
});
afterAll(killAllDaemons);

function okPort(r: AddOutcome, what: string): number {
  if (r.kind !== 'ok') throw new Error(`${what}: ADD failed (${r.kind})`);
  return r.mapped.port;
}

async function waitReplay(sim: KernelSim, from: number): Promise<ReplayRecord> {
  await sim.waitForMapinfoRequest(15_000, 2, from);
  const rep = sim.replays.at(-1);
  if (!rep) throw new Error('the simulator sent no replay');
  return rep;
}

describe.each<[DoneTiming]>([['after-handler'], ['before-handler']])('restart recovery (kernel DONE %s)', (doneTiming) => {
  it('SIGKILL with live mappings, restart: every replayed port re-bound, one held port reported, the rest recovered', async () => {
    const sim = await KernelSim.create({ abi: 4, group: GROUP, replyTimeoutMs: 5000, doneTiming });
    const a = await startRig({ group: GROUP, sim });
    rigs.push(a);

    const specific = Array.from({ length: 26 }, () => sa4('127.0.0.1', localPort()));
    const ports = new Map<string, number>();
    for (const l of specific) ports.set(l.toString('hex'), okPort(await sim.add(l), 'specific'));
    const wild = sa4('0.0.0.0', localPort());
    const mw = okPort(await sim.add(wild), 'wildcard #1');
    expect(okPort(await sim.add(wild), 'wildcard #2')).toBe(mw); // two kernel records, one port
    const v6 = sa6('::1', localPort());
    const m6 = okPort(await sim.add(v6), 'IPv6');
    const npm = sa4('127.0.0.1', localPort());
    expect(okPort(await sim.add(npm, { flags: 1 }), 'NO_PORT_MAP')).toBe(npm.readUInt16BE(2));
    expect(sim.mapinfo).toHaveLength(26 + 2 + 1 + 1);

    await a.daemon.kill();
    // The dead daemon's reservations are gone with it; the test takes one of them.
    const victim = specific[3]!; // in the first replay datagram, not its last record
    const mv = ports.get(victim.toString('hex'))!;
    heldFds.push(holdPort(mv));

    const from = sim.mark();
    const b = await startRig({ group: GROUP, sim });
    rigs.push(b);
    expect(b.pid).not.toBe(a.pid);
    const rep = await waitReplay(sim, from);
    expect(rep.records).toBe(30);
    expect(rep.datagrams).toHaveLength(3); // 12 + 12 + 6 records
    const ack = await sim.waitForReplayAck(rep, 10_000);
    expect(ack.kind, `no MAPINFO_NUM reply; log:\n${sim.describeLog(from)}\ndaemon:\n${b.daemon.tail(20)}`).toBe('ok');
    if (ack.kind !== 'ok') return;
    expectBytes(ack.reply.raw, X.mapinfoNumReply(hOf(ack.reply), rep.numSeq!, 30, 29), 'MAPINFO_NUM reply');

    // Every other port is reserved again.
    for (const l of specific) {
      const M = ports.get(l.toString('hex'))!;
      if (M === mv) continue;
      expect(rawBind(M), `replayed port ${M} not re-bound`).toBe(EADDRINUSE);
    }
    expect(rawBind(mw), 'wildcard mapping not re-bound').toBe(EADDRINUSE);
    expect(rawBind(m6, 10), 'IPv6 mapping not re-bound').toBe(EADDRINUSE);
    expect(rawBind(npm.readUInt16BE(2)), 'NO_PORT_MAP record made the daemon bind the local port').toBe(0);

    // The failure is reported: a log line naming the port, and HANDLE_ERR 11 with seq 0 (rdma-core).
    await b.daemon.waitForLine(new RegExp(`\\b${mv}\\b`), 3000);
    const errs = sim.received.slice(from).filter((e) => e.msg.op === 'handle_err');
    expect(errs.map((e) => (e.msg.op === 'handle_err' ? [e.msg.seqAttr, e.msg.code] : [])), sim.describeLog(from)).toEqual([[0, 11]]);
    expectBytes(errs[0]!.raw, X.handleErr(hOf(errs[0]!), 0, 11), 'HANDLE_ERR 11 for the record');

    // Our hold gone, the daemon does not have that port (it failed to re-bind it).
    releaseFds(...heldFds.splice(0));
    await expectReleased(mv);

    // Recovered mappings behave like live ones: an ADD of the same specific address is a
    // duplicate, REMOVE releases, and the wildcard's two references were rebuilt.
    expect(await sim.add(specific[0]!)).toMatchObject({ kind: 'error', code: 12 });
    const m0 = ports.get(specific[0]!.toString('hex'))!;
    sim.remove(specific[0]!);
    await sim.barrier();
    await expectReleased(m0);
    sim.remove(wild);
    await sim.barrier();
    expect(rawBind(mw), 'wildcard released after one of its two REMOVEs (references not rebuilt from the replay)').toBe(EADDRINUSE);
    sim.remove(wild);
    await sim.barrier();
    await expectReleased(mw);
    // A new ADD of the wildcard address shares nothing stale.
    okPort(await sim.add(wild), 'wildcard after release');
    expectClean(sim);
  }, 60_000);
});

describe('replay details', () => {
  it('a record colliding with another record of the same local address: HANDLE_ERR 12 seq 0, not counted; the rest processed', async () => {
    const sim = await KernelSim.create({ abi: 4, group: GROUP, replyTimeoutMs: 5000 });
    const L = localPort();
    const free = freeHighPorts(7);
    const m1 = free[0]!;
    const m1b = free[1]!;
    sim.addMapinfoRecord(sa4('127.0.0.1', L), sa4('127.0.0.1', m1));
    sim.addMapinfoRecord(sa4('127.0.0.1', L), sa4('127.0.0.1', m1b)); // same local, other mapped port
    const others = Array.from({ length: 5 }, (_, i) => [sa4('127.0.0.1', localPort()), free[2 + i]!] as const);
    for (const [l, m] of others) sim.addMapinfoRecord(l, withPortRaw(l, m));
    const r = await startRig({ group: GROUP, sim });
    rigs.push(r);
    const rep = await waitReplay(sim, 0);
    const ack = await sim.waitForReplayAck(rep);
    expect(ack).toMatchObject({ kind: 'ok', sendNum: 7, ackNum: 6 });
    const errs = sim.received.filter((e) => e.msg.op === 'handle_err');
    expect(errs.map((e) => (e.msg.op === 'handle_err' ? [e.msg.seqAttr, e.msg.code] : []))).toEqual([[0, 12]]);
    expect(rawBind(m1)).toBe(EADDRINUSE);
    expect(rawBind(m1b)).toBe(0);
    for (const [, m] of others) expect(rawBind(m), `port ${m} of a later record`).toBe(EADDRINUSE);
  });

  it('a replay over the kernel limit (20 datagrams, about 240 records): no MAPINFO_NUM, what came is re-bound, the daemon serves on', async () => {
    const sim = await KernelSim.create({ abi: 4, group: GROUP, replyTimeoutMs: 5000 });
    const ports = freeHighPorts(300);
    for (const m of ports) sim.addMapinfoRecord(sa4('127.0.0.1', localPort()), sa4('127.0.0.1', m));
    const r = await startRig({ group: GROUP, sim });
    rigs.push(r);
    const rep = await waitReplay(sim, 0);
    expect(rep.truncated).toBe(true);
    expect(rep.numSeq).toBeUndefined();
    expect(rep.datagrams).toHaveLength(20);
    const sent = 20 * 12;
    expect(r.mapinfoReq.answer).toEqual({ kind: 'done', status: -12 });
    await sim.barrier();
    for (const m of ports.slice(0, sent)) expect(rawBind(m), `port ${m}`).toBe(EADDRINUSE);
    for (const m of ports.slice(sent)) expect(rawBind(m), `port ${m} was never replayed`).toBe(0);
    const a = await sim.add(`127.0.0.1:${localPort()}`);
    expect(a.kind).toBe('ok');
    expectClean(sim);
  });

  it('ABI 3 replay (no FLAGS, 280-byte records) after a restart', async () => {
    const sim = await KernelSim.create({ abi: 3, group: GROUP, replyTimeoutMs: 5000 });
    const a = await startRig({ group: GROUP, sim });
    rigs.push(a);
    const ls = Array.from({ length: 4 }, () => sa4('127.0.0.1', localPort()));
    const ms = [];
    for (const l of ls) ms.push(okPort(await sim.add(l), 'ABI 3 add'));
    await a.daemon.kill();
    const from = sim.mark();
    const b = await startRig({ group: GROUP, sim });
    rigs.push(b);
    const rep = await waitReplay(sim, from);
    expect(rep.datagrams[0]!.length).toBe(4 * 280 + 16);
    const ack = await sim.waitForReplayAck(rep);
    expect(ack).toMatchObject({ kind: 'ok', sendNum: 4, ackNum: 4 });
    for (const m of ms) expect(rawBind(m)).toBe(EADDRINUSE);
    expectClean(sim);
  });

  it('a large replay (100 records, 9 datagrams) is fully recovered', async () => {
    const sim = await KernelSim.create({ abi: 4, group: GROUP, replyTimeoutMs: 5000 });
    const a = await startRig({ group: GROUP, sim });
    rigs.push(a);
    const ls = Array.from({ length: 100 }, () => sa4('127.0.0.1', localPort()));
    const rs = await Promise.all(ls.map((l) => sim.add(l)));
    const ms = rs.map((r) => okPort(r, 'bulk add'));
    await a.daemon.kill();
    const from = sim.mark();
    const b = await startRig({ group: GROUP, sim });
    rigs.push(b);
    const rep = await waitReplay(sim, from);
    expect(rep.datagrams).toHaveLength(9);
    const ack = await sim.waitForReplayAck(rep);
    expect(ack).toMatchObject({ kind: 'ok', sendNum: 100, ackNum: 100 });
    for (const m of ms) expect(rawBind(m), `port ${m}`).toBe(EADDRINUSE);
    expectClean(sim);
  });
});
