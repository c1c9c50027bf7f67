/**
 * Summarize V8 .cpuprofile files (node --cpu-prof): self time by function (file:line)
 * and by file. Used by `bench/run.js --profile` and runnable alone:
 *   node bench/lib/profile.js bench/out/prof [top]
 */
import { readFileSync, readdirSync } from 'node:fs';
import { join, relative } from 'node:path';
import { fileURLToPath } from 'node:url';

function load(dir) {
  let files = [];
  try {
    files = readdirSync(dir).filter((f) => f.endsWith('.cpuprofile'));
  } catch {
    return [];
  }
  return files.map((f) => ({ name: f, prof: JSON.parse(readFileSync(join(dir, f), 'utf8')) }));
}

function where(cf, root) {
  let url = cf.url || '';
  if (url.startsWith('file://')) url = fileURLToPath(url);
  if (root && url.startsWith(root)) url = relative(root, url);
  if (!url) return '(native/VM)';
  return `${url}:${cf.lineNumber + 1}`;
}

/** Self time per function and per file over every profile in `dir`. */
export function summarizeProfiles(dir, root, top = 25) {
  const profiles = load(dir);
  if (profiles.length === 0) return `no .cpuprofile in ${dir}`;
  const byFn = new Map();
  const byFile = new Map();
  let total = 0;
  for (const { prof } of profiles) {
    const self = new Map(); // node id -> µs
    const deltas = prof.timeDeltas ?? [];
    (prof.samples ?? []).forEach((id, i) => self.set(id, (self.get(id) ?? 0) + (deltas[i] ?? 0)));
    for (const n of prof.nodes) {
      const us = self.get(n.id) ?? 0;
      if (!us) continue;
      total += us;
      const cf = n.callFrame;
      const key = `${cf.functionName || '(anonymous)'}  ${where(cf, root)}`;
      byFn.set(key, (byFn.get(key) ?? 0) + us);
      const file = where(cf, root).replace(/:\d+$/, '');
      byFile.set(file, (byFile.get(file) ?? 0) + us);
    }
  }
  const pct = (us) => `${((100 * us) / total).toFixed(1).padStart(5)}%`;
  const lines = [`CPU profile of our daemon: ${profiles.length} file(s), ${(total / 1e6).toFixed(1)} s sampled`, '', 'Self time by function:'];
  for (const [k, us] of [...byFn].sort((x, y) => y[1] - x[1]).slice(0, top)) lines.push(`  ${pct(us)}  ${k}`);
  lines.push('', 'Self time by file:');
  for (const [k, us] of [...byFile].sort((x, y) => y[1] - x[1]).slice(0, 15)) lines.push(`  ${pct(us)}  ${k}`);
  return lines.join('\n');
}

if (process.argv[1] && fileURLToPath(import.meta.url) === process.argv[1]) {
  const dir = process.argv[2] ?? 'bench/out/prof';
  process.stdout.write(`${summarizeProfiles(dir, process.cwd(), Number(process.argv[3] ?? 25))}\n`);
}
