// Block coverage from V8 itself (node:inspector, Profiler.startPreciseCoverage with
// detailed: true), for the coverage-guided loop in guided.ts: no instrumenting loader and
// no native fuzzer, so it runs on the ESM build as it is. Each take() returns how many
// blocks of the project's own code (dist/src) ran for the first time since start();
// V8 resets its counters on every take, so a block counts once per input that ran it.
//
// Functions V8 compiled before start() report function-level ranges only: import the code
// under test, and every module that imports it (guided.ts, targets.ts), dynamically after
// start(). This module imports nothing of the project for that reason.

import { Session } from 'node:inspector/promises';

interface CoverageRange {
  readonly startOffset: number;
  readonly endOffset: number;
  readonly count: number;
}
interface ScriptCoverage {
  readonly url: string;
  readonly functions: readonly { readonly ranges: readonly CoverageRange[] }[];
}

/**
 * V8 reports a block only where its count differs from the block around it: a range with
 * count 0 is a block that did not run, and once it runs it disappears into its parent. So
 * every range ever reported is remembered (per function), and after each take each one's
 * count is the count of the innermost range of this report that contains it.
 */
export class BlockCoverage {
  /** Per script and function: every range V8 has ever reported there, as "start:end". */
  private readonly known = new Map<string, Set<string>>();
  private readonly seen = new Set<string>();

  private constructor(
    private readonly session: Session,
    private readonly include: (url: string) => boolean,
  ) {}

  /** Starts precise block coverage in this process; `include` picks the scripts that count. */
  static async start(include: (url: string) => boolean = (url) => url.includes('/dist/src/')): Promise<BlockCoverage> {
    const session = new Session();
    session.connect();
    await session.post('Profiler.enable');
    await session.post('Profiler.startPreciseCoverage', { callCount: false, detailed: true });
    return new BlockCoverage(session, include);
  }

  /** Blocks that ran so far. */
  get blocks(): number {
    return this.seen.size;
  }

  /** Takes (and resets) V8's counters; returns the number of blocks that ran for the first time. */
  async take(): Promise<number> {
    const { result } = (await this.session.post('Profiler.takePreciseCoverage')) as { result: ScriptCoverage[] };
    let fresh = 0;
    for (const script of result) {
      if (!this.include(script.url)) continue;
      for (const fn of script.functions) {
        const outer = fn.ranges[0];
        if (!outer) continue;
        const id = `${script.url}|${outer.startOffset}`;
        let known = this.known.get(id);
        if (!known) this.known.set(id, (known = new Set()));
        for (const r of fn.ranges) known.add(`${r.startOffset}:${r.endOffset}`);
        if (outer.count === 0) continue;
        for (const block of known) {
          const key = `${id}|${block}`;
          if (this.seen.has(key)) continue;
          const [start, end] = block.split(':').map(Number) as [number, number];
          let count = 0;
          let size = Number.POSITIVE_INFINITY;
          for (const r of fn.ranges) {
            if (r.startOffset <= start && end <= r.endOffset && r.endOffset - r.startOffset < size) {
              size = r.endOffset - r.startOffset;
              count = r.count;
            }
          }
          if (count > 0) {
            this.seen.add(key);
            fresh++;
          }
        }
      }
    }
    return fresh;
  }

  async stop(): Promise<void> {
    await this.session.post('Profiler.stopPreciseCoverage');
    await this.session.post('Profiler.disable');
    this.session.disconnect();
  }
}
