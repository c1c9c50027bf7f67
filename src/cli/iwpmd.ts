#!/usr/bin/env node
/**
 * iwpmd: the iWARP port mapper daemon (drop-in for rdma-core's iwpmd).
 */
import { spawn } from 'node:child_process';
import { parseArgs } from 'node:util';
import type { LogLevel } from '../core/log.js';
import { DEFAULT_CONFIG_PATH, loadConfig } from '../io/config.js';
import { DEFAULT_CONTROL_PATH } from '../io/control.js';
import { LineLogger, parseLogLevel, stderrSink, syslogSink } from '../io/logger.js';
import { IWARP_PM_PORT, RDMA_NL_GROUP_IWPM, Service, StartupError, packageVersion } from '../io/service.js';

const HELP = `Usage: iwpmd [options]
iWARP Port Mapper daemon: reserves host TCP ports for iWARP RDMA connections
on behalf of the kernel's iw_cm (netlink), and answers peer port mappers on UDP ${IWARP_PM_PORT}.

Options:
  -s, --systemd          run in the foreground; notify systemd (READY=1) when started
  -f                     accepted for compatibility, ignored
  -c, --config PATH      configuration file (default ${DEFAULT_CONFIG_PATH}; missing file = defaults)
      --control PATH     control socket for iwpmctl (default ${DEFAULT_CONTROL_PATH}; "none" disables)
      --log-level LEVEL  debug | info | warn | error (default info)
      --syslog           log to syslog (/dev/log) instead of stderr (default when daemonized)
      --udp-port N       peer UDP port to bind and to query (default ${IWARP_PM_PORT})
      --no-warmup        skip the start-up JIT warm-up (a few thousand QUERY round trips
                         rehearsed in memory right after start, ~0.5 s of one CPU)
      --kernel-port N    testing: NETLINK_USERSOCK instead of NETLINK_RDMA, netlink port id N is the kernel
      --nl-group N       testing: multicast group joined for REG_PID in USERSOCK mode (default ${RDMA_NL_GROUP_IWPM})
  -h, --help             this text
  -V, --version          print the version

Without -s the daemon detaches from the terminal and logs to syslog.
Signals: SIGTERM/SIGINT stop it (all reserved ports released), SIGUSR1 writes the
mapping table to the log. Configuration (${DEFAULT_CONFIG_PATH}):
  nl_sock_rbuf_size=BYTES   netlink receive buffer (SO_RCVBUFFORCE, else SO_RCVBUF)
`;

function fail(msg: string, code = 2): never {
  process.stderr.write(`iwpmd: ${msg}\n`);
  process.exit(code);
}

function intArg(name: string, v: string | undefined, min: number, max: number): number | undefined {
  if (v === undefined) return undefined;
  if (!/^\d+$/.test(v) || Number(v) < min || Number(v) > max) fail(`--${name} needs an integer in ${min}..${max}, got "${v}"`);
  return Number(v);
}

async function main(): Promise<void> {
  let parsed;
  try {
    parsed = parseArgs({
      options: {
        systemd: { type: 'boolean', short: 's' },
        f: { type: 'boolean', short: 'f' },
        config: { type: 'string', short: 'c' },
        control: { type: 'string' },
        'log-level': { type: 'string' },
        syslog: { type: 'boolean' },
        'udp-port': { type: 'string' },
        'no-warmup': { type: 'boolean' },
        'kernel-port': { type: 'string' },
        'nl-group': { type: 'string' },
        help: { type: 'boolean', short: 'h' },
        version: { type: 'boolean', short: 'V' },
        'detached-child': { type: 'boolean' },
      },
      strict: true,
      allowPositionals: false,
    });
  } catch (e) {
    fail(`${(e as Error).message}\nTry 'iwpmd --help'.`);
  }
  const v = parsed.values;
  if (v.help) {
    process.stdout.write(HELP);
    return;
  }
  if (v.version) {
    process.stdout.write(`iwpmd ${packageVersion()} (iwpmd-ts)\n`);
    return;
  }
  const level: LogLevel = v['log-level'] === undefined ? 'info' : (parseLogLevel(v['log-level']) ?? fail(`--log-level must be debug, info, warn or error, got "${v['log-level']}"`));
  const kernelPort = intArg('kernel-port', v['kernel-port'], 1, 0xffffffff);
  const nlGroup = intArg('nl-group', v['nl-group'], 1, 32) ?? RDMA_NL_GROUP_IWPM;
  const udpPort = intArg('udp-port', v['udp-port'], 1, 65535) ?? IWARP_PM_PORT;
  const controlOpt = v.control ?? DEFAULT_CONTROL_PATH;
  const controlPath = controlOpt === 'none' ? undefined : controlOpt;

  // Daemonize like rdma-core when not run by systemd: re-run ourselves detached.
  if (!v.systemd && !v['detached-child']) {
    const child = spawn(process.execPath, [...process.execArgv, process.argv[1]!, ...process.argv.slice(2), '--detached-child'], {
      detached: true,
      stdio: 'ignore',
      cwd: '/',
    });
    child.unref();
    return;
  }

  const { native } = await import('../native/index.js');
  const useSyslog = v.syslog || v['detached-child'];
  const log = new LineLogger(level, useSyslog ? syslogSink(native.unixDatagramSend) : stderrSink());

  const configPath = v.config ?? DEFAULT_CONFIG_PATH;
  let config;
  try {
    const r = loadConfig(configPath);
    for (const w of r.warnings) log.warn(w);
    if (!r.found && v.config !== undefined) log.warn(`${configPath}: no such file; using defaults`);
    config = r.config;
  } catch (e) {
    log.error((e as Error).message);
    process.exit(1);
  }

  const service = new Service(native, {
    config,
    log,
    kernelPort,
    nlGroup,
    udpPort,
    controlPath,
    systemd: v.systemd === true,
    warmUp: v['no-warmup'] !== true,
  });
  let stopping = false;
  const stop = (sig: string): void => {
    if (stopping) return;
    stopping = true;
    log.info(`${sig}: shutting down`);
    service.stop().then(
      () => process.exit(0),
      (e) => {
        log.error(`shutdown: ${(e as Error).message}`);
        process.exit(1);
      },
    );
  };
  process.on('SIGTERM', () => stop('SIGTERM'));
  process.on('SIGINT', () => stop('SIGINT'));
  process.on('SIGHUP', () => log.info('SIGHUP: configuration changes take effect on restart; still running'));
  process.on('SIGUSR1', () => service.dumpMappings());
  process.on('uncaughtException', (e) => log.error(`internal error: ${e.stack ?? e}`));

  try {
    await service.start();
  } catch (e) {
    log.error(e instanceof StartupError ? e.message : `cannot start: ${(e as Error).stack ?? e}`);
    await service.stop().catch(() => {});
    process.exit(1);
  }
}

main().catch((e) => fail(`${(e as Error).stack ?? e}`, 1));
