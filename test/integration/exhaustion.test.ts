/**
 * Port exhaustion: when no port can be reserved the kernel gets a clear
 * HANDLE_ERR 11 (IWPM_CREATE_MAPPING_ERR) with the request's seq, and the daemon
 * keeps serving.
 *
 * Two ways to run out, both real:
 *  1. file descriptors (EMFILE): the daemon runs under a low RLIMIT_NOFILE (prlimit),
 *     fully isolated from the rest of the machine;
 *  2. the host's ephemeral port range: a helper process holds every port of
 *     ip_local_port_range on [::] with IPV6_V6ONLY, so every IPv6 reservation (the
 *     daemon binds [::]:port dual-stack) fails, both its own probes and the kernel's
 *     choice (bind to port 0). IPv4 reservations still work, which shows the daemon
 *     serving through it. Needs IPv6; it briefly denies IPv6 ephemeral ports to the
 *     whole host (a second or two).
 */
import { type ChildProcess, spawn, spawnSync } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { afterAll, afterEach, describe, expect, it } from 'vitest';
import { killAllDaemons } from '../sim/daemon-proc.js';
import type { AddOutcome } from '../sim/kernel-sim.js';
import { type Rig, X, expectBytes, expectClean, hOf, localPort, startRig, stopRig } from './helpers.js';

const GROUP = 11;
const HAS_PRLIMIT = hasPrlimit();
const NO_V6_EXHAUSTION = exhaustionUnavailable();
if (!HAS_PRLIMIT) console.log('SKIP (fd exhaustion test): prlimit(1) not found');
if (NO_V6_EXHAUSTION) console.log(`SKIP (IPv6 port exhaustion test): ${NO_V6_EXHAUSTION}`);
let rig: Rig | undefined;
const holders: ChildProcess[] = [];

async function stopHolders(): Promise<void> {
  await Promise.all(
    holders.splice(0).map(async (h) => {
      if (h.exitCode === null && h.signalCode === null) {
        const gone = new Promise((r) => h.once('exit', r));
        h.kill('SIGKILL');
        await gone;
      }
    }),
  );
}

afterEach(async () => {
  await stopHolders();
  await stopRig(rig);
  rig = undefined;
});
afterAll(killAllDaemons);

