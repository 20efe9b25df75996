// TURN engines in one process for the cluster and anycast tests: each "node" listens
// on the same anycast address through a fake client path, with fake relay sockets,
// over a store the test shares between nodes. Cluster (forward mode) nodes add a real
// mesh socket on 127.0.0.1 and a router. Addresses are from 198.18.0.0/15 (RFC 2544),
// never sent to: the fake paths only record what the engine would send.

import { randomBytes } from 'node:crypto';

import { ClusterCounters } from '../../src/cluster/counters.js';
import { MeshSocket } from '../../src/cluster/mesh.js';
import { ClusterRouter } from '../../src/cluster/router.js';
import type { AllocationStore, NodeRegistry } from '../../src/store/types.js';
import { decodeErrorCode } from '../../src/stun/attributes.js';
import { Attr, MessageClass } from '../../src/stun/constants.js';
import { longTermKey } from '../../src/stun/integrity.js';
import { decodeMessage, getAttribute } from '../../src/stun/message.js';
import { MessageWriter } from '../../src/stun/writer.js';
import type { EngineListener } from '../../src/turn/allocation/table.js';
import { CredentialStore } from '../../src/turn/auth/credentials.js';
import type { NonceIssuer } from '../../src/turn/auth/nonce.js';
import type { Clock } from '../../src/turn/clock.js';
import { EngineCounters } from '../../src/turn/counters.js';
import { TurnEngine } from '../../src/turn/engine.js';
import type { EngineOptions } from '../../src/turn/options.js';
import type { EngineLogger } from '../../src/turn/ports.js';
import { createPeerPolicy } from '../../src/turn/peer-policy.js';
import { FakeClientPath, FakeRelayFactory } from './fake-io.js';

export const ANYCAST = '198.18.100.1';
export const PORT = 3478;
export const USER = 'alice';
export const PASSWORD = 'secret';
export const CLIENT = '198.18.10.2';
export const PEER = '198.18.20.2';

export interface EngineNode {
  readonly engine: TurnEngine;
  readonly path: FakeClientPath;
  readonly listener: EngineListener;
  readonly relays: FakeRelayFactory;
}

export interface EngineNodeSetup {
  readonly nodeId: string;
  /** The realm USER (password PASSWORD) belongs to. */
  readonly realm: string;
  readonly nonces: NonceIssuer;
  readonly store: AllocationStore;
  readonly clock: Clock;
  readonly logger: EngineLogger;
  readonly relayAddressIPv4: string;
  /** The peer policy's own addresses (a peer there is refused). */
  readonly serverAddresses: string[];
  readonly allowedPeerRanges?: string[];
  readonly servicePorts?: number[];
  readonly counters?: EngineCounters;
  /** Anything else the test needs different: relayMode, foreign, ports, IPv6. */
  readonly engine?: Partial<EngineOptions>;
}

/** One engine on ANYCAST:PORT (UDP) with fake relay sockets, USER its only user. */
export function startEngineNode(s: EngineNodeSetup): EngineNode {
  const path = new FakeClientPath('udp', ANYCAST, PORT);
  const relays = new FakeRelayFactory();
  const engine = new TurnEngine({
    nodeId: s.nodeId,
    credentials: new CredentialStore({ realm: s.realm, users: new Map([[USER, PASSWORD]]), authSecrets: [] }),
    nonces: s.nonces,
    peerPolicy: createPeerPolicy({
      allowLoopbackPeers: false,
      allowedPeerRanges: s.allowedPeerRanges ?? ['198.18.0.0/15'],
      deniedPeerRanges: [],
      serverAddresses: s.serverAddresses,
      ...(s.servicePorts ? { servicePorts: s.servicePorts } : {}),
    }),
    store: s.store,
    relays,
    clock: s.clock,
    logger: s.logger,
    counters: s.counters ?? new EngineCounters(),
    relayAddressIPv4: s.relayAddressIPv4,
    minPort: 50000,
    maxPort: 50999,
    maxLifetimeSeconds: 3600,
    userQuota: 0,
    totalQuota: 0,
    software: '',
    ...s.engine,
  });
  return { engine, path, listener: engine.addListener(path), relays };
}

export interface MeshNode extends EngineNode {
  readonly id: string;
  readonly mesh: MeshSocket;
  readonly router: ClusterRouter;
  readonly counters: ClusterCounters;
  readonly engineCounters: EngineCounters;
}

