#!/usr/bin/env node
// Decodes an strace log of a port mapper daemon (ours or rdma-core's iwpmd)
// taken with
//   strace -f -tt -yy -s 32 -e trace=sendmsg,recvmsg,sendto,recvfrom,sendmmsg,recvmmsg \
//          -e read=all -e write=all -o FILE <daemon>
// into one line per NETLINK_RDMA message / UDP 3935 datagram:
//   12:00:01.123456 in  nl 0x0802 QUERY_MAPPING      seq=5 pid=0 flags=0x1 [1]=u32:3 [2]=192.0.2.1:7174 ...
//   12:00:01.130000 out udp REQ len=64 to=192.0.2.1:3935 ...
// With --json, prints a summary object instead (counts per direction and name,
// plus the decoded messages).
//
// Standalone on purpose (runs inside the qemu guest and on the host): it
// imports nothing from the project.
import { readFileSync } from 'node:fs';

const args = process.argv.slice(2);
const json = args.includes('--json');
const file = args.find((a) => !a.startsWith('--'));
if (!file) {
  console.error('usage: decode-strace.mjs [--json] STRACE_LOG');
  process.exit(2);
}
const text = readFileSync(file, 'latin1');
const lines = text.split('\n');

const SYSCALLS = new Set(['sendmsg', 'recvmsg', 'sendto', 'recvfrom', 'sendmmsg', 'recvmmsg', 'read', 'write']);
const OPS = ['REG_PID', 'ADD_MAPPING', 'QUERY_MAPPING', 'REMOVE_MAPPING', 'REMOTE_INFO', 'HANDLE_ERR',
  'MAPINFO', 'MAPINFO_NUM', 'HELLO'];
const UDP_TYPES = ['REQ', 'ACC', 'ACK', 'REJ'];

// ---------------------------------------------------------------- parse strace
// A record: { time, pid, sc, head (text of the call), ret, bufs: [Buffer] }
const records = [];
const pending = new Map(); // pid -> { sc, head, time }
let cur = null;
const callRe = /^(?:\[pid\s+(\d+)\]\s+|(\d+)\s+)?(\d\d:\d\d:\d\d\.\d+)\s+(.*)$/;
for (const raw of lines) {
  const line = raw.replace(/\r$/, '');
  if (line.startsWith(' | ')) {
    // hex dump line: " | 00000  24 00 00 00 ...  text |"
    if (!cur) continue;
    const m = /^ \| ([0-9a-f]{5})  (.{48})/.exec(line);
    if (!m) continue;
    const off = parseInt(m[1], 16);
    const bytes = m[2].trim().split(/\s+/).filter((x) => /^[0-9a-f]{2}$/.test(x)).map((x) => parseInt(x, 16));
    if (off === 0 && cur.curBuf && cur.curBuf.length > 0 && !cur.explicitBufs) {
      cur.bufs.push(Buffer.from(cur.curBuf));
      cur.curBuf = [];
    }
    if (!cur.curBuf) cur.curBuf = [];
    cur.curBuf.push(...bytes);
    continue;
  }
  if (line.startsWith(' * ')) {
    // " * 36 bytes in buffer 0"
    if (!cur) continue;
    cur.explicitBufs = true;
    if (cur.curBuf && cur.curBuf.length > 0) cur.bufs.push(Buffer.from(cur.curBuf));
    cur.curBuf = [];
    continue;
  }
  const m = callRe.exec(line);
  if (!m) continue;
  finish();
  const pid = m[1] || m[2] || '0';
  const time = m[3];
  let rest = m[4];
  let sc, head;
  const resumed = /^<\.\.\. (\w+) resumed>(.*)$/.exec(rest);
  if (resumed) {
    const p = pending.get(pid);
    pending.delete(pid);
    sc = resumed[1];
    head = (p ? p.head : '') + resumed[2];
  } else {
    const cm = /^(\w+)\((.*)$/.exec(rest);
    if (!cm) continue;
    sc = cm[1];
    head = rest;
    if (/<unfinished \.\.\.>\s*$/.test(rest)) {
      pending.set(pid, { sc, head: rest.replace(/<unfinished \.\.\.>\s*$/, '') });
      continue;
    }
  }
  if (!SYSCALLS.has(sc)) continue;
  const rm = /\)\s+=\s+(-?\d+)(.*)$/.exec(head);
  const ret = rm ? Number(rm[1]) : NaN;
  cur = { time, pid, sc, head, ret, err: rm && rm[2] ? rm[2].trim() : '', bufs: [], curBuf: null, explicitBufs: false };
}
finish();

