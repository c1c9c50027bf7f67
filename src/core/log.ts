/** Logging interface used by core/ (io/ provides the sinks). */
export type LogLevel = 'debug' | 'info' | 'warn' | 'error';

export const LOG_LEVELS: readonly LogLevel[] = ['debug', 'info', 'warn', 'error'];

export interface Logger {
  debug(msg: string): void;
  info(msg: string): void;
  warn(msg: string): void;
  error(msg: string): void;
  /** Whether debug lines would be written (lets hot paths skip formatting). */
  readonly debugEnabled: boolean;
}

export const nullLogger: Logger = {
  debug() {},
  info() {},
  warn() {},
  error() {},
  debugEnabled: false,
};

/** A logger that keeps lines in memory (tests). */
export class MemoryLogger implements Logger {
  readonly lines: { level: LogLevel; msg: string }[] = [];
  constructor(readonly debugEnabled = true) {}
  debug(msg: string): void {
    this.lines.push({ level: 'debug', msg });
  }
  info(msg: string): void {
    this.lines.push({ level: 'info', msg });
  }
  warn(msg: string): void {
    this.lines.push({ level: 'warn', msg });
  }
  error(msg: string): void {
    this.lines.push({ level: 'error', msg });
  }
  has(re: RegExp, level?: LogLevel): boolean {
    return this.lines.some((l) => (!level || l.level === level) && re.test(l.msg));
  }
}

/**
 * Rate limiter for repetitive log lines: at most `burst` lines per `windowMs` per key;
 * the number suppressed is reported with the next line that gets through.
 */
export class LogLimiter {
  private readonly windows = new Map<string, { start: number; count: number; suppressed: number }>();
  constructor(
    private readonly burst = 5,
    private readonly windowMs = 10_000,
  ) {}

  /** Returns the suffix to append ("" or " (N similar suppressed)") or undefined to drop the line. */
  admit(key: string, nowMs: number): string | undefined {
    let w = this.windows.get(key);
    if (!w || nowMs - w.start >= this.windowMs) {
      const suppressed = w?.suppressed ?? 0;
      w = { start: nowMs, count: 0, suppressed: 0 };
      this.windows.set(key, w);
      w.count++;
      return suppressed > 0 ? ` (${suppressed} similar suppressed)` : '';
    }
    if (w.count < this.burst) {
      w.count++;
      return '';
    }
    w.suppressed++;
    return undefined;
  }
}
