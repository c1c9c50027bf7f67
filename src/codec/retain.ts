/**
 * Small buffers that live for seconds (peer conversation state: an ACC kept for
 * retransmission and duplicates, the peer's address) come from here, not from Node's
 * Buffer pool. That pool is one 8 KiB slab shared by every short-lived allocation, so
 * one 48-byte slice kept for a second pins a slab of otherwise dead messages: under
 * load, state held for seconds pinned most of what was allocated in those seconds.
 * These slabs hold only such state, which expires in roughly the order it was made.
 */
const SLAB_BYTES = 64 * 1024;
let slab = Buffer.allocUnsafeSlow(SLAB_BYTES);
let used = 0;

/** n uninitialised bytes (n <= 4096) that share a slab only with other retained buffers. */
export function allocRetained(n: number): Buffer {
  if (n > 4096) return Buffer.allocUnsafeSlow(n);
  if (used + n > SLAB_BYTES) {
    slab = Buffer.allocUnsafeSlow(SLAB_BYTES);
    used = 0;
  }
  const out = slab.subarray(used, used + n);
  used += (n + 7) & ~7;
  return out;
}

/** A retained copy of src[off, off + n). */
export function retainCopy(src: Uint8Array, off: number, n: number): Buffer {
  const out = allocRetained(n);
  for (let i = 0; i < n; i++) out[i] = src[off + i]!;
  return out;
}
