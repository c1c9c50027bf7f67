/**
 * src/codec/iwpm.ts: every IWPM message in both directions, ABI 3 and ABI 4
 * layouts, IPv4 and IPv6, against bytes written out by hand (spec §1.2-1.5, §2).
 * Kernel → daemon: decodeKernelMessage(raw) == value and encodeKernel*(value) == raw.
 * Daemon → kernel: encode*(value) == raw and a kernel-policy decode (helpers.ts) == value.
 */
import { describe, expect, it } from 'vitest';
import {
  type KernelMessage,
  IWPM_ULIB_NAME,
  RDMA_NL_C4IW,
  clientOf,
  decodeDaemonAttrs,
  decodeKernelMessage,
  decodeKernelMessageAt,
  encodeHandleErr,
  encodeHello,
  encodeKernelAdd,
  encodeKernelHello,
  encodeKernelMapinfo,
  encodeKernelMapinfoNum,
  encodeKernelQuery,
  encodeKernelRegPid,
  encodeKernelRemove,
  encodeManageReply,
  encodeMapinfoNumReply,
  encodeMapinfoRequest,
  encodeQueryReply,
  encodeRegPidReply,
  encodeRemoteInfo,
  nlType,
  opOf,
} from '../../src/codec/iwpm.js';
import { type NlMessage, encodeDone, encodeMessage, messageLengthAt, readHeader, splitMessages } from '../../src/codec/netlink.js';
import { type DaemonMessage, decodeDaemon, hex, kernelNulStringOk, one, prng, raw, sa } from './helpers.js';

const wa = (ip: string, port: number, extra: { flowinfo?: number; scopeId?: number } = {}) => ({
  addr: sa(ip, port, extra),
  raw: raw(ip, port, extra),
});
const hdr = (len: number, type: number, flags: number, seq: number, pid = 0) => ({ len, type, flags, seq, pid });

// ---------------------------------------------------------------------------
// Kernel → daemon

interface KCase {
  name: string;
  raw: Buffer;
  encode: () => Buffer;
  value: KernelMessage;
  /** Attribute type of the optional FLAGS attribute, when the message has one. */
  flagsType?: number;
}