function finish() {
  if (!cur) return;
  if (cur.curBuf && cur.curBuf.length > 0) cur.bufs.push(Buffer.from(cur.curBuf));
  delete cur.curBuf;
  records.push(cur);
  cur = null;
}

// ---------------------------------------------------------------- decoders
function sockaddr(b) {
  if (b.length < 4) return `?(${b.toString('hex')})`;
  const fam = b.readUInt16LE(0);
  const port = b.readUInt16BE(2);
  if (fam === 2 && b.length >= 8) return `${b[4]}.${b[5]}.${b[6]}.${b[7]}:${port}`;
  if (fam === 10 && b.length >= 24) {
    const a = [];
    for (let i = 8; i < 24; i += 2) a.push(b.readUInt16BE(i).toString(16));
    return `[${a.join(':')}]:${port}`;
  }
  if (fam === 0) return 'AF_UNSPEC';
  return `fam${fam}:${port}`;
}

function attrValue(p) {
  if (p.length === 128) return sockaddr(p);
  if (p.length === 4) return `u32:${p.readUInt32LE(0)}`;
  if (p.length === 2) return `u16:${p.readUInt16LE(0)}`;
  // NUL-terminated or NUL-padded string?
  const z = p.indexOf(0);
  const s = (z >= 0 ? p.subarray(0, z) : p).toString('latin1');
  if (/^[\x20-\x7e]*$/.test(s)) return JSON.stringify(s);
  return `hex:${p.toString('hex')}`;
}

function decodeNetlink(buf) {
  const out = [];
  let off = 0;
  while (off + 16 <= buf.length) {
    const len = buf.readUInt32LE(off);
    const type = buf.readUInt16LE(off + 4);
    const flags = buf.readUInt16LE(off + 6);
    const seq = buf.readUInt32LE(off + 8);
    const pid = buf.readUInt32LE(off + 12);
    if (len < 16 || off + len > buf.length) {
      out.push({ kind: 'nl', type, name: 'TRUNCATED', len, seq, pid, flags, attrs: [] });
      break;
    }
    const body = buf.subarray(off + 16, off + len);
    const msg = { kind: 'nl', type, len, seq, pid, flags, attrs: [] };
    if (type === 3) {
      msg.name = 'NLMSG_DONE';
      if (body.length >= 4) msg.ret = body.readInt32LE(0);
    } else if (type === 2) {
      msg.name = 'NLMSG_ERROR';
      if (body.length >= 4) msg.ret = body.readInt32LE(0);
      if (body.length >= 20) msg.origType = body.readUInt16LE(8);
    } else if (type >= 0x400) {
      const client = type >> 10;
      const op = type & 0x3ff;
      msg.client = client;
      msg.op = op;
      msg.name = (OPS[op] || `OP${op}`) + (client === 2 ? '' : `@client${client}`);
      let a = 0;
      while (a + 4 <= body.length) {
        const alen = body.readUInt16LE(a);
        const atype = body.readUInt16LE(a + 2);
        if (alen < 4 || a + alen > body.length) break;
        msg.attrs.push({ t: atype & 0x3fff, v: attrValue(body.subarray(a + 4, a + alen)) });
        a += (alen + 3) & ~3;
      }
    } else {
      msg.name = `CTRL${type}`;
    }
    out.push(msg);
    off += (len + 3) & ~3;
  }
  return out;
}

function ip16(b, v) {
  if (v === 4) return `${b[0]}.${b[1]}.${b[2]}.${b[3]}`;
  const a = [];
  for (let i = 0; i < 16; i += 2) a.push(b.readUInt16BE(i).toString(16));
  return a.join(':');
}

function decodeUdp(buf) {
  if (buf.length < 48) return { kind: 'udp', name: `SHORT(${buf.length})` };
  const magic = buf[0];
  const t = (magic >> 4) & 3;
  const v = magic & 0xf;
  const m = {
    kind: 'udp', name: UDP_TYPES[t], len: buf.length, magic: `0x${magic.toString(16).padStart(2, '0')}`,
    ipver: v, mcpport: buf.readUInt16BE(2), apport: buf.readUInt16BE(4), cpport: buf.readUInt16BE(6),
    handle: buf.subarray(8, 16).toString('hex'),
    cpip: ip16(buf.subarray(16, 32), v), apip: ip16(buf.subarray(32, 48), v),
  };
  if (buf.length >= 64) m.mcpip = ip16(buf.subarray(48, 64), v);
  return m;
}

