/**
 * Starting and stopping the daemons under test, always in the foreground (-s), each
 * with a raised RLIMIT_NOFILE (prlimit) and a parent-death signal (setpriv), so a
 * crashed or SIGKILLed bench never leaves a daemon behind. Every child is also
 * tracked here and killed on exit, on SIGINT/SIGTERM/SIGHUP and on uncaught errors.
 */
import { spawn, spawnSync, execFileSync } from 'node:child_process';
import { createSocket } from 'node:dgram';
import { connect } from 'node:net';
import { existsSync, mkdirSync, openSync, closeSync, statSync, writeFileSync, readFileSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

export const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '../..');
export const OUT = join(ROOT, 'bench/out');
export const RDMA_CORE_IWPMD = process.env.IWPMD_BENCH_RDMA_CORE ?? '/usr/sbin/iwpmd';
const SHIM_SRC = join(ROOT, 'test/ref/nlredirect.c');
export const SHIM_SO = join(OUT, 'nlredirect.so');
const FLOOR_SRC = join(ROOT, 'bench/floor/iwpm-floor.c');
export const FLOOR_BIN = join(OUT, 'iwpm-floor');

const children = new Set();

function killAll(signal = 'SIGKILL') {
  for (const c of children) {
    try {
      process.kill(c.pid, signal);
    } catch {
      /* already gone */
    }
  }
}

let hooked = false;
export function installCleanup() {
  if (hooked) return;
  hooked = true;
  process.on('exit', () => killAll('SIGKILL'));
  for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP']) {
    process.on(sig, () => {
      process.stderr.write(`\nbench: ${sig}: stopping daemons\n`);
      killAll('SIGKILL');
      process.exit(130);
    });
  }
  process.on('uncaughtException', (e) => {
    process.stderr.write(`bench: uncaught: ${e.stack ?? e}\n`);
    killAll('SIGKILL');
    process.exit(1);
  });
  process.on('unhandledRejection', (e) => {
    process.stderr.write(`bench: unhandled rejection: ${e?.stack ?? e}\n`);
    killAll('SIGKILL');
    process.exit(1);
  });
}

export function ensureOut() {
  mkdirSync(OUT, { recursive: true });
}

/** Build the LD_PRELOAD shim into bench/out/ when missing or older than its source. */
export function buildShim() {
  ensureOut();
  if (existsSync(SHIM_SO) && statSync(SHIM_SO).mtimeMs >= statSync(SHIM_SRC).mtimeMs) return SHIM_SO;
  const r = spawnSync('gcc', ['-O2', '-Wall', '-shared', '-fPIC', '-o', SHIM_SO, SHIM_SRC, '-ldl', '-lpthread'], {
    encoding: 'utf8',
  });
  if (r.status !== 0) throw new Error(`building the shim failed: ${r.error?.message ?? r.stderr}`);
  return SHIM_SO;
}

