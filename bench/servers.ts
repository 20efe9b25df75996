// How each server under test is started. They listen and relay on 127.0.0.1 unless the
// settings name other addresses (bench/dataplane.ts: a namespace's veths).
import type { PortRange } from './net.js';

/** The one long-term credential (RFC 8489 §9.2) every server under test is given. */
export const USER = 'bench';
export const PASSWORD = 'bench-password';
export const REALM = 'bench.anyturn';
/** The shared secret of time-limited credentials (--use-auth-secret), where a bench asks for them. */
export const AUTH_SECRET = 'bench-auth-secret';

export type ServerName = 'anyturn' | 'coturn' | 'floor';
export const SERVER_NAMES: readonly ServerName[] = ['anyturn', 'coturn', 'floor'];

export interface ServerSettings {
  readonly listeningPort: number;
  readonly relayPorts: PortRange;
  readonly user: string;
  readonly password: string;
  readonly realm: string;
  /** Scratch directory for coturn's pid file and SQLite db. */
  readonly scratchDir: string;
  /** Also listen for TCP clients on listeningPort (coturn otherwise gets --no-tcp; anyturn always listens on TCP). */
  readonly tcp?: boolean;
  /** anyturn --workers (default 1: one process). */
  readonly workers?: number;
  /** coturn --relay-threads (default 0: relaying on the listener thread). */
  readonly relayThreads?: number;
  /** Listening and relay address (default 127.0.0.1; bench/dataplane.ts puts them on a namespace's veths). */
  readonly listeningIp?: string;
  readonly relayIp?: string;
  /** Also take time-limited credentials made with this secret (--use-auth-secret --static-auth-secret: both servers' names). */
  readonly authSecret?: string;
}

export interface ServerLaunch {
  readonly command: string;
  readonly args: readonly string[];
  /** A log line that says the server is ready; undefined = rely on the STUN probe. */
  readonly readyLine: RegExp | undefined;
}

export function coturnLaunch(s: ServerSettings): ServerLaunch {
  return {
    command: 'turnserver',
    args: [
      '-n',
      '--lt-cred-mech', // before --user, where it always was
      ...loopbackTurnArgs(s),
      ...(s.tcp === true ? [] : ['--no-tcp']),
      '--no-tls',
      '--no-dtls',
      '--no-cli',
      // 0 = coturn's single-threaded mode: relaying happens on the main listener
      // thread, the nearest match to one Node event loop. (--relay-threads 1 adds
      // a separate relay thread; the default is one per CPU.) coturn keeps its
      // auth and admin threads either way; all threads are pinned to the same core.
      '--relay-threads',
      String(s.relayThreads ?? 0),
      '--log-file',
      'stdout',
      '--simple-log',
      // Keep coturn's files out of /var/run and /var/lib/turn.
      '--pidfile',
      `${s.scratchDir}/turnserver.pid`,
      '--userdb',
      `${s.scratchDir}/turndb`,
    ],
    readyLine: undefined,
  };
}

/**
 * The flags every anyturn and coturn under test starts with (anyturn takes coturn's
 * names for them): loopback only, its ports, the credential.
 */
export function loopbackTurnArgs(
  s: Pick<ServerSettings, 'listeningPort' | 'relayPorts' | 'user' | 'password' | 'realm' | 'listeningIp' | 'relayIp' | 'authSecret'>,
): string[] {
  return [
    '--listening-ip',
    s.listeningIp ?? '127.0.0.1',
    '--listening-port',
    String(s.listeningPort),
    '--relay-ip',
    s.relayIp ?? '127.0.0.1',
    '--min-port',
    String(s.relayPorts.min),
    '--max-port',
    String(s.relayPorts.max),
    '--user',
    `${s.user}:${s.password}`,
    '--realm',
    s.realm,
    '--allow-loopback-peers',
    ...(s.authSecret === undefined ? [] : ['--use-auth-secret', '--static-auth-secret', s.authSecret]),
  ];
}

export function anyturnLaunch(s: ServerSettings, nodePath: string, cliPath: string): ServerLaunch {
  return {
    command: nodePath,
    args: [
      cliPath,
      ...loopbackTurnArgs(s),
      '--metrics-port',
      '0',
      '--log-level',
      'warn',
      ...(s.workers !== undefined && s.workers > 1 ? ['--workers', String(s.workers)] : []),
    ],
    readyLine: /"msg":"anyturn ready"/,
  };
}

/**
 * The floor (bench/floor-forwarder.ts): a minimal relay in plain Node, the lower
 * bound for any Node TURN server. UDP clients only.
 */
export function floorLaunch(s: ServerSettings, nodePath: string, floorPath: string): ServerLaunch {
  return {
    command: nodePath,
    args: [
      floorPath,
      '--listening-ip',
      s.listeningIp ?? '127.0.0.1',
      '--listening-port',
      String(s.listeningPort),
      '--relay-ip',
      s.relayIp ?? '127.0.0.1',
      '--user',
      `${s.user}:${s.password}`,
      '--realm',
      s.realm,
    ],
    readyLine: /^floor ready/,
  };
}