const K: KCase[] = [
  {
    name: 'REG_PID (ABI 3 and 4 alike)',
    raw: hex`
      00: 74 00 00 00  00 08  01 00  01 00 00 00  00 00 00 00   // len 116, type 0x0800 (client 2, REG_PID), REQUEST, seq 1, pid 0
      10: 08 00 01 00  00 00 00 00                              // 1 REG_PID_SEQ u32 = 0 (echo)
      18: 14 00 02 00  65 6e 73 31 66 30  [10 x 00]             // 2 REG_IF_NAME char[16] "ens1f0", NUL padded
      2c: 24 00 03 00  69 72 64 6d 61 30  [26 x 00]             // 3 REG_IBDEV_NAME char[32] "irdma0"
      50: 24 00 04 00                                           // 4 REG_ULIB_NAME char[32]
      54: 69 57 61 72 70 50 6f 72 74 4d 61 70 70 65 72 55 73 65 72  [13 x 00]   // "iWarpPortMapperUser"
      74:`,
    encode: () => encodeKernelRegPid({ seq: 1 }, { echoSeq: 0, ifname: 'ens1f0', ibdev: 'irdma0' }),
    value: {
      op: 'reg_pid',
      client: 2,
      header: hdr(116, 0x0800, 1, 1),
      echoSeq: 0,
      ifname: 'ens1f0',
      ibdev: 'irdma0',
      ulib: IWPM_ULIB_NAME,
    },
  },
  {
    name: 'ADD_MAPPING ABI 4, IPv4 wildcard (spec §2.3 worked example)',
    raw: hex`
      00: a4 00 00 00  01 08  01 00  07 00 00 00  00 00 00 00   // len 164, type 0x0801, REQUEST, seq 7, pid 0
      10: 08 00 01 00  03 00 00 00                              // attr 1 (SEQ) = 3
      18: 84 00 02 00  02 00 13 88  00 00 00 00  [120 x 00]     // attr 2 (ADDR): AF_INET, port 5000, 0.0.0.0
      9c: 08 00 03 00  00 00 00 00                              // attr 3 (FLAGS) = 0
      a4:`,
    encode: () => encodeKernelAdd({ seq: 7 }, { echoSeq: 3, local: raw('0.0.0.0', 5000), flags: 0 }),
    value: { op: 'add', client: 2, header: hdr(164, 0x0801, 1, 7), echoSeq: 3, local: wa('0.0.0.0', 5000), flags: 0, hasFlags: true },
    flagsType: 3,
  },
  {
    name: 'ADD_MAPPING ABI 3 (no FLAGS), IPv4 specific',
    raw: hex`
      00: 9c 00 00 00  01 08  01 00  08 00 00 00  00 00 00 00   // len 156, ADD_MAPPING, seq 8
      10: 08 00 01 00  04 00 00 00                              // 1 MANAGE_MAPPING_SEQ = 4
      18: 84 00 02 00                                           // 2 MANAGE_ADDR, nla_len 132
      1c: 02 00  12 b7  c0 a8 01 0a  [120 x 00]                 //   AF_INET, port 4791, 192.168.1.10
      9c:`,
    encode: () => encodeKernelAdd({ seq: 8 }, { echoSeq: 4, local: raw('192.168.1.10', 4791) }),
    value: {
      op: 'add',
      client: 2,
      header: hdr(156, 0x0801, 1, 8),
      echoSeq: 4,
      local: wa('192.168.1.10', 4791),
      flags: 0,
      hasFlags: false,
    },
  },
  {
    name: 'ADD_MAPPING ABI 4, IPv6 link-local with scope id, NO_PORT_MAP (siw)',
    raw: hex`
      00: a4 00 00 00  01 08  01 00  09 00 00 00  00 00 00 00   // len 164, ADD_MAPPING, seq 9
      10: 08 00 01 00  05 00 00 00                              // 1 SEQ = 5
      18: 84 00 02 00                                           // 2 MANAGE_ADDR
      1c: 0a 00  1c 06  00 00 00 00                             //   AF_INET6, port 7174, flowinfo 0
      24: fe 80 00 00 00 00 00 00  00 00 00 00 00 00 00 02      //   fe80::2
      34: 03 00 00 00  [100 x 00]                               //   scope id 3 (host order), unused
      9c: 08 00 03 00  01 00 00 00                              // 3 MANAGE_FLAGS = IWPM_FLAGS_NO_PORT_MAP
      a4:`,
    encode: () => encodeKernelAdd({ seq: 9 }, { echoSeq: 5, local: raw('fe80::2', 7174, { scopeId: 3 }), flags: 1 }),
    value: {
      op: 'add',
      client: 2,
      header: hdr(164, 0x0801, 1, 9),
      echoSeq: 5,
      local: wa('fe80::2', 7174, { scopeId: 3 }),
      flags: 1,
      hasFlags: true,
    },
    flagsType: 3,
  },
  {
    name: 'QUERY_MAPPING ABI 4, IPv4',
    raw: hex`
      00: 28 01 00 00  02 08  01 00  0b 00 00 00  00 00 00 00   // len 296, type 0x0802, seq 11
      10: 08 00 01 00  06 00 00 00                              // 1 QUERY_MAPPING_SEQ = 6
      18: 84 00 02 00  02 00 9c 40  0a 00 00 01  [120 x 00]     // 2 LOCAL 10.0.0.1:40000
      9c: 84 00 03 00  02 00 13 88  0a 00 00 02  [120 x 00]     // 3 REMOTE 10.0.0.2:5000
      120: 08 00 04 00  00 00 00 00                             // 4 QUERY_FLAGS = 0
      128:`,
    encode: () =>
      encodeKernelQuery({ seq: 11 }, { echoSeq: 6, local: raw('10.0.0.1', 40000), remote: raw('10.0.0.2', 5000), flags: 0 }),
    value: {
      op: 'query',
      client: 2,
      header: hdr(296, 0x0802, 1, 11),
      echoSeq: 6,
      local: wa('10.0.0.1', 40000),
      remote: wa('10.0.0.2', 5000),
      flags: 0,
      hasFlags: true,
    },
    flagsType: 4,
  },
  {
    name: 'QUERY_MAPPING ABI 3, IPv6',
    raw: hex`
      00: 20 01 00 00  02 08  01 00  0c 00 00 00  00 00 00 00   // len 288, QUERY_MAPPING, seq 12
      10: 08 00 01 00  07 00 00 00                              // 1 SEQ = 7
      18: 84 00 02 00  0a 00 9c 41  00 00 00 00                 // 2 LOCAL AF_INET6 port 40001 flowinfo 0
      24: 20 01 0d b8 00 00 00 00  00 00 00 00 00 00 00 01      //   2001:db8::1
      34: 00 00 00 00  [100 x 00]                               //   scope 0
      9c: 84 00 03 00  0a 00 13 88  00 00 00 00                 // 3 REMOTE AF_INET6 port 5000
      a8: 20 01 0d b8 00 00 00 00  00 00 00 00 00 00 00 02      //   2001:db8::2
      b8: [104 x 00]                                            //   scope 0, unused
      120:`,
    encode: () => encodeKernelQuery({ seq: 12 }, { echoSeq: 7, local: raw('2001:db8::1', 40001), remote: raw('2001:db8::2', 5000) }),
    value: {
      op: 'query',
      client: 2,
      header: hdr(288, 0x0802, 1, 12),
      echoSeq: 7,
      local: wa('2001:db8::1', 40001),
      remote: wa('2001:db8::2', 5000),
      flags: 0,
      hasFlags: false,
    },
  },
  {
    name: 'REMOVE_MAPPING IPv4 wildcard',
    raw: hex`
      00: 9c 00 00 00  03 08  01 00  0d 00 00 00  00 00 00 00   // len 156, type 0x0803, seq 13
      10: 08 00 01 00  08 00 00 00                              // 1 MANAGE_MAPPING_SEQ = 8
      18: 84 00 02 00  02 00 13 88  00 00 00 00  [120 x 00]     // 2 MANAGE_ADDR 0.0.0.0:5000
      9c:`,
    encode: () => encodeKernelRemove({ seq: 13 }, { echoSeq: 8, local: raw('0.0.0.0', 5000) }),
    value: { op: 'remove', client: 2, header: hdr(156, 0x0803, 1, 13), echoSeq: 8, local: wa('0.0.0.0', 5000) },
  },
  {
    name: 'REMOVE_MAPPING IPv6 wildcard',
    raw: hex`
      00: 9c 00 00 00  03 08  01 00  0e 00 00 00  00 00 00 00   // len 156, REMOVE_MAPPING, seq 14
      10: 08 00 01 00  09 00 00 00                              // 1 SEQ = 9
      18: 84 00 02 00  0a 00 12 b7  [124 x 00]                  // 2 ADDR AF_INET6 [::]:4791
      9c:`,
    encode: () => encodeKernelRemove({ seq: 14 }, { echoSeq: 9, local: raw('::', 4791) }),
    value: { op: 'remove', client: 2, header: hdr(156, 0x0803, 1, 14), echoSeq: 9, local: wa('::', 4791) },
  },
  {
    name: 'MAPINFO record ABI 4, IPv4',
    raw: hex`
      00: 20 01 00 00  06 08  02 00  00 00 00 00  00 00 00 00   // len 288, type 0x0806, NLM_F_MULTI, seq 0, pid 0
      10: 84 00 01 00  02 00 13 88  00 00 00 00  [120 x 00]     // 1 MAPINFO_LOCAL_ADDR 0.0.0.0:5000
      94: 84 00 02 00  02 00 82 35  00 00 00 00  [120 x 00]     // 2 MAPINFO_MAPPED_ADDR 0.0.0.0:33333
      118: 08 00 03 00  00 00 00 00                             // 3 MAPINFO_FLAGS = 0
      120:`,
    encode: () => encodeKernelMapinfo({ local: raw('0.0.0.0', 5000), mapped: raw('0.0.0.0', 33333), flags: 0 }),
    value: {
      op: 'mapinfo',
      client: 2,
      header: hdr(288, 0x0806, 2, 0),
      local: wa('0.0.0.0', 5000),
      mapped: wa('0.0.0.0', 33333),
      flags: 0,
      hasFlags: true,
    },
    flagsType: 3,
  },
  {
    name: 'MAPINFO record ABI 3, IPv6, legacy client 3',
    raw: hex`
      00: 18 01 00 00  06 0c  02 00  00 00 00 00  00 00 00 00   // len 280, type 0x0C06 (client 3), MULTI
      10: 84 00 01 00  0a 00 9c 41  00 00 00 00                 // 1 LOCAL AF_INET6 port 40001
      1c: 20 01 0d b8 00 00 00 00  00 00 00 00 00 00 00 01  [104 x 00]   // 2001:db8::1
      94: 84 00 02 00  0a 00 c3 50  00 00 00 00                 // 2 MAPPED AF_INET6 port 50000
      a0: 20 01 0d b8 00 00 00 00  00 00 00 00 00 00 00 01  [104 x 00]   // 2001:db8::1
      118:`,
    encode: () => encodeKernelMapinfo({ local: raw('2001:db8::1', 40001), mapped: raw('2001:db8::1', 50000) }, RDMA_NL_C4IW),
    value: {
      op: 'mapinfo',
      client: 3,
      header: hdr(280, 0x0c06, 2, 0),
      local: wa('2001:db8::1', 40001),
      mapped: wa('2001:db8::1', 50000),
      flags: 0,
      hasFlags: false,
    },
  },
  {
    name: 'MAPINFO_NUM',
    raw: hex`
      00: 20 00 00 00  07 08  01 00  14 00 00 00  00 00 00 00   // len 32, type 0x0807, REQUEST, seq 20
      10: 08 00 01 00  00 00 00 00                              // 1 MAPINFO_SEQ = 0
      18: 08 00 02 00  03 00 00 00                              // 2 MAPINFO_SEND_NUM = 3
      20:`,
    encode: () => encodeKernelMapinfoNum({ seq: 20 }, 3),
    value: { op: 'mapinfo_num', client: 2, header: hdr(32, 0x0807, 1, 20), echoSeq: 0, sendNum: 3 },
  },
  {
    name: 'HELLO (kernel reply, ABI 4)',
    raw: hex`
      00: 18 00 00 00  08 08  01 00  01 00 00 00  00 00 00 00   // len 24, type 0x0808, REQUEST, seq 1, pid 0
      10: 06 00 01 00  04 00  00 00                             // 1 HELLO_ABI_VERSION u16 = 4, 2 pad
      18:`,
    encode: () => encodeKernelHello({ seq: 1 }, 4),
    value: { op: 'hello', client: 2, header: hdr(24, 0x0808, 1, 1), abi: 4 },
  },
  {
    name: 'NLMSG_DONE after a daemon message (20 bytes, spec §2.3)',
    raw: hex`14 00 00 00 03 00 02 00 05 00 00 00 34 12 00 00 00 00 00 00`,
    encode: () => encodeDone(5, 0x1234, 0),
    value: { op: 'done', client: 0, header: hdr(20, 3, 2, 5, 0x1234), status: 0 },
  },
  {
    name: 'NLMSG_DONE ending a MAPINFO datagram (bare 16 bytes)',
    raw: hex`
      00: 10 00 00 00  03 00  02 00  00 00 00 00  00 00 00 00   // len 16, NLMSG_DONE, MULTI, seq 0, pid 0, no payload
      10:`,
    encode: () => encodeDone(0, 0),
    value: { op: 'done', client: 0, header: hdr(16, 3, 2, 0), status: undefined },
  },
  {
    name: 'NLMSG_ERROR for HELLO on an ABI 3 kernel (44 bytes, echoed header and payload)',
    raw: hex`
      00: 2c 00 00 00  02 00  00 00  00 00 00 00  34 12 00 00   // len 44, NLMSG_ERROR, flags 0, seq 0, pid 0x1234
      10: ea ff ff ff                                           // error -22 (EINVAL)
      14: 18 00 00 00  08 08  01 00  00 00 00 00  34 12 00 00   // original header: HELLO, len 24, seq 0
      24: 06 00 01 00  04 00  00 00                             // original payload
      2c:`,
    encode: () => {
      const hello = encodeHello({ seq: 0, pid: 0x1234 }, 4);
      const b = Buffer.alloc(16 + 4 + hello.length);
      b.writeUInt32LE(b.length, 0);
      b.writeUInt16LE(2, 4);
      b.writeUInt32LE(0x1234, 12);
      b.writeInt32LE(-22, 16);
      hello.copy(b, 20);
      return b;
    },
    value: { op: 'error', client: 0, header: hdr(44, 2, 0, 0, 0x1234), error: -22, original: hdr(24, 0x0808, 1, 0, 0x1234) },
  },
];