// ---------------------------------------------------------------- classify
function proto(rec) {
  const fd = fdOf(rec); // with -yy: "17<NETLINK:[RDMA:710]>", "19<UDP:[0.0.0.0:60349]>"
  if (fd.includes('<NETLINK')) return 'nl';
  if (/<UDPv?6?:/.test(fd)) return 'udp';
  if (fd.includes('<')) return '?';
  const h = rec.head;
  if (/NETLINK|AF_NETLINK|nl_pid=/.test(h)) return 'nl';
  if (/UDP|AF_INET6?\b|sin_port|sin6_port/.test(h)) return 'udp';
  if (/UNIX|AF_UNIX/.test(h)) return 'unix';
  return '?';
}
// Peer addresses in the call, in order (one per message for the *mmsg calls;
// strace abbreviates those vectors to "[...]" when -s is smaller than their
// element count, so use -s 32 or more to keep them).
function peersOf(rec) {
  const out = [];
  const re = /sin_port=htons\((\d+)\), sin_addr=inet_addr\("([\d.]+)"\)|sin6_port=htons\((\d+)\).*?inet_pton\(AF_INET6, "([^"]+)"/g;
  let m;
  while ((m = re.exec(rec.head))) out.push(m[1] ? `${m[2]}:${m[1]}` : `[${m[4]}]:${m[3]}`);
  return out;
}
function fdOf(rec) {
  const m = /^\w+\((\d+)(<[^>]*>)?/.exec(rec.head);
  return m ? `${m[1]}${m[2] || ''}` : '?';
}

const msgs = [];
const errors = [];
for (const rec of records) {
  const dir = /^(send|write)/.test(rec.sc) ? 'out' : 'in';
  if (!(rec.ret >= 0)) {
    if (/EAGAIN|EWOULDBLOCK/.test(rec.err)) continue; // non-blocking sockets: normal
    errors.push({ time: rec.time, sc: rec.sc, fd: fdOf(rec), err: rec.err || String(rec.ret) });
    continue;
  }
  const pr = proto(rec);
  if (pr !== 'nl' && pr !== 'udp') continue;
  // sendmsg/recvmsg with several iovecs carry one datagram: concatenate.
  let bufs = rec.bufs;
  if (!/mmsg$/.test(rec.sc) && bufs.length > 1) bufs = [Buffer.concat(bufs)];
  // (for the *mmsg calls the return value is a message count, not a length)
  if (!/mmsg$/.test(rec.sc) && bufs.length === 1 && bufs[0].length > rec.ret) bufs = [bufs[0].subarray(0, rec.ret)];
  const peers = pr === 'udp' ? peersOf(rec) : [];
  bufs.forEach((b, i) => {
    if (pr === 'nl') {
      for (const m of decodeNetlink(b)) msgs.push({ time: rec.time, dir, ...m, datagram: b.length });
    } else {
      msgs.push({ time: rec.time, dir, ...decodeUdp(b), peer: peers[i] ?? peers[0] ?? '', fd: fdOf(rec) });
    }
  });
}

function fmt(m) {
  const pre = `${m.time} ${m.dir.padEnd(3)} ${m.kind.padEnd(3)}`;
  if (m.kind === 'nl') {
    let s = `${pre} 0x${m.type.toString(16).padStart(4, '0')} ${m.name.padEnd(14)} len=${m.len} flags=0x${m.flags.toString(16)} seq=${m.seq} pid=${m.pid}`;
    if (m.ret !== undefined) s += ` ret=${m.ret}`;
    if (m.origType !== undefined) s += ` orig=0x${m.origType.toString(16)}`;
    for (const a of m.attrs) s += ` [${a.t}]=${a.v}`;
    return s;
  }
  let s = `${pre} ${m.name} len=${m.len}`;
  if (m.magic) s += ` magic=${m.magic} ap=${m.apip}:${m.apport} cp=${m.cpip}:${m.cpport} mcpport=${m.mcpport} handle=${m.handle}`;
  if (m.mcpip) s += ` mcpip=${m.mcpip}`;
  if (m.peer) s += ` ${m.dir === 'out' ? 'to' : 'from'}=${m.peer}`;
  return s;
}

if (json) {
  const counts = {};
  for (const m of msgs) {
    const k = `${m.dir} ${m.kind} ${m.name}`;
    counts[k] = (counts[k] || 0) + 1;
  }
  console.log(JSON.stringify({ counts, errors, messages: msgs }, null, 1));
} else {
  for (const m of msgs) console.log(fmt(m));
  for (const e of errors) console.log(`${e.time} err ${e.sc} fd=${e.fd} ${e.err}`);
}