export interface MeshNodeSetup {
  readonly id: string;
  readonly realm: string;
  readonly secret: Buffer;
  readonly nonces: NonceIssuer;
  readonly store: AllocationStore;
  readonly registry: NodeRegistry;
  readonly clock: Clock;
  readonly logger: EngineLogger;
  /** This node's own relay address (forward mode: every node has its own). */
  readonly relayIp: string;
  readonly lookupsPerSecond: number;
  /** Anything else the test needs different (e.g. mobility). */
  readonly engine?: Partial<EngineOptions>;
}

/**
 * A forward-mode node: the engine, its router, and a mesh socket on 127.0.0.1 that
 * hands forwarded packets for ANYCAST:PORT to the engine. Not yet in the registry:
 * the test announces it (registry.heartbeat) when it wants it seen.
 */
export async function startMeshNode(s: MeshNodeSetup): Promise<MeshNode> {
  const counters = new ClusterCounters();
  const engineCounters = new EngineCounters();
  let node: EngineNode | undefined;
  const mesh = new MeshSocket('127.0.0.1', 0, s.secret, {
    onPacket: (p) => {
      counters.meshReceived++;
      if (p.serverAddress === ANYCAST && p.serverPort === PORT) node!.engine.handleClientPacket(node!.listener, p.payload, p.clientAddress, p.clientPort, true);
    },
    onRejected: (reason) => counters.meshRejected[reason]++,
    onError: () => undefined,
  });
  await mesh.start();
  const { id, store, registry, clock, logger, lookupsPerSecond } = s;
  const router = new ClusterRouter({ nodeId: id, store, registry, mesh, clock, logger, counters, lookupsPerSecond });
  node = startEngineNode({
    nodeId: id,
    realm: s.realm,
    nonces: s.nonces,
    store,
    clock,
    logger,
    counters: engineCounters,
    relayAddressIPv4: s.relayIp,
    serverAddresses: [ANYCAST, s.relayIp],
    engine: { foreign: router, ...s.engine },
  });
  router.attach(node.engine);
  return { id, ...node, mesh, router, counters, engineCounters };
}

/** A request from USER with long-term credentials in `realm` and a fresh nonce for CLIENT. */
export function signedRequest(
  method: number,
  realm: string,
  nonce: string,
  decorate: (w: MessageWriter) => void = () => undefined,
): { buf: Buffer; id: string } {
  const transactionId = randomBytes(12);
  const w = new MessageWriter(method, MessageClass.Request, transactionId);
  decorate(w);
  w.addText(Attr.Username, USER);
  w.addText(Attr.Realm, realm);
  w.addText(Attr.Nonce, nonce);
  w.addIntegrity(longTermKey(USER, realm, PASSWORD));
  return { buf: w.toBuffer(), id: transactionId.toString('hex') };
}

/** The code of the response to transaction `id` that `node` sent to CLIENT:clientPort (200 for success), or undefined. */
export function responseCode(node: EngineNode, clientPort: number, id: string): number | undefined {
  for (const sent of node.path.sentTo(CLIENT, clientPort)) {
    const d = decodeMessage(sent.data);
    if (!d.ok || d.message.transactionId.toString('hex') !== id) continue;
    if (d.message.cls === MessageClass.SuccessResponse) return 200;
    return decodeErrorCode(getAttribute(d.message, Attr.ErrorCode) ?? Buffer.alloc(0))?.code;
  }
  return undefined;
}

/** Sends `node` a request signed with a fresh nonce from `nonce` and waits for its answer's code (200 for success). */
export async function askEngine(
  node: EngineNode,
  nonce: string,
  clientPort: number,
  method: number,
  realm: string,
  decorate: (w: MessageWriter) => void = () => undefined,
): Promise<number | undefined> {
  const { buf, id } = signedRequest(method, realm, nonce, decorate);
  node.engine.handleClientPacket(node.listener, buf, CLIENT, clientPort);
  await until(() => responseCode(node, clientPort, id) !== undefined, `an answer to method ${method}`);
  return responseCode(node, clientPort, id);
}

/** Polls `predicate` every 5 ms; the deadline only bounds how long a broken test hangs. */
export async function until(predicate: () => boolean | Promise<boolean>, what: string, timeoutMs = 5000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await predicate())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 5));
  }
}