describe('kernel → daemon golden messages', () => {
  for (const c of K) {
    it(c.name, () => {
      expect(c.raw.length).toBe(c.value.header.len);
      expect(c.encode()).toEqual(c.raw);
      expect(decodeKernelMessage(one(c.raw))).toEqual(c.value);
    });
  }

  it('decoded in place inside a larger buffer (decodeKernelMessageAt): the same value, nothing read outside', () => {
    for (const c of K) {
      const buf = Buffer.concat([Buffer.alloc(9, 0xa5), c.raw, Buffer.alloc(7, 0x5a)]);
      expect(messageLengthAt(buf, 9, 9 + c.raw.length)).toBe(c.raw.length);
      const v = decodeKernelMessageAt(buf, 9, c.raw.length);
      expect(v).toEqual(c.value);
      // what the daemon keeps is copied, not a view into the datagram
      buf.fill(0xff);
      expect(v).toEqual(c.value);
    }
  });

  it('messageLengthAt: the reasons of splitMessages, at any offset', () => {
    const m = K[0]!.raw;
    const buf = Buffer.concat([Buffer.alloc(3), m]);
    expect(messageLengthAt(buf, 3, buf.length)).toBe(m.length);
    expect(messageLengthAt(buf, 3, buf.length - 1)).toMatch(/exceeds the/);
    expect(messageLengthAt(buf, 3, 3 + 15)).toMatch(/trailing 15 bytes shorter than a netlink header/);
    const tiny = Buffer.from(m);
    tiny.writeUInt32LE(15, 0);
    expect(messageLengthAt(tiny, 0, tiny.length)).toMatch(/nlmsg_len 15 smaller/);
  });

  it('several MAPINFO records and the bare DONE packed in one datagram', () => {
    const recs = [5000, 5001, 5002].map((p) => encodeKernelMapinfo({ local: raw('10.0.0.1', p), mapped: raw('10.0.0.1', p + 30000), flags: 0 }));
    const dg = Buffer.concat([...recs, encodeDone(0, 0)]);
    const s = splitMessages(dg);
    expect(s.error).toBeUndefined();
    const d = s.messages.map(decodeKernelMessage);
    expect(d.map((x) => x.op)).toEqual(['mapinfo', 'mapinfo', 'mapinfo', 'done']);
    expect(d.map((x) => (x.op === 'mapinfo' ? x.mapped.addr.port : -1))).toEqual([35000, 35001, 35002, -1]);
  });
});

// ---------------------------------------------------------------------------
// Daemon → kernel

interface DCase {
  name: string;
  raw: Buffer;
  encode: () => Buffer;
  value: DaemonMessage;
}

