#!/usr/bin/env node
// The connect path of a port mapper daemon, from a trace-ours / trace-ref run
// (scripts/test-kernel.sh groups trace-*: strace -f -tt -T of the daemon during
// cmtime, decoded by decode-strace.mjs):
//
//   node test/kernel/connect-timeline.mjs <group>/nl-trace.txt [<group>/strace-trace.txt]
//
// For every QUERY_MAPPING the kernel sent: the median time of each step of the
// exchange of the daemon with itself (QUERY in -> REQ out -> REQ in -> REMOTE_INFO
// out -> ACC out -> ACC in -> RQUERY out), and, with the raw strace, how much of
// the QUERY-in..RQUERY-out window the daemon spent blocked in epoll (idle) or
// inside other traced system calls; the rest is user-space CPU plus strace's own
// overhead. A timer or deferral between two steps would show as idle time.
// Standalone (imports nothing from the project).
import { readFileSync } from 'node:fs';

const [nlFile, stFile] = process.argv.slice(2);
if (!nlFile) {
  console.error('usage: connect-timeline.mjs NL_DECODED [STRACE_RAW]');
  process.exit(2);
}
const ms = (s) => {
  const [h, m, x] = s.split(':');
  return (Number(h) * 3600 + Number(m) * 60 + Number(x)) * 1000;
};
const ev = readFileSync(nlFile, 'utf8').split('\n').filter(Boolean).map((l) => ({ ms: ms(l.slice(0, 15)), l }));
const esc = (s) => s.replace(/\./g, '\\.');
const rows = [];
const windows = [];
for (let i = 0; i < ev.length; i++) {
  const m = / in  nl  0x0802 QUERY_MAPPING .*seq=(\d+) pid=0 .*\[2\]=([\d.]+):(\d+)/.exec(ev[i].l);
  if (!m) continue;
  const [, kseq, ip, cp] = m;
  const cpRe = `cp=${esc(ip)}:${cp} `;
  const find = (re, from) => {
    for (let j = from; j >= 0 && j < ev.length && ev[j].ms - ev[i].ms < 2000; j++) if (re.test(ev[j].l)) return j;
    return -1;
  };
  const a = find(new RegExp(` out udp REQ .*${cpRe}`), i);
  const b = a < 0 ? -1 : find(new RegExp(` in  udp REQ .*${cpRe}`), a);
  const c = b < 0 ? -1 : find(new RegExp(` out nl  0x0804 REMOTE_INFO .*\\[3\\]=${esc(ip)}:${cp} `), b);
  const d = b < 0 ? -1 : find(new RegExp(` out udp ACC .*${cpRe}`), b);
  const e = d < 0 ? -1 : find(new RegExp(` in  udp ACC .*${cpRe}`), d);
  const f = find(new RegExp(` out nl  0x0802 QUERY_MAPPING .*\\[1\\]=u32:${kseq} `), i);
  if (f >= 0) windows.push([ev[i].ms, ev[f].ms]);
  if ([a, b, c, d, e, f].some((x) => x < 0)) continue;
  const T = (j) => ev[j].ms - ev[i].ms;
  let n = -1;
  for (let j = f + 1; j < ev.length; j++) if (/ in  nl  0x0802 QUERY_MAPPING /.test(ev[j].l)) { n = j; break; }
  rows.push([T(a), T(b) - T(a), T(c) - T(b), T(d) - T(c), T(e) - T(d), T(f) - T(e), T(f), n < 0 ? NaN : ev[n].ms - ev[f].ms]);
}
const med = (k) => {
  const v = rows.map((r) => r[k]).filter((x) => !Number.isNaN(x)).sort((x, y) => x - y);
  return v.length ? v[Math.floor(v.length / 2)].toFixed(1) : '-';
};
console.log(`${nlFile}: ${rows.length} connects with the full exchange; median ms per step:`);
const names = ['QUERY in->REQ out', '->REQ in', '->REMOTE_INFO out', '->ACC out', '->ACC in', '->RQUERY out', 'QUERY in..RQUERY out', 'RQUERY out->next QUERY in'];
names.forEach((name, k) => console.log(`  ${name.padEnd(28)} ${med(k)}`));
if (stFile && windows.length) {
  const calls = readFileSync(stFile, 'latin1')
    .split('\n')
    .map((l) => /^(\d+)\s+(\d\d:\d\d:\d\d\.\d+) (\w+)\(.*?(?:<([\d.]+)>)?$/.exec(l))
    .filter(Boolean)
    .map((m) => ({ ms: ms(m[2]), sc: m[3], dur: m[4] ? Number(m[4]) * 1000 : 0 }));
  let total = 0, idle = 0, sys = 0, n = 0;
  for (const [a, b] of windows) {
    const inw = calls.filter((s) => s.ms >= a && s.ms < b);
    total += b - a;
    idle += inw.filter((s) => s.sc.startsWith('epoll') || s.sc === 'pselect6' || s.sc === 'select').reduce((x, s) => x + s.dur, 0);
    sys += inw.filter((s) => !(s.sc.startsWith('epoll') || s.sc === 'pselect6' || s.sc === 'select')).reduce((x, s) => x + s.dur, 0);
    n += inw.length;
  }
  const k = windows.length;
  console.log(
    `  per QUERY in..RQUERY out window (${k}): ${(total / k).toFixed(1)} ms, blocked in epoll/select ${(idle / k).toFixed(1)} ms, ` +
      `inside other traced syscalls ${(sys / k).toFixed(1)} ms, ${(n / k).toFixed(1)} traced syscalls`,
  );
}
