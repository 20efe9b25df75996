// The command line of the scale part: node dist/bench/allocations.js --parts scale [...].
import { MAX_RAMP_ADDRESSES, MAX_RELAY_ADDRESSES, RAMP_FIRST_PORT, relayAddressCount } from './scale-plan.js';

export const RELAY_SOCKET_MODES = ['auto', 'shared', 'per-allocation'] as const;
export type RelaySocketMode = (typeof RELAY_SOCKET_MODES)[number];

export interface ScaleOptions {
  /** Live allocations to measure at, ascending. */
  readonly sizes: readonly number[];
  readonly drivers: number;
  /** Allocations in flight per driver process. */
  readonly driverConcurrency: number;
  readonly portsPerAddress: number;
  readonly relayIps: number;
  /** anyturn --relay-sockets (not passed when undefined: the build may not have the flag). */
  readonly relaySockets: RelaySocketMode | undefined;
  /** anyturn --dataplane kernel on S's two veths (else --dataplane js). */
  readonly kernel: boolean;
  /** More anyturn flags, appended as given. */
  readonly serverArgs: readonly string[];
  /** Node.js/V8 flags for the anyturn process (before its script), as given: e.g. --trace-gc-nvp. */
  readonly nodeArgs: readonly string[];
  readonly latency: boolean;
  readonly probeRate: number;
  readonly probeSeconds: number;
  /** Latency measurements at the smallest and at the largest size, one after the other: one run moves 10-20 % here. */
  readonly latencyRounds: number;
  readonly churnRate: number;
  /** Ramp and churn allocations each bind a channel to the peer, as WebRTC clients do (--no-channels: none). */
  readonly channels: boolean;
  readonly lifecycles: number;
  readonly sync: boolean;
  readonly budgetMinutes: number;
}

export function scaleUsage(): string {
  return [
    'usage: node dist/bench/allocations.js --parts scale [--live-sizes 1000,10000,100000] [--drivers 2] [--driver-concurrency 32]',
    '         [--ports-per-address 5000] [--relay-ips N] [--relay-sockets auto|shared|per-allocation] [--kernel] [--server-arg ARG]... [--node-arg ARG]...',
    '         [--no-latency] [--probe-rate 200] [--probe-seconds 15] [--latency-rounds 3] [--churn-rate 100] [--lifecycles 500] [--no-channels] [--no-sync] [--budget-minutes 20]',
  ].join('\n');
}

/** Whether a command line asks for the scale part (it has a command line of its own). */
export function isScaleRun(argv: readonly string[]): boolean {
  const i = argv.indexOf('--parts');
  return i >= 0 && argv[i + 1] === 'scale';
}

function integer(flag: string, value: string, min: number, max: number): number {
  const n = Number(value);
  if (!Number.isInteger(n) || n < min || n > max) throw new Error(`${flag} '${value}': an integer from ${min} to ${max}`);
  return n;
}

function sizes(value: string): number[] {
  const out = value.split(',').map((v) => integer('--live-sizes', v.trim(), 1, 10_000_000));
  for (let i = 1; i < out.length; i++) {
    if (out[i]! <= out[i - 1]!) throw new Error(`--live-sizes '${value}': sizes must be ascending, e.g. 1000,10000,100000`);
  }
  return out;
}

type Mutable = { -readonly [K in keyof ScaleOptions]: ScaleOptions[K] };

const SWITCHES: Record<string, (o: Mutable) => void> = {
  '--kernel': (o) => {
    o.kernel = true;
  },
  '--no-latency': (o) => {
    o.latency = false;
  },
  '--no-channels': (o) => {
    o.channels = false;
  },
  '--no-sync': (o) => {
    o.sync = false;
  },
};

