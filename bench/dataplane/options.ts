// npm run bench:dataplane's command line.
import { SERVER_TARGETS, type ServerTarget } from './servers.js';

export interface Options {
  readonly servers: readonly ServerTarget[];
  readonly rounds: number;
  readonly sessions: number;
  /** The cost runs: messages per second (all sessions), messages in total, payload bytes. */
  readonly rate: number;
  readonly messages: number;
  readonly size: number;
  readonly latency: boolean;
  readonly latencyRate: number;
  readonly latencyMessages: number;
  readonly maxRate: boolean;
  /** Offered msg/s per step of the max lossless rate search, ascending. */
  readonly rateSteps: readonly number[];
  readonly rateSeconds: number;
  /** ethtool -K eth0 tx off on C and P (docs/dataplane.md: needed by the kernel path on veth). */
  readonly txChecksumOff: boolean;
}

const DEFAULTS: Options = {
  servers: SERVER_TARGETS,
  rounds: 1,
  sessions: 20,
  rate: 20_000,
  messages: 300_000,
  size: 100,
  latency: true,
  latencyRate: 200,
  latencyMessages: 2000,
  maxRate: true,
  rateSteps: [20_000, 40_000, 60_000, 80_000, 100_000, 150_000, 200_000],
  rateSeconds: 5,
  txChecksumOff: true,
};

export function usage(): string {
  return [
    'usage: node dist/bench/dataplane.js [--only anyturn-kernel,anyturn-js,coturn,floor] [--rounds N]',
    '         [--sessions 20] [--rate 20000] [--messages 300000] [--size 100]',
    '         [--no-latency] [--latency-rate 200] [--latency-messages 2000]',
    '         [--no-max-rate] [--rate-steps 20000,40000,...] [--rate-seconds 5] [--tx-checksum-offload]',
  ].join('\n');
}

function integer(flag: string, value: string, min: number, max: number): number {
  const n = Number(value);
  if (!Number.isInteger(n) || n < min || n > max) throw new Error(`${flag} '${value}': an integer from ${min} to ${max}`);
  return n;
}

export function parseOptions(argv: readonly string[]): Options {
  const o: { -readonly [K in keyof Options]: Options[K] } = { ...DEFAULTS };
  for (let i = 0; i < argv.length; i++) {
    const flag = argv[i]!;
    if (flag === '--help') {
      console.log(usage());
      process.exit(0);
    }
    if (flag === '--no-latency' || flag === '--no-max-rate' || flag === '--tx-checksum-offload') {
      if (flag === '--no-latency') o.latency = false;
      else if (flag === '--no-max-rate') o.maxRate = false;
      else o.txChecksumOff = false;
      continue;
    }
    const value = argv[++i];
    if (value === undefined) throw new Error(`${flag} needs a value\n${usage()}`);
    switch (flag) {
      case '--only':
        o.servers = value.split(',').map((v) => {
          const s = SERVER_TARGETS.find((t) => t === v.trim());
          if (s === undefined) throw new Error(`--only '${v}': allowed are ${SERVER_TARGETS.join(', ')}`);
          return s;
        });
        break;
      case '--rounds':
        o.rounds = integer(flag, value, 1, 50);
        break;
      case '--sessions':
        o.sessions = integer(flag, value, 1, 1024);
        break;
      case '--rate':
        o.rate = integer(flag, value, 1, 10_000_000);
        break;
      case '--messages':
        o.messages = integer(flag, value, 1, 1_000_000_000);
        break;
      case '--size':
        o.size = integer(flag, value, 16, 1400);
        break;
      case '--latency-rate':
        o.latencyRate = integer(flag, value, 1, 100_000);
        break;
      case '--latency-messages':
        o.latencyMessages = integer(flag, value, 1, 10_000_000);
        break;
      case '--rate-steps':
        o.rateSteps = value
          .split(',')
          .map((v) => integer(flag, v.trim(), 1, 10_000_000))
          .sort((a, b) => a - b);
        break;
      case '--rate-seconds':
        o.rateSeconds = integer(flag, value, 1, 600);
        break;
      default:
        throw new Error(`unknown argument '${flag}'\n${usage()}`);
    }
  }
  return o;
}
