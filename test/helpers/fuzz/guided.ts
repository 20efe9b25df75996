// A small coverage-guided fuzzing loop (the idea of libFuzzer and AFL, on V8's own block
// coverage: coverage.ts): take an input from the corpus, mutate it, run it through the
// target, keep it when it ran a block nothing ran before. Deterministic for a seed as far
// as the target is (the engine keeps state between inputs; its clock is manual).
// bench/fuzz-coverage.ts runs it long and writes new inputs to fuzz/corpus/<target>/; the
// unit tests (test/unit/stun/coverage-fuzz.test.ts, test/unit/turn/engine-coverage-fuzz.test.ts)
// run it bounded over the checked-in corpus.

import { readFileSync, readdirSync } from 'node:fs';
import { createHash } from 'node:crypto';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { SeededRandom } from '../random.js';
import type { BlockCoverage } from './coverage.js';
import { CHANNEL_EDGES } from './packets.js';
import { KNOWN_ATTRIBUTE_TYPES } from './seeds.js';

/** fuzz/corpus/ at the repository root (from dist/test/helpers/fuzz/ or test/helpers/fuzz/). */
export const CORPUS_ROOT = fileURLToPath(new URL(import.meta.url.includes('/dist/') ? '../../../../fuzz/corpus/' : '../../../fuzz/corpus/', import.meta.url));

export function corpusFileName(input: Buffer): string {
  return `${createHash('sha1').update(input).digest('hex').slice(0, 16)}.bin`;
}

export function loadCorpus(target: string): Buffer[] {
  const dir = join(CORPUS_ROOT, target);
  return readdirSync(dir)
    .filter((f) => f.endsWith('.bin'))
    .sort()
    .map((f) => readFileSync(join(dir, f)));
}

export interface GuidedOptions {
  readonly run: (input: Buffer) => void | Promise<void>;
  readonly coverage: BlockCoverage;
  readonly corpus: readonly Buffer[];
  readonly rng: SeededRandom;
  readonly iterations: number;
  /** Where the STUN header starts in an input (1 for the engine: its control byte comes first). */
  readonly headerOffset?: number;
  readonly maxLength?: number;
  readonly onNew?: (input: Buffer, blocks: number) => void;
}

export interface GuidedResult {
  readonly executions: number;
  /** Blocks run by the initial corpus, and by the end. */
  readonly initialBlocks: number;
  readonly blocks: number;
  readonly kept: Buffer[];
  readonly failures: { readonly input: Buffer; readonly error: string }[];
}

const INTERESTING_16 = [0, 1, 3, 4, 0x7f, 0x80, 0xff, 0x100, 0x7fff, 0x8000, 0xfffc, 0xffff, ...CHANNEL_EDGES, ...KNOWN_ATTRIBUTE_TYPES];

/** One to four byte-level mutations, STUN-aware where it helps (lengths, attribute types). */
export function mutateBytes(rng: SeededRandom, input: Buffer, corpus: readonly Buffer[], headerOffset: number, maxLength: number): Buffer {
  let buf = Buffer.from(input);
  for (let n = 1 + rng.int(4); n > 0; n--) {
    switch (rng.int(9)) {
      case 0:
        if (buf.length > 0) buf[rng.int(buf.length)]! ^= 1 << rng.int(8);
        break;
      case 1:
        if (buf.length > 0) buf[rng.int(buf.length)] = rng.pick([0, 1, 0x40, 0x7f, 0x80, 0xff, rng.int(256)]);
        break;
      case 2: {
        const at = rng.int(buf.length + 1);
        buf = Buffer.concat([buf.subarray(0, at), rng.bytes(1 + rng.int(rng.chance(0.8) ? 8 : 64)), buf.subarray(at)]);
        break;
      }
      case 3: {
        const at = rng.int(buf.length + 1);
        buf = Buffer.concat([buf.subarray(0, at), buf.subarray(Math.min(buf.length, at + 1 + rng.int(16)))]);
        break;
      }
      case 4: {
        if (buf.length < 2) break;
        // A 16-bit field (length, type, channel number) to an interesting value, usually 4-aligned after the header start.
        const at = rng.chance(0.7) ? headerOffset + 4 * rng.int(Math.max(1, (buf.length - headerOffset) >> 2)) + rng.pick([0, 2]) : rng.int(buf.length - 1);
        if (at + 2 <= buf.length) buf.writeUInt16BE(rng.pick(INTERESTING_16), at);
        break;
      }
      case 5: {
        // Duplicate a chunk (an attribute, usually).
        if (buf.length < 4) break;
        const from = rng.int(buf.length);
        const chunk = buf.subarray(from, from + 4 * (1 + rng.int(8)));
        const at = rng.int(buf.length + 1);
        buf = Buffer.concat([buf.subarray(0, at), chunk, buf.subarray(at)]);
        break;
      }
      case 6: {
        // Splice with another corpus entry.
        const other = rng.pick(corpus);
        const cut = rng.int(buf.length + 1);
        buf = Buffer.concat([buf.subarray(0, cut), other.subarray(rng.int(other.length + 1))]);
        break;
      }
      case 7:
        buf = buf.subarray(0, rng.int(buf.length + 1));
        break;
      default:
        // Make the STUN length field tell the truth again (reaches past the decoder's first checks).
        if (buf.length >= headerOffset + 20) buf.writeUInt16BE((buf.length - headerOffset - 20) & 0xfffc, headerOffset + 2);
    }
  }
  return buf.length > maxLength ? buf.subarray(0, maxLength) : buf;
}

export async function runGuided(o: GuidedOptions): Promise<GuidedResult> {
  const { rng, coverage } = o;
  const corpus = [...o.corpus];
  const kept: Buffer[] = [];
  const failures: { input: Buffer; error: string }[] = [];
  const exec = async (input: Buffer): Promise<number> => {
    try {
      await o.run(input);
    } catch (err) {
      failures.push({ input, error: err instanceof Error ? (err.stack ?? err.message) : String(err) });
    }
    return coverage.take();
  };
  for (const input of corpus) await exec(input);
  const initialBlocks = coverage.blocks;
  let executions = corpus.length;
  for (let i = 0; i < o.iterations; i++) {
    const input = mutateBytes(rng, rng.pick(corpus), corpus, o.headerOffset ?? 0, o.maxLength ?? 4096);
    executions++;
    if ((await exec(input)) > 0) {
      corpus.push(input);
      kept.push(input);
      o.onNew?.(input, coverage.blocks);
    }
  }
  return { executions, initialBlocks, blocks: coverage.blocks, kept, failures };
}
