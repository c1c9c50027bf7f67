/**
 * src/io/config.ts: /etc/iwpmd.conf (spec §6.1).
 */
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { loadConfig, parseConfig } from '../../src/io/config.js';

const F = '/etc/iwpmd.conf';
const parse = (text: string) => parseConfig(text, F);

describe('parseConfig', () => {
  it('empty file: defaults, no warnings', () => {
    expect(parse('')).toEqual({ config: { nlSockRbufSize: 0 }, warnings: [] });
  });

  it('the shipped file', () => {
    const shipped = [
      '# Configuration file for iwpmd',
      '#',
      '',
      'nl_sock_rbuf_size=419430400',
      '',
    ].join('\n');
    expect(parse(shipped)).toEqual({ config: { nlSockRbufSize: 419430400 }, warnings: [] });
  });

  it('comments, blank and whitespace-only lines are skipped', () => {
    expect(parse('# a\n\n   \n\t\n#nl_sock_rbuf_size=5\n')).toEqual({ config: { nlSockRbufSize: 0 }, warnings: [] });
  });

  it('name = value with spaces, tabs, leading whitespace, several "="', () => {
    for (const line of [
      'nl_sock_rbuf_size = 1000',
      'nl_sock_rbuf_size\t=\t1000',
      '  nl_sock_rbuf_size=1000',
      'nl_sock_rbuf_size==1000',
      'nl_sock_rbuf_size ===   1000   ',
      'nl_sock_rbuf_size=1000 # bytes',
    ]) {
      expect(parse(line), line).toEqual({ config: { nlSockRbufSize: 1000 }, warnings: [] });
    }
  });

  it('the last valid assignment wins', () => {
    expect(parse('nl_sock_rbuf_size=1\nnl_sock_rbuf_size=2\nnl_sock_rbuf_size=0\n').config.nlSockRbufSize).toBe(2);
  });

  it('unknown keys warn with file:line and do not disturb known ones', () => {
    const r = parse('# x\nnl_sock_rbuf_size=4096\n\nnl_sock_wbuf_size=5\n');
    expect(r.config.nlSockRbufSize).toBe(4096);
    expect(r.warnings).toEqual([expect.stringMatching(/^\/etc\/iwpmd\.conf:4: unknown parameter "nl_sock_wbuf_size"/)]);
  });

  it('non-integer, zero, negative and too large values warn and are ignored', () => {
    const bad = ['abc', '12abc', '1.5', '+5', '0x10', '400M', '-5', '0', '2147483648', '99999999999999999999', ''];
    for (const v of bad) {
      const r = parse(`nl_sock_rbuf_size=8\nnl_sock_rbuf_size = ${v}`);
      expect(r.config.nlSockRbufSize, v).toBe(8);
      expect(r.warnings, v).toHaveLength(1);
      expect(r.warnings[0], v).toMatch(/^\/etc\/iwpmd\.conf:2: nl_sock_rbuf_size/);
    }
    expect(parse('nl_sock_rbuf_size=2147483647').config.nlSockRbufSize).toBe(2147483647);
  });

  it('lines that are not name=value warn with their line number', () => {
    const r = parse('nl_sock_rbuf_size 100\n=100\n  # indented comment\n' + `${'x'.repeat(64)}=1\n` + 'a = 1 2\n');
    expect(r.warnings.map((w) => w.split(':')[1])).toEqual(['1', '2', '3', '4', '5']);
    for (const w of r.warnings) expect(w).toMatch(/cannot parse/);
    // 63 characters is the longest name (then it is merely unknown).
    expect(parse(`${'x'.repeat(63)}=1`).warnings[0]).toMatch(/unknown parameter/);
  });

  it('CRLF line endings', () => {
    const r = parse('# windows\r\n\r\nnl_sock_rbuf_size = 65536\r\nbogus=1\r\n');
    expect(r.config.nlSockRbufSize).toBe(65536);
    expect(r.warnings).toEqual([expect.stringMatching(/:4: unknown parameter "bogus"/)]);
  });
});

describe('loadConfig', () => {
  const dir = mkdtempSync(join(tmpdir(), 'iwpmd-conf-'));
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  it('a missing file is not an error: defaults, found=false', () => {
    expect(loadConfig(join(dir, 'nope.conf'))).toEqual({ config: { nlSockRbufSize: 0 }, warnings: [], found: false });
  });

  it('reads and parses an existing file, warnings name the path', () => {
    const p = join(dir, 'iwpmd.conf');
    writeFileSync(p, 'nl_sock_rbuf_size=1024\nfoo=1\n');
    expect(loadConfig(p)).toEqual({
      config: { nlSockRbufSize: 1024 },
      warnings: [expect.stringContaining(`${p}:2: unknown parameter "foo"`)],
      found: true,
    });
  });

  it('an unreadable path (a directory) throws with the path in the message', () => {
    expect(() => loadConfig(dir)).toThrow(new RegExp(`cannot read config file ${dir}: EISDIR`));
  });
});
