/**
 * Requests are processed in arrival order: bursts of ADDs followed by one MAPINFO_NUM
 * barrier are all answered, in request order, before the barrier's answer; order-
 * dependent sequences (ADD, REMOVE, ADD of one address) come out right.
 */
import { afterAll, afterEach, beforeEach, describe, expect, it } from 'vitest';
import { encodeKernelAdd, encodeKernelRemove } from '../../src/codec/iwpm.js';
import { sa4, withPortRaw } from '../sim/bytes.js';
import { killAllDaemons } from '../sim/daemon-proc.js';
import { EADDRINUSE, type Rig, X, expectBytes, expectClean, expectReleased, hOf, localPort, rawBind, startRig, stopRig } from './helpers.js';

const GROUP = 15;
let rig: Rig;

beforeEach(async () => {
  rig = await startRig({ abi: 4, group: GROUP, replyTimeoutMs: 10_000 });
  const r = await rig.sim.regPid();
  if (r.kind !== 'ok') throw new Error('REG_PID failed');
});
afterEach(async () => {
  await stopRig(rig);
});
afterAll(killAllDaemons);

describe('arrival order', () => {
  it('200 ADDs in a burst, then one MAPINFO_NUM: all answered, in order, before the barrier', async () => {
    const { sim } = rig;
    const locals = Array.from({ length: 200 }, () => sa4('127.0.0.1', localPort()));
    const from = sim.mark();
    const t0 = performance.now();
    const adds = locals.map((l) => sim.add(l));
    const barrier = sim.sendMapinfoNum(200);
    const [rs, b] = await Promise.all([Promise.all(adds), barrier]);
    const ms = performance.now() - t0;
    expect(b.kind).toBe('ok');
    const bad = rs.filter((r) => r.kind !== 'ok');
    expect(bad.map((r) => r.kind), `failed ADDs; daemon:\n${rig.daemon.tail(10)}`).toEqual([]);
    const replyIdx = rs.map((r) => (r.kind === 'ok' ? r.reply.index : -1));
    expect(replyIdx).toEqual([...replyIdx].sort((x, y) => x - y));
    if (b.kind === 'ok') expect(b.reply.index).toBeGreaterThan(replyIdx.at(-1)!);
    // nothing else came back in between
    expect(sim.received.length - from).toBe(201);
    // byte-exact spot checks and distinct ports
    const ports = new Set<number>();
    rs.forEach((r, i) => {
      if (r.kind !== 'ok') return;
      ports.add(r.mapped.port);
      if (i % 50 === 0) expectBytes(r.reply.raw, X.rmanage(hOf(r.reply), r.seq, locals[i]!, withPortRaw(locals[i]!, r.mapped.port)), `RMANAGE #${i}`);
    });
    expect(ports.size).toBe(200);
    console.log(`200 ADDs answered in ${ms.toFixed(1)} ms`);
    expectClean(sim);
  });

  // The kernel sends REMOVE for a cm_id only after its ADD was answered (or given up
  // on), so a REMOVE can travel right behind the NEXT request for the same address.
  it('ADD, REMOVE, ADD of one address, each REMOVE right behind the next ADD: no duplicate error', async () => {
    const { sim } = rig;
    const l = sa4('127.0.0.1', localPort());
    const r1 = await sim.add(l);
    sim.remove(l);
    const r2 = await sim.add(l);
    sim.remove(l);
    const p3 = sim.add(l);
    const b = sim.sendMapinfoNum(0);
    const r3 = await p3;
    expect([r1.kind, r2.kind, r3.kind]).toEqual(['ok', 'ok', 'ok']);
    expect((await b).kind).toBe('ok');
    if (r1.kind !== 'ok' || r2.kind !== 'ok' || r3.kind !== 'ok') return;
    expect(rawBind(r3.mapped.port)).toBe(EADDRINUSE);
    for (const p of new Set([r1.mapped.port, r2.mapped.port])) if (p !== r3.mapped.port) await expectReleased(p);
    expectClean(sim);
  });

  it('wildcard ADD x8 (one per device, each awaited as the kernel does) then REMOVE x8 in one burst: one port, released at the end', async () => {
    const { sim } = rig;
    const l = sa4('0.0.0.0', localPort());
    const rs = [];
    for (let i = 0; i < 8; i++) rs.push(await sim.add(l));
    for (let i = 0; i < 8; i++) sim.remove(l);
    await sim.barrier();
    const ports = new Set(rs.map((r) => (r.kind === 'ok' ? r.mapped.port : -1)));
    expect([...ports]).toHaveLength(1);
    expect([...ports][0]).toBeGreaterThan(0);
    await expectReleased([...ports][0]!);
    expectClean(sim);
  });

  it('an ADD and its own REMOVE in one datagram (the kernel gave up on the ADD): not answered, nothing held', async () => {
    const { sim } = rig;
    const P = localPort();
    const l = withPortRaw(sa4('127.0.0.1', P), P);
    const from = sim.mark();
    const addSeq = sim.nextSeq();
    const add = encodeKernelAdd({ seq: addSeq }, { echoSeq: 0, local: l, flags: 0 });
    const rm = encodeKernelRemove({ seq: sim.nextSeq() }, { echoSeq: 0, local: l });
    expect(sim.sendRaw(Buffer.concat([add, rm])).ok).toBe(true);
    expect((await sim.barrier()).kind).toBe('ok');
    const answered = sim.received.slice(from).filter((e) => 'seqAttr' in e.msg && e.msg.seqAttr === addSeq);
    expect(answered.map((e) => e.msg.op)).toEqual([]);
    const st = rig.daemon.ctl('show', 'stats') as { daemon: { lateDropped: number } };
    expect(st.daemon.lateDropped).toBe(1);
    expect(rawBind(P)).toBe(0);
    // the address maps normally afterwards
    expect((await sim.add(sa4('127.0.0.1', P))).kind).toBe('ok');
  });

  it('1000 distinct ADDs then 1000 REMOVEs, two barriers: everything answered and released', async () => {
    const { sim } = rig;
    const locals = Array.from({ length: 1000 }, (_, i) => sa4(`127.0.${1 + (i >> 8)}.${i & 255}`, 30_000 + (localPort() % 1000)));
    const t0 = performance.now();
    const adds = locals.map((l) => sim.add(l));
    await sim.barrier(20_000);
    const rs = await Promise.all(adds);
    const t1 = performance.now();
    expect(rs.filter((r) => r.kind !== 'ok').length).toBe(0);
    for (const l of locals) sim.remove(l);
    await sim.barrier(20_000);
    const t2 = performance.now();
    for (const r of rs) if (r.kind === 'ok') await expectReleased(r.mapped.port);
    console.log(`1000 ADDs: ${(t1 - t0).toFixed(0)} ms, 1000 REMOVEs: ${(t2 - t1).toFixed(0)} ms`);
    expectClean(sim);
  }, 60_000);
});
