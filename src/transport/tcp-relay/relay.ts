// The relayed transport addresses of RFC 6062 TCP allocations: a listening TCP socket on
// the relay address and port, which peers connect to (§5.3), and the connections the
// server makes to peers (§5.2).
//
// The source of those connections: the relay IP, with a port the kernel picks. RFC 6062
// §5.2 makes the relayed transport address the local endpoint, counting on SO_REUSEADDR to
// let a socket connect from the port a listening socket holds; Linux refuses that bind
// (EADDRINUSE) unless both sockets have SO_REUSEPORT, which Node 20 cannot set on a TCP
// socket. Linux does let a socket listen next to a connecting one, so closing the listening
// socket around each outgoing bind would give the exact address, but in that window (under
// a millisecond) a peer's connection is refused: coturn's turnutils_uclient -T, whose pairs
// of relays connect to each other at once, lost connections that way. Peers see the relayed
// IP (permissions and firewall rules are per IP), from another port. README, "Status".
import net from 'node:net';
import type { PeerConnection, PeerPacketHandler, RelayBindFailure, TcpRelayFactory, TcpRelaySocket } from '../../turn/ports.js';
import { plainAddress } from '../stream/connection.js';
import { TcpPeerConnection } from './peer-connection.js';

const IN_USE: RelayBindFailure = { failed: 'in-use' };

function listenOn(address: string, port: number, onSocket: (socket: net.Socket) => void, onError: (err: Error) => void = () => undefined): Promise<net.Server> {
  return new Promise((resolve, reject) => {
    // exclusive: in a node:cluster worker the relayed port is this process's own, never shared through the primary.
    const server = net.createServer({ noDelay: true }, onSocket);
    server.once('error', reject);
    server.listen({ host: address, port, exclusive: true }, () => {
      server.off('error', reject);
      server.on('error', onError);
      resolve(server);
    });
  });
}

class TcpRelay implements TcpRelaySocket {
  private onConnection: ((connection: PeerConnection) => void) | undefined;
  private closed = false;
  /** Sockets made by a Connect and not yet connected (closed with the relay). */
  private readonly connecting = new Set<net.Socket>();

  constructor(
    private readonly server: net.Server,
    readonly address: string,
    readonly port: number,
    private readonly factory: TcpRelays,
  ) {
    server.on('connection', this.onSocket);
  }

  /** Inbound sockets: closed until accept() (an allocation in the making has no permission yet). */
  readonly onSocket = (socket: net.Socket): void => {
    socket.on('error', () => undefined);
    if (this.closed || this.onConnection === undefined || socket.remoteAddress === undefined) {
      socket.destroy();
      return;
    }
    this.onConnection(new TcpPeerConnection(socket));
  };

  send(): void {
    // A TCP allocation carries no datagrams (RFC 6062 §5.1: the engine drops them before).
  }

  accept(onConnection: (connection: PeerConnection) => void): void {
    this.onConnection = onConnection;
  }

  async connect(address: string, port: number, timeoutMs: number): Promise<PeerConnection | undefined> {
    if (this.closed) return undefined;
    // From the relay IP (see the top of the file for the port).
    const socket = net.connect({ host: address, port, localAddress: this.address, noDelay: true });
    socket.on('error', () => undefined);
    return this.established(socket, timeoutMs);
  }

  /** Resolves the connection once established; undefined when refused, failed, or not within timeoutMs (447). */
  private established(socket: net.Socket, timeoutMs: number): Promise<PeerConnection | undefined> {
    this.connecting.add(socket);
    return new Promise((resolve) => {
      const settle = (connection: PeerConnection | undefined): void => {
        clearTimeout(timer);
        this.connecting.delete(socket);
        socket.off('connect', onConnect);
        socket.off('close', onClose);
        if (connection === undefined) socket.destroy();
        resolve(connection);
      };
      const onConnect = (): void => settle(this.closed ? undefined : new TcpPeerConnection(socket));
      const onClose = (): void => settle(undefined);
      const timer = setTimeout(() => settle(undefined), timeoutMs);
      timer.unref();
      socket.once('connect', onConnect);
      socket.once('close', onClose);
    });
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.server.close();
    for (const socket of this.connecting) socket.destroy();
    this.factory.released(this);
  }
}

/** Binds TCP relayed transport addresses; keeps track of the ports it holds (RelaySocketFactory's contract). */
export class TcpRelays implements TcpRelayFactory {
  private readonly held = new Map<string, Set<number>>();
  private readonly closed = new Map<string, number>();

  constructor(readonly onError: (err: Error) => void) {}

  async bind(address: string, port: number, _onPacket: PeerPacketHandler): Promise<TcpRelaySocket | RelayBindFailure> {
    let server: net.Server;
    try {
      server = await listenOn(address, port, () => undefined, this.onError);
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code ?? 'unknown';
      return code === 'EADDRINUSE' || code === 'EACCES' ? IN_USE : { failed: 'unavailable', code };
    }
    server.removeAllListeners('connection');
    const bound = server.address();
    const relay = new TcpRelay(server, plainAddress(address), typeof bound === 'object' && bound !== null ? bound.port : port, this);
    let ports = this.held.get(relay.address);
    if (!ports) this.held.set(relay.address, (ports = new Set()));
    ports.add(relay.port);
    return relay;
  }

  holds(address: string, port: number): boolean {
    return this.held.get(address)?.has(port) ?? false;
  }

  closedCount(address: string): number {
    return this.closed.get(address) ?? 0;
  }

  async available(address: string): Promise<boolean> {
    try {
      const server = await listenOn(address, 0, () => undefined);
      server.close();
      return true;
    } catch {
      return false;
    }
  }

  /** A relay closed: its port is free again. */
  released(relay: TcpRelay): void {
    this.held.get(relay.address)?.delete(relay.port);
    this.closed.set(relay.address, this.closedCount(relay.address) + 1);
  }
}
