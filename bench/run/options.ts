// npm run bench's command line: which servers, cases and sections to run.
import { CASE_NAMES, type CaseName } from '../uclient.js';
import { SERVER_NAMES, type ServerName } from '../servers.js';

/** Max lossless rate: sessions per step (1 ms interval each, so N sessions = N k msg/s offered). */
const DEFAULT_RATE_STEPS = [40, 60, 80, 100];
const DEFAULT_SCALING_STEPS = [40, 60, 80, 100, 120, 140];

export interface Options {
  readonly servers: readonly ServerName[];
  readonly cases: readonly CaseName[];
  readonly messagesPerSession: number | undefined;
  /** Runs of each case per server, taking turns; the table shows the median run. */
  readonly rounds: number;
  readonly latency: boolean;
  readonly rate: boolean;
  readonly rateSteps: readonly number[];
  /** Only the scaling section: 1 core against 2 (anyturn --workers 2, coturn --relay-threads 2). */
  readonly scaling: boolean;
}

function usage(): string {
  return `usage: node dist/bench/run.js [--only ${SERVER_NAMES.join('|')}] [--cases ${CASE_NAMES.join(',')}] [-n N] [--rounds N] [--no-latency] [--no-rate] [--rate-steps ${DEFAULT_RATE_STEPS.join(',')}] [--scaling]`;
}

function parseCases(value: string): CaseName[] {
  const picked: CaseName[] = [];
  for (const part of value.split(',')) {
    const c = CASE_NAMES.find((n) => n === part.trim());
    if (c === undefined) throw new Error(`--cases '${part}': allowed are ${CASE_NAMES.join(', ')}`);
    if (!picked.includes(c)) picked.push(c);
  }
  return picked;
}

export function parseOptions(argv: readonly string[]): Options {
  let servers: readonly ServerName[] = SERVER_NAMES;
  let cases: readonly CaseName[] = CASE_NAMES;
  let messagesPerSession: number | undefined;
  let rounds = 1;
  let latency = true;
  let rate = true;
  let rateSteps: readonly number[] | undefined;
  let scaling = false;
  for (let i = 0; i < argv.length; i++) {
    const flag = argv[i];
    const value = argv[i + 1];
    if (flag === '--help') {
      console.log(usage());
      process.exit(0);
    }
    if (flag === '--no-latency') {
      latency = false;
      continue;
    }
    if (flag === '--no-rate') {
      rate = false;
      continue;
    }
    if (flag === '--scaling') {
      scaling = true;
      continue;
    }
    if (flag !== '--only' && flag !== '--cases' && flag !== '-n' && flag !== '--rounds' && flag !== '--rate-steps') {
      throw new Error(`unknown argument '${flag ?? ''}'; ${usage()}`);
    }
    if (value === undefined) throw new Error(`${flag} needs a value; ${usage()}`);
    i++;
    if (flag === '--only') {
      const s = SERVER_NAMES.find((n) => n === value);
      if (s === undefined) throw new Error(`--only '${value}': allowed are ${SERVER_NAMES.join(', ')}`);
      servers = [s];
    } else if (flag === '--cases') {
      cases = parseCases(value);
    } else if (flag === '--rounds') {
      const n = Number(value);
      if (!Number.isInteger(n) || n < 1 || n > 50) throw new Error(`--rounds '${value}': runs per case and server, an integer from 1 to 50`);
      rounds = n;
    } else if (flag === '--rate-steps') {
      const steps = value.split(',').map((v) => Number(v.trim()));
      if (steps.some((n) => !Number.isInteger(n) || n < 1 || n > 150)) throw new Error(`--rate-steps '${value}': sessions per step, integers 1-150`);
      rateSteps = [...steps].sort((a, b) => a - b);
    } else {
      const n = Number(value);
      if (!Number.isInteger(n) || n < 1) throw new Error(`-n '${value}': a positive integer is required`);
      messagesPerSession = n;
    }
  }
  return { servers, cases, messagesPerSession, rounds, latency, rate, rateSteps: rateSteps ?? (scaling ? DEFAULT_SCALING_STEPS : DEFAULT_RATE_STEPS), scaling };
}
