/**
 * The kernel simulator against a hand-driven NETLINK_USERSOCK socket that plays the
 * daemon: every byte the simulator sends and every reaction to what "the daemon"
 * sends is checked here, so the integration suite can trust the simulator.
 */
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { native } from '../../src/native/index.js';
import { NETLINK_USERSOCK, type NetlinkSocket } from '../../src/native/types.js';
import {
  encodeKernelAdd,
  encodeKernelHello,
  encodeKernelMapinfo,
  encodeKernelMapinfoNum,
  encodeKernelQuery,
  encodeKernelRegPid,
  encodeKernelRemove,
} from '../../src/codec/iwpm.js';
import { encodeSockaddr, parseIp } from '../../src/codec/sockaddr.js';
import { a16, a32, abytes, afixed, astr, byteDiff, fromHex, nlmsg, sa4, sa6, withPortRaw } from './bytes.js';
import { KernelSim, kernelParse } from './kernel-sim.js';

const GROUP = 30; // distinct from the integration files' groups

/** A bare netlink socket acting as the daemon, with an explicit (positive) port id. */
class HandDaemon {
  readonly sock: NetlinkSocket;
  readonly inbox: { sender: number; groups: number; data: Buffer }[] = [];
  private waiters: (() => void)[] = [];
  seq = 0;

  constructor(
    readonly portId: number,
    group = GROUP,
  ) {
    this.sock = new native.NetlinkSocket(
      { protocol: NETLINK_USERSOCK, portId, groups: 1 << (group - 1), rcvbufBytes: 4 << 20 },
      (b) => {
        for (let i = 0; i < b.count; i++) {
          const off = b.offsets[i]!;
          this.inbox.push({ sender: b.senders[i]!, groups: b.groups[i]!, data: Buffer.from(b.data.subarray(off, off + b.lengths[i]!)) });
        }
        const w = this.waiters;
        this.waiters = [];
        w.forEach((f) => f());
      },
      () => {},
    );
  }

  /** Next datagram (FIFO), or throw after timeoutMs. */
  async next(timeoutMs = 2000): Promise<{ sender: number; groups: number; data: Buffer }> {
    const deadline = Date.now() + timeoutMs;
    while (this.inbox.length === 0) {
      const left = deadline - Date.now();
      if (left <= 0) throw new Error('HandDaemon: nothing received');
      await new Promise<void>((r) => {
        const t = setTimeout(r, left);
        this.waiters.push(() => {
          clearTimeout(t);
          r();
        });
      });
    }
    return this.inbox.shift()!;
  }

  /** Assert nothing arrives for `ms`. */
  async quiet(ms = 150): Promise<void> {
    await new Promise((r) => setTimeout(r, ms));
    expect(this.inbox.map((d) => d.data.toString('hex'))).toEqual([]);
  }

  send(sim: KernelSim, data: Buffer | Buffer[]): void {
    this.sock.send(Array.isArray(data) ? data : [data], sim.portId, 0);
  }

  /** Header for a daemon message of this client/op with our next seq. */
  h(op: number, client = 2): { type: number; flags: number; seq: number; pid: number } {
    return { type: (client << 10) | op, flags: 1, seq: this.seq++, pid: this.portId };
  }

  close(): void {
    this.sock.close();
  }
}

const done = (seq: number, pid: number, status: number): Buffer => {
  const b = Buffer.alloc(20);
  b.writeUInt32LE(20, 0);
  b.writeUInt16LE(3, 4);
  b.writeUInt16LE(2, 6);
  b.writeUInt32LE(seq, 8);
  b.writeUInt32LE(pid, 12);
  b.writeInt32LE(status, 16);
  return b;
};

const bareDone = fromHex('10 00 00 00 03 00 02 00 00 00 00 00 00 00 00 00');

function expectBytes(actual: Buffer, expected: Buffer): void {
  const d = byteDiff(actual, expected);
  expect(d, d).toBe('');
}

let portSeed = 0x10000000 + ((process.pid * 7919) % 0x10000000);
const freshPortId = (): number => ++portSeed;

