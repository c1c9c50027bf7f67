/**
 * ADD_MAPPING / REMOVE_MAPPING against the real daemon: RMANAGE bytes, wildcard
 * sharing and reference counts, duplicates, NO_PORT_MAP, IPv6, and that mapped
 * ports are really held on the host (a bind fails with EADDRINUSE while the mapping
 * lives and succeeds after the last REMOVE).
 */
import { afterAll, afterEach, beforeEach, describe, expect, it } from 'vitest';
import { encodeKernelRemove } from '../../src/codec/iwpm.js';
import { sa4, sa6, withPortRaw } from '../sim/bytes.js';
import { killAllDaemons } from '../sim/daemon-proc.js';
import { type AddOutcome, fmtSockaddr } from '../sim/kernel-sim.js';
import { EADDRINUSE, type Rig, X, expectBytes, expectClean, expectReleased, hOf, localPort, rawBind, sleep, startRig, stopRig, tcpBind } from './helpers.js';

const GROUP = 9;
let rig: Rig;

beforeEach(async () => {
  rig = await startRig({ abi: 4, group: GROUP });
});
afterEach(async () => {
  await stopRig(rig);
});
afterAll(killAllDaemons);

function ok(r: AddOutcome): Extract<AddOutcome, { kind: 'ok' }> {
  if (r.kind !== 'ok') throw new Error(`ADD did not succeed: ${JSON.stringify(r, (_k, v) => (v?.type === 'Buffer' ? '<bytes>' : v))}`);
  return r;
}

