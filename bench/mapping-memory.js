#!/usr/bin/env node
// Memory kept by long-lived mappings among short-lived ones (not a speed benchmark).
//
//   node --expose-gc bench/mapping-memory.js [distDir] [longLived] [shortPerLong]
//
// Feeds the daemon core (dist/, in process, fake port binder, NO_PORT_MAP so nothing is
// bound) one long-lived ADD followed by `shortPerLong` ADD+REMOVE pairs, `longLived`
// times, then reports the ArrayBuffer memory left after a full GC and how many distinct
// ArrayBuffers the live mappings reference. Bytes that a long-lived mapping keeps in a
// slab shared with short-lived data keep that whole slab alive.
import { fileURLToPath, pathToFileURL } from 'node:url';
import { dirname, join, resolve } from 'node:path';

if (typeof globalThis.gc !== 'function') {
  console.error('run with node --expose-gc');
  process.exit(2);
}
const dist = resolve(process.argv[2] ?? join(dirname(fileURLToPath(import.meta.url)), '..', 'dist'));
const longLived = Number(process.argv[3] ?? 20000);
const shortPerLong = Number(process.argv[4] ?? 30);
const load = (p) => import(pathToFileURL(join(dist, p)).href);
const { IwpmDaemon } = await load('core/daemon.js');
const { PortReserver } = await load('core/ports.js');
const { FakePortBinder } = await load('native/fake.js');
const iw = await load('codec/iwpm.js');
const sa = await load('codec/sockaddr.js');
const { nullLogger } = await load('core/log.js');

const d = new IwpmDaemon({
  sendToKernel: () => {},
  ports: new PortReserver(new FakePortBinder(), {}),
  log: nullLogger,
  now: () => performance.now(),
  portId: 1,
  kernelPortId: 0,
});
const feed = (data) => d.onBatch([{ data, sender: 0, truncated: false }]);
d.start();
feed(iw.encodeKernelHello({ seq: 1 }, 4));
const raw = (a, b, port) => sa.encodeSockaddr({ family: 2, port, ip: Buffer.from([10, 0, a, b]), flowinfo: 0, scopeId: 0 });
const NO_PORT_MAP = 1;
let seq = 10;
const before = process.memoryUsage().arrayBuffers;
for (let i = 0; i < longLived; i++) {
  feed(iw.encodeKernelAdd({ seq: seq++ }, { echoSeq: 0, local: raw(1, i >> 8, 1000 + (i & 0xff) * 200), flags: NO_PORT_MAP }));
  for (let j = 0; j < shortPerLong; j++) {
    const l = raw(2, j, 2000 + j);
    feed(iw.encodeKernelAdd({ seq: seq++ }, { echoSeq: 0, local: l, flags: NO_PORT_MAP }));
    feed(iw.encodeKernelRemove({ seq: seq++ }, { echoSeq: 0, local: l }));
  }
}
globalThis.gc();
globalThis.gc();
const maps = d.table.list();
const buffers = new Set(maps.flatMap((m) => [m.localRaw.buffer, m.mappedRaw.buffer, m.local.ip.buffer]));
const kept = process.memoryUsage().arrayBuffers - before;
console.log(
  `${maps.length} long-lived mappings (${shortPerLong} short-lived per long-lived one): ` +
    `${(kept / 1e6).toFixed(1)} MB of ArrayBuffers kept (${Math.round(kept / maps.length)} bytes per mapping), ` +
    `${buffers.size} distinct ArrayBuffers referenced by the mappings`,
);
