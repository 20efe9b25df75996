// Where a server under test and its load run, and how many cores the server may use.
import { CLIENT_CPU, SERVER_CPU } from '../host.js';
import type { ServerName } from '../servers.js';

export interface Placement {
  /** The name in tables: the server, or e.g. 'anyturn x2' in the scaling section. */
  readonly label: string;
  readonly serverCpus: string;
  readonly clientCpus: string;
  /** anyturn --workers; coturn --relay-threads. */
  readonly workers: number;
  readonly relayThreads: number;
}

/** The main table's placement: the server alone on SERVER_CPU, one process, one relay thread. */
export function onePlacement(server: ServerName): Placement {
  return { label: server, serverCpus: String(SERVER_CPU), clientCpus: String(CLIENT_CPU), workers: 1, relayThreads: 0 };
}

/**
 * The scaling section (--scaling): one core against two. On this 2-core machine the
 * 2-core servers share both cores with uclient and the peer; the 1-core ones have core 1
 * to themselves, as in the main table.
 */
export const SCALING: readonly { readonly server: ServerName; readonly placement: Placement }[] = [
  { server: 'anyturn', placement: { label: 'anyturn 1 proc', serverCpus: '1', clientCpus: '0', workers: 1, relayThreads: 0 } },
  { server: 'anyturn', placement: { label: 'anyturn --workers 2', serverCpus: '0,1', clientCpus: '0,1', workers: 2, relayThreads: 0 } },
  { server: 'coturn', placement: { label: 'coturn 1 thread', serverCpus: '1', clientCpus: '0', workers: 1, relayThreads: 0 } },
  { server: 'coturn', placement: { label: 'coturn 2 threads', serverCpus: '0,1', clientCpus: '0,1', workers: 1, relayThreads: 2 } },
];
