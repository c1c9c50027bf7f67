/**
 * A KernelSim in its own process, driven over stdin/stdout (one JSON object per line),
 * so a test can run one simulated kernel inside each network namespace (netlink is
 * per namespace): `ip netns exec NS node <compiled sim-child.js>`.
 *
 * Request:  {"id": 1, "op": "add", "args": {...}}
 * Response: {"id": 1, "ok": true, "result": ...} or {"id": 1, "ok": false, "error": "..."}
 * Addresses are text: "10.0.0.1:5000", "[fd00::1]:5000".
 *
 * Compiled at test time by test/multihost/netns.ts (tsc into build/, gitignored).
 */
import { createInterface } from 'node:readline';
import { KernelSim, type QueryOutcome, type AddOutcome, addr, fmtSockaddr } from '../sim/kernel-sim.js';

let sim: KernelSim | undefined;

function need(): KernelSim {
  if (!sim) throw new Error('simulator not started');
  return sim;
}

function outcome(o: AddOutcome | QueryOutcome, ms: number): Record<string, unknown> {
  const r: Record<string, unknown> = { kind: o.kind, ms };
  if (o.kind === 'ok') {
    r.mapped = fmtSockaddr(o.mapped);
    if ('mappedRemote' in o) r.mappedRemote = fmtSockaddr(o.mappedRemote);
  }
  if (o.kind === 'error') r.code = o.code;
  if ('reason' in o) r.reason = o.reason;
  return r;
}

type Args = Record<string, unknown>;

const ops: Record<string, (a: Args) => Promise<unknown> | unknown> = {
  async start(a) {
    sim = await KernelSim.create({
      abi: (a.abi as 3 | 4) ?? 4,
      group: (a.group as number) ?? 2,
      replyTimeoutMs: (a.replyTimeoutMs as number) ?? 10_000,
    });
    return { portId: sim.portId };
  },
  async waitMapinfo(a) {
    const e = await need().waitForMapinfoRequest((a.timeoutMs as number) ?? 15_000);
    return { sender: e.sender };
  },
  async add(a) {
    const t0 = performance.now();
    const o = await need().add(addr(a.local as string), { flags: (a.flags as number) ?? 0 });
    return outcome(o, performance.now() - t0);
  },
  async query(a) {
    const t0 = performance.now();
    const o = await need().query(addr(a.local as string), addr(a.remote as string), { flags: (a.flags as number) ?? 0 });
    return outcome(o, performance.now() - t0);
  },
  /** Many queries at once, at most `window` outstanding; results in order. */
  async queries(a) {
    const list = a.list as { local: string; remote: string }[];
    const window = (a.window as number) ?? 64;
    const out: Record<string, unknown>[] = new Array(list.length);
    let next = 0;
    const worker = async (): Promise<void> => {
      while (next < list.length) {
        const i = next++;
        const t0 = performance.now();
        const o = await need().query(addr(list[i]!.local), addr(list[i]!.remote));
        out[i] = outcome(o, performance.now() - t0);
      }
    };
    await Promise.all(Array.from({ length: Math.min(window, list.length) }, worker));
    return out;
  },
  remove(a) {
    return need().remove(addr(a.local as string)) ?? null;
  },
  async barrier() {
    const b = await need().barrier();
    return { kind: b.kind };
  },
  remoteInfos() {
    return need().remoteInfos.map((r) => ({
      client: r.client,
      local: fmtSockaddr(r.local),
      remote: fmtSockaddr(r.remote),
      mappedLocal: fmtSockaddr(r.mappedLocal),
      mappedRemote: fmtSockaddr(r.mappedRemote),
    }));
  },
  problems() {
    return need().problems();
  },
  log(a) {
    return need().describeLog((a.from as number) ?? 0);
  },
  close() {
    sim?.close();
    setImmediate(() => process.exit(0));
    return null;
  },
};

const rl = createInterface({ input: process.stdin });
rl.on('line', (line) => {
  let req: { id: number; op: string; args?: Args };
  try {
    req = JSON.parse(line);
  } catch {
    return;
  }
  const reply = (o: Record<string, unknown>): void => {
    process.stdout.write(`${JSON.stringify({ id: req.id, ...o })}\n`);
  };
  const fn = ops[req.op];
  if (!fn) return reply({ ok: false, error: `unknown op ${req.op}` });
  Promise.resolve()
    .then(() => fn(req.args ?? {}))
    .then(
      (result) => reply({ ok: true, result }),
      (e: Error) => reply({ ok: false, error: e.stack ?? String(e) }),
    );
});
rl.on('close', () => {
  sim?.close();
  process.exit(0);
});
