/**
 * Ends every vitest run with one plain line, "tests: N passed, N failed, N skipped",
 * that CI and people can read without knowing vitest's own summary format.
 */
import type { Reporter } from 'vitest/reporters';

interface Task {
  type: string;
  mode?: string;
  result?: { state?: string };
  tasks?: Task[];
}

function count(tasks: readonly Task[], acc = { passed: 0, failed: 0, skipped: 0 }) {
  for (const t of tasks) {
    if (t.tasks) count(t.tasks, acc);
    if (t.type !== 'test') continue;
    if (t.result?.state === 'pass') acc.passed++;
    else if (t.result?.state === 'fail') acc.failed++;
    else acc.skipped++;
  }
  return acc;
}

export default class SummaryReporter implements Reporter {
  onFinished(files: readonly Task[] = [], errors: readonly unknown[] = []): void {
    const c = count(files);
    // a file that failed to load has no tests: count it as a failure
    const broken = files.filter((f) => f.result?.state === 'fail' && !(f.tasks ?? []).length).length;
    const failed = c.failed + broken + (errors.length > 0 ? 1 : 0);
    process.stdout.write(`\ntests: ${c.passed} passed, ${failed} failed, ${c.skipped} skipped\n`);
  }
}
