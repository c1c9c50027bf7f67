#!/usr/bin/env node
/**
 * iwpmctl: ask a running iwpmd what it holds.
 *   iwpmctl [--control PATH] [-j] show [mappings|clients|stats|status]
 */
import { connect } from 'node:net';
import { parseArgs } from 'node:util';
import { DEFAULT_CONTROL_PATH } from '../io/control.js';

const HELP = `Usage: iwpmctl [--control PATH] [-j|--json] show [mappings|clients|stats|status]
  --control PATH   the daemon's control socket (default ${DEFAULT_CONTROL_PATH})
  -j, --json       print JSON
  -p, --pretty     pretty-print JSON
`;

function fail(msg: string): never {
  process.stderr.write(`iwpmctl: ${msg}\n`);
  process.exit(2);
}

const OBJECTS = ['mappings', 'clients', 'stats', 'status'];

function request(path: string, line: string): Promise<unknown> {
  return new Promise((resolve, reject) => {
    const s = connect(path);
    let buf = '';
    s.setEncoding('utf8');
    s.setTimeout(5000, () => {
      s.destroy();
      reject(new Error(`no answer from ${path} within 5 s`));
    });
    s.on('connect', () => s.write(line + '\n'));
    s.on('data', (d: string) => (buf += d));
    s.on('error', (e: NodeJS.ErrnoException) =>
      reject(new Error(`cannot reach iwpmd at ${path}: ${e.code ?? e.message} (is it running? see --control)`)),
    );
    s.on('end', () => {
      try {
        resolve(JSON.parse(buf));
      } catch {
        reject(new Error(`unreadable answer from ${path}`));
      }
    });
  });
}

function table(rows: Record<string, unknown>[], cols: string[]): string {
  const cells = rows.map((r) => cols.map((c) => String(r[c] ?? '')));
  const w = cols.map((c, i) => Math.max(c.length, ...cells.map((r) => r[i]!.length)));
  const line = (r: string[]) => r.map((x, i) => x.padEnd(w[i]!)).join('  ').trimEnd();
  return [line(cols), ...cells.map(line)].join('\n') + '\n';
}

async function main(): Promise<void> {
  let parsed;
  try {
    parsed = parseArgs({
      options: {
        control: { type: 'string' },
        json: { type: 'boolean', short: 'j' },
        pretty: { type: 'boolean', short: 'p' },
        help: { type: 'boolean', short: 'h' },
      },
      allowPositionals: true,
    });
  } catch (e) {
    fail((e as Error).message);
  }
  const v = parsed.values;
  if (v.help) {
    process.stdout.write(HELP);
    return;
  }
  const [verb = 'show', objArg = 'status'] = parsed.positionals;
  if (!'show'.startsWith(verb)) fail(`unknown command "${verb}"\n${HELP}`);
  const obj = OBJECTS.find((o) => o.startsWith(objArg));
  if (!obj) fail(`unknown object "${objArg}" (${OBJECTS.join(', ')})`);
  const answer = await request(v.control ?? DEFAULT_CONTROL_PATH, `show ${obj}`).catch((e: Error) => fail(e.message));
  if (answer && typeof answer === 'object' && 'error' in answer) fail(String((answer as { error: unknown }).error));
  if (v.json || v.pretty) {
    process.stdout.write(JSON.stringify(answer, null, v.pretty ? 2 : undefined) + '\n');
    return;
  }
  if (obj === 'mappings') {
    process.stdout.write(table(answer as Record<string, unknown>[], ['local', 'mapped', 'refCount', 'ownerClient', 'flags', 'state']));
  } else if (obj === 'clients') {
    process.stdout.write(table(answer as Record<string, unknown>[], ['index', 'ibdev', 'ifname', 'ulib', 'registrations']));
  } else {
    process.stdout.write(JSON.stringify(answer, null, 2) + '\n');
  }
}

main().catch((e) => fail(String(e)));
