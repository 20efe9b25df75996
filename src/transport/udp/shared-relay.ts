// One UDP socket per relay address instead of one per allocation (--relay-sockets shared,
// docs/dataplane.md §8): the kernel data plane steers every relayed port of an address
// to that socket and carries the port the peer sent to in a 4-byte trailer (the port,
// then TRAILER_MAGIC, network order) at the end of the datagram; what this socket sends
// carries the relayed port to send from in the same trailer, which the egress program
// takes off. A node then holds O(relay addresses) sockets, not O(allocations).
//
// Node's dgram can neither read a datagram's destination port nor choose a source port
// per datagram: hence the trailer, written and read here and in the kernel only. The
// engine sees the usual RelaySocket and PeerPacketHandler, with the datagram's length.

import type dgram from 'node:dgram';
import type { DropReason } from '../../turn/counters.js';
import type { PeerPacketHandler, RelayBindFailure, RelaySocket, RelaySocketFactory } from '../../turn/ports.js';
import { SEND_QUEUED, UdpSender, receiveFromHandle } from './dgram-fast.js';
import { SendScratch } from './framed-sender.js';
import { bindUdpSocket, closeUdpSocket, createUdpSocket } from './socket.js';

/** relay.bpf.c TRAILER_MAGIC / entries.ts: the trailer's second half. */
export const TRAILER_MAGIC = 0xa5c3;
export const TRAILER_LENGTH = 4;
/** Binds on port 0 until the kernel picks a port outside the relay range. */
const SHARED_BIND_TRIES = 32;

/** The kernel's steering map, as the factory needs it (KernelDataplane implements it). */
export interface PortSteering {
  /** sharedPort on address is the shared socket: resolves once the kernel holds the entry. */
  shareSocket(address: string, sharedPort: number): Promise<void>;
  /** Steers peers' datagrams for address:port to the shared socket; resolves once the kernel holds the entry. */
  steer(address: string, port: number, sharedPort: number): Promise<void>;
  /** Stops steering address:port (in order with later writes). */
  unsteer(address: string, port: number): void;
  /** False once the kernel path is gone: no new port can be steered. */
  readonly steering: boolean;
}

export interface SharedRelayOptions {
  readonly addresses: readonly string[];
  /** The relay port range: the shared socket's port must lie outside it. */
  readonly minPort: number;
  readonly maxPort: number;
  readonly steering: PortSteering;
  /** The engine's drop counters: datagrams without a valid trailer count as no_steer_trailer. */
  readonly drops: Record<DropReason, number>;
  readonly onError: (err: Error) => void;
}

const IN_USE: RelayBindFailure = { failed: 'in-use' };
const NO_STEERING: RelayBindFailure = { failed: 'unavailable', code: 'ESTEER' };

/** The shared socket of one relay address and the relayed ports it serves. */
class SharedAddress {
  // What every relay socket of the address reaches through its owner, rather than holding
  // each itself (a closure per socket was ~130 B of heap per allocation: docs/scaling.md).
  /** Relayed port -> the handler of the allocation holding it. */
  readonly handlers: (PeerPacketHandler | undefined)[] = new Array<PeerPacketHandler | undefined>(65536).fill(undefined);
  readonly bound = new Uint8Array(65536);
  closed = 0;
  held = 0;
  readonly sender: UdpSender;

  constructor(
    readonly address: string,
    readonly socket: dgram.Socket,
    readonly sharedPort: number,
    drops: Record<DropReason, number>,
    /** The factory's send scratch, and the one for deliveries between two relayed ports of this address. */
    readonly scratch: SendScratch,
    readonly local: SendScratch,
    private readonly steering: PortSteering,
  ) {
    this.sender = new UdpSender(socket);
    const handlers = this.handlers;
    // Per datagram: the trailer names the relayed port; no object, no string key.
    const onDatagram = (buf: Buffer, address: string, port: number): void => {
      const n = buf.length - TRAILER_LENGTH;
      if (n < 0 || buf[n + 2] !== TRAILER_MAGIC >> 8 || buf[n + 3] !== (TRAILER_MAGIC & 0xff)) {
        drops.no_steer_trailer++;
        return;
      }
      const handler = handlers[(buf[n]! << 8) | buf[n + 1]!];
      if (handler === undefined) {
        drops.no_steer_trailer++;
        return;
      }
      handler(buf, address, port, n);
    };
    if (!receiveFromHandle(socket, onDatagram)) socket.on('message', (msg, rinfo) => onDatagram(msg, rinfo.address, rinfo.port));
  }

  /** A relay socket of this address closed: its port is free, and no longer steered. */
  release(port: number): void {
    this.handlers[port] = undefined;
    this.bound[port] = 0;
    this.held--;
    this.closed++;
    this.steering.unsteer(this.address, port);
  }
}

class SharedRelaySocket implements RelaySocket {
  private closed = false;
  constructor(
    private readonly owner: SharedAddress,
    readonly port: number,
  ) {}

  get address(): string {
    return this.owner.address;
  }

