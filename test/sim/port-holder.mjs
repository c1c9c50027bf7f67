// Holds every TCP port of a range on [::] with IPV6_V6ONLY, so that IPv6 (dual-stack
// wildcard) port reservations fail while IPv4 ones are unaffected. Run as a child
// process with a raised RLIMIT_NOFILE (prlimit); used by the port-exhaustion test.
//
//   node port-holder.mjs LOW HIGH
//
// Prints "ready <held> <busy>" when done, then holds until stdin closes or SIGTERM.
import { createServer } from 'node:net';

const low = Number(process.argv[2]);
const high = Number(process.argv[3]);
const servers = [];
let held = 0;
let busy = 0;
let pending = 0;

function done() {
  process.stdout.write(`ready ${held} ${busy}\n`);
}

for (let p = low; p <= high; p++) {
  pending++;
  const s = createServer();
  s.once('error', () => {
    busy++;
    if (--pending === 0) done();
  });
  s.listen({ port: p, host: '::', ipv6Only: true, exclusive: true, backlog: 1 }, () => {
    held++;
    servers.push(s);
    if (--pending === 0) done();
  });
}

const quit = () => process.exit(0);
process.stdin.on('end', quit);
process.stdin.on('close', quit);
process.stdin.resume();
process.on('SIGTERM', quit);