/** Build the bench-only floor (bench/floor/iwpm-floor.c) into bench/out/ when missing or older than its source. */
export function buildFloor() {
  ensureOut();
  if (existsSync(FLOOR_BIN) && statSync(FLOOR_BIN).mtimeMs >= statSync(FLOOR_SRC).mtimeMs) return FLOOR_BIN;
  const r = spawnSync('gcc', ['-O2', '-std=c11', '-Wall', '-o', FLOOR_BIN, FLOOR_SRC], { encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`building the floor failed: ${r.error?.message ?? r.stderr}`);
  return FLOOR_BIN;
}

export function rdmaCoreVersion() {
  try {
    return execFileSync('dpkg-query', ['-W', '-f', '${Version}', 'rdma-core'], { encoding: 'utf8' }).trim();
  } catch {
    return 'unknown';
  }
}

/** A UDP port free on both 0.0.0.0 and [::] right now. */
export async function freeUdpPort() {
  for (let i = 0; i < 20; i++) {
    const s4 = createSocket('udp4');
    const port = await new Promise((res, rej) => {
      s4.once('error', rej);
      s4.bind(0, '0.0.0.0', () => res(s4.address().port));
    });
    const s6 = createSocket({ type: 'udp6', ipv6Only: true });
    const ok = await new Promise((res) => {
      s6.once('error', () => res(false));
      s6.bind(port, '::', () => res(true));
    });
    s4.close();
    try {
      s6.close();
    } catch {
      /* not bound */
    }
    if (ok) return port;
  }
  throw new Error('no free UDP port found');
}

function wrap(nofile, argv) {
  const pre = [];
  if (existsSync('/usr/bin/setpriv')) pre.push('/usr/bin/setpriv', '--pdeathsig', 'KILL', '--');
  if (existsSync('/usr/bin/prlimit')) pre.push('/usr/bin/prlimit', `--nofile=${nofile}:${nofile}`, '--');
  return [...pre, ...argv];
}

export class DaemonProc {
  constructor(name, argv, env, logPath) {
    this.name = name;
    this.logPath = logPath;
    const fd = openSync(logPath, 'w');
    this.child = spawn(argv[0], argv.slice(1), { env, stdio: ['ignore', fd, fd] });
    closeSync(fd);
    children.add(this.child);
    this.exited = new Promise((res) => {
      this.child.once('exit', (code, signal) => {
        children.delete(this.child);
        this.exitInfo = { code, signal };
        res(this.exitInfo);
      });
    });
    this.child.once('error', (e) => {
      this.spawnError = e;
    });
  }

  get pid() {
    return this.child.pid;
  }

  alive() {
    return this.exitInfo === undefined;
  }

  /** SIGTERM, then SIGKILL after `graceMs`. Resolves with how it ended. */
  async stop(graceMs = 5000) {
    if (!this.alive()) return this.exitInfo;
    try {
      this.child.kill('SIGTERM');
    } catch {
      /* gone */
    }
    const t = setTimeout(() => {
      try {
        this.child.kill('SIGKILL');
      } catch {
        /* gone */
      }
    }, graceMs);
    const r = await this.exited;
    clearTimeout(t);
    return r;
  }

  logTail(lines = 15) {
    try {
      return readFileSync(this.logPath, 'utf8').trimEnd().split('\n').slice(-lines).join('\n');
    } catch {
      return '';
    }
  }
}

/** Config file both daemons read: the shipped rdma-core value (400 MiB netlink buffer). */
export function writeConfig() {
  ensureOut();
  const p = join(OUT, 'iwpmd-bench.conf');
  writeFileSync(p, 'nl_sock_rbuf_size=419430400\n');
  return p;
}

/**
 * rdma-core's iwpmd and the floor run the same way: under the LD_PRELOAD shim, which
 * points their NETLINK_RDMA socket at the bench kernel and UDP port 3935 at `udpPort`.
 *
 * @param {'ours'|'rdma-core'|'floor'} which
 * @param {{ kernelPort: number, group: number, udpPort: number, nofile: number, config: string, tag: string, profileDir?: string }} o
 */
export function startDaemon(which, o) {
  ensureOut();
  const logPath = join(OUT, `${which}-${o.tag}.log`);
  if (which === 'ours') {
    const node = [process.execPath];
    if (o.profileDir) node.push('--cpu-prof', '--cpu-prof-dir', o.profileDir);
    // extra V8/Node flags for our daemon, e.g. IWPMD_BENCH_NODE_ARGS=--trace-gc
    if (process.env.IWPMD_BENCH_NODE_ARGS) node.push(...process.env.IWPMD_BENCH_NODE_ARGS.split(/\s+/).filter(Boolean));
    const argv = [
      ...node,
      process.env.IWPMD_BENCH_OURS ?? join(ROOT, 'dist/cli/iwpmd.js'),
      '-s',
      '-c',
      o.config,
      '--kernel-port',
      String(o.kernelPort),
      '--nl-group',
      String(o.group),
      '--control',
      o.controlPath ?? 'none',
      '--log-level',
      'warn',
      '--udp-port',
      String(o.udpPort),
      // extra daemon options, e.g. IWPMD_BENCH_OURS_ARGS=--no-warmup
      ...(process.env.IWPMD_BENCH_OURS_ARGS ?? '').split(/\s+/).filter(Boolean),
    ];
    const env = { ...process.env };
    delete env.NOTIFY_SOCKET;
    return new DaemonProc('ours', wrap(o.nofile, argv), env, logPath);
  }
  const env = {
    ...process.env,
    LD_PRELOAD: SHIM_SO,
    IWPMD_SHIM_KERNEL_PORT: String(o.kernelPort),
    IWPMD_SHIM_NL_GROUPS: String(1 << (o.group - 1)),
    IWPMD_SHIM_UDP_PORT: String(o.udpPort),
    IWPMD_SHIM_PEER_UDP_PORT: String(o.udpPort),
    IWPMD_SHIM_CONFIG: o.config,
  };
  delete env.NOTIFY_SOCKET;
  if (which === 'floor') return new DaemonProc('floor', wrap(o.nofile, [FLOOR_BIN, '-s']), env, logPath);
  return new DaemonProc('rdma-core', wrap(o.nofile, [RDMA_CORE_IWPMD, '-s']), env, logPath);
}

/** One control-socket command of our daemon ("show stats"); resolves with the parsed JSON or undefined. */
export function controlQuery(path, command, timeoutMs = 3000) {
  return new Promise((resolve) => {
    let buf = '';
    const s = connect(path);
    const done = (v) => {
      clearTimeout(t);
      s.destroy();
      resolve(v);
    };
    const t = setTimeout(() => done(undefined), timeoutMs);
    s.setEncoding('utf8');
    s.on('connect', () => s.write(`${command}\n`));
    s.on('data', (c) => (buf += c));
    s.on('end', () => {
      try {
        done(JSON.parse(buf));
      } catch {
        done(undefined);
      }
    });
    s.on('error', () => done(undefined));
  });
}
