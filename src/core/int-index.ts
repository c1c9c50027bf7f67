/**
 * A map from 32-bit integer keys to non-negative integers in two typed arrays: open
 * addressing, linear probing, backward-shift deletion (no tombstones), grown by
 * doubling at half load. For peer tables that turn over tens of thousands of entries
 * a second and live for seconds: a JS Map of that size costs rehashing and
 * old-generation GC work, this costs neither.
 */
const MIN_SLOTS = 1024;

export class IntIndex {
  private keys = new Int32Array(MIN_SLOTS);
  /** value + 1; 0 = empty slot */
  private vals = new Int32Array(MIN_SLOTS);
  private mask = MIN_SLOTS - 1;
  private count = 0;

  get size(): number {
    return this.count;
  }

  /** The value stored for key, or -1. */
  get(key: number): number {
    const s = this.slotOf(key);
    return s < 0 ? -1 : this.vals[s]! - 1;
  }

  has(key: number): boolean {
    return this.slotOf(key) >= 0;
  }

  /** Insert or overwrite (value >= 0). */
  set(key: number, value: number): void {
    const s = this.slotOf(key);
    if (s >= 0) {
      this.vals[s] = value + 1;
      return;
    }
    if ((this.count + 1) * 2 > this.vals.length) this.resize(this.vals.length * 2);
    this.place(key, value + 1);
    this.count++;
  }

  delete(key: number): boolean {
    const s = this.slotOf(key);
    if (s < 0) return false;
    this.unslot(s);
    this.count--;
    return true;
  }

  clear(): void {
    this.keys = new Int32Array(MIN_SLOTS);
    this.vals = new Int32Array(MIN_SLOTS);
    this.mask = MIN_SLOTS - 1;
    this.count = 0;
  }

  private static home(key: number, mask: number): number {
    return (Math.imul(key, 0x9e3779b1) ^ (key >>> 15)) & mask;
  }

  private slotOf(key: number): number {
    const { keys, vals, mask } = this;
    for (let s = IntIndex.home(key, mask); vals[s] !== 0; s = (s + 1) & mask) {
      if (keys[s] === key) return s;
    }
    return -1;
  }

  private place(key: number, stored: number): void {
    const { keys, vals, mask } = this;
    let s = IntIndex.home(key, mask);
    while (vals[s] !== 0) s = (s + 1) & mask;
    keys[s] = key;
    vals[s] = stored;
  }

  private resize(size: number): void {
    const oldKeys = this.keys;
    const oldVals = this.vals;
    this.keys = new Int32Array(size);
    this.vals = new Int32Array(size);
    this.mask = size - 1;
    for (let s = 0; s < oldVals.length; s++) if (oldVals[s] !== 0) this.place(oldKeys[s]!, oldVals[s]!);
  }

  private unslot(hole: number): void {
    const { keys, vals, mask } = this;
    vals[hole] = 0;
    for (let s = (hole + 1) & mask; vals[s] !== 0; s = (s + 1) & mask) {
      const home = IntIndex.home(keys[s]!, mask);
      // move it into the hole unless its home lies cyclically in (hole, s]
      const stays = hole < s ? home > hole && home <= s : home > hole || home <= s;
      if (!stays) {
        keys[hole] = keys[s]!;
        vals[hole] = vals[s]!;
        vals[s] = 0;
        hole = s;
      }
    }
  }
}

/**
 * A map from 32-bit integer keys to objects: an IntIndex from key to a slot of a value
 * array, free slots on a stack. For live conversations keyed by handle: unlike a JS Map
 * under steady insert/delete churn, it allocates nothing once grown (it never shrinks).
 * Iteration order is not insertion order (there is no iteration).
 */
export class IntMap<T> {
  private readonly index = new IntIndex();
  private readonly values: (T | undefined)[] = [];
  /** Free slots of `values` (a stack of freeCount entries). */
  private free = new Int32Array(64);
  private freeCount = 0;

  get size(): number {
    return this.index.size;
  }

  get(key: number): T | undefined {
    const s = this.index.get(key);
    return s < 0 ? undefined : this.values[s];
  }

  has(key: number): boolean {
    return this.index.has(key);
  }

  /** Insert or overwrite. */
  set(key: number, value: T): void {
    const s = this.index.get(key);
    if (s >= 0) {
      this.values[s] = value;
      return;
    }
    const slot = this.freeCount > 0 ? this.free[--this.freeCount]! : this.values.length;
    this.values[slot] = value;
    this.index.set(key, slot);
  }

  delete(key: number): boolean {
    const s = this.index.get(key);
    if (s < 0) return false;
    this.index.delete(key);
    this.values[s] = undefined;
    if (this.freeCount === this.free.length) {
      const bigger = new Int32Array(this.free.length * 2);
      bigger.set(this.free);
      this.free = bigger;
    }
    this.free[this.freeCount++] = s;
    return true;
  }

  clear(): void {
    this.index.clear();
    this.values.length = 0;
    this.freeCount = 0;
  }
}