describe('IWPM kernel encoders used by the simulator (golden bytes from the spec)', () => {
  it('ADD_MAPPING for 0.0.0.0:5000, seq 7, echo seq 3, ABI 4: spec 2.3 worked example', () => {
    const golden = fromHex(`
      a4 00 00 00  01 08  01 00  07 00 00 00  00 00 00 00
      08 00 01 00  03 00 00 00
      84 00 02 00  02 00 13 88  00 00 00 00  [120 x 00]
      08 00 03 00  00 00 00 00`);
    expectBytes(encodeKernelAdd({ seq: 7 }, { echoSeq: 3, local: encodeSockaddr(parseIp('0.0.0.0', 5000)), flags: 0 }), golden);
    // ABI 3: no FLAGS attribute, 156 bytes.
    const abi3 = encodeKernelAdd({ seq: 7 }, { echoSeq: 3, local: sa4('0.0.0.0', 5000) });
    expectBytes(abi3, nlmsg({ type: 0x801, flags: 1, seq: 7, pid: 0 }, a32(1, 3), abytes(2, sa4('0.0.0.0', 5000))));
    expect(abi3.length).toBe(156);
  });

  it('every kernel -> daemon message has the spec 2.3 size and layout', () => {
    const reg = encodeKernelRegPid({ seq: 9 }, { echoSeq: 2, ifname: 'eth0', ibdev: 'siw0' });
    expectBytes(
      reg,
      nlmsg(
        { type: 0x800, flags: 1, seq: 9, pid: 0 },
        a32(1, 2),
        afixed(2, 'eth0', 16),
        afixed(3, 'siw0', 32),
        afixed(4, 'iWarpPortMapperUser', 32),
      ),
    );
    expect(reg.length).toBe(116);

    const l = sa4('10.0.0.1', 40000);
    const r = sa4('10.0.0.2', 5000);
    const q4 = encodeKernelQuery({ seq: 5 }, { echoSeq: 1, local: l, remote: r, flags: 1 });
    expectBytes(q4, nlmsg({ type: 0x802, flags: 1, seq: 5, pid: 0 }, a32(1, 1), abytes(2, l), abytes(3, r), a32(4, 1)));
    expect(q4.length).toBe(296);
    expect(encodeKernelQuery({ seq: 5 }, { echoSeq: 1, local: l, remote: r }).length).toBe(288);

    const rm = encodeKernelRemove({ seq: 6 }, { echoSeq: 1, local: l });
    expectBytes(rm, nlmsg({ type: 0x803, flags: 1, seq: 6, pid: 0 }, a32(1, 1), abytes(2, l)));
    expect(rm.length).toBe(156);

    const m = withPortRaw(l, 33333);
    const mi = encodeKernelMapinfo({ local: l, mapped: m, flags: 0 });
    expectBytes(mi, nlmsg({ type: 0x806, flags: 2, seq: 0, pid: 0 }, abytes(1, l), abytes(2, m), a32(3, 0)));
    expect(mi.length).toBe(288);
    expect(encodeKernelMapinfo({ local: l, mapped: m }).length).toBe(280);

    const num = encodeKernelMapinfoNum({ seq: 11 }, 3);
    expectBytes(num, nlmsg({ type: 0x807, flags: 1, seq: 11, pid: 0 }, a32(1, 0), a32(2, 3)));
    expect(num.length).toBe(32);

    const hello = encodeKernelHello({ seq: 4 }, 4);
    expectBytes(hello, fromHex('18 00 00 00 08 08 01 00 04 00 00 00 00 00 00 00 06 00 01 00 04 00 00 00'));
  });

  it('sockaddr_storage: IPv6 layout (family LE, port BE, flowinfo, address, scope id)', () => {
    const a = encodeSockaddr({ ...parseIp('fe80::1', 4791), scopeId: 3, flowinfo: 0 });
    expectBytes(a, sa6('fe80::1', 4791, 3));
    expect(a.subarray(0, 4)).toEqual(Buffer.from([0x0a, 0x00, 0x12, 0xb7]));
  });
});

describe('kernel attribute policy (kernelParse)', () => {
  const pol = [undefined, 'u32', 'nulstr', 'addr', 'u16'] as const;
  it('accepts a good message and liberal extras (higher indices, trailing bytes)', () => {
    const p = Buffer.concat([a32(1, 5), astr(2, 'siw0'), abytes(3, sa4('1.2.3.4', 1)), a16(4, 3), a32(9, 1), Buffer.from([1, 2])]);
    const r = kernelParse(p, [...pol]);
    expect(r.ok).toBe(true);
  });
  it.each([
    ['missing attribute', Buffer.concat([a32(1, 5), astr(2, 'x'), a16(4, 3)]), /attribute 3 missing/],
    ['short address', Buffer.concat([a32(1, 5), astr(2, 'x'), abytes(3, Buffer.alloc(16)), a16(4, 3)]), /needs 128/],
    ['short u32', Buffer.concat([a16(1, 5), astr(2, 'x'), abytes(3, sa4('1.2.3.4', 1)), a16(4, 3)]), /u32/],
    ['short u16', Buffer.concat([a32(1, 5), astr(2, 'x'), abytes(3, sa4('1.2.3.4', 1)), abytes(4, Buffer.alloc(1))]), /u16/],
    ['unterminated string', Buffer.concat([a32(1, 5), abytes(2, Buffer.from('abcd')), abytes(3, sa4('1.2.3.4', 1)), a16(4, 3)]), /NUL/],
    ['32-char string (its NUL is byte 33)', Buffer.concat([a32(1, 5), astr(2, 'x'.repeat(32)), abytes(3, sa4('1.2.3.4', 1)), a16(4, 3)]), /NUL/],
    ['NUL early but 40 bytes long', Buffer.concat([a32(1, 5), abytes(2, Buffer.concat([Buffer.from('ab\0'), Buffer.alloc(37, 0x41)])), abytes(3, sa4('1.2.3.4', 1)), a16(4, 3)]), /allows 31/],
    // An attribute running past the end stops the walk (leftover bytes only warn); what follows is missing.
    ['attribute past the end', Buffer.concat([a32(1, 5), astr(2, 'x'), abytes(3, sa4('1.2.3.4', 1)).subarray(0, 100)]), /missing/],
  ])('rejects: %s', (_n, payload, re) => {
    const r = kernelParse(payload, [...pol]);
    expect(r.ok).toBe(false);
    if (!r.ok) expect(r.reason).toMatch(re);
  });
  it('accepts a 31-char string without or with its NUL', () => {
    const s31 = 'y'.repeat(31);
    expect(kernelParse(Buffer.concat([a32(1, 5), astr(2, s31), abytes(3, sa4('1.2.3.4', 1)), a16(4, 3)]), [...pol]).ok).toBe(true);
  });
});

