/**
 * QUERY_MAPPING end to end with the daemon querying ITSELF over UDP on 127.0.0.1 / ::1
 * (its --udp-port is both where it listens and where it sends REQs): the connecting
 * side's RQUERY and the listening side's REMOTE_INFO, byte for byte (spec 2.2, 2.5,
 * 5.4). These need the peer (UDP) side of the daemon; a missing peer shows up as
 * 'timeout' outcomes.
 */
import { afterAll, afterEach, beforeEach, describe, expect, it } from 'vitest';
import { sa4, sa6, withPortRaw } from '../sim/bytes.js';
import { killAllDaemons } from '../sim/daemon-proc.js';
import type { QueryOutcome, ReceivedEntry } from '../sim/kernel-sim.js';
import { EADDRINUSE, type Rig, X, expectBytes, expectClean, expectReleased, hOf, localPort, rawBind, startRig, stopRig } from './helpers.js';

const GROUP = 14;
let rig: Rig;

beforeEach(async () => {
  rig = await startRig({ abi: 4, group: GROUP, replyTimeoutMs: 6000 });
});
afterEach(async () => {
  await stopRig(rig);
});
afterAll(killAllDaemons);

function explain(r: QueryOutcome): string {
  return `QUERY outcome ${r.kind}${'code' in r ? ` code ${r.code}` : ''}${'reason' in r ? ` (${r.reason})` : ''}; daemon log:\n${rig.daemon.tail(15)}`;
}

async function remoteInfo(from: number): Promise<ReceivedEntry> {
  return rig.sim.waitFor((e) => e.msg.op === 'remote_info', 3000, from);
}