const PID = 0x1234;
const D: DCase[] = [
  {
    name: 'RREG_PID, device irdma0, ABI 4 (76 bytes)',
    raw: hex`
      00: 4c 00 00 00  00 08  01 00  02 00 00 00  34 12 00 00   // len 76, type 0x0800, REQUEST, seq 2, pid 0x1234
      10: 08 00 01 00  01 00 00 00                              // 1 RREG_PID_SEQ = kernel seq 1
      18: 0b 00 02 00  69 72 64 6d 61 30 00  00                 // 2 RREG_IBDEV_NAME "irdma0\0" (nla_len 11), 1 pad
      24: 18 00 03 00                                           // 3 RREG_ULIB_NAME (nla_len 24)
      28: 69 57 61 72 70 50 6f 72 74 4d 61 70 70 65 72 55 73 65 72 00   // "iWarpPortMapperUser\0"
      3c: 06 00 04 00  04 00  00 00                             // 4 RREG_ULIB_VER u16 = 4
      44: 06 00 05 00  00 00  00 00                             // 5 RREG_PID_ERR u16 = 0
      4c:`,
    encode: () => encodeRegPidReply({ seq: 2, pid: PID }, 2, { kernelSeq: 1, ibdev: 'irdma0', version: 4 }),
    value: { op: 'rreg_pid', client: 2, seq: 2, pid: PID, kernelSeq: 1, ibdev: 'irdma0', ulib: IWPM_ULIB_NAME, version: 4, err: 0 },
  },
  {
    name: 'RREG_PID, legacy client 3, ABI 3, device cxgb4_0',
    raw: hex`
      00: 4c 00 00 00  00 0c  01 00  00 00 00 00  34 12 00 00   // len 76, type 0x0C00 (client 3), seq 0
      10: 08 00 01 00  2a 00 00 00                              // 1 SEQ = 42
      18: 0c 00 02 00  63 78 67 62 34 5f 30 00                  // 2 "cxgb4_0\0" (nla_len 12, no pad)
      24: 18 00 03 00  69 57 61 72 70 50 6f 72 74 4d 61 70 70 65 72 55 73 65 72 00
      3c: 06 00 04 00  03 00  00 00                             // 4 ULIB_VER = 3
      44: 06 00 05 00  00 00  00 00                             // 5 ERR = 0
      4c:`,
    encode: () => encodeRegPidReply({ seq: 0, pid: PID }, 3, { kernelSeq: 42, ibdev: 'cxgb4_0', version: 3 }),
    value: { op: 'rreg_pid', client: 3, seq: 0, pid: PID, kernelSeq: 42, ibdev: 'cxgb4_0', ulib: IWPM_ULIB_NAME, version: 3, err: 0 },
  },
  {
    name: 'RMANAGE (spec §2.3 worked example)',
    raw: hex`
      00: 28 01 00 00  01 08  01 00  05 00 00 00  34 12 00 00   // len 296, type 0x0801, REQUEST, seq 5, pid 0x1234
      10: 08 00 01 00  07 00 00 00                              // attr 1 (SEQ) = kernel header seq 7
      18: 84 00 02 00  02 00 13 88  00 00 00 00  [120 x 00]     // attr 2 (local addr, echoed)
      9c: 84 00 03 00  02 00 82 35  00 00 00 00  [120 x 00]     // attr 3 (mapped addr)
      120: 06 00 04 00  00 00  00 00                            // attr 4 (ERR) = 0, 2 pad bytes
      128:`,
    encode: () => encodeManageReply({ seq: 5, pid: PID }, 2, { kernelSeq: 7, local: raw('0.0.0.0', 5000), mapped: raw('0.0.0.0', 33333) }),
    value: { op: 'rmanage', client: 2, seq: 5, pid: PID, kernelSeq: 7, local: raw('0.0.0.0', 5000), mapped: raw('0.0.0.0', 33333), err: 0 },
  },
  {
    name: 'RQUERY accepted, IPv4 (560 bytes)',
    raw: hex`
      00: 30 02 00 00  02 08  01 00  06 00 00 00  34 12 00 00   // len 560, type 0x0802, seq 6
      10: 08 00 01 00  0b 00 00 00                              // 1 RQUERY_MAPPING_SEQ = kernel seq 11
      18: 84 00 02 00  02 00 9c 40  0a 00 00 01  [120 x 00]     // 2 LOCAL 10.0.0.1:40000
      9c: 84 00 03 00  02 00 13 88  0a 00 00 02  [120 x 00]     // 3 REMOTE 10.0.0.2:5000
      120: 84 00 04 00  02 00 80 e8  0a 00 00 01  [120 x 00]    // 4 MAPPED_LOC 10.0.0.1:33000
      1a4: 84 00 05 00  02 00 84 d0  0a 00 00 02  [120 x 00]    // 5 MAPPED_REM 10.0.0.2:34000
      228: 06 00 06 00  00 00  00 00                            // 6 MAPPING_ERR = 0
      230:`,
    encode: () =>
      encodeQueryReply({ seq: 6, pid: PID }, 2, {
        seqAttr: 11,
        local: raw('10.0.0.1', 40000),
        remote: raw('10.0.0.2', 5000),
        mappedLocal: raw('10.0.0.1', 33000),
        mappedRemote: raw('10.0.0.2', 34000),
        err: 0,
      }),
    value: {
      op: 'rquery',
      client: 2,
      seq: 6,
      pid: PID,
      seqAttr: 11,
      local: raw('10.0.0.1', 40000),
      remote: raw('10.0.0.2', 5000),
      mappedLocal: raw('10.0.0.1', 33000),
      mappedRemote: raw('10.0.0.2', 34000),
      err: 0,
    },
  },
  {
    name: 'RQUERY rejected, IPv6 (ERR 16, MAPPED_REM = remote)',
    raw: hex`
      00: 30 02 00 00  02 08  01 00  07 00 00 00  34 12 00 00   // len 560, QUERY, seq 7
      10: 08 00 01 00  0c 00 00 00                              // 1 SEQ = 12
      18: 84 00 02 00  0a 00 9c 41  00 00 00 00                 // 2 LOCAL [2001:db8::1]:40001
      24: 20 01 0d b8  [11 x 00] 01  [104 x 00]
      9c: 84 00 03 00  0a 00 13 88  00 00 00 00                 // 3 REMOTE [2001:db8::2]:5000
      a8: 20 01 0d b8  [11 x 00] 02  [104 x 00]
      120: 84 00 04 00  0a 00 c3 50  00 00 00 00                // 4 MAPPED_LOC [2001:db8::1]:50000
      12c: 20 01 0d b8  [11 x 00] 01  [104 x 00]
      1a4: 84 00 05 00  0a 00 13 88  00 00 00 00                // 5 MAPPED_REM = REMOTE
      1b0: 20 01 0d b8  [11 x 00] 02  [104 x 00]
      228: 06 00 06 00  10 00  00 00                            // 6 ERR = 16 IWPM_REMOTE_QUERY_REJECT
      230:`,
    encode: () =>
      encodeQueryReply({ seq: 7, pid: PID }, 2, {
        seqAttr: 12,
        local: raw('2001:db8::1', 40001),
        remote: raw('2001:db8::2', 5000),
        mappedLocal: raw('2001:db8::1', 50000),
        mappedRemote: raw('2001:db8::2', 5000),
        err: 16,
      }),
    value: {
      op: 'rquery',
      client: 2,
      seq: 7,
      pid: PID,
      seqAttr: 12,
      local: raw('2001:db8::1', 40001),
      remote: raw('2001:db8::2', 5000),
      mappedLocal: raw('2001:db8::1', 50000),
      mappedRemote: raw('2001:db8::2', 5000),
      err: 16,
    },
  },
  {
    name: 'REMOTE_INFO, IPv4 wildcard listener (seq attr 0, err 0)',
    raw: hex`
      00: 30 02 00 00  04 08  01 00  03 00 00 00  34 12 00 00   // len 560, type 0x0804, seq 3
      10: 08 00 01 00  00 00 00 00                              // 1 = 0
      18: 84 00 02 00  02 00 13 88  00 00 00 00  [120 x 00]     // 2 listener local 0.0.0.0:5000
      9c: 84 00 03 00  02 00 9c 40  0a 00 00 01  [120 x 00]     // 3 peer real 10.0.0.1:40000
      120: 84 00 04 00  02 00 82 35  00 00 00 00  [120 x 00]    // 4 listener mapped 0.0.0.0:33333
      1a4: 84 00 05 00  02 00 80 e8  0a 00 00 01  [120 x 00]    // 5 peer mapped 10.0.0.1:33000
      228: 06 00 06 00  00 00  00 00                            // 6 = 0
      230:`,
    encode: () =>
      encodeRemoteInfo({ seq: 3, pid: PID }, 2, {
        local: raw('0.0.0.0', 5000),
        remote: raw('10.0.0.1', 40000),
        mappedLocal: raw('0.0.0.0', 33333),
        mappedRemote: raw('10.0.0.1', 33000),
      }),
    value: {
      op: 'remote_info',
      client: 2,
      seq: 3,
      pid: PID,
      seqAttr: 0,
      local: raw('0.0.0.0', 5000),
      remote: raw('10.0.0.1', 40000),
      mappedLocal: raw('0.0.0.0', 33333),
      mappedRemote: raw('10.0.0.1', 33000),
      err: 0,
    },
  },
  {
    name: 'HANDLE_ERR (32 bytes)',
    raw: hex`
      00: 20 00 00 00  05 08  01 00  07 00 00 00  34 12 00 00   // len 32, type 0x0805, seq 7
      10: 08 00 01 00  09 00 00 00                              // 1 ERR_SEQ = kernel seq 9
      18: 06 00 02 00  0c 00  00 00                             // 2 ERR_CODE = 12 DUPLICATE_MAPPING
      20:`,
    encode: () => encodeHandleErr({ seq: 7, pid: PID }, 2, 9, 12),
    value: { op: 'handle_err', client: 2, seq: 7, pid: PID, errSeq: 9, code: 12 },
  },
  {
    name: 'MAPINFO request, client 2, ABI 4 (48 bytes)',
    raw: hex`
      00: 30 00 00 00  06 08  01 00  01 00 00 00  34 12 00 00   // len 48, type 0x0806, REQUEST, seq 1
      10: 18 00 01 00                                           // 1 MAPINFO_ULIB_NAME, nla_len 24
      14: 69 57 61 72 70 50 6f 72 74 4d 61 70 70 65 72 55 73 65 72 00   // "iWarpPortMapperUser\0"
      28: 06 00 02 00  04 00  00 00                             // 2 MAPINFO_ULIB_VER = 4
      30:`,
    encode: () => encodeMapinfoRequest({ seq: 1, pid: PID }, 2, 4),
    value: { op: 'mapinfo_req', client: 2, seq: 1, pid: PID, ulib: IWPM_ULIB_NAME, version: 4 },
  },
  {
    name: 'MAPINFO request, legacy client 3, ABI 3',
    raw: hex`
      00: 30 00 00 00  06 0c  01 00  00 00 00 00  34 12 00 00   // len 48, type 0x0C06, seq 0
      10: 18 00 01 00  69 57 61 72 70 50 6f 72 74 4d 61 70 70 65 72 55 73 65 72 00
      28: 06 00 02 00  03 00  00 00                             // 2 ULIB_VER = 3
      30:`,
    encode: () => encodeMapinfoRequest({ seq: 0, pid: PID }, 3, 3),
    value: { op: 'mapinfo_req', client: 3, seq: 0, pid: PID, ulib: IWPM_ULIB_NAME, version: 3 },
  },
  {
    name: 'MAPINFO_NUM reply (40 bytes)',
    raw: hex`
      00: 28 00 00 00  07 08  01 00  08 00 00 00  34 12 00 00   // len 40, type 0x0807, seq 8
      10: 08 00 01 00  14 00 00 00                              // 1 MAPINFO_SEQ = kernel seq 20
      18: 08 00 02 00  03 00 00 00                              // 2 SEND_NUM = 3
      20: 08 00 03 00  02 00 00 00                              // 3 ACK_NUM = 2
      28:`,
    encode: () => encodeMapinfoNumReply({ seq: 8, pid: PID }, 2, { kernelSeq: 20, sendNum: 3, ackNum: 2 }),
    value: { op: 'mapinfo_num', client: 2, seq: 8, pid: PID, kernelSeq: 20, sendNum: 3, ackNum: 2 },
  },
  {
    name: 'HELLO from the daemon (24 bytes, seq 0)',
    raw: hex`
      00: 18 00 00 00  08 08  01 00  00 00 00 00  34 12 00 00   // len 24, type 0x0808, REQUEST, seq 0, pid 0x1234
      10: 06 00 01 00  04 00  00 00                             // 1 ABI_VERSION = 4
      18:`,
    encode: () => encodeHello({ seq: 0, pid: PID }, 4),
    value: { op: 'hello', client: 2, seq: 0, pid: PID, abi: 4 },
  },
];

