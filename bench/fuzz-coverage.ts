// npm run fuzz:coverage: the coverage-guided loop (test/helpers/fuzz/guided.ts, on V8's
// block coverage) over the codec (src/stun) and the engine's request handling
// (TurnEngine.handleClientPacket with fake ports), for as long as asked. New inputs
// (those that ran a block nothing ran before) are written to fuzz/corpus/<target>/ with
// --write; a failure (a throw, an error-level log line, an unhandled rejection) is
// printed with its input in hex and ends the run with exit code 1.
//
// Usage: node dist/bench/fuzz-coverage.js [--target codec|engine] [--iterations N]
//                                         [--seed S] [--write] [--init]
// --init writes the seed corpus (every seed message of test/helpers/fuzz/seeds.ts) first.

import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { BlockCoverage } from '../test/helpers/fuzz/coverage.js';
import { SeededRandom } from '../test/helpers/random.js';

const { values } = parseArgs({
  options: {
    target: { type: 'string', default: 'engine' },
    iterations: { type: 'string', default: '100000' },
    seed: { type: 'string', default: '1' },
    write: { type: 'boolean', default: false },
    init: { type: 'boolean', default: false },
  },
});
const target = values.target === 'codec' ? 'codec' : 'engine';

// Coverage first, then the code under test, and everything that imports it (coverage.ts explains why).
const coverage = await BlockCoverage.start();
const { CORPUS_ROOT, corpusFileName, loadCorpus, runGuided } = await import('../test/helpers/fuzz/guided.js');
const targets = await import('../test/helpers/fuzz/targets.js');
const dir = join(CORPUS_ROOT, target);
if (values.init) {
  const { initialCorpus } = await import('../test/helpers/fuzz/initial-corpus.js');
  mkdirSync(dir, { recursive: true });
  for (const [name, input] of initialCorpus(target)) writeFileSync(join(dir, name), input);
}
const engine = target === 'engine' ? targets.createEngineTarget() : undefined;
const run = engine
  ? async (input: Buffer) => {
      const before = engine.failures.length;
      await engine.run(input);
      if (engine.failures.length > before) throw new Error(engine.failures.slice(before).join('\n'));
    }
  : targets.codecTarget;
const started = performance.now();
const result = await runGuided({
  run,
  coverage,
  corpus: loadCorpus(target),
  rng: new SeededRandom(Number(values.seed) >>> 0),
  iterations: Number(values.iterations),
  headerOffset: target === 'engine' ? 1 : 0,
  onNew: (input, blocks) => {
    if (values.write) writeFileSync(join(dir, `1-${corpusFileName(input)}`), input);
    console.log(`  new blocks: ${blocks} (${input.length} bytes)`);
  },
});
await engine?.stop();
const seconds = (performance.now() - started) / 1000;
console.log(
  `${target}: ${result.executions} executions in ${seconds.toFixed(0)} s; blocks ${result.initialBlocks} from the corpus, ${result.blocks} at the end; ${result.kept.length} inputs kept; ${result.failures.length} failures`,
);
for (const f of result.failures.slice(0, 10)) console.log(`FAILURE on ${f.input.toString('hex')}\n${f.error}`);
process.exit(result.failures.length > 0 ? 1 : 0);
