// The data plane's metrics (docs/dataplane.md): which path relays ChannelData, how many
// channels the kernel holds, and what its program did with the packets it looked at.

import { Gauge, type Registry } from 'prom-client';
import type { DataplaneStatus } from '../dataplane/open.js';
import { totalCounter } from './total-counter.js';

/**
 * The data plane (docs/dataplane.md). What the kernel relays is already in
 * anyturn_relayed_* (read back into the engine's counters); these say which path is on
 * and what the kernel program did with the packets it looked at.
 */
export function dataplaneMetrics(registry: Registry, dataplane: DataplaneStatus): void {
  new Gauge({
    name: 'anyturn_dataplane_info',
    help: "Who relays ChannelData over UDP: mode 'kernel' (eBPF at tc ingress) or 'js'; always 1",
    labelNames: ['mode'],
    registers: [registry],
    collect() {
      this.reset();
      this.set({ mode: dataplane.mode }, 1);
    },
  });
  new Gauge({
    name: 'anyturn_dataplane_kernel_channels',
    help: 'Channel bindings installed in the kernel data plane (each relays both directions)',
    registers: [registry],
    collect() {
      this.set(dataplane.entries());
    },
  });
  totalCounter(
    registry,
    'anyturn_dataplane_kernel_refused_total',
    'Channel bindings the kernel data plane refused (its maps full: --dataplane-channels), relayed in JavaScript instead',
    [],
    () => [[{}, dataplane.refused()] as const],
  );
  totalCounter(
    registry,
    'anyturn_dataplane_kernel_packets_total',
    'Packets the kernel program looked at, by what it did: relayed (relayed_to_peer, relayed_to_client) or passed to user space and why (expired, no_route, too_big, malformed, ...)',
    ['event'],
    () => Object.entries(dataplane.totals()).map(([event, value]) => [{ event }, value] as const),
  );
}

/** What --relay-sockets chose (src/server/relay-sockets.ts). */
export interface RelaySocketsStatus {
  readonly mode: 'shared' | 'per-allocation';
  steeredPorts(): number;
}

/** The UDP relay socket model (docs/dataplane.md §8): one socket per relay address, or one per allocation. */
export function relaySocketMetrics(registry: Registry, relay: RelaySocketsStatus): void {
  new Gauge({
    name: 'anyturn_relay_sockets_info',
    help: "UDP relay sockets: mode 'shared' (one per relay address, the kernel steering the relayed ports to it) or 'per-allocation'; always 1",
    labelNames: ['mode'],
    registers: [registry],
    collect() {
      this.reset();
      this.set({ mode: relay.mode }, 1);
    },
  });
  new Gauge({
    name: 'anyturn_relay_steered_ports',
    help: 'Relayed ports the kernel data plane steers to a shared relay socket (0 with per-allocation sockets)',
    registers: [registry],
    collect() {
      this.set(relay.steeredPorts());
    },
  });
}