describe('daemon → kernel golden messages', () => {
  for (const c of D) {
    it(c.name, () => {
      expect(c.encode()).toEqual(c.raw);
      expect(readHeader(c.raw).len).toBe(c.raw.length);
      expect(decodeDaemon(c.raw)).toEqual(c.value);
      // The generic attribute-table decoder sees the same attributes.
      const t = decodeDaemonAttrs(one(c.raw));
      expect(t).toBeDefined();
    });
  }
});

describe('exact sizes (spec §2.3)', () => {
  const a4 = raw('1.2.3.4', 1);
  const sizes: [string, Buffer, number][] = [
    ['K→D REG_PID', encodeKernelRegPid({ seq: 1 }, { echoSeq: 0, ifname: '', ibdev: '' }), 116],
    ['D→K RREG_PID irdma0', encodeRegPidReply({ seq: 0, pid: 1 }, 2, { kernelSeq: 1, ibdev: 'irdma0', version: 4 }), 76],
    ['K→D ADD ABI 4', encodeKernelAdd({ seq: 1 }, { echoSeq: 0, local: a4, flags: 0 }), 164],
    ['K→D ADD ABI 3', encodeKernelAdd({ seq: 1 }, { echoSeq: 0, local: a4 }), 156],
    ['D→K RMANAGE', encodeManageReply({ seq: 0, pid: 1 }, 2, { kernelSeq: 1, local: a4, mapped: a4 }), 296],
    ['K→D QUERY ABI 4', encodeKernelQuery({ seq: 1 }, { echoSeq: 0, local: a4, remote: a4, flags: 0 }), 296],
    ['K→D QUERY ABI 3', encodeKernelQuery({ seq: 1 }, { echoSeq: 0, local: a4, remote: a4 }), 288],
    [
      'D→K RQUERY',
      encodeQueryReply({ seq: 0, pid: 1 }, 2, { seqAttr: 1, local: a4, remote: a4, mappedLocal: a4, mappedRemote: a4, err: 0 }),
      560,
    ],
    ['D→K REMOTE_INFO', encodeRemoteInfo({ seq: 0, pid: 1 }, 2, { local: a4, remote: a4, mappedLocal: a4, mappedRemote: a4 }), 560],
    ['K→D REMOVE', encodeKernelRemove({ seq: 1 }, { echoSeq: 0, local: a4 }), 156],
    ['D→K HANDLE_ERR', encodeHandleErr({ seq: 0, pid: 1 }, 2, 1, 10), 32],
    ['D→K MAPINFO request', encodeMapinfoRequest({ seq: 0, pid: 1 }, 2, 4), 48],
    ['K→D MAPINFO record ABI 4', encodeKernelMapinfo({ local: a4, mapped: a4, flags: 0 }), 288],
    ['K→D MAPINFO record ABI 3', encodeKernelMapinfo({ local: a4, mapped: a4 }), 280],
    ['K→D MAPINFO terminator', encodeDone(0, 0), 16],
    ['K→D MAPINFO_NUM', encodeKernelMapinfoNum({ seq: 1 }, 0), 32],
    ['D→K MAPINFO_NUM reply', encodeMapinfoNumReply({ seq: 0, pid: 1 }, 2, { kernelSeq: 1, sendNum: 0, ackNum: 0 }), 40],
    ['D→K HELLO', encodeHello({ seq: 0, pid: 1 }, 4), 24],
    ['K→D HELLO', encodeKernelHello({ seq: 1 }, 4), 24],
    ['K→D NLMSG_ERROR for HELLO', K.find((c) => c.value.op === 'error')!.raw, 44],
    ['K→D dump NLMSG_DONE', encodeDone(1, 1, 0), 20],
  ];
  for (const [name, b, n] of sizes) {
    it(`${name}: ${n} bytes`, () => {
      expect(b.length).toBe(n);
      expect(b.readUInt32LE(0)).toBe(n);
    });
  }
});

