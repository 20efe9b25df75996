// A seeded PRNG for fuzz and property tests: the same sequence for the same seed
// everywhere, so a failure reproduces from the seed in the test's name.

/** mulberry32: tiny, fast, good enough to explore inputs. Returns numbers in [0, 1). */
export function mulberry32(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

export class SeededRandom {
  readonly next: () => number;
  constructor(seed: number) {
    this.next = mulberry32(seed);
  }
  /** An integer in [0, n). */
  readonly int = (n: number): number => Math.floor(this.next() * n);
  readonly chance = (p: number): boolean => this.next() < p;
  readonly pick = <T>(items: readonly T[]): T => items[this.int(items.length)]!;
  readonly bytes = (n: number): Buffer => {
    const out = Buffer.allocUnsafe(n);
    for (let i = 0; i < n; i++) out[i] = this.int(256);
    return out;
  };
}