describe('port exhaustion', () => {
  it.skipIf(!HAS_PRLIMIT)('out of file descriptors (RLIMIT_NOFILE): HANDLE_ERR 11, then serving again once a mapping is removed', async () => {
    rig = await startRig({ abi: 4, group: GROUP, daemon: { wrapper: ['prlimit', '--nofile=40:40'], control: 'none' } });
    const { sim, daemon } = rig;
    const made: { local: string; r: AddOutcome }[] = [];
    let failure: AddOutcome | undefined;
    for (let i = 0; i < 60 && !failure; i++) {
      const local = `127.0.0.1:${localPort()}`;
      const r = await sim.add(local);
      if (r.kind === 'ok') made.push({ local, r });
      else failure = r;
    }
    expect(made.length, `no mapping succeeded; log:\n${daemon.tail(20)}`).toBeGreaterThan(0);
    expect(failure, 'the descriptor limit was never reached').toBeDefined();
    expect(failure!.kind, JSON.stringify(failure!.kind)).toBe('error');
    if (failure!.kind !== 'error') return;
    expect(failure!.code).toBe(11);
    expectBytes(failure!.reply.raw, X.handleErr(hOf(failure!.reply), failure!.seq, 11), 'HANDLE_ERR 11');

    // Still serving: barrier, REG_PID, another failing ADD gets 11 again.
    await sim.barrier();
    expect((await sim.regPid()).kind).toBe('ok');
    expect(await sim.add(`127.0.0.1:${localPort()}`)).toMatchObject({ kind: 'error', code: 11 });
    // Free one descriptor: the next ADD succeeds.
    sim.remove(made[0]!.local);
    await sim.barrier();
    const again = await sim.add(`127.0.0.1:${localPort()}`);
    expect(again.kind, `after a REMOVE the ADD still fails; log:\n${daemon.tail(10)}`).toBe('ok');
    expect(daemon.exited).toBeUndefined();
    expectClean(sim);
  });

  it.skipIf(!!NO_V6_EXHAUSTION)('IPv6 ephemeral port range exhausted: HANDLE_ERR 11 for IPv6, IPv4 still mapped, IPv6 again once ports free up', async () => {
    rig = await startRig({ abi: 4, group: GROUP });
    const { sim, daemon } = rig;
    expect((await sim.regPid()).kind).toBe('ok');
    const before = await sim.add(`[::1]:${localPort()}`);
    expect(before.kind).toBe('ok');

    const [low, high] = readFileSync('/proc/sys/net/ipv4/ip_local_port_range', 'utf8').trim().split(/\s+/).map(Number) as [number, number];
    const script = fileURLToPath(new URL('../sim/port-holder.mjs', import.meta.url));
    // Several holder processes, each within the hard fd limit (raising it needs CAP_SYS_RESOURCE).
    const hard = Number(spawnSync('sh', ['-c', 'ulimit -Hn'], { encoding: 'utf8' }).stdout.trim()) || 1024;
    const chunk = Math.max(100, Math.min(hard === Infinity ? 20_000 : hard, 1_000_000) - 200);
    const readies: Promise<string>[] = [];
    for (let a = low; a <= high; a += chunk) {
      const b = Math.min(high, a + chunk - 1);
      const h = spawn('sh', ['-c', `ulimit -n ${hard}; exec "$0" "$@"`, process.execPath, script, String(a), String(b)], {
        stdio: ['pipe', 'pipe', 'inherit'],
      });
      holders.push(h);
      readies.push(
        new Promise<string>((resolve, reject) => {
          let out = '';
          const t = setTimeout(() => reject(new Error(`port holder ${a}-${b} not ready: ${out}`)), 60_000);
          h.stdout!.on('data', (d: Buffer) => {
            out += d.toString();
            if (out.includes('\n')) {
              clearTimeout(t);
              resolve(out.trim());
            }
          });
          h.once('exit', (c) => reject(new Error(`port holder ${a}-${b} exited ${c}: ${out}`)));
        }),
      );
    }
    for (const ready of await Promise.all(readies)) expect(ready).toMatch(/^ready \d+ \d+$/);
    try {
      const r = await sim.add(`[::1]:${localPort()}`);
      expect(r.kind, `IPv6 ADD with every port held: ${JSON.stringify(r.kind)}; log:\n${daemon.tail(10)}`).toBe('error');
      if (r.kind === 'error') {
        expect(r.code).toBe(11);
        expectBytes(r.reply.raw, X.handleErr(hOf(r.reply), r.seq, 11), 'HANDLE_ERR 11');
      }
      const v4 = await sim.add(`127.0.0.1:${localPort()}`);
      expect(v4.kind, 'IPv4 ADD during IPv6 exhaustion').toBe('ok');
      await sim.barrier();
    } finally {
      await stopHolders();
    }
    const after = await sim.add(`[::1]:${localPort()}`);
    expect(after.kind, `after the ports were freed: ${JSON.stringify(after.kind)}`).toBe('ok');
    expect(daemon.exited).toBeUndefined();
    expectClean(sim);
  }, 120_000);
});

function hasPrlimit(): boolean {
  return spawnSync('prlimit', ['--version'], { stdio: 'ignore' }).status === 0;
}

function exhaustionUnavailable(): string | undefined {
  if (!existsSync('/proc/sys/net/ipv6/conf/lo/disable_ipv6')) return 'no IPv6 in this kernel';
  if (readFileSync('/proc/sys/net/ipv6/conf/lo/disable_ipv6', 'utf8').trim() === '1') return 'IPv6 disabled on lo';
  return undefined;
}