describe('message type arithmetic', () => {
  it('type = (client << 10) | op', () => {
    expect(nlType(2, 0)).toBe(0x0800);
    expect(nlType(2, 8)).toBe(0x0808);
    expect(nlType(3, 6)).toBe(0x0c06);
    expect(nlType(63, 0x3ff)).toBe(0xffff);
    expect(nlType(64, 0x400)).toBe(0); // masked to 6 and 10 bits
    expect(clientOf(0x0c06)).toBe(3);
    expect(opOf(0x0c06)).toBe(6);
  });
});

describe('string rules', () => {
  const regPid = (ifname: Buffer, ibdev: Buffer, ulib: Buffer): NlMessage =>
    one(
      encodeMessage({ type: 0x0800, flags: 1, seq: 3, pid: 0 }, [
        { type: 1, v: { kind: 'u32', value: 0 } },
        { type: 2, v: { kind: 'bytes', value: ifname } },
        { type: 3, v: { kind: 'bytes', value: ibdev } },
        { type: 4, v: { kind: 'bytes', value: ulib } },
      ]),
    );
  const fixed = (s: string, n: number): Buffer => {
    const b = Buffer.alloc(n);
    b.write(s, 'latin1');
    return b;
  };
  const ULIB = fixed(IWPM_ULIB_NAME, 32);

  it('kernel strings are fixed NUL-padded arrays; read up to the first NUL', () => {
    const d = decodeKernelMessage(regPid(Buffer.from('eth0\0garbage\0\0\0\0'), fixed('siw_eth0', 32), ULIB));
    expect(d).toMatchObject({ op: 'reg_pid', ifname: 'eth0', ibdev: 'siw_eth0', ulib: IWPM_ULIB_NAME });
  });

  it('a full IFNAMSIZ name without NUL is read whole; a longer attribute is invalid', () => {
    expect(decodeKernelMessage(regPid(Buffer.from('abcdefghijklmnop'), fixed('x', 32), ULIB))).toMatchObject({
      op: 'reg_pid',
      ifname: 'abcdefghijklmnop',
    });
    expect(decodeKernelMessage(regPid(Buffer.alloc(17), fixed('x', 32), ULIB)).op).toBe('invalid');
    expect(decodeKernelMessage(regPid(Buffer.alloc(16), Buffer.alloc(33), ULIB)).op).toBe('invalid');
    expect(decodeKernelMessage(regPid(Buffer.alloc(16), fixed('x', 32), Buffer.alloc(33))).op).toBe('invalid');
  });

  it('a device name the kernel could not accept back (32 chars) is refused; 31 chars round-trip', () => {
    expect(decodeKernelMessage(regPid(Buffer.alloc(16), Buffer.from('d'.repeat(32)), ULIB))).toMatchObject({
      op: 'invalid',
      reason: expect.stringMatching(/REG_IBDEV_NAME longer than 31/),
    });
    const name31 = 'd'.repeat(31);
    const d = decodeKernelMessage(regPid(Buffer.alloc(16), fixed(name31, 32), ULIB));
    expect(d).toMatchObject({ op: 'reg_pid', ibdev: name31 });
    const reply = encodeRegPidReply({ seq: 0, pid: 1 }, 2, { kernelSeq: 3, ibdev: name31, version: 4 });
    const attrs = decodeDaemonAttrs(one(reply))!;
    expect(attrs[2]!.length).toBe(32); // strlen + 1
    expect(kernelNulStringOk(attrs[2]!)).toBe(true);
    expect(decodeDaemon(reply)).toMatchObject({ op: 'rreg_pid', ibdev: name31 });
  });

  it('daemon strings are NUL-terminated, strlen+1 bytes, and pass NLA_NUL_STRING(31)', () => {
    for (const ibdev of ['', 'i', 'irdma0', 'rxe_or_siw_with_a_long_name_31']) {
      const reply = encodeRegPidReply({ seq: 0, pid: 1 }, 2, { kernelSeq: 1, ibdev, version: 4 });
      const a = decodeDaemonAttrs(one(reply))!;
      expect(a[2]).toEqual(Buffer.from(`${ibdev}\0`, 'latin1'));
      expect(a[3]).toEqual(Buffer.from(`${IWPM_ULIB_NAME}\0`, 'latin1'));
      expect(kernelNulStringOk(a[2]!)).toBe(true);
      expect(kernelNulStringOk(a[3]!)).toBe(true);
    }
    const mi = decodeDaemonAttrs(one(encodeMapinfoRequest({ seq: 0, pid: 1 }, 2, 4)))!;
    expect(mi[1]).toEqual(Buffer.from(`${IWPM_ULIB_NAME}\0`, 'latin1'));
  });

  it('the kernel NUL-string check itself (sanity of the test helper)', () => {
    expect(kernelNulStringOk(Buffer.from('abc\0'))).toBe(true);
    expect(kernelNulStringOk(Buffer.from('abc'))).toBe(false); // no NUL
    expect(kernelNulStringOk(Buffer.alloc(0))).toBe(false);
    expect(kernelNulStringOk(Buffer.from(`${'a'.repeat(32)}\0`))).toBe(false); // NUL beyond byte 32
    expect(kernelNulStringOk(Buffer.from(`${'a'.repeat(31)}\0`))).toBe(true);
    expect(kernelNulStringOk(Buffer.from('ab\0\0'))).toBe(true);
  });
});

