// The open-file limit (RLIMIT_NOFILE) against what the configuration may open: one
// descriptor per relay socket, per TCP/TLS connection and per listener. Node raises its
// soft limit to the hard limit when it starts (as servers commonly do), so the limit read
// here is already the most this process can have; a shortfall can only be fixed from
// outside (ulimit -n, compose `ulimits`, systemd LimitNOFILE) or by asking for less.

import { readFileSync } from 'node:fs';
import type { ServerConfig } from '../config/index.js';
import { RESERVED_DESCRIPTORS } from '../transport/udp/relay.js';

/** Descriptors Node itself holds (stdio, epoll, signal pipes, worker threads) and a margin for the store and the log. */
const BASE_DESCRIPTORS = 32;

export interface OpenFileLimit {
  /** Infinity for "unlimited". */
  readonly soft: number;
  readonly hard: number;
}

/** The "Max open files" line of /proc/self/limits; undefined where there is none (not Linux). */
export function readOpenFileLimit(read: () => string = () => readFileSync('/proc/self/limits', 'utf8')): OpenFileLimit | undefined {
  let text: string;
  try {
    text = read();
  } catch {
    return undefined;
  }
  const m = /^Max open files\s+(\S+)\s+(\S+)/m.exec(text);
  if (!m) return undefined;
  const value = (s: string): number => (s === 'unlimited' ? Infinity : Number(s));
  const soft = value(m[1]!);
  const hard = value(m[2]!);
  return Number.isNaN(soft) || Number.isNaN(hard) ? undefined : { soft, hard };
}

export interface DescriptorNeeds {
  /** Relay sockets one process may hold: the port range on every --relay-ip (its slice with --workers), capped by --total-quota. */
  readonly relaySockets: number;
  /** TCP/TLS client connections (--max-tcp-connections; 0 when neither listens). */
  readonly connections: number;
  /** Listening sockets, the ops endpoint, the mesh, Node's own and the set-aside few. */
  readonly other: number;
  readonly total: number;
}

export function descriptorNeeds(config: ServerConfig): DescriptorNeeds {
  const ports = config.maxPort - config.minPort + 1;
  const workers = Math.max(1, config.workers);
  let relaySockets = Math.ceil((ports * config.relayIps.length) / workers);
  // --relay-sockets shared (docs/dataplane.md §8): one socket per relay address, whatever the range.
  if (config.dataplane.relaySockets === 'shared') relaySockets = config.relayIps.length;
  else if (config.totalQuota > 0) {
    // A dual-stack allocation (RFC 8656 ADDITIONAL-ADDRESS-FAMILY) holds one socket per family.
    const families = config.relayIps.some((ip) => ip.includes(':')) && config.relayIps.some((ip) => !ip.includes(':')) ? 2 : 1;
    relaySockets = Math.min(relaySockets, Math.ceil(config.totalQuota / workers) * families);
  }
  const streams = config.tcp || config.tls !== undefined;
  const connections = streams ? config.maxTcpConnections : 0;
  const perIp = (config.udp ? 1 : 0) + (config.tcp ? 1 : 0) + (config.tls ? 1 : 0);
  const other = config.listeningIps.length * perIp + (config.metricsPort > 0 ? 1 : 0) + (config.cluster ? 1 : 0) + RESERVED_DESCRIPTORS + BASE_DESCRIPTORS;
  return { relaySockets, connections, other, total: relaySockets + connections + other };
}

/** A warning naming the flags when what the configuration may open does not fit the limit; undefined when it fits. */
export function openFileLimitWarning(config: ServerConfig, limit: OpenFileLimit): { readonly message: string; readonly needs: DescriptorNeeds } | undefined {
  const needs = descriptorNeeds(config);
  if (needs.total <= limit.soft) return undefined;
  const range = `--min-port ${config.minPort} to --max-port ${config.maxPort} on ${config.relayIps.length} --relay-ip${config.workers > 1 ? `, split over --workers ${config.workers}` : ''}`;
  const quota = config.totalQuota > 0 ? ` (capped by --total-quota ${config.totalQuota})` : ' (no --total-quota)';
  const connections = needs.connections > 0 ? ` + ${needs.connections} TCP/TLS connections (--max-tcp-connections)` : '';
  const room = limit.soft - needs.connections - needs.other;
  const fixes = ['raise the hard limit (ulimit -n, compose ulimits: nofile, systemd LimitNOFILE=; Node raises the soft limit to it at start)'];
  if (room > 0) fixes.push(`set --total-quota to at most ${room}`);
  if (needs.connections > 0) fixes.push('lower --max-tcp-connections');
  fixes.push('narrow --min-port/--max-port');
  // auto becomes shared where the kernel data plane loads: then the range costs no descriptors.
  if (config.dataplane.relaySockets === 'auto' && config.dataplane.mode !== 'js')
    fixes.push('run with the kernel data plane (--relay-sockets auto then holds one socket per relay address)');
  return {
    needs,
    message:
      `open-file limit ${limit.soft} is below the ${needs.total} descriptors this configuration may use: ` +
      `${needs.relaySockets} relay sockets for ${range}${quota}${connections} + ${needs.other} listeners and others. ` +
      `At the limit new Allocates get 508 and /readyz says why. To fit: ${fixes.join(', or ')}`,
  };
}
