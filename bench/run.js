#!/usr/bin/env node
/**
 * Benchmarks of our iwpmd against rdma-core's iwpmd, both driven by the same lean
 * kernel (bench/lib/kernel.js) over NETLINK_USERSOCK. See bench/README.md.
 *
 *   npm run bench                 full run (~5 min)
 *   npm run bench -- --quick      smoke run (< 1 min)
 *   node bench/run.js --help
 */
import { execFileSync, spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync, readFileSync, readdirSync, statSync, unlinkSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import {
  OUT,
  RDMA_CORE_IWPMD,
  ROOT,
  buildFloor,
  buildShim,
  controlQuery,
  ensureOut,
  freeUdpPort,
  installCleanup,
  rdmaCoreVersion,
  startDaemon,
  writeConfig,
} from './lib/daemons.js';
import { BenchKernel, REPLY } from './lib/kernel.js';
import { churn, fillHeld, queries } from './lib/workloads.js';
import { summarizeProfiles } from './lib/profile.js';

const HELP = `Usage: node bench/run.js [options]      (npm run bench -- [options])

Workloads (all against both daemons, alternating, --reps times each):
  churn     ADD+REMOVE of listener mappings on distinct 127.0.0.1 ports (real port reservations)
  held      fill ${'--held'} mappings, then the same churn at that level
  query1    QUERY round trips one at a time (window 1): latency without load
  query64   QUERY round trips through the daemon talking to itself, window 64
  query256  same, window 256
  cold      the first storm after start: query64 for --cold-ms, beginning --cold-idle-ms after
            the daemon registered, with no warm-up traffic (ours compiles its hot paths in
            that idle time; the others have nothing to compile)

Options (each also readable from the environment as BENCH_<NAME>, e.g. BENCH_REPS=5):
  --quick               short smoke run (1 repetition, short intervals; < 1 min)
  --reps N              repetitions per workload and daemon (default 3; quick 1)
  --only LIST           comma list of workloads (churn,held,query1,query64,query256,cold)
  --daemons LIST        comma list: ours,rdma-core,floor (default ours,rdma-core). floor is
                        bench/floor/iwpm-floor.c, a minimal single-threaded C responder
                        (bench-only, not a port mapper): the machine's ceiling
  --warmup-ms MS        warm-up before each measured interval (default 1000; quick 500)
  --churn-ms MS         measured interval of churn (default 5000; quick 2000)
  --churn-window N      outstanding ADDs in churn and held (default 64)
  --held N              mappings held in the held workload (default 19500)
  --held-ms MS          measured interval of held (default 5000; quick 2000)
  --query-ms MS         measured interval of each query run (default 20000; quick 3000)
  --cold-ms MS          measured interval of cold (default 1000)
  --cold-idle-ms MS     idle time between the daemon's start and cold's storm (default 2000)
  --drain-ms MS         after a measured interval, how long to wait for answers still
                        outstanding (default 10500, so every query times out or is answered;
                        quick 3000)
  --group N             netlink multicast group for REG_PID (default 27)
  --nofile N            RLIMIT_NOFILE for the daemons (default 65536)
  --profile             run our daemon under node --cpu-prof; print its hot spots
  --no-build-check      do not warn when src/ is newer than dist/
  -h, --help
`;

function opt(name, def) {
  const env = process.env[`BENCH_${name.toUpperCase().replace(/-/g, '_')}`];
  return env === undefined || env === '' ? def : env;
}

const { values: a } = parseArgs({
  options: {
    quick: { type: 'boolean' },
    reps: { type: 'string' },
    only: { type: 'string' },
    daemons: { type: 'string' },
    'warmup-ms': { type: 'string' },
    'churn-ms': { type: 'string' },
    'churn-window': { type: 'string' },
    held: { type: 'string' },
    'held-ms': { type: 'string' },
    'query-ms': { type: 'string' },
    'drain-ms': { type: 'string' },
    'cold-ms': { type: 'string' },
    'cold-idle-ms': { type: 'string' },
    group: { type: 'string' },
    nofile: { type: 'string' },
    profile: { type: 'boolean' },
    'no-build-check': { type: 'boolean' },
    help: { type: 'boolean', short: 'h' },
  },
  strict: true,
});
if (a.help) {
  process.stdout.write(HELP);
  process.exit(0);
}
const quick = a.quick || opt('quick', '') === '1';
const num = (name, def) => {
  const v = Number(a[name] ?? opt(name, String(def)));
  if (!Number.isFinite(v) || v < 0) {
    process.stderr.write(`bench: --${name} needs a number\n`);
    process.exit(2);
  }
  return v;
};
const S = {
  reps: num('reps', quick ? 1 : 3),
  warmupMs: num('warmup-ms', quick ? 500 : 1000),
  churnMs: num('churn-ms', quick ? 2000 : 5000),
  churnWindow: num('churn-window', 64),
  held: num('held', quick ? 10000 : 19500),
  heldMs: num('held-ms', quick ? 2000 : 5000),
  query1Ms: num('query-ms', quick ? 3000 : 5000),
  query64Ms: num('query-ms', quick ? 3000 : 10000),
  query256Ms: num('query-ms', quick ? 3000 : 20000),
  drainMs: num('drain-ms', quick ? 3000 : 10500),
  coldMs: num('cold-ms', 1000),
  coldIdleMs: num('cold-idle-ms', 2000),
  group: num('group', 27),
  nofile: num('nofile', 65536),
  profile: a.profile || opt('profile', '') === '1',
};
const ALL = ['churn', 'held', 'query1', 'query64', 'query256', 'cold'];
const only = (a.only ?? opt('only', ALL.join(','))).split(',').map((s) => s.trim()).filter(Boolean);
for (const w of only) if (!ALL.includes(w)) throw new Error(`unknown workload ${w} (${ALL.join(', ')})`);
const daemons = (a.daemons ?? opt('daemons', 'ours,rdma-core')).split(',').map((s) => s.trim()).filter(Boolean);
const KINDS = ['ours', 'rdma-core', 'floor'];
for (const d of daemons) if (!KINDS.includes(d)) throw new Error(`unknown daemon ${d} (${KINDS.join(', ')})`);

const log = (s) => process.stderr.write(`${s}\n`);

// ---------------------------------------------------------------------------
// Preconditions

function newestMtime(dir) {
  let newest = 0;
  const walk = (d) => {
    for (const e of readdirSafe(d)) {
      const p = join(d, e.name);
      if (e.isDirectory()) walk(p);
      else newest = Math.max(newest, statMtime(p));
    }
  };
  walk(dir);
  return newest;
}
function readdirSafe(d) {
  try {
    return readdirSync(d, { withFileTypes: true });
  } catch {
    return [];
  }
}
function statMtime(p) {
  try {
    return statSync(p).mtimeMs;
  } catch {
    return 0;
  }
}

function preflight() {
  const missing = [];
  if (!existsSync(join(ROOT, 'dist/cli/iwpmd.js'))) missing.push('dist/ (run `npm run build:ts`)');
  if (!existsSync(join(ROOT, 'build/Release/iwpm_native.node'))) missing.push('the native addon (run `npm run build:native`)');
  if (missing.length) {
    log(`bench: missing ${missing.join(' and ')}`);
    process.exit(2);
  }
  if (!a['no-build-check'] && newestMtime(join(ROOT, 'src')) > newestMtime(join(ROOT, 'dist')) + 1000) {
    log('bench: warning: src/ has changes newer than dist/; benchmarking the built dist/ (`npm run bench` rebuilds it first)');
  }
  if (daemons.includes('rdma-core')) {
    if (!existsSync(RDMA_CORE_IWPMD)) {
      log(`bench: ${RDMA_CORE_IWPMD} not found (Debian package rdma-core); running our daemon only`);
      daemons.splice(daemons.indexOf('rdma-core'), 1);
    } else {
      buildShim();
    }
  }
  if (daemons.includes('floor')) {
    buildShim();
    buildFloor();
  }
  // Raising the hard limit needs CAP_SYS_RESOURCE; without it, stay within the current one.
  const hard = Number(execFileSync('bash', ['-c', 'ulimit -Hn'], { encoding: 'utf8' }).trim());
  if (Number.isFinite(hard) && hard < S.nofile) {
    const t = spawnSync('prlimit', [`--nofile=${S.nofile}:${S.nofile}`, '--', 'true']);
    if (t.status !== 0) {
      log(`bench: cannot raise RLIMIT_NOFILE above the hard limit ${hard} here (no CAP_SYS_RESOURCE); daemons get ${hard}`);
      S.nofile = hard;
    }
  }
  const need = S.held + S.churnWindow + 64;
  if (only.includes('held') && S.nofile < need) {
    log(`bench: RLIMIT_NOFILE ${S.nofile} is below the ${need} descriptors the held workload needs (rdma-core: 1 per mapping)`);
  }
}

// ---------------------------------------------------------------------------
// Sessions: a fresh kernel socket and a fresh daemon per measurement.

const { native } = await import('../dist/native/index.js');
let sessionNo = 0;
const KERNEL_PORT_BASE = 0x40000000 + (process.pid % 100000) * 64;

function withTimeout(p, ms, what) {
  let t;
  return Promise.race([p, new Promise((_, rej) => (t = setTimeout(() => rej(new Error(what)), ms)))]).finally(() =>
    clearTimeout(t),
  );
}

/** CPU time of the daemon (from /proc, its whole process) and of this bench process over the measured interval. */
class CpuMeter {
  constructor(pid) {
    this.pid = pid;
    this.tick = 100; // USER_HZ
  }
  daemonMs() {
    try {
      const f = readFileSync(`/proc/${this.pid}/stat`, 'utf8');
      const rest = f.slice(f.lastIndexOf(')') + 2).split(' ');
      return ((Number(rest[11]) + Number(rest[12])) * 1000) / this.tick;
    } catch {
      return NaN;
    }
  }
  /** Host-wide UDP receive-buffer drops (/proc/net/snmp Udp RcvbufErrors): lost peer datagrams. */
  udpDrops() {
    try {
      const lines = readFileSync('/proc/net/snmp', 'utf8').split('\n').filter((l) => l.startsWith('Udp:'));
      const names = lines[0].split(/\s+/);
      const vals = lines[1].split(/\s+/);
      return Number(vals[names.indexOf('RcvbufErrors')]);
    } catch {
      return NaN;
    }
  }
  start() {
    this.u0 = this.udpDrops();
    this.t0 = performance.now();
    this.d0 = this.daemonMs();
    this.g0 = process.cpuUsage();
  }
  stop() {
    this.wall = performance.now() - this.t0;
    this.d = this.daemonMs() - this.d0;
    const g = process.cpuUsage(this.g0);
    this.g = (g.user + g.system) / 1000;
    this.u = this.udpDrops() - this.u0;
  }
  result() {
    if (this.wall === undefined) return undefined;
    return {
      daemonPct: Math.round((100 * this.d) / this.wall),
      benchPct: Math.round((100 * this.g) / this.wall),
      daemonMs: this.d,
      benchMs: this.g,
      udpDrops: this.u,
    };
  }
}

async function session(which, tag, fn) {
  sessionNo++;
  const kernelPort = KERNEL_PORT_BASE + (sessionNo % 64);
  const udpPort = await freeUdpPort();
  const k = new BenchKernel({ native, portId: kernelPort, group: S.group, log });
  const d = startDaemon(which, {
    kernelPort,
    group: S.group,
    udpPort,
    nofile: S.nofile,
    config: CONFIG,
    tag,
    profileDir: S.profile && which === 'ours' ? join(OUT, 'prof') : undefined,
    // idle unless asked: read once at the end for the daemon's own counters
    controlPath: which === 'ours' ? join(OUT, `ctl-${process.pid}.sock`) : undefined,
  });
  const died = d.exited.then((x) => {
    throw new Error(`${which} exited early (${x.signal ?? `code ${x.code}`}); log ${d.logPath}:\n${d.logTail()}`);
  });
  died.catch(() => {});
  try {
    await Promise.race([withTimeout(k.ready, 10_000, `${which}: no HELLO/MAPINFO request within 10 s`), died]);
    const reg = await Promise.race([k.regPid(), died]);
    if (reg.kind !== REPLY) throw new Error(`${which}: REG_PID answered with ${reg.kind}`);
    const meters = [];
    const meter = () => {
      const c = new CpuMeter(d.pid);
      meters.push(c);
      return c;
    };
    const res = await Promise.race([fn(k, meter), died]);
    const list = Array.isArray(res) ? res : [res];
    list.forEach((r, i) => {
      r.cpu = meters[i]?.result();
      // CPU time the daemon spent per answered request: robust against a busy machine
      if (r.cpu && r.ops > 0) r.cpu.daemonUsPerOp = (r.cpu.daemonMs * 1000) / r.ops;
      r.pid = d.pid;
    });
    list[list.length - 1].kernel = k.stats();
    if (which === 'ours') list[list.length - 1].daemonStats = await controlQuery(join(OUT, `ctl-${process.pid}.sock`), 'show stats');
    return list;
  } finally {
    const alive = d.alive();
    const ex = await d.stop();
    k.close();
    try {
      unlinkSync(join(OUT, `ctl-${process.pid}.sock`));
    } catch {
      /* none */
    }
    if (alive && ex.signal === 'SIGKILL') log(`  (${which} needed SIGKILL to stop)`);
  }
}

const WORKLOADS = {
  churn: {
    title: 'a) ADD+REMOVE churn of listener mappings on distinct 127.0.0.1 ports (real port reservations), window ' + S.churnWindow,
    unit: 'mappings/s',
    run: (k, meter) =>
      churn(k, {
        cpu: meter(),
        window: S.churnWindow,
        warmupMs: S.warmupMs,
        measureMs: S.churnMs,
        drainMs: S.drainMs,
        portFrom: 40000,
        portTo: 59999,
      }),
  },
  held: {
    title: `b) ADD+REMOVE churn with ${S.held} mappings held, window ${S.churnWindow} (one fill per daemon, ${S.reps} measured interval(s))`,
    unit: 'mappings/s',
    // Both daemons cannot hold this many ports at once (one ephemeral range), and
    // rdma-core needs a minute or more to fill: one session per daemon, the
    // repetitions are consecutive measured intervals at the held level.
    perSession: true,
    run: async (k, meter) => {
      const fill = await fillHeld(k, { count: S.held, window: 256, portFrom: 20000 });
      log(`  held     filled ${fill.held} mappings in ${fmtMs(fill.fillMs)}` + (Object.keys(fill.errors).length ? ` errors ${JSON.stringify(fill.errors)}` : ''));
      const out = [];
      for (let i = 0; i < S.reps; i++) {
        const r = await churn(k, {
          cpu: meter(),
          window: S.churnWindow,
          warmupMs: S.warmupMs,
          measureMs: S.heldMs,
          drainMs: S.drainMs,
          portFrom: 20000 + S.held + 100,
          portTo: Math.min(65535, 20000 + S.held + 100 + 20000),
        });
        out.push({ ...r, fill });
      }
      return out;
    },
  },
  query1: {
    title: 'c) QUERY round trips through the daemon talking to itself on 127.0.0.1, one at a time (window 1)',
    unit: 'queries/s',
    run: (k, meter) => queries(k, { ...q(1, S.query1Ms), cpu: meter() }),
  },
  query64: {
    title: 'c) QUERY round trips through the daemon talking to itself on 127.0.0.1, window 64',
    unit: 'queries/s',
    run: (k, meter) => queries(k, { ...q(64, S.query64Ms), cpu: meter() }),
  },
  query256: {
    title: 'c) QUERY round trips through the daemon talking to itself on 127.0.0.1, window 256',
    unit: 'queries/s',
    run: (k, meter) => queries(k, { ...q(256, S.query256Ms), cpu: meter() }),
  },
  cold: {
    title: `d) the first storm after start: QUERY round trips, window 64, for ${S.coldMs} ms from ${S.coldIdleMs} ms after the daemon registered (no warm-up traffic)`,
    unit: 'queries/s',
    run: async (k, meter) => {
      await new Promise((r) => setTimeout(r, S.coldIdleMs));
      return queries(k, { ...q(64, S.coldMs), warmupMs: 0, cpu: meter() });
    },
  },
};
function q(window, measureMs) {
  return {
    window,
    warmupMs: S.warmupMs,
    measureMs,
    drainMs: S.drainMs,
    listenerPort: 18515,
    portFrom: 20000,
    portTo: 64999,
  };
}

// ---------------------------------------------------------------------------
// Statistics and report

const median = (xs) => {
  const v = xs.filter((x) => Number.isFinite(x)).sort((x, y) => x - y);
  if (v.length === 0) return NaN;
  const m = v.length >> 1;
  return v.length % 2 ? v[m] : (v[m - 1] + v[m]) / 2;
};
const fmtRate = (x) => (Number.isFinite(x) ? (x >= 10000 ? `${(x / 1000).toFixed(1)}k` : x >= 1000 ? `${(x / 1000).toFixed(2)}k` : x.toFixed(0)) : '–');
const fmtMs = (x) => (Number.isFinite(x) ? (x >= 1000 ? `${(x / 1000).toFixed(2)} s` : x >= 10 ? `${x.toFixed(0)} ms` : x >= 1 ? `${x.toFixed(2)} ms` : `${(x * 1000).toFixed(0)} µs`) : '–');
const fmtPct = (x) => (Number.isFinite(x) ? `${x.toFixed(0)}%` : '–');
const fmtRatio = (x) => (Number.isFinite(x) ? `${x >= 10 ? x.toFixed(0) : x.toFixed(1)}×` : '–');

function aggregate(runs) {
  const ok = runs.filter((r) => !r.error);
  const sumErr = {};
  for (const r of ok) for (const [c, n] of Object.entries(r.errors ?? {})) sumErr[c] = (sumErr[c] ?? 0) + n;
  return {
    runs: runs.length,
    failed: runs.length - ok.length,
    rate: median(ok.map((r) => r.rate)),
    rateMin: Math.min(...ok.map((r) => r.rate)),
    rateMax: Math.max(...ok.map((r) => r.rate)),
    p50: median(ok.map((r) => r.latency.p50Ms)),
    p99: median(ok.map((r) => r.latency.p99Ms)),
    p999: median(ok.map((r) => r.latency.p999Ms)),
    max: Math.max(...ok.map((r) => r.latency.maxMs)),
    timeouts: ok.map((r) => r.timeouts),
    rejected: ok.map((r) => r.rejected ?? 0),
    errors: sumErr,
    fillRate: median(ok.map((r) => r.fill?.fillRate)),
    fillMs: median(ok.map((r) => r.fill?.fillMs)),
    held: ok.map((r) => r.fill?.held),
    accepted: ok.reduce((n, r) => n + (r.accepted ?? 0), 0),
    rejectedTotal: ok.reduce((n, r) => n + (r.rejected ?? 0), 0),
    unfinished: ok.map((r) => r.unfinished ?? 0),
    daemonCpu: median(ok.map((r) => r.cpu?.daemonPct)),
    usPerOp: median(ok.map((r) => r.cpu?.daemonUsPerOp)),
    udpDrops: ok.map((r) => r.cpu?.udpDrops ?? NaN),
    benchCpu: median(ok.map((r) => r.cpu?.benchPct)),
  };
}

function machine() {
  let cpu = 'unknown';
  try {
    cpu = /model name\s*:\s*(.*)/.exec(readFileSync('/proc/cpuinfo', 'utf8'))?.[1] ?? cpu;
  } catch {
    /* */
  }
  let commit = 'unknown';
  try {
    commit = execFileSync('git', ['-C', ROOT, 'rev-parse', '--short', 'HEAD'], { encoding: 'utf8' }).trim();
    const dirty = execFileSync('git', ['-C', ROOT, 'status', '--porcelain', '--', 'src', 'native'], { encoding: 'utf8' }).trim();
    if (dirty) {
      // identify the uncommitted state: hash of the diff of src/ and native/
      const diff = execFileSync('git', ['-C', ROOT, 'diff', 'HEAD', '--', 'src', 'native'], { encoding: 'utf8', maxBuffer: 64 << 20 });
      commit += `+dirty:${createHash('sha1').update(diff).digest('hex').slice(0, 8)}`;
    }
  } catch {
    /* */
  }
  return {
    date: new Date().toISOString().replace(/\.\d+Z$/, 'Z'),
    nproc: os.availableParallelism?.() ?? os.cpus().length,
    cpu,
    kernel: os.release(),
    node: process.version,
    rdmaCore: rdmaCoreVersion(),
    commit,
    portRange: readFileSync('/proc/sys/net/ipv4/ip_local_port_range', 'utf8').trim().replace(/\s+/, '-'),
    loadavg: os.loadavg().map((x) => x.toFixed(2)).join(' '),
  };
}

function report(results, m, command) {
  const DAEMON_LABEL = { ours: 'ours (iwpmd-ts)', 'rdma-core': `rdma-core ${m.rdmaCore}`, floor: 'floor (minimal C, bench-only)' };
  const lines = [];
  lines.push(`Run ${m.date} · ${m.nproc} CPUs (${m.cpu}) · Linux ${m.kernel} · Node ${m.node} · rdma-core ${m.rdmaCore} · ours at ${m.commit}`);
  lines.push(`Load average at start: ${m.loadavg} · ip_local_port_range ${m.portRange} · RLIMIT_NOFILE of the daemons ${S.nofile}`);
  lines.push(`Command: \`${command}\` · ${S.reps} repetition(s) per daemon, medians (min–max of the rate)`);
  lines.push('');
  for (const w of only) {
    const per = results[w];
    if (!per) continue;
    const wl = WORKLOADS[w];
    lines.push(`### ${wl.title}`);
    lines.push('');
    const isQuery = w.startsWith('query') || w === 'cold';
    const hdr = ['daemon', wl.unit, 'p50', 'p99', 'p99.9', 'max'];
    if (isQuery) hdr.push('timeouts/run', 'rejects/run', 'UDP drops/run');
    if (w === 'held') hdr.push('fill rate', 'fill time');
    hdr.push('errors', 'CPU daemon / bench', 'daemon CPU per op');
    lines.push(`| ${hdr.join(' | ')} |`);
    lines.push(`|${hdr.map(() => '---').join('|')}|`);
    const agg = {};
    for (const d of daemons) {
      if (!per[d]) continue;
      const g = (agg[d] = aggregate(per[d]));
      const row = [
        DAEMON_LABEL[d] ?? d,
        g.runs > g.failed ? `${fmtRate(g.rate)} (${fmtRate(g.rateMin)}–${fmtRate(g.rateMax)})` : 'failed',
        fmtMs(g.p50),
        fmtMs(g.p99),
        fmtMs(g.p999),
        fmtMs(g.max),
      ];
      if (isQuery) {
        const unf = g.unfinished.some((x) => x > 0) ? ` (+${g.unfinished.join(', ')} unanswered at the end)` : '';
        row.push(g.timeouts.join(', ') + unf, g.rejected.join(', '), g.udpDrops.join(', '));
      }
      if (w === 'held') row.push(`${fmtRate(g.fillRate)}/s`, fmtMs(g.fillMs));
      const errs = Object.entries(g.errors).map(([c, n]) => `${n}× code ${c}`);
      if (g.failed) errs.push(`${g.failed} run(s) failed`);
      row.push(errs.join(', ') || '0');
      row.push(`${fmtPct(g.daemonCpu)} / ${fmtPct(g.benchCpu)}`);
      row.push(Number.isFinite(g.usPerOp) ? `${g.usPerOp.toFixed(0)} µs` : '–');
      lines.push(`| ${row.join(' | ')} |`);
    }
    if (isQuery && agg.ours && agg.ours.accepted === 0 && agg.ours.rejectedTotal > 0) {
      lines.push('');
      lines.push(
        'Our daemon answered every query with IWPM_REMOTE_QUERY_REJECT: its peer exchange (UDP) is not available in ' +
          'this build, so its latency is that of a local reject and no throughput ratio is given.',
      );
    } else if (agg.ours && agg['rdma-core']) {
      const o = agg.ours;
      const r = agg['rdma-core'];
      lines.push('');
      lines.push(
        `Ratio ours / rdma-core: throughput ${fmtRatio(o.rate / r.rate)}; ` +
          `latency (rdma-core / ours) p50 ${fmtRatio(r.p50 / o.p50)}, p99 ${fmtRatio(r.p99 / o.p99)}, p99.9 ${fmtRatio(r.p999 / o.p999)}; ` +
          `daemon CPU per op (rdma-core / ours) ${fmtRatio(r.usPerOp / o.usPerOp)}`,
      );
    }
    const oursRejectsAll = isQuery && agg.ours && agg.ours.accepted === 0 && agg.ours.rejectedTotal > 0;
    if (agg.ours && agg.floor && !oursRejectsAll) {
      const o = agg.ours;
      const f = agg.floor;
      lines.push('');
      lines.push(
        `Ours against the floor (a minimal single-threaded C responder, bench-only): throughput ours / floor ${fmtRatio(o.rate / f.rate)}; ` +
          `latency (ours / floor) p50 ${fmtRatio(o.p50 / f.p50)}, p99 ${fmtRatio(o.p99 / f.p99)}; ` +
          `daemon CPU per op (ours / floor) ${fmtRatio(o.usPerOp / f.usPerOp)}`,
      );
    }
    lines.push('');
  }
  return lines.join('\n');
}

// ---------------------------------------------------------------------------

/** One benchmark at a time: two runs on one machine would measure each other. */
function acquireLock() {
  const p = join(OUT, 'bench.lock');
  for (let attempt = 0; attempt < 3; attempt++) {
    try {
      writeFileSync(p, String(process.pid), { flag: 'wx' });
      process.on('exit', () => {
        try {
          if (readFileSync(p, 'utf8') === String(process.pid)) unlinkSync(p);
        } catch {
          /* gone */
        }
      });
      return;
    } catch (e) {
      if (e.code !== 'EEXIST') throw e;
      let other = 0;
      try {
        other = Number(readFileSync(p, 'utf8'));
      } catch {
        continue; // removed meanwhile
      }
      let alive = false;
      try {
        if (other > 0) {
          process.kill(other, 0);
          alive = true;
        }
      } catch {
        /* no such process: a stale lock */
      }
      if (alive) {
        log(`bench: another benchmark is running (pid ${other}); two at once would measure each other. Wait for it (or remove ${p} if that pid is not a bench).`);
        process.exit(3);
      }
      try {
        unlinkSync(p);
      } catch {
        /* someone else took it over */
      }
    }
  }
  log(`bench: cannot take ${p}`);
  process.exit(3);
}

installCleanup();
ensureOut();
acquireLock();
preflight();
const CONFIG = writeConfig();
const command = `npm run bench${process.argv.length > 2 ? ` -- ${process.argv.slice(2).join(' ')}` : ''}`;
const m = machine();
log(`bench: ${only.join(', ')} × ${daemons.join(' vs ')} × ${S.reps} rep(s)${quick ? ' (quick)' : ''}`);
if (os.loadavg()[0] > 0.5 * m.nproc) {
  log(`bench: note: load average ${m.loadavg} on ${m.nproc} CPUs: other work is running, numbers will be noisy`);
}
const results = {};
const t0 = performance.now();
if (S.profile) {
  // the summary reads every profile in the directory: only this run's
  const dir = join(OUT, 'prof');
  if (existsSync(dir)) for (const f of readdirSync(dir)) if (f.endsWith('.cpuprofile')) unlinkSync(join(dir, f));
}
function line(w, rep, d, r) {
  const l = r.latency;
  log(
    `  ${w.padEnd(8)} rep ${rep} ${d.padEnd(9)} ${fmtRate(r.rate).padStart(7)} ${WORKLOADS[w].unit}` +
      `  p50 ${fmtMs(l.p50Ms)}  p99 ${fmtMs(l.p99Ms)}  p99.9 ${fmtMs(l.p999Ms)}` +
      (r.timeouts ? `  timeouts ${r.timeouts}` : '') +
      (r.rejected ? `  rejects ${r.rejected}` : '') +
      (r.unfinished ? `  unanswered ${r.unfinished}` : '') +
      (Object.keys(r.errors).length ? `  errors ${JSON.stringify(r.errors)}` : '') +
      (r.cpu ? `  cpu: daemon ${r.cpu.daemonPct}% bench ${r.cpu.benchPct}%` : '') +
      (r.cpu?.daemonUsPerOp ? ` (${r.cpu.daemonUsPerOp.toFixed(0)} µs/op)` : '') +
      (r.cpu?.udpDrops ? `  UDP drops ${r.cpu.udpDrops}` : ''),
  );
  // the first storm: how the rate grows, per 250 ms
  if (w === 'cold' && r.timeline) log(`           queries/s per 250 ms: ${r.timeline.map((n) => fmtRate(n * 4)).join(' ')}`);
}

for (const w of only) {
  const wl = WORKLOADS[w];
  const per = (results[w] = {});
  const sessions = wl.perSession ? daemons.map((d) => [1, d]) : [];
  if (!wl.perSession) {
    for (let rep = 1; rep <= S.reps; rep++) {
      for (const d of rep % 2 === 1 ? daemons : [...daemons].reverse()) sessions.push([rep, d]);
    }
  }
  for (const [rep, d] of sessions) {
    try {
      const rs = await session(d, `${w}-${rep}`, wl.run);
      rs.forEach((r, i) => line(w, wl.perSession ? i + 1 : rep, d, r));
      (per[d] ??= []).push(...rs);
    } catch (e) {
      const error = String(e.message ?? e);
      log(`  ${w} rep ${rep} ${d}: FAILED: ${error}`);
      (per[d] ??= []).push({ error });
    }
  }
}
const md = report(results, m, command);
const stamp = m.date.replace(/[:]/g, '-');
ensureOut();
writeFileSync(join(OUT, `results-${stamp}.json`), JSON.stringify({ machine: m, settings: S, command, results }, null, 2));
writeFileSync(join(OUT, `results-${stamp}.md`), md + '\n');
process.stdout.write(`\n${md}\n`);
log(`bench: done in ${((performance.now() - t0) / 1000).toFixed(0)} s; results in bench/out/results-${stamp}.{md,json}`);
if (S.profile) {
  const top = summarizeProfiles(join(OUT, 'prof'), ROOT);
  process.stdout.write(`\n${top}\n`);
}
process.exit(0);
