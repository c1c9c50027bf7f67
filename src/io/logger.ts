/**
 * Log sinks: stderr (one line per message; systemd's journal adds time and pid)
 * or syslog through /dev/log (daemonized mode, like rdma-core's LOG_DAEMON lines).
 */
import { type LogLevel, LOG_LEVELS, type Logger } from '../core/log.js';

export type LogSink = (level: LogLevel, line: string) => void;

export class LineLogger implements Logger {
  private readonly min: number;
  constructor(
    level: LogLevel,
    private readonly sink: LogSink,
  ) {
    this.min = LOG_LEVELS.indexOf(level);
  }
  get debugEnabled(): boolean {
    return this.min <= 0;
  }
  private emit(level: LogLevel, msg: string): void {
    if (LOG_LEVELS.indexOf(level) >= this.min) this.sink(level, msg);
  }
  debug(msg: string): void {
    this.emit('debug', msg);
  }
  info(msg: string): void {
    this.emit('info', msg);
  }
  warn(msg: string): void {
    this.emit('warn', msg);
  }
  error(msg: string): void {
    this.emit('error', msg);
  }
}

/** "2026-12-02T15:04:05.123Z warn: message" on stderr. */
export function stderrSink(withTime = true): LogSink {
  return (level, line) => {
    process.stderr.write(`${withTime ? new Date().toISOString() + ' ' : ''}${level}: ${line}\n`);
  };
}

const SYSLOG_PRIORITY: Record<LogLevel, number> = { debug: 7, info: 6, warn: 4, error: 3 };
const LOG_DAEMON = 3 << 3;

/** RFC 3164 datagrams to /dev/log; falls back to stderr when /dev/log is unreachable. */
export function syslogSink(send: (path: string, data: Buffer) => number, ident = 'iwpmd'): LogSink {
  const fallback = stderrSink();
  return (level, line) => {
    const msg = Buffer.from(`<${LOG_DAEMON | SYSLOG_PRIORITY[level]}>${ident}[${process.pid}]: ${line}`);
    if (send('/dev/log', msg) < 0) fallback(level, line);
  };
}

export function parseLogLevel(s: string): LogLevel | undefined {
  return (LOG_LEVELS as readonly string[]).includes(s) ? (s as LogLevel) : undefined;
}
