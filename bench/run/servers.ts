// Starting a fresh server under test for one run of npm run bench, pinned to its
// placement's cores, and keeping its output as a log.
import { existsSync, writeFileSync } from 'node:fs';
import { relative } from 'node:path';

import type { ProcessGroup, TrackedProcess } from '../processes.js';
import { freeUdpPort, freeUdpRange, freeUdpTcpPort, stunBindingAnswers } from '../net.js';
import { PASSWORD, REALM, USER, anyturnLaunch, coturnLaunch, floorLaunch, type ServerLaunch, type ServerName } from '../servers.js';
import { sleep } from '../host.js';
import { onePlacement, type Placement } from './placement.js';

export const RELAY_PORT_COUNT = 200;
export const READY_TIMEOUT_MS = 15_000;

/** What every run of npm run bench shares: the processes, the peer, the directories and scripts. */
export interface RunContext {
  readonly group: ProcessGroup;
  readonly peerPort: number;
  readonly scratchDir: string;
  readonly logDir: string;
  readonly repoRoot: string;
  readonly anyturnCli: string;
  readonly floorScript: string;
}

export interface StartedServer {
  readonly server: TrackedProcess;
  readonly launch: ServerLaunch;
  readonly listeningPort: number;
  /** How readiness was seen: 'log line' or 'STUN Binding answered'. */
  readonly readyBy: string | undefined;
}

/** Ready when the log line appears (if the server has one) or a STUN Binding is answered. */
async function waitReady(server: TrackedProcess, launch: ServerLaunch, port: number): Promise<string | undefined> {
  let byLine = false;
  if (launch.readyLine !== undefined) {
    void server.waitForLine(launch.readyLine, READY_TIMEOUT_MS).then((ok) => {
      byLine = ok;
    });
  }
  const deadline = Date.now() + READY_TIMEOUT_MS;
  while (Date.now() < deadline && !server.hasExited()) {
    if (byLine) return 'log line';
    if (await stunBindingAnswers(port, 200)) return byLine ? 'log line' : 'STUN Binding answered';
    await sleep(100);
  }
  return undefined;
}

/** Starts a fresh server pinned to its placement's cores and waits until it is ready; a string says why not. */
export async function startServer(
  ctx: RunContext,
  serverName: ServerName,
  tcp: boolean,
  relayPortCount: number = RELAY_PORT_COUNT,
  placement: Placement = onePlacement(serverName),
): Promise<StartedServer | { readonly failure: string; readonly started?: StartedServer }> {
  const script = serverName === 'anyturn' ? ctx.anyturnCli : serverName === 'floor' ? ctx.floorScript : undefined;
  if (script !== undefined && !existsSync(script)) return { failure: `${relative(ctx.repoRoot, script)} does not exist (build first)` };
  const listeningPort = tcp ? await freeUdpTcpPort() : await freeUdpPort();
  const relayPorts = await freeUdpRange(relayPortCount);
  const settings = {
    listeningPort,
    relayPorts,
    user: USER,
    password: PASSWORD,
    realm: REALM,
    scratchDir: ctx.scratchDir,
    tcp,
    workers: placement.workers,
    relayThreads: placement.relayThreads,
  };
  const launch =
    serverName === 'coturn'
      ? coturnLaunch(settings)
      : serverName === 'floor'
        ? floorLaunch(settings, process.execPath, ctx.floorScript)
        : anyturnLaunch(settings, process.execPath, ctx.anyturnCli);
  const server = ctx.group.start(serverName, placement.serverCpus, launch.command, launch.args);
  const readyBy = await waitReady(server, launch, listeningPort);
  const started = { server, launch, listeningPort, readyBy };
  if (readyBy === undefined) {
    const why = server.hasExited()
      ? `server exited (${String(await server.exited)}) before it was ready`
      : `server not ready within ${READY_TIMEOUT_MS} ms (no ready line, no STUN Binding answer)`;
    return { failure: why, started };
  }
  return started;
}

/** The server's command line and everything it wrote, to `path`. */
export function saveServerLog(path: string, started: StartedServer): void {
  writeFileSync(path, `# ${started.launch.command} ${started.launch.args.join(' ')}\n${started.server.output()}`);
}
