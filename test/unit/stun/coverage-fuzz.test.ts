// The coverage-guided loop (test/helpers/fuzz/guided.ts, on V8's block coverage) over the
// codec, CI-sized: the checked-in corpus (fuzz/corpus/codec/) and a bounded number of
// mutations from a fixed seed. No decoder may throw. `npm run fuzz:coverage -- --target
// codec` runs it long and grows the corpus (docs/reliability.md).

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { BlockCoverage } from '../../helpers/fuzz/coverage.js';
import { SeededRandom } from '../../helpers/random.js';

const SEED = process.env.ANYTURN_FUZZ_SEED !== undefined ? Number(process.env.ANYTURN_FUZZ_SEED) >>> 0 : 0xc0de;
const ITERATIONS = 5000;

test(`coverage-guided fuzzing of the codec: ${ITERATIONS} mutations (seed 0x${SEED.toString(16)}), nothing throws`, async (t) => {
  // Coverage before the code under test is loaded (test/helpers/fuzz/coverage.ts).
  const coverage = await BlockCoverage.start();
  try {
    const { loadCorpus, runGuided } = await import('../../helpers/fuzz/guided.js');
    const { codecTarget } = await import('../../helpers/fuzz/targets.js');
    const corpus = loadCorpus('codec');
    assert.ok(corpus.length >= 30, `the checked-in corpus (${corpus.length} inputs)`);
    const result = await runGuided({ run: codecTarget, coverage, corpus, rng: new SeededRandom(SEED), iterations: ITERATIONS });
    t.diagnostic(`blocks: ${result.initialBlocks} from the corpus, ${result.blocks} at the end; ${result.kept.length} new inputs`);
    assert.deepEqual(
      result.failures.map((f) => `${f.input.toString('hex')}: ${f.error}`),
      [],
    );
    // The coverage is real: the corpus runs blocks all over the codec (a broken collector counts none).
    assert.ok(result.initialBlocks > 150, `${result.initialBlocks} blocks`);
  } finally {
    await coverage.stop();
  }
});
