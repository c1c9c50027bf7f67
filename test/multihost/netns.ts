/**
 * Two "hosts" for multi-host tests: two network namespaces joined by a veth pair, with
 * IPv4 and IPv6 addresses, each running its own kernel simulator (a child process
 * inside the namespace, test/multihost/sim-child.ts) and its own port mapper daemon
 * (ours, or rdma-core's iwpmd through the test/ref/nlredirect.c LD_PRELOAD shim).
 *
 * Everything is created by the test and removed afterwards; namespaces left behind
 * by a crashed run (named after a pid that no longer exists) are removed on setup.
 */
import { type ChildProcess, execFileSync, spawn, spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { DaemonProc, REPO_ROOT } from '../sim/daemon-proc.js';

export const NS_PREFIX = 'iwpmt-';

export const HOST_A = { v4: '10.77.0.1', v6: 'fd77::1' } as const;
export const HOST_B = { v4: '10.77.0.2', v6: 'fd77::2' } as const;

function which(cmd: string): string | undefined {
  const r = spawnSync('sh', ['-c', `command -v ${cmd}`], { encoding: 'utf8' });
  return r.status === 0 ? r.stdout.trim() : undefined;
}

/** Why the multi-host tests cannot run here (undefined: they can). */
export function multihostSkipReason(): string | undefined {
  if (process.getuid?.() !== 0) return 'needs root (network namespaces)';
  if (!which('ip')) return '`ip` (iproute2) is not installed: run scripts/install-test-deps.sh';
  const r = spawnSync('ip', ['netns', 'list'], { encoding: 'utf8' });
  if (r.status !== 0) return `\`ip netns\` does not work here: ${r.stderr.trim()}`;
  if (!existsSync(join(REPO_ROOT, 'dist/cli/iwpmd.js'))) return 'dist/cli/iwpmd.js missing (npm run build:ts)';
  if (!existsSync(join(REPO_ROOT, 'build/Release/iwpm_native.node'))) return 'native addon missing (npm run build:native)';
  return undefined;
}

export function nftSkipReason(): string | undefined {
  return which('nft') ? undefined : '`nft` (nftables) is not installed: run scripts/install-test-deps.sh';
}

export function refSkipReason(): string | undefined {
  if (!existsSync('/usr/sbin/iwpmd')) return "rdma-core's /usr/sbin/iwpmd is not installed: run scripts/install-test-deps.sh";
  if (!which('gcc')) return 'gcc is not installed (builds the LD_PRELOAD shim): run scripts/install-test-deps.sh';
  return undefined;
}

function run(args: string[], input?: string): string {
  return execFileSync(args[0]!, args.slice(1), { encoding: 'utf8', input, stdio: ['pipe', 'pipe', 'pipe'], timeout: 20_000 });
}

function nsExec(ns: string, args: string[], input?: string): string {
  return run(['ip', 'netns', 'exec', ns, ...args], input);
}

/** Remove namespaces of earlier runs whose process is gone. */
function sweepStale(): void {
  const list = spawnSync('ip', ['netns', 'list'], { encoding: 'utf8' }).stdout ?? '';
  for (const line of list.split('\n')) {
    const name = line.split(' ')[0] ?? '';
    const m = new RegExp(`^${NS_PREFIX}(\\d+)-`).exec(name);
    if (m && !existsSync(`/proc/${m[1]}`)) spawnSync('ip', ['netns', 'del', name]);
  }
}

export class NetnsPair {
  readonly a: string;
  readonly b: string;
  private created: string[] = [];

  /** `tag`: one character, distinct per pair within a process. */
  constructor(private readonly tag: string) {
    this.a = `${NS_PREFIX}${process.pid}-${tag}a`;
    this.b = `${NS_PREFIX}${process.pid}-${tag}b`;
  }

  create(): void {
    sweepStale();
    const vA = `vA${process.pid % 100000}${this.tag}`;
    const vB = `vB${process.pid % 100000}${this.tag}`;
    for (const ns of [this.a, this.b]) {
      run(['ip', 'netns', 'add', ns]);
      this.created.push(ns);
      nsExec(ns, ['ip', 'link', 'set', 'lo', 'up']);
    }
    run(['ip', 'link', 'add', vA, 'netns', this.a, 'type', 'veth', 'peer', 'name', vB, 'netns', this.b]);
    for (const [ns, dev, h] of [
      [this.a, vA, HOST_A],
      [this.b, vB, HOST_B],
    ] as const) {
      nsExec(ns, ['sysctl', '-qw', 'net.ipv6.conf.all.disable_ipv6=0']);
      nsExec(ns, ['ip', 'addr', 'add', `${h.v4}/24`, 'dev', dev]);
      nsExec(ns, ['ip', '-6', 'addr', 'add', `${h.v6}/64`, 'dev', dev, 'nodad']);
      nsExec(ns, ['ip', 'link', 'set', dev, 'up']);
    }
  }

  /** Drop `percent`% of UDP datagrams to or from `port` arriving in `ns` (nftables numgen). */
  addLoss(ns: string, port: number, percent: number): void {
    const n = Math.round(percent / 10);
    nsExec(
      ns,
      ['nft', '-f', '-'],
      `table inet iwpmloss {
  chain input {
    type filter hook input priority 0; policy accept;
    udp dport ${port} numgen random mod 10 < ${n} counter drop
    udp sport ${port} numgen random mod 10 < ${n} counter drop
  }
}
`,
    );
  }

  lossCounters(ns: string): string {
    try {
      return nsExec(ns, ['nft', 'list', 'table', 'inet', 'iwpmloss']);
    } catch (e) {
      return String(e);
    }
  }

  clearLoss(ns: string): void {
    spawnSync('ip', ['netns', 'exec', ns, 'nft', 'delete', 'table', 'inet', 'iwpmloss']);
  }

  destroy(): void {
    for (const ns of this.created) spawnSync('ip', ['netns', 'del', ns]);
    this.created = [];
  }
}

/** One namespace with only loopback; `ipv6: false` disables IPv6 in it (sysctl). */
export class SingleNetns {
  readonly name: string;
  private created = false;

  constructor(tag: string) {
    this.name = `${NS_PREFIX}${process.pid}-${tag}`;
  }

  create(o: { ipv6: boolean }): void {
    sweepStale();
    run(['ip', 'netns', 'add', this.name]);
    this.created = true;
    if (!o.ipv6) {
      for (const k of ['all', 'default', 'lo']) nsExec(this.name, ['sysctl', '-qw', `net.ipv6.conf.${k}.disable_ipv6=1`]);
    }
    nsExec(this.name, ['ip', 'link', 'set', 'lo', 'up']);
  }

  destroy(): void {
    if (this.created) spawnSync('ip', ['netns', 'del', this.name]);
    this.created = false;
  }
}

// ---------------------------------------------------------------------------
// The simulator child.

let compiledDir: string | undefined;

/** Compile sim-child.ts and what it imports with tsc into build/ (gitignored); returns the JS path. */
export function compileSimChild(): string {
  if (!compiledDir) {
    const dir = join(REPO_ROOT, 'build', `multihost-ts-${process.pid}`);
    rmSync(dir, { recursive: true, force: true });
    mkdirSync(dir, { recursive: true });
    const tsc = join(REPO_ROOT, 'node_modules/typescript/bin/tsc');
    const r = spawnSync(
      process.execPath,
      [
        tsc,
        '--outDir',
        dir,
        '--rootDir',
        REPO_ROOT,
        '--module',
        'NodeNext',
        '--moduleResolution',
        'NodeNext',
        '--target',
        'ES2022',
        '--types',
        'node',
        '--skipLibCheck',
        '--strict',
        join(REPO_ROOT, 'test/multihost/sim-child.ts'),
      ],
      { encoding: 'utf8', cwd: REPO_ROOT },
    );
    if (r.status !== 0) throw new Error(`tsc of the simulator child failed:\n${r.stdout}\n${r.stderr}`);
    compiledDir = dir;
  }
  return join(compiledDir, 'test/multihost/sim-child.js');
}

export function removeCompiled(): void {
  if (compiledDir) rmSync(compiledDir, { recursive: true, force: true });
  compiledDir = undefined;
}

export class SimChild {
  private nextId = 1;
  private readonly waiting = new Map<number, { resolve: (v: unknown) => void; reject: (e: Error) => void }>();
  private buf = '';
  readonly stderr: string[] = [];
  portId = 0;

  private constructor(private readonly child: ChildProcess) {
    child.stdout!.setEncoding('utf8');
    child.stdout!.on('data', (d: string) => {
      this.buf += d;
      let i: number;
      while ((i = this.buf.indexOf('\n')) >= 0) {
        const line = this.buf.slice(0, i);
        this.buf = this.buf.slice(i + 1);
        let msg: { id: number; ok: boolean; result?: unknown; error?: string };
        try {
          msg = JSON.parse(line);
        } catch {
          this.stderr.push(`[stdout] ${line}`);
          continue;
        }
        const w = this.waiting.get(msg.id);
        this.waiting.delete(msg.id);
        if (msg.ok) w?.resolve(msg.result);
        else w?.reject(new Error(msg.error));
      }
    });
    child.stderr!.setEncoding('utf8');
    child.stderr!.on('data', (d: string) => this.stderr.push(d));
    child.once('exit', (code, sig) => {
      for (const w of this.waiting.values()) w.reject(new Error(`simulator child exited (${code ?? sig}): ${this.stderr.join('')}`));
      this.waiting.clear();
    });
  }

  static async start(ns: string, opts: { abi?: 3 | 4; group?: number; replyTimeoutMs?: number } = {}): Promise<SimChild> {
    const js = compileSimChild();
    const child = spawn('ip', ['netns', 'exec', ns, process.execPath, js], { stdio: ['pipe', 'pipe', 'pipe'] });
    const s = new SimChild(child);
    const r = (await s.call('start', opts)) as { portId: number };
    s.portId = r.portId;
    return s;
  }

  call<T = unknown>(op: string, args: Record<string, unknown> = {}, timeoutMs = 120_000): Promise<T> {
    const id = this.nextId++;
    return new Promise<T>((resolve, reject) => {
      const t = setTimeout(() => {
        this.waiting.delete(id);
        reject(new Error(`simulator child: ${op} took over ${timeoutMs} ms`));
      }, timeoutMs);
      this.waiting.set(id, {
        resolve: (v) => {
          clearTimeout(t);
          resolve(v as T);
        },
        reject: (e) => {
          clearTimeout(t);
          reject(e);
        },
      });
      this.child.stdin!.write(`${JSON.stringify({ id, op, args })}\n`);
    });
  }

  async close(): Promise<void> {
    if (this.child.exitCode !== null || this.child.signalCode !== null) return;
    const exited = new Promise<void>((r) => this.child.once('exit', () => r()));
    this.call('close', {}, 2000).catch(() => {});
    const t = setTimeout(() => this.child.kill('SIGKILL'), 3000);
    await exited;
    clearTimeout(t);
  }
}

export interface SimOutcome {
  kind: 'ok' | 'error' | 'timeout' | 'rejected-reply' | 'unmapped';
  ms: number;
  mapped?: string;
  mappedRemote?: string;
  code?: number;
  reason?: string;
}

export interface RemoteInfoText {
  client: number;
  local: string;
  remote: string;
  mappedLocal: string;
  mappedRemote: string;
}

/** Our daemon inside `ns`, against the simulator at `kernelPort`. */
export function startOurDaemon(ns: string, kernelPort: number, extraArgs: string[] = []): Promise<DaemonProc> {
  return DaemonProc.start({
    kernelPort,
    group: 2,
    udpPort: 3935,
    logLevel: 'debug',
    wrapper: ['ip', 'netns', 'exec', ns],
    extraArgs,
  });
}

// ---------------------------------------------------------------------------
// rdma-core's iwpmd through the shim.

let shimPath: string | undefined;

export function buildShim(): string {
  if (!shimPath) {
    const dir = join(REPO_ROOT, 'build', `ref-shim-${process.pid}`);
    mkdirSync(dir, { recursive: true });
    const out = join(dir, 'nlredirect.so');
    run(['gcc', '-shared', '-fPIC', '-O2', '-Wall', '-o', out, join(REPO_ROOT, 'test/ref/nlredirect.c'), '-ldl', '-lpthread']);
    shimPath = out;
  }
  return shimPath;
}

export function removeShim(): void {
  if (shimPath) rmSync(join(shimPath, '..'), { recursive: true, force: true });
  shimPath = undefined;
}

export class RefDaemon {
  readonly lines: string[] = [];
  private exited = false;
  private readonly exitP: Promise<void>;
  private constructor(
    readonly child: ChildProcess,
    readonly logPath: string,
  ) {
    this.exitP = new Promise((r) =>
      child.once('exit', () => {
        this.exited = true;
        r();
      }),
    );
    child.stderr?.setEncoding('utf8');
    child.stderr?.on('data', (d: string) => this.lines.push(d));
  }

  static start(ns: string, kernelPort: number): RefDaemon {
    const so = buildShim();
    const logPath = join(so, '..', `iwpmd-${ns}.log`);
    rmSync(logPath, { force: true });
    const child = spawn('ip', ['netns', 'exec', ns, '/usr/sbin/iwpmd', '-s'], {
      stdio: ['ignore', 'ignore', 'pipe'],
      env: {
        ...process.env,
        LD_PRELOAD: so,
        IWPMD_SHIM_KERNEL_PORT: String(kernelPort),
        IWPMD_SHIM_NL_PROTOCOL: '2',
        IWPMD_SHIM_CONFIG: join(so, '..', 'no-such-iwpmd.conf'),
        IWPMD_SHIM_LOG: logPath,
        NOTIFY_SOCKET: '',
      },
    });
    return new RefDaemon(child, logPath);
  }

  log(): string {
    try {
      return readFileSync(this.logPath, 'utf8');
    } catch {
      return this.lines.join('');
    }
  }

  async kill(): Promise<void> {
    if (!this.exited) this.child.kill('SIGKILL');
    await this.exitP;
  }
}