describe('ADD_MAPPING', () => {
  it('specific IPv4 listener: RMANAGE 296 bytes = {kernel seq, local echoed, local with the mapped port, ERR 0}; the port is held', async () => {
    const { sim } = rig;
    const P = localPort();
    const local = sa4('127.0.0.1', P);
    const r = ok(await sim.add(local));
    const M = r.mapped.port;
    expect(M).not.toBe(P);
    expect(M).toBeGreaterThanOrEqual(1024);
    expect(r.reply.raw.length).toBe(296);
    expectBytes(r.reply.raw, X.rmanage(hOf(r.reply), r.seq, local, withPortRaw(local, M)), 'RMANAGE');
    expect(r.reply.answer).toEqual({ kind: 'done', status: 0 });
    expect(await tcpBind(M)).toBe('EADDRINUSE');
    expect(await tcpBind(M, '::')).toBe('EADDRINUSE');
    expect(rawBind(M)).toBe(EADDRINUSE);
    // the application's own port is not touched
    expect(await tcpBind(P)).toBe('ok');
    expectClean(sim);
  });

  it('REMOVE releases the port: bind fails before, succeeds after (REMOVE is never answered)', async () => {
    const { sim } = rig;
    const P = localPort();
    const r = ok(await sim.add(`127.0.0.1:${P}`));
    const M = r.mapped.port;
    expect(rawBind(M)).toBe(EADDRINUSE);
    const from = sim.mark();
    expect(sim.remove(`127.0.0.1:${P}`)).toBeDefined();
    await sim.barrier();
    expect(sim.received.slice(from).filter((e) => e.msg.op !== 'mapinfo_num'), 'REMOVE got an answer').toEqual([]);
    await expectReleased(M);
    expect(await tcpBind(M)).toBe('ok');
    // the address can be mapped again
    ok(await sim.add(`127.0.0.1:${P}`));
    expectClean(sim);
  });

  it('REMOVE of an unknown address is ignored silently', async () => {
    const { sim } = rig;
    const from = sim.mark();
    sim.remove(`127.0.0.1:${localPort()}`);
    sim.remove(`[::1]:${localPort()}`);
    sim.remove(`0.0.0.0:${localPort()}`);
    await sim.barrier();
    expect(sim.received.slice(from).map((e) => e.msg.op)).toEqual(['mapinfo_num']);
    expectClean(sim);
  });

  it('wildcard listener twice (one per device): the same mapped port, reference counted', async () => {
    const { sim } = rig;
    const P = localPort();
    const local = sa4('0.0.0.0', P);
    const r1 = ok(await sim.add(local));
    const r2 = ok(await sim.add(local));
    const M = r1.mapped.port;
    expect(r2.mapped.port).toBe(M);
    expectBytes(r2.reply.raw, X.rmanage(hOf(r2.reply), r2.seq, local, withPortRaw(local, M)), 'RMANAGE (shared)');
    expect(rawBind(M)).toBe(EADDRINUSE);
    sim.remove(local);
    await sim.barrier();
    expect(rawBind(M), 'one REMOVE of two released the shared port').toBe(EADDRINUSE);
    sim.remove(local);
    await sim.barrier();
    await expectReleased(M);
    expectClean(sim);
  });

  it('duplicate specific ADD -> HANDLE_ERR 12 (32 bytes, the ADD seq); the first mapping stays', async () => {
    const { sim } = rig;
    const P = localPort();
    const first = ok(await sim.add(`127.0.0.1:${P}`));
    const r = await sim.add(`127.0.0.1:${P}`);
    expect(r.kind, JSON.stringify(r.kind)).toBe('error');
    if (r.kind !== 'error') return;
    expect(r.code).toBe(12);
    expect(r.reply.raw.length).toBe(32);
    expectBytes(r.reply.raw, X.handleErr(hOf(r.reply), r.seq, 12), 'HANDLE_ERR 12');
    expect(rawBind(first.mapped.port)).toBe(EADDRINUSE);
    expectClean(sim);
  });

  it('specific vs wildcard on the same port, either order -> 12; IPv6 wildcard vs IPv4 wildcard on the same port -> 12', async () => {
    const { sim } = rig;
    const P = localPort();
    ok(await sim.add(`0.0.0.0:${P}`));
    expect(await sim.add(`127.0.0.1:${P}`)).toMatchObject({ kind: 'error', code: 12 });
    expect(await sim.add(`[::]:${P}`)).toMatchObject({ kind: 'error', code: 12 });
    const Q = localPort();
    ok(await sim.add(`127.0.0.1:${Q}`));
    expect(await sim.add(`0.0.0.0:${Q}`)).toMatchObject({ kind: 'error', code: 12 });
    // a different specific address on the same port is a different mapping
    ok(await sim.add(`127.0.0.2:${Q}`));
    expectClean(sim);
  });

  it('NO_PORT_MAP (siw): mapped == local, byte for byte; no host port is reserved', async () => {
    const { sim } = rig;
    const P = localPort();
    const local = sa4('127.0.0.1', P);
    const before = await tcpBind(P);
    const r = ok(await sim.add(local, { flags: 1 }));
    expect(sim.sent.filter((s) => s.data.readUInt16LE(4) === 0x801).at(-1)!.data.length).toBe(164); // ABI 4 ADD with FLAGS
    expectBytes(r.reply.raw, X.rmanage(hOf(r.reply), r.seq, local, local), 'RMANAGE (NO_PORT_MAP)');
    expect(await tcpBind(P)).toBe(before);
    sim.remove(local);
    await sim.barrier();
    // and a second NO_PORT_MAP mapping of the same address after the REMOVE works
    ok(await sim.add(local, { flags: 1 }));
    expectClean(sim);
  });

  it('IPv6 listener: mapped keeps flowinfo and scope id, only the port changes; the dual-stack reservation blocks v4 and v6', async () => {
    const { sim } = rig;
    const P = localPort();
    const local = sa6('::1', P);
    const r = ok(await sim.add(local));
    const M = r.mapped.port;
    expectBytes(r.reply.raw, X.rmanage(hOf(r.reply), r.seq, local, withPortRaw(local, M)), 'RMANAGE (IPv6)');
    expect(rawBind(M, 10)).toBe(EADDRINUSE);
    expect(rawBind(M, 2)).toBe(EADDRINUSE);
    const ll = sa6('fe80::1234', localPort(), 7, 0x12345);
    const r2 = ok(await sim.add(ll));
    expectBytes(r2.reply.raw, X.rmanage(hOf(r2.reply), r2.seq, ll, withPortRaw(ll, r2.mapped.port)), 'RMANAGE (link-local, scope 7)');
    sim.remove(local);
    await sim.barrier();
    await expectReleased(M, 10);
    expectClean(sim);
  });

  it("LOCAL_ADDR is echoed verbatim (the kernel's 128 bytes); the mapped address has zeroed unused bytes", async () => {
    const { sim } = rig;
    const P = localPort();
    const local = sa4('127.0.0.1', P);
    for (let i = 16; i < 128; i++) local[i] = i; // junk the kernel may leave in unused bytes
    const r = ok(await sim.add(local));
    const M = r.mapped.port;
    expect(r.reply.msg.op).toBe('add');
    if (r.reply.msg.op !== 'add') return;
    expect(r.reply.msg.local.equals(local), 'RMANAGE_ADDR is not the request bytes').toBe(true);
    expectBytes(r.reply.msg.mapped, withPortRaw(sa4('127.0.0.1', P), M), 'RMANAGE_MAPPED_LOC_ADDR (spec 1.3: unused bytes zero)');
    expectClean(sim);
  });

  it('QUERY whose local address matches a wildcard listener -> HANDLE_ERR 11', async () => {
    const { sim } = rig;
    const P = localPort();
    ok(await sim.add(`0.0.0.0:${P}`));
    const r = await sim.query(`127.0.0.1:${P}`, `127.0.0.1:${localPort()}`);
    expect(r.kind).toBe('error');
    if (r.kind !== 'error') return;
    expect(r.code).toBe(11);
    expectBytes(r.reply.raw, X.handleErr(hOf(r.reply), r.seq, 11), 'HANDLE_ERR 11');
    expectClean(sim);
  });

  it('REMOVE from another client index than the owner is ignored (the port stays held)', async () => {
    const { sim } = rig;
    const P = localPort();
    const r = ok(await sim.add(`127.0.0.1:${P}`));
    sim.sendRaw(encodeKernelRemove({ seq: sim.nextSeq() }, { echoSeq: 0, local: sa4('127.0.0.1', P) }, 3));
    await sim.barrier();
    expect(rawBind(r.mapped.port)).toBe(EADDRINUSE);
    sim.remove(`127.0.0.1:${P}`);
    await sim.barrier();
    await expectReleased(r.mapped.port);
  });

  it('many mappings hold distinct ports; removing them all frees them all', async () => {
    const { sim } = rig;
    const locals = Array.from({ length: 50 }, () => `127.0.0.1:${localPort()}`);
    const rs = (await Promise.all(locals.map((l) => sim.add(l)))).map(ok);
    const ports = rs.map((r) => r.mapped.port);
    expect(new Set(ports).size).toBe(50);
    for (const M of ports) expect(rawBind(M)).toBe(EADDRINUSE);
    const mem = () => (rig.daemon.ctl('show', 'stats') as { memory: Record<string, number> }).memory;
    expect(mem()).toMatchObject({ mappingBlocks: 50, spareMappingBlocks: 0 });
    expect(mem().rss).toBeGreaterThan(mem().heapUsed);
    for (const l of locals) sim.remove(l);
    await sim.barrier();
    for (const M of ports) await expectReleased(M);
    // the removed mappings' blocks wait for reuse
    expect(mem()).toMatchObject({ mappingBlocks: 0, spareMappingBlocks: 50, mappingBlockBytes: 50 * 272 });
    expectClean(sim);
  });
});

