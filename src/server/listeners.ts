// A node's client listeners: on every --listening-ip, UDP (its own socket, or in a worker
// the frontend the primary feeds), TCP on the same port number, and TLS; each wired to
// the engine.

import type { ServerConfig } from '../config/index.js';
import type { Logger } from '../ops/log.js';
import { StreamCounters } from '../transport/counters.js';
import type { StreamListenerHooks } from '../transport/stream/connection.js';
import { StreamClientListener, type StreamListenerOptions } from '../transport/stream/listener.js';
import { UdpClientListener, type UdpListenerHooks } from '../transport/udp/listener.js';
import type { EngineCounters } from '../turn/counters.js';
import type { TurnEngine } from '../turn/engine.js';
import type { EngineListener } from '../turn/allocation/table.js';
import { bindSamePort } from './same-port.js';
import type { ClientResolver, ListeningAddress, UdpFrontend } from './types.js';

type StreamSettings = Omit<StreamListenerOptions, 'transport' | 'address' | 'port' | 'tls'>;

export class ClientListeners {
  /** TCP/TLS connections over every stream listener of the node. */
  readonly streamCounters = new StreamCounters();
  private readonly udp: UdpClientListener[] = [];
  private readonly streams: StreamClientListener[] = [];
  private readonly udpAddresses: ListeningAddress[] = [];
  /** Listening address -> port -> where a client's packets go (mesh-forwarded packets are dispatched by it). */
  private readonly resolvers = new Map<string, Map<number, ClientResolver>>();
  private readonly handles = new Map<UdpClientListener, EngineListener>();
  private readonly udpHooks: UdpListenerHooks;
  private readonly streamHooks: StreamListenerHooks;
  private readonly streamSettings: StreamSettings;

  constructor(
    private readonly config: ServerConfig,
    private readonly engine: TurnEngine,
    counters: EngineCounters,
    logger: Logger,
    private readonly frontend?: UdpFrontend,
  ) {
    this.udpHooks = {
      onPacket: (path, buf, address, port) => {
        const handle = this.handles.get(path);
        if (handle) engine.handleClientPacket(handle, buf, address, port);
      },
      onCongestionDrop: () => counters.drops.send_queue_full++,
      onError: (err) => logger.warn({ err }, 'listening socket error'),
    };
    // TCP and TLS: every connection is its own engine listener, and takes its allocation with it when it closes.
    this.streamHooks = {
      onConnection: (connection) => {
        const handle = engine.addListener(connection);
        return {
          onMessage: (message) => engine.handleClientPacket(handle, message, connection.remoteAddress, connection.remotePort),
          hasAllocation: () => handle.holdsAllocation,
          onClose: () =>
            void engine.closeListener(handle, 'connection-closed').catch((err: unknown) => logger.warn({ err }, "closing a connection's allocation failed")),
        };
      },
      onSendDrop: () => counters.drops.send_queue_full++,
      onError: (err) => logger.warn({ err }, 'listening socket error'),
    };
    this.streamSettings = {
      idleTimeoutMs: config.tcpIdleTimeoutSeconds * 1000,
      unallocatedTimeoutMs: config.tcpUnallocatedTimeoutSeconds * 1000,
      maxConnections: config.maxTcpConnections,
      maxConnectionsPerSource: config.maxTcpConnectionsPerIp,
      // In a worker, the primary holds the TCP/TLS listening sockets and shares out connections (node:cluster).
      shared: frontend !== undefined,
    };
  }

  /** Opens every listener of every --listening-ip. */
  async open(): Promise<void> {
    for (const [index, ip] of this.config.listeningIps.entries()) await this.openAddress(index, ip);
  }

  private async openAddress(index: number, ip: string): Promise<void> {
    const config = this.config;
    const byPort = this.resolvers.get(ip) ?? new Map<number, ClientResolver>();
    this.resolvers.set(ip, byPort);
    let tcp: StreamClientListener | undefined;
    if (config.udp && this.frontend) {
      byPort.set(config.listeningPort, await this.frontend.open(this.engine, index, ip, config.listeningPort));
      this.udpAddresses.push({ transport: 'udp', address: ip, port: config.listeningPort });
    } else if (config.udp) {
      let udp: UdpClientListener;
      ({ udp, tcp } = await bindSamePort(config.tcp && config.listeningPort === 0, () => this.bindUdp(ip)));
      this.udp.push(udp);
      const handle = this.engine.addListener(udp);
      this.handles.set(udp, handle);
      byPort.set(udp.localPort, () => handle);
      this.udpAddresses.push({ transport: 'udp', address: udp.localAddress, port: udp.localPort });
    }
    if (config.tcp && !tcp) tcp = await this.startStream('tcp', ip, config.listeningPort);
    if (tcp) this.streams.push(tcp);
    if (config.tls) this.streams.push(await this.startStream('tls', ip, config.tls.port));
  }

  /** UDP on --listening-port; with port 0 and TCP on, TCP on the number UDP got (RFC 8656 §3.1). */
  private async bindUdp(ip: string): Promise<{ udp: UdpClientListener; tcp?: StreamClientListener }> {
    const udp = new UdpClientListener(ip, this.config.listeningPort, this.udpHooks);
    try {
      await udp.start();
      if (!(this.config.tcp && this.config.listeningPort === 0)) return { udp };
      return { udp, tcp: await this.startStream('tcp', ip, udp.localPort) };
    } catch (err) {
      await udp.close();
      throw err;
    }
  }

  private async startStream(transport: 'tcp' | 'tls', ip: string, port: number): Promise<StreamClientListener> {
    const tls = transport === 'tls' ? this.config.tls : undefined;
    const listener = new StreamClientListener({ transport, address: ip, port, tls, ...this.streamSettings }, this.streamCounters, this.streamHooks);
    await listener.start();
    return listener;
  }

  /** Where a client's packets go on one listening address and port, if the node listens there. */
  resolver(address: string, port: number): ClientResolver | undefined {
    return this.resolvers.get(address)?.get(port);
  }

  get listening(): ListeningAddress[] {
    return [...this.udpAddresses, ...this.streams.map((l) => ({ transport: l.transport, address: l.localAddress, port: l.localPort }))];
  }

  /** Every port bound for clients (UDP, TCP, TLS). */
  get boundPorts(): number[] {
    return [...this.udpAddresses.map((l) => l.port), ...this.streams.map((l) => l.localPort)];
  }

  async close(): Promise<void> {
    await Promise.all(this.udp.map((l) => l.close()));
    await this.frontend?.close();
    await Promise.all(this.streams.map((l) => l.close()));
  }
}
