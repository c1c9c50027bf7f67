/**
 * Constant-memory latency histogram: log-spaced buckets with 1% resolution,
 * from 1 µs to ~100 s. Values are recorded in milliseconds.
 */
const PER_E = 100; // buckets per factor e (~1% wide)
const MAX_BUCKET = Math.ceil(Math.log(1e8) * PER_E) + 2; // 1e8 µs = 100 s

export class Histogram {
  constructor() {
    this.counts = new Float64Array(MAX_BUCKET + 1);
    this.n = 0;
    this.max = 0;
    this.sum = 0;
  }

  /** @param {number} ms */
  record(ms) {
    const us = ms * 1000;
    let b = us <= 1 ? 0 : 1 + Math.floor(Math.log(us) * PER_E);
    if (b > MAX_BUCKET) b = MAX_BUCKET;
    this.counts[b]++;
    this.n++;
    this.sum += ms;
    if (ms > this.max) this.max = ms;
  }

  /** Upper edge of the bucket holding quantile q (0..1), in ms. */
  quantile(q) {
    if (this.n === 0) return NaN;
    const target = Math.max(1, Math.ceil(q * this.n));
    let acc = 0;
    for (let b = 0; b <= MAX_BUCKET; b++) {
      acc += this.counts[b];
      if (acc >= target) {
        const upperUs = b === 0 ? 1 : Math.exp(b / PER_E);
        return Math.min(upperUs / 1000, this.max);
      }
    }
    return this.max;
  }

  summary() {
    return {
      n: this.n,
      meanMs: this.n ? this.sum / this.n : NaN,
      p50Ms: this.quantile(0.5),
      p99Ms: this.quantile(0.99),
      p999Ms: this.quantile(0.999),
      maxMs: this.n ? this.max : NaN,
    };
  }
}
