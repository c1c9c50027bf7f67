/**
 * Runs the built daemon (`node dist/cli/iwpmd.js -s --kernel-port N ...`) as a child
 * process for integration tests: captures its stderr/stdout lines, waits for log
 * lines, sends signals, waits for exit. Every instance is tracked so a test file's
 * afterEach/afterAll can kill whatever is left (killAllDaemons), by pid.
 */
import { type ChildProcess, spawn, spawnSync } from 'node:child_process';
import { createSocket } from 'node:dgram';
import { existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';

export const REPO_ROOT = fileURLToPath(new URL('../../', import.meta.url));
export const DAEMON_JS = join(REPO_ROOT, 'dist/cli/iwpmd.js');
export const CTL_JS = join(REPO_ROOT, 'dist/cli/iwpmctl.js');

/** Throws with instructions when the build outputs the suite needs are missing. */
export function requireBuild(): void {
  const missing: string[] = [];
  if (!existsSync(DAEMON_JS)) missing.push(`${DAEMON_JS} (run: npm run build:ts)`);
  if (!existsSync(join(REPO_ROOT, 'build/Release/iwpm_native.node'))) missing.push('build/Release/iwpm_native.node (run: npm run build:native)');
  if (missing.length) throw new Error(`integration tests need the built daemon: missing ${missing.join(', ')}`);
}

export interface DaemonOptions {
  /** The simulator's netlink port id (--kernel-port). */
  kernelPort: number;
  /** Multicast group for REG_PID (--nl-group). */
  group: number;
  /** Peer UDP port (--udp-port); default: a free one. */
  udpPort?: number;
  /** Control socket: a path, 'none', or undefined for a fresh temporary path. */
  control?: string;
  logLevel?: 'debug' | 'info' | 'warn' | 'error';
  /** Config file text (written to a temporary file passed with -c). */
  config?: string;
  extraArgs?: string[];
  /** Command prefix, e.g. ['prlimit', '--nofile=64:64']. */
  wrapper?: string[];
  env?: NodeJS.ProcessEnv;
}

export interface ExitInfo {
  code: number | null;
  signal: NodeJS.Signals | null;
}

const live = new Set<DaemonProc>();

export class DaemonProc {
  readonly lines: string[] = [];
  readonly stdout: string[] = [];
  readonly child: ChildProcess;
  readonly udpPort: number;
  readonly controlPath?: string;
  readonly configPath: string;
  readonly args: string[];
  private readonly dir: string;
  private exitInfo?: ExitInfo;
  private readonly exitPromise: Promise<ExitInfo>;
  private lineWaiters: (() => void)[] = [];

  private constructor(o: DaemonOptions, udpPort: number) {
    this.dir = mkdtempSync(join(tmpdir(), 'iwpmd-it-'));
    this.udpPort = udpPort;
    this.configPath = join(this.dir, 'iwpmd.conf');
    writeFileSync(this.configPath, o.config ?? '# integration test\nnl_sock_rbuf_size=8388608\n');
    this.controlPath = o.control === 'none' ? undefined : (o.control ?? join(this.dir, 'ctl.sock'));
    this.args = [
      DAEMON_JS,
      '-s',
      '--kernel-port',
      String(o.kernelPort),
      '--nl-group',
      String(o.group),
      '--udp-port',
      String(udpPort),
      '--control',
      this.controlPath ?? 'none',
      '--log-level',
      o.logLevel ?? 'debug',
      '-c',
      this.configPath,
      ...(o.extraArgs ?? []),
    ];
    const [cmd, ...pre] = o.wrapper?.length ? [...o.wrapper, process.execPath] : [process.execPath];
    const env = { ...process.env, ...o.env };
    delete env.NOTIFY_SOCKET;
    this.child = spawn(cmd!, [...pre, ...this.args], { stdio: ['ignore', 'pipe', 'pipe'], env });
    live.add(this);
    this.exitPromise = new Promise((resolve) => {
      this.child.once('exit', (code, signal) => {
        this.exitInfo = { code, signal };
        live.delete(this);
        this.notify();
        resolve(this.exitInfo);
      });
      this.child.once('error', (e) => {
        this.lines.push(`[spawn error] ${e.message}`);
        this.exitInfo = { code: -1, signal: null };
        live.delete(this);
        resolve(this.exitInfo);
      });
    });
    this.collect(this.child.stderr!, this.lines);
    this.collect(this.child.stdout!, this.stdout);
  }

  /** Spawn the daemon. Does not wait for anything (the simulator sees its HELLO). */
  static async start(o: DaemonOptions): Promise<DaemonProc> {
    requireBuild();
    const udp = o.udpPort ?? (await freeUdpPort());
    return new DaemonProc(o, udp);
  }

  get pid(): number {
    return this.child.pid ?? -1;
  }

  get exited(): ExitInfo | undefined {
    return this.exitInfo;
  }

  private collect(stream: NodeJS.ReadableStream, into: string[]): void {
    let buf = '';
    stream.setEncoding('utf8');
    stream.on('data', (chunk: string) => {
      buf += chunk;
      let i: number;
      while ((i = buf.indexOf('\n')) >= 0) {
        into.push(buf.slice(0, i));
        buf = buf.slice(i + 1);
      }
      this.notify();
    });
    stream.on('end', () => {
      if (buf) into.push(buf);
      buf = '';
      this.notify();
    });
  }

  private notify(): void {
    const w = this.lineWaiters;
    this.lineWaiters = [];
    w.forEach((f) => f());
  }

  /** Resolve with the first stderr line at or after `from` matching `re`. */
  async waitForLine(re: RegExp, timeoutMs = 5000, from = 0): Promise<string> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      for (let i = from; i < this.lines.length; i++) if (re.test(this.lines[i]!)) return this.lines[i]!;
      const left = deadline - Date.now();
      if (left <= 0 || this.exitInfo) {
        if (this.exitInfo) {
          // one last look at lines flushed with the exit
          for (let i = from; i < this.lines.length; i++) if (re.test(this.lines[i]!)) return this.lines[i]!;
        }
        throw new Error(
          `daemon log: no line matching ${re} within ${timeoutMs} ms${this.exitInfo ? ` (daemon exited ${JSON.stringify(this.exitInfo)})` : ''}; log:\n${this.tail(40)}`,
        );
      }
      await new Promise<void>((r) => {
        const t = setTimeout(r, Math.min(left, 200));
        this.lineWaiters.push(() => {
          clearTimeout(t);
          r();
        });
      });
    }
  }

  /** Lines at or after `from` matching `re`. */
  grep(re: RegExp, from = 0): string[] {
    return this.lines.slice(from).filter((l) => re.test(l));
  }

  tail(n = 30): string {
    return this.lines.slice(-n).join('\n');
  }

  signal(sig: NodeJS.Signals): void {
    if (!this.exitInfo) this.child.kill(sig);
  }

  /** Wait for exit; throws after timeoutMs. */
  async waitExit(timeoutMs = 5000): Promise<ExitInfo> {
    let t: NodeJS.Timeout | undefined;
    const timeout = new Promise<never>((_, reject) => {
      t = setTimeout(() => reject(new Error(`daemon pid ${this.pid} did not exit within ${timeoutMs} ms; log:\n${this.tail()}`)), timeoutMs);
    });
    try {
      return await Promise.race([this.exitPromise, timeout]);
    } finally {
      clearTimeout(t);
    }
  }

  /** SIGKILL (if still running), wait for the exit, remove the temporary directory. */
  async kill(): Promise<ExitInfo> {
    this.signal('SIGKILL');
    const e = await this.exitPromise;
    rmSync(this.dir, { recursive: true, force: true });
    return e;
  }

  /** `iwpmctl --control <path> -j <args...>` against this daemon; parsed JSON. */
  ctl(...args: string[]): unknown {
    if (!this.controlPath) throw new Error('daemon started without a control socket');
    const r = spawnSync(process.execPath, [CTL_JS, '--control', this.controlPath, '-j', ...args], { encoding: 'utf8', timeout: 10_000 });
    if (r.status !== 0) throw new Error(`iwpmctl ${args.join(' ')} exited ${r.status}: ${r.stderr}`);
    return JSON.parse(r.stdout);
  }
}

/** Kill every daemon this process started and has not seen exit. */
export async function killAllDaemons(): Promise<void> {
  await Promise.all([...live].map((d) => d.kill()));
}

/** A UDP port free on both 0.0.0.0 and [::] (v6only), as the daemon binds both. */
export async function freeUdpPort(): Promise<number> {
  for (let attempt = 0; attempt < 20; attempt++) {
    const s4 = createSocket('udp4');
    const port = await new Promise<number>((resolve, reject) => {
      s4.once('error', reject);
      s4.bind(0, '0.0.0.0', () => resolve(s4.address().port));
    });
    const s6 = createSocket({ type: 'udp6', ipv6Only: true });
    const ok6 = await new Promise<boolean>((resolve) => {
      s6.once('error', () => resolve(false));
      s6.bind(port, '::', () => resolve(true));
    });
    await new Promise<void>((r) => s4.close(() => r()));
    await new Promise<void>((r) => {
      try {
        s6.close(() => r());
      } catch {
        r();
      }
    });
    if (ok6) return port;
  }
  throw new Error('no free UDP port pair found');
}
