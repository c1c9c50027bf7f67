/**
 * Summarize V8 .cpuprofile files (node --cpu-prof): self time by function (file:line)
 * and by file. Used by `bench/run.js --profile` and runnable alone:
 *   node bench/lib/profile.js bench/out/prof [top]
 */
import { readFileSync, readdirSync } from 'node:fs';
import { dirname, join, relative, resolve } from 'node:path';
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

// --- minimal source-map reader (VLQ "mappings", version 3) so dist/*.js:line reads as src/*.ts:line
const B64 = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/';
const maps = new Map();
function decodeMappings(str) {
  const lines = [];
  let src = 0;
  let sLine = 0;
  let sCol = 0;
  for (const line of str.split(';')) {
    const segs = [];
    let col = 0;
    for (const seg of line.split(',')) {
      if (!seg) continue;
      const v = [];
      let shift = 0;
      let val = 0;
      for (const ch of seg) {
        const d = B64.indexOf(ch);
        val += (d & 31) << shift;
        if (d & 32) shift += 5;
        else {
          v.push(val & 1 ? -(val >>> 1) : val >>> 1);
          val = 0;
          shift = 0;
        }
      }
      col += v[0];
      if (v.length >= 4) {
        src += v[1];
        sLine += v[2];
        sCol += v[3];
        segs.push([col, src, sLine]);
      }
    }
    lines.push(segs);
  }
  return lines;
}
function original(file, line0, col0) {
  let m = maps.get(file);
  if (m === undefined) {
    m = null;
    try {
      const raw = JSON.parse(readFileSync(`${file}.map`, 'utf8'));
      m = { sources: raw.sources.map((s) => resolve(dirname(file), raw.sourceRoot ?? '', s)), lines: decodeMappings(raw.mappings) };
    } catch {
      /* no map */
    }
    maps.set(file, m);
  }
  if (!m) return undefined;
  const segs = m.lines[line0];
  if (!segs || segs.length === 0) return undefined;
  let best = segs[0];
  for (const s of segs) if (s[0] <= col0) best = s;
  return { source: m.sources[best[1]], line: best[2] + 1 };
}

function where(cf, root) {
  let url = cf.url || '';
  if (url.startsWith('file://')) url = fileURLToPath(url);
  if (!url) return '(native/VM)';
  if (url.endsWith('.js') && url.startsWith('/')) {
    const o = original(url, cf.lineNumber, cf.columnNumber);
    if (o) return `${root && o.source.startsWith(root) ? relative(root, o.source) : o.source}:${o.line}`;
  }
  if (root && url.startsWith(root)) url = relative(root, url);
  return `${url}:${cf.lineNumber + 1}`;
}

/** Self time per function and per file over every profile in `dir`. */
export function summarizeProfiles(dir, root, top = 25) {
  const profiles = load(dir);
  if (profiles.length === 0) return `no .cpuprofile in ${dir}`;
  const byFn = new Map();
  const byFile = new Map();
  const incl = new Map();
  let total = 0;
  for (const { prof } of profiles) {
    // inclusive time: every function on the sampled stack, counted once per sample
    const parent = new Map();
    const byId = new Map();
    for (const n of prof.nodes) {
      byId.set(n.id, n);
      for (const c of n.children ?? []) parent.set(c, n.id);
    }
    const deltasI = prof.timeDeltas ?? [];
    (prof.samples ?? []).forEach((id, i) => {
      const us = deltasI[i] ?? 0;
      const seen = new Set();
      for (let cur = id; cur !== undefined; cur = parent.get(cur)) {
        const cf = byId.get(cur).callFrame;
        if (!cf.url) continue;
        const key = `${cf.functionName || '(anonymous)'}  ${where(cf, root)}`;
        if (seen.has(key)) continue;
        seen.add(key);
        incl.set(key, (incl.get(key) ?? 0) + us);
      }
    });
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
  lines.push('', 'Total (inclusive) time by function:');
  for (const [k, us] of [...incl].sort((x, y) => y[1] - x[1]).slice(0, top)) lines.push(`  ${pct(us)}  ${k}`);
  lines.push('', 'Self time by file:');
  for (const [k, us] of [...byFile].sort((x, y) => y[1] - x[1]).slice(0, 15)) lines.push(`  ${pct(us)}  ${k}`);
  return lines.join('\n');
}

if (process.argv[1] && fileURLToPath(import.meta.url) === process.argv[1]) {
  const dir = process.argv[2] ?? 'bench/out/prof';
  process.stdout.write(`${summarizeProfiles(dir, process.cwd(), Number(process.argv[3] ?? 25))}\n`);
}