describe('signals', () => {
  it('SIGUSR1 writes the mapping table to the log', async () => {
    const { sim, daemon } = rig;
    const P = localPort();
    const r = ok(await sim.add(`127.0.0.1:${P}`));
    const W = localPort();
    ok(await sim.add(`0.0.0.0:${W}`));
    const from = daemon.lines.length;
    daemon.signal('SIGUSR1');
    const line = await daemon.waitForLine(new RegExp(`127\\.0\\.0\\.1:${P}\\b.*\\b${r.mapped.port}\\b`), 5000, from);
    expect(line).toContain(fmtSockaddr(r.mapped));
    await daemon.waitForLine(new RegExp(`0\\.0\\.0\\.0:${W}\\b`), 2000, from);
    // and it keeps running
    await sim.barrier();
  });

  it('SIGTERM: exit status 0 and every reserved port released', async () => {
    const { sim, daemon } = rig;
    const rs = [];
    for (let i = 0; i < 5; i++) rs.push(ok(await sim.add(`127.0.0.1:${localPort()}`)));
    const w = ok(await sim.add(`[::]:${localPort()}`));
    for (const r of rs) expect(rawBind(r.mapped.port)).toBe(EADDRINUSE);
    daemon.signal('SIGTERM');
    const e = await daemon.waitExit(5000);
    expect(e).toEqual({ code: 0, signal: null });
    for (const r of [...rs, w]) await expectReleased(r.mapped.port, r.mapped.family === 10 ? 10 : 2);
  });

  it('SIGKILL (crash): the kernel side notices on the next ADD (ECONNREFUSED) and forgets the daemon', async () => {
    const { sim, daemon } = rig;
    ok(await sim.add(`127.0.0.1:${localPort()}`));
    await daemon.kill();
    await sleep(50);
    const r = await sim.add(`127.0.0.1:${localPort()}`);
    expect(r.kind).toBe('unmapped');
    expect(sim.userPid).toBe(-1);
  });
});

describe('start-up JIT warm-up', () => {
  it('rehearses the QUERY path in memory once started, touching none of the real state', async () => {
    const { sim, daemon } = rig;
    const from = sim.mark();
    await daemon.waitForLine(/JIT warm-up: 4096 QUERY round trips rehearsed in memory in \d+ ms$/, 30_000);
    const status = daemon.ctl('show', 'status') as { warmUp: unknown; mappings: number; pendingQueries: number };
    expect(status).toMatchObject({ warmUp: { accepted: 4096, other: 0, cut: false }, mappings: 0, pendingQueries: 0 });
    const stats = daemon.ctl('show', 'stats') as { daemon: Record<string, number>; peer: Record<string, number>; memory: Record<string, number> };
    expect(stats.daemon).toMatchObject({ queriesStarted: 0, remoteInfoSent: 0 });
    expect(stats.peer).toMatchObject({ txReq: 0, rxReq: 0, udpSent: 0, udpReceived: 0 });
    expect(stats.memory).toMatchObject({ mappingBlocks: 0, spareMappingBlocks: 0 });
    // nothing of it reached the kernel, and the daemon still maps for real
    expect(sim.received.slice(from)).toEqual([]);
    const r = ok(await sim.add(`127.0.0.1:${localPort()}`));
    expect(rawBind(r.mapped.port)).toBe(EADDRINUSE);
  });

  it('--no-warmup: none', async () => {
    // group 17: used by no other test file
    const off = await startRig({ abi: 4, group: 17, daemon: { extraArgs: ['--no-warmup'] } });
    try {
      expect((off.daemon.ctl('show', 'status') as { warmUp: unknown }).warmUp).toBe('off');
    } finally {
      await stopRig(off);
    }
  });
});
