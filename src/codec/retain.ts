/**
 * Bump allocators for small buffers that outlive the message they came from.
 *
 * Node's Buffer pool is one 8 KiB slab shared by every short-lived allocation, so one
 * 48-byte slice kept for a second (or one address kept for the life of a connection)
 * pins a slab of otherwise dead messages. Kept bytes come from arenas of their own
 * instead, whose slabs hold only bytes of the same kind, so a slab is garbage once
 * the things allocated from it are.
 */
export class SlabArena {
  private slab: Buffer;
  private used = 0;

  constructor(private readonly slabBytes: number) {
    this.slab = Buffer.allocUnsafeSlow(slabBytes);
  }

  /** n uninitialised bytes (a view into the current slab; n above a quarter slab gets its own). */
  alloc(n: number): Buffer {
    if (n > this.slabBytes >> 2) return Buffer.allocUnsafeSlow(n);
    if (this.used + n > this.slabBytes) {
      this.slab = Buffer.allocUnsafeSlow(this.slabBytes);
      this.used = 0;
    }
    const out = this.slab.subarray(this.used, this.used + n);
    this.used += (n + 7) & ~7;
    return out;
  }
}

/**
 * Peer conversation state (an ACC kept for retransmission and duplicates, the peer's
 * address): lives for seconds and expires in roughly the order it was made.
 */
const retained = new SlabArena(64 * 1024);

/** n uninitialised bytes (n <= 16 KiB) that share a slab only with other retained buffers. */
export function allocRetained(n: number): Buffer {
  return retained.alloc(n);
}

/** A retained copy of src[off, off + n). */
export function retainCopy(src: Uint8Array, off: number, n: number): Buffer {
  const out = allocRetained(n);
  for (let i = 0; i < n; i++) out[i] = src[off + i]!;
  return out;
}