describe('QUERY_MAPPING against our own listener (peer side over UDP to ourselves)', () => {
  it('specific listener: RQUERY (560 bytes) with the listener mapped port; REMOTE_INFO to the passive kernel', async () => {
    const { sim } = rig;
    const P = localPort();
    const listener = sa4('127.0.0.1', P);
    const add = await sim.add(listener);
    if (add.kind !== 'ok') throw new Error('listener ADD failed');
    const M = add.mapped.port;
    const Q = localPort();
    const local = sa4('127.0.0.1', Q);
    const from = sim.mark();
    const r = await sim.query(local, listener);
    expect(r.kind, explain(r)).toBe('ok');
    if (r.kind !== 'ok') return;
    const MQ = r.mapped.port;
    expect(MQ).not.toBe(Q);
    expect(r.reply.raw.length).toBe(560);
    expectBytes(r.reply.raw, X.rquery(hOf(r.reply), r.seq, local, listener, withPortRaw(local, MQ), withPortRaw(listener, M), 0), 'RQUERY');
    expect(r.mappedRemote.port).toBe(M);
    expect(rawBind(MQ)).toBe(EADDRINUSE);

    const ri = await remoteInfo(from);
    expect(ri.answer).toEqual({ kind: 'done', status: -22 }); // the kernel answers every REMOTE_INFO with -EINVAL
    expect(ri.raw.length).toBe(560);
    expectBytes(ri.raw, X.remoteInfo(hOf(ri), listener, local, withPortRaw(listener, M), withPortRaw(local, MQ)), 'REMOTE_INFO');
    expect(sim.remoteInfos).toHaveLength(1);
    // The -22 DONE for REMOTE_INFO is normal: not counted as a kernel rejection.
    await sim.barrier();
    const stats = rig.daemon.ctl('show', 'stats') as { daemon: { kernelRejected: number } };
    expect(stats.daemon.kernelRejected).toBe(0);
    expectClean(sim);
  });

  it('wildcard listener: ACC carries the requested IP with the mapped port; REMOTE_INFO keeps the wildcard addresses', async () => {
    const { sim } = rig;
    const P = localPort();
    const listener = sa4('0.0.0.0', P);
    const add = await sim.add(listener);
    if (add.kind !== 'ok') throw new Error('listener ADD failed');
    const M = add.mapped.port;
    const remote = sa4('127.0.0.1', P);
    const local = sa4('127.0.0.1', localPort());
    const from = sim.mark();
    const r = await sim.query(local, remote);
    expect(r.kind, explain(r)).toBe('ok');
    if (r.kind !== 'ok') return;
    expectBytes(r.reply.raw, X.rquery(hOf(r.reply), r.seq, local, remote, withPortRaw(local, r.mapped.port), withPortRaw(remote, M), 0), 'RQUERY');
    const ri = await remoteInfo(from);
    expectBytes(ri.raw, X.remoteInfo(hOf(ri), listener, local, withPortRaw(listener, M), withPortRaw(local, r.mapped.port)), 'REMOTE_INFO');
    expectClean(sim);
  });

  it('no such listener: the peer rejects; RQUERY with ERR 16 and the remote address unmapped', async () => {
    const { sim } = rig;
    const remote = sa4('127.0.0.1', localPort());
    const local = sa4('127.0.0.1', localPort());
    const from = sim.mark();
    const r = await sim.query(local, remote);
    expect(r.kind, explain(r)).toBe('error');
    if (r.kind !== 'error') return;
    expect(r.code).toBe(16);
    const m = r.reply.msg;
    expect(m.op).toBe('query');
    if (m.op !== 'query') return;
    const MQ = m.mappedLocal.readUInt16BE(2);
    expectBytes(r.reply.raw, X.rquery(hOf(r.reply), r.seq, local, remote, withPortRaw(local, MQ), remote, 16), 'RQUERY (REJ)');
    expect(sim.received.slice(from).filter((e) => e.msg.op === 'remote_info')).toEqual([]);
    expectClean(sim);
  });

  it('IPv6 (::1) listener and query', async () => {
    const { sim } = rig;
    const listener = sa6('::1', localPort());
    const add = await sim.add(listener);
    if (add.kind !== 'ok') throw new Error('listener ADD failed');
    const local = sa6('::1', localPort());
    const r = await sim.query(local, listener);
    expect(r.kind, explain(r)).toBe('ok');
    if (r.kind !== 'ok') return;
    expectBytes(r.reply.raw, X.rquery(hOf(r.reply), r.seq, local, listener, withPortRaw(local, r.mapped.port), withPortRaw(listener, add.mapped.port), 0), 'RQUERY (IPv6)');
    expectClean(sim);
  });

  it('NO_PORT_MAP on both sides: mapped == local, and the listener answers with its own (unmapped) port', async () => {
    const { sim } = rig;
    const listener = sa4('127.0.0.1', localPort());
    const add = await sim.add(listener, { flags: 1 });
    if (add.kind !== 'ok') throw new Error('listener ADD failed');
    const local = sa4('127.0.0.1', localPort());
    const r = await sim.query(local, listener, { flags: 1 });
    expect(r.kind, explain(r)).toBe('ok');
    if (r.kind !== 'ok') return;
    expectBytes(r.reply.raw, X.rquery(hOf(r.reply), r.seq, local, listener, local, listener, 0), 'RQUERY (NO_PORT_MAP)');
    expectClean(sim);
  });

  it('a second QUERY from the same local address shares its mapped port (reference counted)', async () => {
    const { sim } = rig;
    const listener = sa4('127.0.0.1', localPort());
    const add = await sim.add(listener);
    if (add.kind !== 'ok') throw new Error('listener ADD failed');
    const local = sa4('127.0.0.1', localPort());
    const r1 = await sim.query(local, listener);
    const r2 = await sim.query(local, listener);
    expect(r1.kind, explain(r1)).toBe('ok');
    expect(r2.kind, explain(r2)).toBe('ok');
    if (r1.kind !== 'ok' || r2.kind !== 'ok') return;
    expect(r2.mapped.port).toBe(r1.mapped.port);
    sim.remove(local);
    await sim.barrier();
    expect(rawBind(r1.mapped.port), 'released after one of two REMOVEs').toBe(EADDRINUSE);
    sim.remove(local);
    await sim.barrier();
    await expectReleased(r1.mapped.port);
  });
});