  send(payload: Buffer, offset: number, length: number, port: number, address: string): void {
    if (this.closed || offset < 0 || length < 0 || offset + length > payload.length) return;
    const owner = this.owner;
    // To another relayed port of the same address (two allocations of this server talking):
    // the packet would leave through lo, where no program takes the trailer off, so it is
    // handed over here, as the kernel would deliver it (from this relayed address and port).
    if (address === owner.address) {
      const handler = owner.handlers[port];
      const local = owner.local;
      if (handler === undefined || length > local.buffer.length) return;
      payload.copy(local.buffer, 0, offset, offset + length);
      handler(local.buffer, owner.address, this.port, length);
      return;
    }
    const scratch = owner.scratch;
    const total = length + TRAILER_LENGTH;
    if (total > scratch.buffer.length) return;
    const buf = scratch.buffer;
    payload.copy(buf, 0, offset, offset + length);
    buf[length] = this.port >> 8;
    buf[length + 1] = this.port & 0xff;
    buf[length + 2] = TRAILER_MAGIC >> 8;
    buf[length + 3] = TRAILER_MAGIC & 0xff;
    if (owner.sender.send(scratch.view(0, total), 0, total, port, address) === SEND_QUEUED) scratch.replace();
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.owner.release(this.port);
  }
}

/**
 * Relay sockets over one shared socket per relay address. `bind` registers the port and
 * has the kernel steer it (resolving once the entry is in the map); `close` takes both
 * back. Ports held by other processes cannot be seen (nothing is bound on them): the
 * relay range must be left to anyturn (docs/dataplane.md §8).
 */
export class SharedRelayFactory implements RelaySocketFactory {
  private readonly scratch = new SendScratch();
  private readonly local = new SendScratch();
  private readonly byAddress = new Map<string, SharedAddress>();

  private constructor(private readonly o: SharedRelayOptions) {}

  /** Binds one socket per relay address on a port outside the relay range and lists it in the kernel. */
  static async open(o: SharedRelayOptions): Promise<SharedRelayFactory> {
    const factory = new SharedRelayFactory(o);
    try {
      for (const address of o.addresses) {
        const { socket, port } = await bindOutsideRange(address, o.minPort, o.maxPort);
        socket.on('error', (err) => o.onError(err));
        factory.byAddress.set(address, new SharedAddress(address, socket, port, o.drops, factory.scratch, factory.local, o.steering));
        await o.steering.shareSocket(address, port);
      }
    } catch (err) {
      await factory.close();
      throw err;
    }
    return factory;
  }

  /** The shared socket's port on address (tests, the start-up line). */
  sharedPort(address: string): number | undefined {
    return this.byAddress.get(address)?.sharedPort;
  }

  /** Relayed ports steered now, over every address (metrics). */
  get steeredPorts(): number {
    let n = 0;
    for (const a of this.byAddress.values()) n += a.held;
    return n;
  }

  holds(address: string, port: number): boolean {
    return this.byAddress.get(address)?.bound[port] === 1;
  }

  closedCount(address: string): number {
    return this.byAddress.get(address)?.closed ?? 0;
  }

  async bind(address: string, port: number, onPacket: PeerPacketHandler): Promise<RelaySocket | RelayBindFailure> {
    const a = this.byAddress.get(address);
    if (a === undefined) return { failed: 'unavailable', code: 'EADDRNOTAVAIL' };
    // Port 0 (a probe) has nothing to steer; the shared socket's own port is never a relayed one.
    if (port === 0 || port === a.sharedPort || a.bound[port] === 1) return IN_USE;
    if (!this.o.steering.steering) return NO_STEERING;
    a.bound[port] = 1;
    try {
      await this.o.steering.steer(address, port, a.sharedPort);
    } catch {
      a.bound[port] = 0;
      return NO_STEERING;
    }
    a.handlers[port] = onPacket;
    a.held++;
    return new SharedRelaySocket(a, port);
  }

  async available(address: string): Promise<boolean> {
    return this.o.steering.steering && this.byAddress.has(address);
  }

  /** Closes the shared sockets and takes their entries out (server stop, after the engine closed every relay socket). */
  async close(): Promise<void> {
    for (const a of this.byAddress.values()) {
      this.o.steering.unsteer(a.address, a.sharedPort);
      await closeUdpSocket(a.socket);
    }
    this.byAddress.clear();
  }
}

/**
 * A socket on address with a port outside [minPort, maxPort]: a relayed port and the shared
 * port must never be the same number (the steering map keys both by port). A kernel-chosen
 * (ephemeral) port first; when the relay range covers the ephemeral range, the ports above
 * the range, then those below it down to 1024, one bind each until one is free.
 */
async function bindOutsideRange(address: string, minPort: number, maxPort: number): Promise<{ socket: dgram.Socket; port: number }> {
  const inRange: dgram.Socket[] = [];
  try {
    for (let i = 0; i < SHARED_BIND_TRIES; i++) {
      const socket = createUdpSocket(address);
      await bindUdpSocket(socket, address, 0);
      const port = socket.address().port;
      if (port < minPort || port > maxPort) return { socket, port };
      inRange.push(socket); // held until done, so the next try gets another port
    }
  } finally {
    for (const s of inRange) await closeUdpSocket(s);
  }
  for (const port of portsOutside(minPort, maxPort)) {
    const socket = createUdpSocket(address);
    try {
      await bindUdpSocket(socket, address, port);
      return { socket, port };
    } catch {
      await closeUdpSocket(socket);
    }
  }
  throw new Error(
    `no port outside the relay range ${minPort}-${maxPort} (from 1024) for the shared relay socket on ${address}: every one is taken; leave a port free outside --min-port..--max-port or use --relay-sockets per-allocation`,
  );
}

/** Ports above the range, then below it down to 1024, nearest first. */
function* portsOutside(minPort: number, maxPort: number): Generator<number> {
  for (let p = maxPort + 1; p <= 65535; p++) yield p;
  for (let p = minPort - 1; p >= 1024; p--) yield p;
}
