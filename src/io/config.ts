/**
 * /etc/iwpmd.conf, parsed as rdma-core parses it (spec §6.1) but with a message
 * naming the file and line for every line it cannot use.
 *
 *   # comment
 *   nl_sock_rbuf_size=419430400
 */
import { readFileSync } from 'node:fs';

export const DEFAULT_CONFIG_PATH = '/etc/iwpmd.conf';

export interface DaemonConfig {
  /** Requested netlink receive buffer in bytes; 0 = system default. */
  nlSockRbufSize: number;
}

export interface ConfigResult {
  config: DaemonConfig;
  warnings: string[];
  /** false when the file does not exist (not an error: defaults apply). */
  found: boolean;
}

const KNOWN = new Set(['nl_sock_rbuf_size']);

export function parseConfig(text: string, path: string): { config: DaemonConfig; warnings: string[] } {
  const config: DaemonConfig = { nlSockRbufSize: 0 };
  const warnings: string[] = [];
  const lines = text.split('\n');
  lines.forEach((raw, i) => {
    const where = `${path}:${i + 1}`;
    const line = raw.replace(/\r$/, '');
    if (line === '' || line.startsWith('#') || /^\s*$/.test(line)) return;
    // A trailing "# comment" after the value is allowed (rdma-core's sscanf("%d") ignores it too).
    const m = /^\s*([^=\s]{1,63})\s*=+\s*(\S*?)\s*(?:#.*)?$/.exec(line);
    if (!m) {
      warnings.push(`${where}: cannot parse "${line.trim()}" (expected name=value)`);
      return;
    }
    const name = m[1]!;
    const value = m[2]!;
    if (!KNOWN.has(name)) {
      warnings.push(`${where}: unknown parameter "${name}" (ignored; known: ${[...KNOWN].join(', ')})`);
      return;
    }
    if (!/^\d+$/.test(value)) {
      warnings.push(`${where}: ${name} needs a positive integer, got "${value}" (ignored)`);
      return;
    }
    const n = Number(value);
    if (n <= 0 || n > 0x7fffffff) {
      warnings.push(`${where}: ${name}=${value} is out of range 1..2147483647 (ignored)`);
      return;
    }
    config.nlSockRbufSize = n;
  });
  return { config, warnings };
}

export function loadConfig(path: string): ConfigResult {
  let text: string;
  try {
    text = readFileSync(path, 'latin1');
  } catch (e) {
    const err = e as NodeJS.ErrnoException;
    if (err.code === 'ENOENT') return { config: { nlSockRbufSize: 0 }, warnings: [], found: false };
    throw new Error(`cannot read config file ${path}: ${err.code ?? err.message}`);
  }
  return { ...parseConfig(text, path), found: true };
}
