// The yargs parser, built from the flag table: each entry's group, description, default
// and type make its --help line; yargs' .env(ENV_PREFIX) reads ANYTURN_* for every flag.

import yargs, { type Options } from 'yargs';
import { ENV_PREFIX, FLAGS, type FlagName, type FlagSpec, GROUPS, type RawOptions, envName, flagNames } from './flags.js';

/** What yargs is told about one flag. */
export function yargsOption(flag: FlagSpec): Options {
  const { type, array, choices } = flag.kind.yargs;
  const shown = flag.cliDefault ?? flag.default;
  return {
    ...(type !== undefined ? { type } : {}),
    ...(array ? { array } : {}),
    ...(choices ? { choices: [...choices] } : {}),
    ...(flag.describe !== undefined ? { describe: flag.describe } : {}),
    ...(shown !== undefined ? { default: shown } : {}),
    ...(flag.hidden ? { hidden: true } : {}),
  };
}

export function parseArgs(argv: string[]): RawOptions {
  const parser = yargs(argv)
    .scriptName('anyturn')
    .usage('$0 [options]\n\nA TURN relay server (RFC 8656) for one relay per PoP behind an anycast IP.')
    .epilogue(
      `Every flag is also an environment variable: --listening-port -> ${envName('listening-port')}.\n` +
        'From the environment, repeatable address flags take a comma-separated list.\n' +
        'Signals: SIGTERM/SIGINT stop gracefully (allocations deleted, exit 0); SIGUSR1 drains (new Allocates get 403).',
    )
    .env(ENV_PREFIX)
    .strict();
  for (const group of GROUPS)
    parser.group(
      flagNames().filter((name) => (FLAGS[name] as FlagSpec).group === group),
      group,
    );
  for (const name of flagNames()) parser.option(name satisfies FlagName, yargsOption(FLAGS[name]));
  const parsed = parser
    .help()
    .alias('help', 'h')
    .version()
    // yargs' ESM build wraps by character count, cutting flag names in two ("--no-tc" / "p"):
    // wrap for a terminal only, and leave each description on one line for pipes and grep.
    .wrap(process.stdout.isTTY ? Math.min(100, process.stdout.columns || 100) : null)
    .fail((msg, err) => {
      throw err ?? new Error(msg);
    })
    .parseSync();
  return parsed as unknown as RawOptions;
}
