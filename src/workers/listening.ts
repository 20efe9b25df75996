// The primary's UDP listening sockets: one per --listening-ip, all on one port number,
// shared with the workers' session sockets (port-sharing.ts).

import type dgram from 'node:dgram';
import net from 'node:net';
import type { ServerConfig } from '../config/index.js';
import { bindSamePort } from '../server/same-port.js';
import { sharedPortOptions } from '../transport/udp/port-sharing.js';
import { bindUdpSocket, createUdpSocket } from '../transport/udp/socket.js';

const SOCKET_BUFFER_BYTES = 4 * 1024 * 1024;

async function bindUdp(address: string, port: number, shared: boolean): Promise<dgram.Socket> {
  const socket = createUdpSocket(address, {
    // Workers' session sockets bind this same address and port.
    ...(shared ? sharedPortOptions() : { reuseAddr: false }),
    recvBufferSize: SOCKET_BUFFER_BYTES,
    sendBufferSize: SOCKET_BUFFER_BYTES,
  });
  await bindUdpSocket(socket, address, port);
  return socket;
}

function tcpPortFree(address: string, port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const server = net.createServer();
    server.once('error', () => resolve(false));
    server.listen({ host: address, port, exclusive: true }, () => server.close(() => resolve(true)));
  });
}

async function bindOnce(config: ServerConfig): Promise<dgram.Socket[]> {
  const sockets: dgram.Socket[] = [];
  try {
    let port = config.listeningPort;
    for (const ip of config.listeningIps) {
      // SO_REUSEADDR would let this bind next to another server's socket and split its
      // clients: first make sure nobody holds the port, as a plain bind would.
      const probe = await bindUdp(ip, port, false);
      port = probe.address().port;
      await new Promise<void>((resolve) => probe.close(() => resolve()));
      sockets.push(await bindUdp(ip, port, true));
    }
    if (config.listeningPort !== 0 || !config.tcp) return sockets;
    let free = true;
    for (const ip of config.listeningIps) free &&= await tcpPortFree(ip, port);
    if (free) return sockets;
    throw Object.assign(new Error(`port ${port} is taken for TCP`), { code: 'EADDRINUSE' });
  } catch (err) {
    for (const s of sockets) s.close();
    throw err;
  }
}

/** One UDP socket per listening address, all on one port number (with port 0: one free for TCP too). */
export function bindListeners(config: ServerConfig): Promise<dgram.Socket[]> {
  return bindSamePort(config.listeningPort === 0, () => bindOnce(config));
}
