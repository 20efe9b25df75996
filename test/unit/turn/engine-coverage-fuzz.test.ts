// The coverage-guided loop (test/helpers/fuzz/guided.ts, on V8's block coverage) over the
// engine's request handling, CI-sized: TurnEngine.handleClientPacket with the fakes of
// test/helpers/fake-io.ts, the checked-in corpus (fuzz/corpus/engine/) and a bounded number
// of mutations from a fixed seed. Inputs can be signed after mutation (targets.ts), so they
// pass authentication and reach Allocate, Refresh, CreatePermission and ChannelBind. Nothing
// may throw, log at error level or reject unhandled. `npm run fuzz:coverage` runs it long.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { BlockCoverage } from '../../helpers/fuzz/coverage.js';
import { SeededRandom } from '../../helpers/random.js';

const SEED = process.env.ANYTURN_FUZZ_SEED !== undefined ? Number(process.env.ANYTURN_FUZZ_SEED) >>> 0 : 0xe291;
const ITERATIONS = 4000;

test(`coverage-guided fuzzing of the engine: ${ITERATIONS} mutations (seed 0x${SEED.toString(16)}), no throw, no error log`, async (t) => {
  // Coverage before the code under test is loaded (test/helpers/fuzz/coverage.ts).
  const coverage = await BlockCoverage.start();
  const { loadCorpus, runGuided } = await import('../../helpers/fuzz/guided.js');
  const { createEngineTarget } = await import('../../helpers/fuzz/targets.js');
  const engine = createEngineTarget();
  try {
    const corpus = loadCorpus('engine');
    assert.ok(corpus.length >= 30, `the checked-in corpus (${corpus.length} inputs)`);
    const run = async (input: Buffer): Promise<void> => {
      const before = engine.failures.length;
      await engine.run(input);
      if (engine.failures.length > before) throw new Error(engine.failures.slice(before).join('\n'));
    };
    const result = await runGuided({ run, coverage, corpus, rng: new SeededRandom(SEED), iterations: ITERATIONS, headerOffset: 1 });
    t.diagnostic(`blocks: ${result.initialBlocks} from the corpus, ${result.blocks} at the end; ${result.kept.length} new inputs`);
    assert.deepEqual(
      result.failures.map((f) => `${f.input.toString('hex')}: ${f.error}`),
      [],
    );
    // The corpus reaches the method handlers (signed requests pass authentication): far more
    // blocks than the decoder and the 401 path alone.
    assert.ok(result.initialBlocks > 500, `${result.initialBlocks} blocks`);
  } finally {
    await engine.stop();
    await coverage.stop();
  }
});