describe('semantic checks of kernel messages', () => {
  it('QUERY with local and remote of different families is invalid', () => {
    const b = encodeKernelQuery({ seq: 1 }, { echoSeq: 0, local: raw('10.0.0.1', 1), remote: raw('::1', 2), flags: 0 });
    expect(decodeKernelMessage(one(b))).toMatchObject({ op: 'invalid', opcode: 2, reason: expect.stringMatching(/families differ/) });
  });

  it('MAPINFO record with local and mapped of different families is invalid', () => {
    const b = encodeKernelMapinfo({ local: raw('10.0.0.1', 1), mapped: raw('::1', 2), flags: 0 });
    expect(decodeKernelMessage(one(b))).toMatchObject({ op: 'invalid', opcode: 6 });
  });

  it('extra attributes above the op maximum are ignored (liberal parsing)', () => {
    const b = Buffer.concat([encodeKernelHello({ seq: 1 }, 4), hex`08 00 07 00 00 00 00 00`]);
    b.writeUInt32LE(b.length, 0);
    expect(decodeKernelMessage(one(b))).toMatchObject({ op: 'hello', abi: 4 });
  });

  it('control types decode as noop; REMOTE_INFO/HANDLE_ERR and ops > 8 from the kernel as unknown_op', () => {
    expect(decodeKernelMessage(one(hex`10 00 00 00 01 00 00 00 00 00 00 00 00 00 00 00`)).op).toBe('noop');
    expect(decodeKernelMessage(one(hex`10 00 00 00 04 00 00 00 00 00 00 00 00 00 00 00`)).op).toBe('noop');
    for (const op of [4, 5, 9, 0x3ff]) {
      const b = encodeMessage({ type: nlType(2, op), flags: 1, seq: 77, pid: 0 }, []);
      expect(decodeKernelMessage(one(b))).toEqual({ op: 'unknown_op', client: 2, header: hdr(16, nlType(2, op), 1, 77), opcode: op });
    }
  });

  it('NLMSG_ERROR shorter than its errno is invalid, not an exception', () => {
    expect(decodeKernelMessage(one(hex`12 00 00 00 02 00 00 00 00 00 00 00 00 00 00 00 ea ff`))).toMatchObject({ op: 'invalid' });
  });
});

// ---------------------------------------------------------------------------
// Decoders never throw.

const OPS = new Set(['reg_pid', 'add', 'query', 'remove', 'mapinfo', 'mapinfo_num', 'hello', 'done', 'error', 'noop', 'invalid', 'unknown_op']);

function safeDecode(m: NlMessage): KernelMessage {
  let d: KernelMessage | undefined;
  expect(() => {
    d = decodeKernelMessage(m);
  }).not.toThrow();
  expect(OPS.has(d!.op)).toBe(true);
  return d!;
}

/** A message view with a replaced payload (header len kept consistent). */
function withPayload(base: Buffer, payload: Buffer): NlMessage {
  const b = Buffer.concat([base.subarray(0, 16), payload]);
  b.writeUInt32LE(b.length, 0);
  return { header: readHeader(b), payload: b.subarray(16), raw: b };
}

/** Attribute boundaries of a golden message: [offset in payload, nla_len, type]. */
function attrsOf(b: Buffer): [number, number, number][] {
  const out: [number, number, number][] = [];
  const p = b.subarray(16);
  for (let off = 0; off + 4 <= p.length; ) {
    const len = p.readUInt16LE(off);
    out.push([off, len, p.readUInt16LE(off + 2)]);
    off += (len + 3) & ~3;
  }
  return out;
}

const ADDR_ATTRS: Record<string, number[]> = { add: [2], query: [2, 3], remove: [2], mapinfo: [1, 2] };
const IWPM_K = K.filter((c) => c.value.client !== 0);