const VALUED: Record<string, (o: Mutable, v: string, flag: string) => void> = {
  '--parts': (_o, v, flag) => {
    if (v !== 'scale') throw new Error(`${flag} '${v}': the scale part runs alone (--parts scale)`);
  },
  '--live-sizes': (o, v) => {
    o.sizes = sizes(v);
  },
  '--drivers': (o, v, f) => {
    o.drivers = integer(f, v, 1, 64);
  },
  '--driver-concurrency': (o, v, f) => {
    o.driverConcurrency = integer(f, v, 1, 4096);
  },
  '--ports-per-address': (o, v, f) => {
    o.portsPerAddress = integer(f, v, 1, 65535 - RAMP_FIRST_PORT + 1);
  },
  '--relay-ips': (o, v, f) => {
    o.relayIps = integer(f, v, 1, MAX_RELAY_ADDRESSES);
  },
  '--relay-sockets': (o, v, f) => {
    const mode = RELAY_SOCKET_MODES.find((m) => m === v);
    if (mode === undefined) throw new Error(`${f} '${v}': one of ${RELAY_SOCKET_MODES.join(', ')}`);
    o.relaySockets = mode;
  },
  '--server-arg': (o, v) => {
    o.serverArgs = [...o.serverArgs, v];
  },
  '--node-arg': (o, v) => {
    o.nodeArgs = [...o.nodeArgs, v];
  },
  '--probe-rate': (o, v, f) => {
    o.probeRate = integer(f, v, 1, 10_000);
  },
  '--probe-seconds': (o, v, f) => {
    o.probeSeconds = integer(f, v, 1, 600);
  },
  '--latency-rounds': (o, v, f) => {
    o.latencyRounds = integer(f, v, 1, 20);
  },
  '--churn-rate': (o, v, f) => {
    o.churnRate = integer(f, v, 0, 5000);
  },
  '--lifecycles': (o, v, f) => {
    o.lifecycles = integer(f, v, 0, 50_000);
  },
  '--budget-minutes': (o, v, f) => {
    o.budgetMinutes = integer(f, v, 1, 240);
  },
};

export function parseScaleOptions(argv: readonly string[]): ScaleOptions {
  const o: Mutable = {
    sizes: [1000, 10_000],
    drivers: 2,
    driverConcurrency: 32,
    portsPerAddress: 5000,
    relayIps: 0,
    relaySockets: undefined,
    kernel: false,
    serverArgs: [],
    nodeArgs: [],
    latency: true,
    probeRate: 200,
    probeSeconds: 15,
    latencyRounds: 3,
    churnRate: 100,
    channels: true,
    lifecycles: 500,
    sync: true,
    budgetMinutes: 20,
  };
  for (let i = 0; i < argv.length; i++) {
    const flag = argv[i]!;
    if (flag === '--help' || flag === '-h') {
      console.log(scaleUsage());
      process.exit(0);
    }
    const sw = SWITCHES[flag];
    if (sw !== undefined) {
      sw(o);
      continue;
    }
    const set = VALUED[flag];
    if (set === undefined) throw new Error(`unknown argument '${flag}'\n${scaleUsage()}`);
    const value = argv[++i];
    if (value === undefined) throw new Error(`${flag} needs a value\n${scaleUsage()}`);
    set(o, value, flag);
  }
  // Shared relay sockets need the kernel program (it steers the relayed ports to the shared socket).
  if (o.relaySockets === 'shared') o.kernel = true;
  const largest = o.sizes[o.sizes.length - 1]!;
  const addresses = Math.ceil(largest / o.portsPerAddress);
  if (addresses > MAX_RAMP_ADDRESSES) {
    throw new Error(
      `--live-sizes ${largest} with --ports-per-address ${o.portsPerAddress}: needs ${addresses} client addresses, at most ${MAX_RAMP_ADDRESSES}`,
    );
  }
  // Room for the churn ring, the probe and the lifecycles next to the largest size.
  if (o.relayIps === 0) o.relayIps = Math.min(MAX_RELAY_ADDRESSES, relayAddressCount(largest + 5 * o.churnRate + o.lifecycles + 100));
  return o;
}
