/**
 * Bump allocators for small buffers that outlive the message they came from.
 *
 * Node's Buffer pool is one 8 KiB slab shared by every short-lived allocation, so one
 * 48-byte slice kept for a second (or one address kept for the life of a connection)
 * pins a slab of otherwise dead messages. Kept bytes come from arenas of their own
 * instead, whose slabs hold only bytes of the same kind, so a slab is garbage once
 * the things allocated from it are.
 */
import { copyInto } from './sockaddr.js';

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
 * Fixed-size blocks for state that ends in no particular order (a mapping lives as long
 * as its connection). Blocks given back are handed out again, so the memory follows the
 * peak number of blocks in use, whatever the order they end in; a bump arena alone would
 * keep a slab alive for one long-lived block among many short-lived ones.
 *
 * The caller must give a block back only when nothing reads it any more.
 */
export class BlockPool {
  private readonly arena: SlabArena;
  private readonly free: Buffer[] = [];
  private taken = 0;

  constructor(
    readonly blockBytes: number,
    blocksPerSlab = 32,
  ) {
    this.arena = new SlabArena(((blockBytes + 7) & ~7) * blocksPerSlab);
  }

  /** A block of blockBytes uninitialised bytes. */
  take(): Buffer {
    this.taken++;
    return this.free.pop() ?? this.arena.alloc(this.blockBytes);
  }

  /** Give back a block from take(), for reuse. */
  give(block: Buffer): void {
    this.taken--;
    this.free.push(block);
  }

  /** Blocks in use, and blocks given back waiting for reuse. */
  get stats(): { inUse: number; spare: number } {
    return { inUse: this.taken, spare: this.free.length };
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
  copyInto(out, 0, src, off, n);
  return out;
}