describe('decoders never throw (seeded property tests)', () => {
  it('random bytes, random IWPM types', () => {
    const r = prng(0xc0ffee);
    const types = [0x0800, 0x0801, 0x0802, 0x0803, 0x0806, 0x0807, 0x0808, 0x0c06, 2, 3, 0x0804, 0x1234];
    let n = 0;
    for (let i = 0; i < 4000; i++) {
      const len = 16 + r.int(600);
      const b = r.bytes(len);
      b.writeUInt32LE(len, 0);
      b.writeUInt16LE(r.pick(types), 4);
      // Half the time, make the payload a chain of plausible attribute headers.
      if (r.next() < 0.5) {
        for (let off = 16; off + 4 <= len; ) {
          const al = r.pick([4, 6, 8, 20, 36, 132, r.int(300)]);
          b.writeUInt16LE(al, off);
          b.writeUInt16LE(r.int(6), off + 2);
          if (al >= 6 && off + 6 <= len && r.next() < 0.5) b.writeUInt16LE(r.pick([2, 10, 0]), off + 4);
          off += Math.max(4, (al + 3) & ~3);
        }
      }
      for (const m of splitMessages(b).messages) {
        safeDecode(m);
        n++;
      }
    }
    expect(n).toBeGreaterThan(3000);
  });

  it('truncations at every length: invalid unless only the optional FLAGS attribute or padding was cut', () => {
    let count = 0;
    for (const c of IWPM_K) {
      const attrs = attrsOf(c.raw);
      const mandatoryEnd = Math.max(...attrs.filter(([, , t]) => t !== c.flagsType).map(([off, len]) => 16 + off + len));
      const flags = attrs.find(([, , t]) => t === c.flagsType);
      for (let L = 16; L < c.raw.length; L++) {
        const m = withPayload(c.raw, c.raw.subarray(16, L));
        const d = safeDecode(m);
        count++;
        if (L < mandatoryEnd) {
          expect(d.op, `${c.name} cut at ${L}`).toBe('invalid');
        } else if (flags && L >= 16 + flags[0]) {
          const inFlags = L - (16 + flags[0]);
          if (inFlags < 4) expect(d).toMatchObject({ op: c.value.op, hasFlags: false, flags: 0 });
          else expect(d.op, `${c.name} cut at ${L}`).toBe('invalid');
        } else {
          expect(d.op, `${c.name} cut at ${L}`).toBe(c.value.op);
        }
      }
      // Cut datagrams (nlmsg_len left as is) are refused by the splitter, not the decoder.
      for (let L = 0; L < c.raw.length; L++) expect(splitMessages(c.raw.subarray(0, L)).messages).toHaveLength(0);
    }
    expect(count).toBeGreaterThan(1500);
  });

  it('wrong nla_len values', () => {
    const r = prng(99);
    for (const c of IWPM_K) {
      for (const [off, len] of attrsOf(c.raw)) {
        for (const bad of [0, 1, 2, 3, len - 1, len + 1, len + 4, 0xffff, r.int(0x10000), r.int(300)]) {
          const b = Buffer.from(c.raw);
          b.writeUInt16LE(bad & 0xffff, 16 + off);
          const d = safeDecode({ header: readHeader(b), payload: b.subarray(16), raw: b });
          if (bad < 4 || 16 + off + bad > b.length) expect(d.op).toBe('invalid');
          else expect(['invalid', c.value.op]).toContain(d.op);
        }
      }
    }
  });

  it('each missing attribute: invalid, except FLAGS whose absence means the ABI 3 layout', () => {
    for (const c of IWPM_K) {
      const attrs = attrsOf(c.raw);
      if (attrs.length === 0) continue;
      for (const [skip, , type] of attrs) {
        const parts = attrs.filter(([o]) => o !== skip).map(([o, l]) => c.raw.subarray(16 + o, 16 + o + ((l + 3) & ~3)));
        const d = safeDecode(withPayload(c.raw, Buffer.concat(parts)));
        if (type === c.flagsType) {
          expect(d).toMatchObject({ op: c.value.op, hasFlags: false, flags: 0 });
        } else {
          expect(d).toMatchObject({ op: 'invalid', reason: expect.stringMatching(/missing/) });
        }
      }
      // And no attributes at all.
      expect(safeDecode(withPayload(c.raw, Buffer.alloc(0))).op).toBe('invalid');
    }
  });

  it('short address attributes (0..127 bytes) are invalid', () => {
    for (const c of IWPM_K) {
      const addrTypes = ADDR_ATTRS[c.value.op] ?? [];
      for (const t of addrTypes) {
        for (let n = 0; n < 128; n += 1) {
          const parts = attrsOf(c.raw).map(([o, l, type]) => {
            const a = c.raw.subarray(16 + o, 16 + o + l);
            if (type !== t) return Buffer.concat([a, Buffer.alloc(((l + 3) & ~3) - l)]);
            const s = Buffer.concat([a.subarray(0, 4 + n), Buffer.alloc((((4 + n + 3) & ~3) - 4 - n))]);
            s.writeUInt16LE(4 + n, 0);
            return s;
          });
          expect(safeDecode(withPayload(c.raw, Buffer.concat(parts)))).toMatchObject({
            op: 'invalid',
            reason: expect.stringMatching(`is ${n} bytes, expected 128`),
          });
        }
      }
    }
  });

  it('unknown families in address attributes are invalid', () => {
    for (const c of IWPM_K) {
      const addrTypes = ADDR_ATTRS[c.value.op] ?? [];
      for (const [off, , type] of attrsOf(c.raw)) {
        if (!addrTypes.includes(type)) continue;
        for (const fam of [0, 1, 3, 17, 26, 0x0a00, 0xffff]) {
          const b = Buffer.from(c.raw);
          b.writeUInt16LE(fam, 16 + off + 4);
          expect(safeDecode({ header: readHeader(b), payload: b.subarray(16), raw: b })).toMatchObject({
            op: 'invalid',
            reason: expect.stringMatching(`unsupported address family ${fam}`),
          });
        }
      }
    }
  });

  it('unknown ops keep client and opcode', () => {
    for (const c of IWPM_K) {
      for (const op of [4, 5, 9, 10, 100, 1023]) {
        const b = Buffer.from(c.raw);
        b.writeUInt16LE(nlType(c.value.client, op), 4);
        expect(safeDecode({ header: readHeader(b), payload: b.subarray(16), raw: b })).toMatchObject({
          op: 'unknown_op',
          client: c.value.client,
          opcode: op,
        });
      }
    }
  });

  it('random byte mutations of every valid message', () => {
    const r = prng(0xbadc0de);
    const all = [...K.map((c) => c.raw), ...D.map((c) => c.raw)];
    for (let i = 0; i < 4000; i++) {
      const b = Buffer.from(r.pick(all));
      const flips = 1 + r.int(4);
      for (let k = 0; k < flips; k++) b[r.int(b.length)] = r.int(256);
      const s = splitMessages(b); // may refuse a broken nlmsg_len
      for (const m of s.messages) safeDecode(m);
      safeDecode({ header: readHeader(b), payload: b.subarray(16), raw: b });
    }
  });
});