describe('KernelSim against a hand-driven daemon socket', () => {
  let sim: KernelSim;
  let d: HandDaemon;

  async function handshake4(): Promise<void> {
    d.send(sim, nlmsg(d.h(8), a16(1, 4))); // HELLO seq 0
    await d.next(); // HELLO reply
    await d.next(); // DONE
    d.send(sim, nlmsg(d.h(6), astr(1, 'iWarpPortMapperUser'), a16(2, 4))); // MAPINFO req seq 1
    await d.next(); // DONE (empty table: nothing else)
  }

  /** Answer the next REG_PID multicast like rdma-core. */
  async function answerRegPid(o: { ibdev?: string; ulib?: string; ver?: number } = {}): Promise<Buffer> {
    const got = await d.next();
    const seq = got.data.readUInt32LE(8);
    d.send(sim, nlmsg(d.h(0), a32(1, seq), astr(2, o.ibdev ?? 'siw0'), astr(3, o.ulib ?? 'iWarpPortMapperUser'), a16(4, o.ver ?? 4), a16(5, 0)));
    return got.data;
  }

  beforeEach(async () => {
    sim = await KernelSim.create({ abi: 4, group: GROUP, replyTimeoutMs: 1500 });
    d = new HandDaemon(freshPortId());
  });
  afterEach(() => {
    sim.close();
    d.close();
  });

  it('ABI 4 handshake: HELLO reply then DONE(seq, pid, 0); empty MAPINFO replay is just the DONE', async () => {
    d.send(sim, nlmsg(d.h(8), a16(1, 4)));
    const hello = await d.next();
    expect(hello.sender).toBe(sim.portId);
    const kseq = hello.data.readUInt32LE(8);
    expect(kseq).toBeGreaterThan(0);
    expectBytes(hello.data, nlmsg({ type: 0x808, flags: 1, seq: kseq, pid: 0 }, a16(1, 4)));
    expectBytes((await d.next()).data, done(0, d.portId, 0));
    expect(sim.userPid).toBe(d.portId);
    expect(sim.registration[2]).toBe('INCOMPL');
    expect(sim.ulibVersion).toBe(4);

    d.send(sim, nlmsg(d.h(6), astr(1, 'iWarpPortMapperUser'), a16(2, 4)));
    expectBytes((await d.next()).data, done(1, d.portId, 0));
    await d.quiet();
    expect(sim.problems()).toEqual([]);
    expect(sim.replays).toEqual([]);
  });

  it('HELLO with a higher ABI is answered with min(4, v)', async () => {
    d.send(sim, nlmsg(d.h(8), a16(1, 7)));
    const hello = await d.next();
    expect(hello.data.readUInt16LE(20)).toBe(4);
  });

  it('doneTiming before-handler sends the DONE first', async () => {
    sim.close();
    sim = await KernelSim.create({ abi: 4, group: GROUP, doneTiming: 'before-handler' });
    d.send(sim, nlmsg(d.h(8), a16(1, 4)));
    expectBytes((await d.next()).data, done(0, d.portId, 0));
    expect((await d.next()).data.readUInt16LE(4)).toBe(0x808);
  });

  it('handshakeDelayMs holds back the HELLO answer (state changes at once)', async () => {
    sim.close();
    sim = await KernelSim.create({ abi: 4, group: GROUP, handshakeDelayMs: 300 });
    const t0 = Date.now();
    d.send(sim, nlmsg(d.h(8), a16(1, 4)));
    await d.quiet(150);
    expect(sim.userPid).toBe(d.portId);
    expect((await d.next()).data.readUInt16LE(4)).toBe(0x808);
    expect(Date.now() - t0).toBeGreaterThanOrEqual(290);
    expectBytes((await d.next()).data, done(0, d.portId, 0));
  });

  it('ABI 3: HELLO gets NLMSG_ERROR(-EINVAL) with the original message (44 bytes), no DONE', async () => {
    sim.close();
    sim = await KernelSim.create({ abi: 3, group: GROUP });
    const helloMsg = nlmsg(d.h(8), a16(1, 4));
    d.send(sim, helloMsg);
    const err = (await d.next()).data;
    const expected = Buffer.alloc(44);
    expected.writeUInt32LE(44, 0);
    expected.writeUInt16LE(2, 4);
    expected.writeUInt16LE(0, 6);
    expected.writeUInt32LE(0, 8);
    expected.writeUInt32LE(d.portId, 12);
    expected.writeInt32LE(-22, 16);
    helloMsg.copy(expected, 20);
    expectBytes(err, expected);
    await d.quiet();
    expect(sim.userPid).toBe(-1);
    // MAPINFO with version 4 is refused on ABI 3 (handler -EINVAL), version 3 accepted.
    d.send(sim, nlmsg(d.h(6), astr(1, 'iWarpPortMapperUser'), a16(2, 4)));
    expectBytes((await d.next()).data, done(1, d.portId, -22));
    d.send(sim, nlmsg(d.h(6), astr(1, 'iWarpPortMapperUser'), a16(2, 3)));
    expectBytes((await d.next()).data, done(2, d.portId, 0));
    expect(sim.userPid).toBe(d.portId);
    // Client 3 is not registered on iwcm-era kernels: NLMSG_ERROR.
    const c3 = nlmsg({ type: 0xc06, flags: 1, seq: 0, pid: d.portId }, astr(1, 'iWarpPortMapperUser'), a16(2, 3));
    d.send(sim, c3);
    const e3 = (await d.next()).data;
    expect(e3.readUInt16LE(4)).toBe(2);
    expect(e3.readInt32LE(16)).toBe(-22);
    expect(e3.subarray(20)).toEqual(c3);
  });

  it('REG_PID by multicast before the first ADD, then ADD (164 bytes, FLAGS) and RMANAGE; DONE after each', async () => {
    await handshake4();
    const local = parseIp('10.1.2.3', 5000);
    const pAdd = sim.add(local, { flags: 1 });
    const reg = await d.next();
    expect(reg.groups).toBe(1 << (GROUP - 1));
    expect(reg.sender).toBe(sim.portId);
    const rseq = reg.data.readUInt32LE(8);
    expectBytes(
      reg.data,
      nlmsg({ type: 0x800, flags: 1, seq: rseq, pid: 0 }, a32(1, 1), afixed(2, 'eth0', 16), afixed(3, 'siw0', 32), afixed(4, 'iWarpPortMapperUser', 32)),
    );
    d.send(sim, nlmsg(d.h(0), a32(1, rseq), astr(2, 'siw0'), astr(3, 'iWarpPortMapperUser'), a16(4, 4), a16(5, 0)));
    expectBytes((await d.next()).data, done(2, d.portId, 0));
    const add = await d.next();
    const aseq = add.data.readUInt32LE(8);
    expect(aseq).toBe(rseq + 1);
    expect(add.groups).toBe(0);
    // echo seq = the daemon's last header seq (2)
    expectBytes(add.data, nlmsg({ type: 0x801, flags: 1, seq: aseq, pid: 0 }, a32(1, 2), abytes(2, sa4('10.1.2.3', 5000)), a32(3, 1)));
    expect(sim.registration[2]).toBe('VALID');

    // spec 2.3 worked-example reply shape (mapped port 33333), our pid and seq
    d.send(sim, nlmsg(d.h(1), a32(1, aseq), abytes(2, sa4('10.1.2.3', 5000)), abytes(3, sa4('10.1.2.3', 33333)), a16(4, 0)));
    const r = await pAdd;
    expect(r.kind).toBe('ok');
    if (r.kind === 'ok') expect(r.mapped.port).toBe(33333);
    expectBytes((await d.next()).data, done(3, d.portId, 0));
    expect(sim.mapinfo).toHaveLength(1);
    expect(sim.problems()).toEqual([]);

    // Registered now: the next ADD goes straight out.
    const p2 = sim.add('10.1.2.3:5001');
    expect((await d.next()).data.readUInt16LE(4)).toBe(0x801);
    sim.close();
    expect((await p2).kind).toBe('timeout');
  });

  it('ABI 3 registration: no FLAGS in ADD; ULIB_VER 4 in RREG_PID is refused (USER_LIB_INFO_ERR)', async () => {
    sim.close();
    sim = await KernelSim.create({ abi: 3, group: GROUP, replyTimeoutMs: 1500 });
    d.send(sim, nlmsg(d.h(8), a16(1, 4)));
    await d.next();
    d.send(sim, nlmsg(d.h(6), astr(1, 'iWarpPortMapperUser'), a16(2, 3)));
    await d.next();
    const p = sim.add('10.0.0.1:7000');
    await answerRegPid({ ver: 4 });
    const r = await p;
    expect(r.kind).toBe('unmapped');
    expect(sim.rejections.at(-1)?.reason).toMatch(/ULIB_VER 4/);
    expect(sim.mapinfo).toHaveLength(0); // registration failed: no record
    await d.next(); // DONE(0) for the bad reply

    const p2 = sim.add('10.0.0.1:7000');
    await answerRegPid({ ver: 3 });
    await d.next(); // DONE
    const add = await d.next();
    expect(add.data.length).toBe(156);
    const seq = add.data.readUInt32LE(8);
    d.send(sim, nlmsg(d.h(5), a32(1, seq), a16(2, 11)));
    const r2 = await p2;
    expect(r2).toMatchObject({ kind: 'error', code: 11 });
    // A failed ADD still leaves a local -> local record.
    expect(sim.mapinfo).toHaveLength(1);
    expect(sim.mapinfo[0]!.mapped).toEqual(sim.mapinfo[0]!.local);
    // ABI 3 + NO_PORT_MAP: the kernel fails quietly without asking.
    const r3 = await sim.add('10.0.0.1:7001', { flags: 1 });
    expect(r3.kind).toBe('unmapped');
    expect(sim.mapinfo).toHaveLength(2);
  });

  describe('rejected replies', () => {
    let addSeq: number;
    let pending: ReturnType<KernelSim['add']>;
    beforeEach(async () => {
      await handshake4();
      pending = sim.add('10.9.9.9:6000');
      await answerRegPid();
      await d.next(); // DONE
      addSeq = (await d.next()).data.readUInt32LE(8);
    });
    const ok = (seq: number, pid?: number): Buffer =>
      nlmsg({ ...d.h(1), ...(pid !== undefined ? { pid } : {}) }, a32(1, seq), abytes(2, sa4('10.9.9.9', 6000)), abytes(3, sa4('10.9.9.9', 40001)), a16(4, 0));

    it('short mapped address: policy failure, DONE(-22), request resolved as rejected-reply', async () => {
      d.send(sim, nlmsg(d.h(1), a32(1, addSeq), abytes(2, sa4('10.9.9.9', 6000)), abytes(3, Buffer.alloc(16)), a16(4, 0)));
      expect((await d.next()).data.readInt32LE(16)).toBe(-22);
      const r = await pending;
      expect(r.kind).toBe('rejected-reply');
      if (r.kind === 'rejected-reply') expect(r.reason).toMatch(/needs 128/);
    });
    it('missing NLM_F_REQUEST: ignored entirely, no DONE', async () => {
      d.send(sim, nlmsg({ ...d.h(1), flags: 0 }, a32(1, addSeq), abytes(2, sa4('10.9.9.9', 6000)), abytes(3, sa4('10.9.9.9', 40001)), a16(4, 0)));
      await d.quiet();
      expect(sim.rejections.at(-1)?.reason).toMatch(/NLM_F_REQUEST/);
      expect(sim.outstanding()).toContain(addSeq);
      d.send(sim, ok(addSeq));
      expect((await pending).kind).toBe('ok');
    });
    it('wrong SEQ: no matching request, DONE(-22); the right one still works', async () => {
      d.send(sim, ok(addSeq + 1000));
      expect((await d.next()).data.readInt32LE(16)).toBe(-22);
      expect(sim.rejections.at(-1)?.reason).toMatch(/Could not find/);
      d.send(sim, ok(addSeq));
      expect((await pending).kind).toBe('ok');
    });
    it('local address differs from the request: USER_LIB_INFO_ERR (handler returns 0)', async () => {
      d.send(sim, nlmsg(d.h(1), a32(1, addSeq), abytes(2, sa4('10.9.9.9', 6001)), abytes(3, sa4('10.9.9.9', 40001)), a16(4, 0)));
      expect((await d.next()).data.readInt32LE(16)).toBe(0);
      expect((await pending).kind).toBe('rejected-reply');
    });
    it('mapped family differs from local family', async () => {
      d.send(sim, nlmsg(d.h(1), a32(1, addSeq), abytes(2, sa4('10.9.9.9', 6000)), abytes(3, sa6('::1', 40001)), a16(4, 0)));
      await d.next();
      const r = await pending;
      expect(r.kind).toBe('rejected-reply');
      if (r.kind === 'rejected-reply') expect(r.reason).toMatch(/family/);
    });
    it('header pid != sender port id', async () => {
      d.send(sim, ok(addSeq, d.portId + 1));
      expect((await d.next()).data.readInt32LE(16)).toBe(-22);
      expect(sim.rejections.at(-1)?.reason).toMatch(/nlmsg_pid/);
    });
    it('a reply from another socket is not taken', async () => {
      const spoof = sim.openSpoofer();
      spoof.send(ok(addSeq, spoof.portId), sim.portId);
      await new Promise((r) => setTimeout(r, 100));
      expect(sim.rejections.at(-1)?.reason).toMatch(/but the daemon is/);
      expect(spoof.received).toHaveLength(1); // its DONE(-22)
      expect(spoof.received[0]!.data.readInt32LE(16)).toBe(-22);
      d.send(sim, ok(addSeq));
      expect((await pending).kind).toBe('ok');
    });
    it('HANDLE_ERR completes the request with its code; one for an unknown seq is ignored with status 0', async () => {
      d.send(sim, nlmsg(d.h(5), a32(1, 0), a16(2, 11)));
      expect((await d.next()).data.readInt32LE(16)).toBe(0);
      d.send(sim, nlmsg(d.h(5), a32(1, addSeq), a16(2, 12)));
      expect(await pending).toMatchObject({ kind: 'error', code: 12 });
    });
    it('no answer: timeout after replyTimeoutMs; a late answer is a kernel crash on 6.1', async () => {
      const r = await pending;
      expect(r).toMatchObject({ kind: 'timeout', seq: addSeq });
      expect(sim.crashes).toEqual([]);
      expect(sim.finishedRequest(addSeq)).toMatchObject({ op: 'add', how: 'timed-out' });
      // 6.1 still finds the request: its callback would use the dead stack frame
      d.send(sim, ok(addSeq));
      expect((await d.next()).data.readInt32LE(16)).toBe(-22);
      expect(sim.crashes).toHaveLength(1);
      expect(sim.crashes[0]).toMatchObject({ op: 'add', seq: addSeq, how: 'timed-out' });
      expect(sim.crashes[0]!.reason).toMatch(/KERNEL CRASH.*iwpm_add_mapping_cb/);
      expect(sim.problems().join('\n')).toMatch(/KERNEL CRASH/);
    });
    it('a second answer to an answered request is a kernel crash; a late HANDLE_ERR is not', async () => {
      d.send(sim, ok(addSeq));
      expect((await pending).kind).toBe('ok');
      expect((await d.next()).data.readInt32LE(16)).toBe(0);
      expect(sim.problems()).toEqual([]);
      // HANDLE_ERR for it: iwpm_mapping_error_cb touches only the request object
      d.send(sim, nlmsg(d.h(5), a32(1, addSeq), a16(2, 11)));
      expect((await d.next()).data.readInt32LE(16)).toBe(0);
      expect(sim.crashes).toEqual([]);
      // the same RMANAGE again
      d.send(sim, ok(addSeq));
      await d.next();
      expect(sim.crashes).toHaveLength(1);
      expect(sim.crashes[0]).toMatchObject({ op: 'add', seq: addSeq, how: 'answered' });
    });
    it('a reply naming a request that failed the policy early is not a crash (the kernel was still waiting)', async () => {
      d.send(sim, nlmsg(d.h(1), a32(1, addSeq), abytes(2, sa4('10.9.9.9', 6000)), abytes(3, Buffer.alloc(16)), a16(4, 0)));
      await d.next();
      expect((await pending).kind).toBe('rejected-reply');
      d.send(sim, ok(addSeq));
      await d.next();
      expect(sim.crashes).toEqual([]);
    });
    it('REG_PID reply checks: wrong ibdev, wrong ulib name, unterminated string', async () => {
      d.send(sim, ok(addSeq));
      await pending;
      await d.next();
      for (const [o, re] of [
        [{ ibdev: 'other0' }, /ibdev/],
        [{ ulib: 'SomethingElse' }, /ulib name/],
      ] as const) {
        const p = sim.regPid();
        await answerRegPid(o);
        const r = await p;
        expect(r.kind).toBe('rejected-reply');
        if (r.kind === 'rejected-reply') expect(r.reason).toMatch(re);
        await d.next();
      }
      const p = sim.regPid();
      const seq = (await d.next()).data.readUInt32LE(8);
      d.send(sim, nlmsg(d.h(0), a32(1, seq), abytes(2, Buffer.from('siw0')), astr(3, 'iWarpPortMapperUser'), a16(4, 4), a16(5, 0)));
      const r = await p;
      expect(r.kind).toBe('rejected-reply');
      if (r.kind === 'rejected-reply') expect(r.reason).toMatch(/NUL/);
    });
  });

  it('REMOVE_MAPPING from the daemon and unknown ops get NLMSG_ERROR; REMOTE_INFO gets DONE(-22) and is recorded', async () => {
    await handshake4();
    const rm = nlmsg(d.h(3), a32(1, 0), abytes(2, sa4('1.1.1.1', 1)));
    d.send(sim, rm);
    const e = (await d.next()).data;
    expect(e.readUInt16LE(4)).toBe(2);
    expect(e.readInt32LE(16)).toBe(-22);
    d.send(sim, nlmsg(d.h(9), a32(1, 0)));
    expect((await d.next()).data.readInt32LE(16)).toBe(-22);
    const ri = nlmsg(
      d.h(4),
      a32(1, 0),
      abytes(2, sa4('0.0.0.0', 5000)),
      abytes(3, sa4('10.0.0.2', 40000)),
      abytes(4, sa4('0.0.0.0', 33333)),
      abytes(5, sa4('10.0.0.2', 44444)),
      a16(6, 0),
    );
    d.send(sim, ri);
    expectBytes((await d.next()).data, done(d.seq - 1, d.portId, -22));
    expect(sim.remoteInfos).toHaveLength(1);
    expect(sim.remoteInfos[0]!.mappedRemote.readUInt16BE(2)).toBe(44444);
  });

  it('QUERY: RQUERY with a wildcard mapped remote takes the real remote IP; ERR 16 is a failure', async () => {
    await handshake4();
    const p = sim.query('10.0.0.1:40000', '10.0.0.2:5000');
    await answerRegPid();
    await d.next();
    const q = await d.next();
    expect(q.data.length).toBe(296);
    const seq = q.data.readUInt32LE(8);
    d.send(
      sim,
      nlmsg(d.h(2), a32(1, seq), abytes(2, sa4('10.0.0.1', 40000)), abytes(3, sa4('10.0.0.2', 5000)), abytes(4, sa4('10.0.0.1', 41000)), abytes(5, sa4('0.0.0.0', 33333)), a16(6, 0)),
    );
    const r = await p;
    expect(r.kind).toBe('ok');
    if (r.kind === 'ok') {
      expect(r.mapped.port).toBe(41000);
      expect([...r.mappedRemote.ip]).toEqual([10, 0, 0, 2]);
      expect(r.mappedRemote.port).toBe(33333);
    }
    await d.next();
    const p2 = sim.query('10.0.0.1:40001', '10.0.0.2:5001');
    const seq2 = (await d.next()).data.readUInt32LE(8);
    d.send(
      sim,
      nlmsg(d.h(2), a32(1, seq2), abytes(2, sa4('10.0.0.1', 40001)), abytes(3, sa4('10.0.0.2', 5001)), abytes(4, sa4('10.0.0.1', 41001)), abytes(5, sa4('10.0.0.2', 5001)), a16(6, 16)),
    );
    expect(await p2).toMatchObject({ kind: 'error', code: 16 });
  });

  it('MAPINFO replay: 12 records per datagram + bare DONE, then MAPINFO_NUM, then the request DONE; ack recorded', async () => {
    for (let i = 0; i < 30; i++) sim.addMapinfoRecord(`10.0.0.1:${6000 + i}`, `10.0.0.1:${40000 + i}`, i % 2);
    d.send(sim, nlmsg(d.h(8), a16(1, 4)));
    await d.next();
    await d.next();
    d.send(sim, nlmsg(d.h(6), astr(1, 'iWarpPortMapperUser'), a16(2, 4)));
    const sizes: number[] = [];
    for (let i = 0; i < 3; i++) {
      const g = (await d.next()).data;
      sizes.push(g.length);
      expectBytes(g.subarray(g.length - 16), bareDone);
      const first = g.subarray(0, 288);
      const k = i * 12;
      expectBytes(
        first,
        nlmsg({ type: 0x806, flags: 2, seq: 0, pid: 0 }, abytes(1, sa4('10.0.0.1', 6000 + k)), abytes(2, sa4('10.0.0.1', 40000 + k)), a32(3, k % 2)),
      );
    }
    expect(sizes).toEqual([12 * 288 + 16, 12 * 288 + 16, 6 * 288 + 16]);
    const num = (await d.next()).data;
    const nseq = num.readUInt32LE(8);
    expectBytes(num, nlmsg({ type: 0x807, flags: 1, seq: nseq, pid: 0 }, a32(1, 0), a32(2, 30)));
    expectBytes((await d.next()).data, done(1, d.portId, 0));
    d.send(sim, nlmsg(d.h(7), a32(1, nseq), a32(2, 30), a32(3, 29)));
    const ack = await sim.waitForReplayAck(sim.replays[0]!, 1000);
    expect(ack).toMatchObject({ kind: 'ok', sendNum: 30, ackNum: 29 });
    expect(sim.problems()).toEqual([]);
  });

  it('MAPINFO replay of exactly 12 records: a second datagram holding only the bare DONE', async () => {
    for (let i = 0; i < 12; i++) sim.addMapinfoRecord(`10.0.0.1:${6000 + i}`, `10.0.0.1:${40000 + i}`);
    d.send(sim, nlmsg(d.h(6), astr(1, 'iWarpPortMapperUser'), a16(2, 3)));
    expect((await d.next()).data.length).toBe(12 * 280 + 16); // ulib version 3 until a HELLO: no FLAGS
    expectBytes((await d.next()).data, bareDone);
    expect((await d.next()).data.readUInt16LE(4)).toBe(0x807);
  });

  it('barrier: MAPINFO_NUM {0, n} answered by the daemon MAPINFO_NUM naming its seq', async () => {
    await handshake4();
    const p = sim.sendMapinfoNum(5);
    const m = (await d.next()).data;
    const seq = m.readUInt32LE(8);
    expectBytes(m, nlmsg({ type: 0x807, flags: 1, seq, pid: 0 }, a32(1, 0), a32(2, 5)));
    d.send(sim, nlmsg(d.h(7), a32(1, seq), a32(2, 5), a32(3, 0)));
    expect(await p).toMatchObject({ kind: 'ok', sendNum: 5, ackNum: 0 });
  });

  it('a daemon that died: the next ADD fails at once (ECONNREFUSED) and the pid is forgotten', async () => {
    await handshake4();
    const p = sim.add('10.0.0.1:7000');
    await answerRegPid();
    await d.next();
    const seq = (await d.next()).data.readUInt32LE(8);
    d.send(sim, nlmsg(d.h(1), a32(1, seq), abytes(2, sa4('10.0.0.1', 7000)), abytes(3, sa4('10.0.0.1', 40000)), a16(4, 0)));
    await p;
    d.close();
    const r = await sim.add('10.0.0.1:7001');
    expect(r.kind).toBe('unmapped');
    if (r.kind === 'unmapped') expect(r.reason).toMatch(/ECONNREFUSED/);
    expect(sim.userPid).toBe(-1);
    // still VALID: later adds skip mapping without asking
    expect((await sim.add('10.0.0.1:7002')).kind).toBe('unmapped');
    expect(sim.problems()).toEqual([]);
  });

  it('QUERY and REG_PID answered after their timeout are kernel crashes too', async () => {
    await handshake4();
    const reg = sim.regPid();
    const rseq = (await d.next()).data.readUInt32LE(8);
    expect((await reg).kind).toBe('timeout');
    d.send(sim, nlmsg(d.h(0), a32(1, rseq), astr(2, 'siw0'), astr(3, 'iWarpPortMapperUser'), a16(4, 4), a16(5, 0)));
    await d.next();
    expect(sim.crashes.map((c) => [c.op, c.how])).toEqual([['reg_pid', 'timed-out']]);
    expect(sim.crashes[0]!.reason).toMatch(/iwpm_register_pid_cb/);
    // the late REG_PID reply did not register the daemon
    expect(sim.registration[2]).toBe('INCOMPL');
    const q = sim.query('10.0.0.1:40000', '10.0.0.2:5000');
    await answerRegPid();
    await d.next();
    const qseq = (await d.next()).data.readUInt32LE(8);
    expect((await q).kind).toBe('timeout');
    d.send(
      sim,
      nlmsg(d.h(2), a32(1, qseq), abytes(2, sa4('10.0.0.1', 40000)), abytes(3, sa4('10.0.0.2', 5000)), abytes(4, sa4('10.0.0.1', 40000)), abytes(5, sa4('10.0.0.2', 5000)), a16(6, 0)),
    );
    await d.next();
    expect(sim.crashes.map((c) => [c.op, c.how])).toEqual([
      ['reg_pid', 'timed-out'],
      ['query', 'timed-out'],
    ]);
    expect(sim.crashes[1]!.reason).toMatch(/iwpm_add_and_query_mapping_cb/);
  });

  it('REG_PID multicast with nobody in the group fails: mapper unavailable, nothing asked until a HELLO', async () => {
    sim.close();
    const lonely = 29; // no socket of this test joins it
    sim = await KernelSim.create({ abi: 4, group: lonely, replyTimeoutMs: 1500 });
    d.send(sim, nlmsg(d.h(8), a16(1, 4)));
    await d.next();
    await d.next();
    const seqBefore = sim.nextSeq();
    const r = await sim.add('10.0.0.1:7000', { flags: 1 });
    expect(r).toMatchObject({ kind: 'unmapped' });
    if (r.kind === 'unmapped') expect(r.reason).toMatch(/ESRCH/);
    expect(sim.userPid).toBe(-2);
    // the failed REG_PID used up a header seq, as in the kernel
    expect(sim.nextSeq()).toBe(seqBefore + 2);
    // never asked again, nothing sent to the daemon
    expect((await sim.query('10.0.0.1:40000', '10.0.0.2:5000')).kind).toBe('unmapped');
    await d.quiet();
    expect(sim.mapinfo).toHaveLength(0);
    // a HELLO brings the daemon back (INCOMPL): the next ADD multicasts REG_PID again
    d.send(sim, nlmsg(d.h(8), a16(1, 4)));
    await d.next();
    await d.next();
    expect(sim.userPid).toBe(d.portId);
    const g = new HandDaemon(freshPortId(), lonely);
    try {
      const p = sim.add('10.0.0.1:7001');
      const reg = await g.next();
      expect(reg.data.readUInt16LE(4)).toBe(0x800);
      sim.close();
      expect((await p).kind).not.toBe('ok');
    } finally {
      g.close();
    }
  });

  it('after a restart (INCOMPL), REMOVE goes to the new daemon before any REG_PID; 26 records replay as 12 + 12 + 2', async () => {
    for (let i = 0; i < 26; i++) sim.addMapinfoRecord(`192.0.2.1:${7400 + i}`, `192.0.2.1:${7400 + i}`, 1);
    d.send(sim, nlmsg(d.h(8), a16(1, 4)));
    await d.next();
    await d.next();
    d.send(sim, nlmsg(d.h(6), astr(1, 'iWarpPortMapperUser'), a16(2, 4)));
    const per: number[] = [];
    for (;;) {
      const g = (await d.next()).data;
      if (g.readUInt16LE(4) !== 0x806) {
        expect(g.readUInt16LE(4)).toBe(0x807); // MAPINFO_NUM after the records
        expect(g.readUInt32LE(28)).toBe(26);
        break;
      }
      per.push((g.length - 16) / 288);
    }
    expect(per).toEqual([12, 12, 2]);
    expectBytes((await d.next()).data, done(1, d.portId, 0)); // the request's DONE comes last
    expect(sim.registration[2]).toBe('INCOMPL');
    const seq = sim.remove('192.0.2.1:7400');
    expect(seq).toBeDefined();
    const rm = await d.next();
    expect(rm.data.readUInt16LE(4)).toBe(0x803);
    expect(rm.groups).toBe(0);
    expect(sim.mapinfo).toHaveLength(25);
    await d.quiet();
  });

  it('a port id >= 2^31 is not a valid pid for the kernel (int): mappings are skipped', async () => {
    const neg = new HandDaemon(0x80001234 + (process.pid % 1000));
    try {
      neg.send(sim, nlmsg({ type: 0x808, flags: 1, seq: 0, pid: neg.portId }, a16(1, 4)));
      await neg.next();
      expect(sim.userPid).toBeLessThan(0);
      const r = await sim.add('10.0.0.1:7000');
      expect(r.kind).toBe('unmapped');
    } finally {
      neg.close();
    }
  });
});
