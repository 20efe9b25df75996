// One RFC 6062 peer data connection: a TCP socket between a TCP allocation's relayed
// transport address and a peer. It reads nothing until a ConnectionBind joins it to a
// client data connection (the peer's bytes wait in its TCP receive window meanwhile,
// RFC 6062 §5.2, §5.3); then bytes pass unchanged both ways, each direction paused while
// the other socket's write buffer is full, so nothing is dropped (TCP's own flow control
// end to end). When one side ends, the other is ended after what it has queued (§5.5).

import type net from 'node:net';
import type { ClientPath, PeerConnection } from '../../turn/ports.js';
import { type DetachedStream, StreamConnection, plainAddress } from '../stream/connection.js';

/** Dead peers of an idle data connection are found by keepalive probes, as client connections are. */
const KEEPALIVE_DELAY_MS = 30_000;

export class TcpPeerConnection implements PeerConnection {
  readonly peerAddress: string;
  readonly peerPort: number;
  private client: DetachedStream | undefined;
  private closeHandler: (() => void) | undefined;
  private finished = false;

  constructor(private readonly socket: net.Socket) {
    this.peerAddress = plainAddress(socket.remoteAddress);
    this.peerPort = socket.remotePort ?? 0;
    socket.setNoDelay(true);
    socket.setKeepAlive(true, KEEPALIVE_DELAY_MS);
    socket.on('error', () => undefined);
    socket.on('end', () => this.client?.socket.end());
    socket.on('close', () => this.finish());
  }

  onClose(handler: () => void): void {
    this.closeHandler = handler;
    if (this.finished) handler();
  }

  join(path: ClientPath): boolean {
    if (this.finished || this.client !== undefined || !(path instanceof StreamConnection)) return false;
    const peer = this.socket;
    const client = path.detach((chunk) => {
      // Client to peer; a full peer buffer pauses the client until it drains.
      if (!peer.write(chunk)) {
        client?.socket.pause();
        peer.once('drain', () => client?.socket.resume());
      }
    });
    if (client === undefined) return false;
    this.client = client;
    const out = client.socket;
    out.on('end', () => peer.end());
    out.on('close', () => endThenClose(peer, () => peer.destroy()));
    peer.on('data', (chunk: Buffer) => {
      // Peer to client, likewise.
      if (!out.write(chunk)) {
        peer.pause();
        out.once('drain', () => peer.resume());
      }
    });
    if (out.destroyed) peer.end();
    return true;
  }

  close(): void {
    this.socket.destroy();
    this.client?.close();
  }

  private finish(): void {
    if (this.finished) return;
    this.finished = true;
    // The client data connection goes once it has written what the peer sent.
    const client = this.client;
    if (client !== undefined) endThenClose(client.socket, () => client.close());
    this.closeHandler?.();
  }
}

/** Ends `socket` and closes it once what it queued is handed to the kernel (which still sends it after the close). */
function endThenClose(socket: net.Socket, close: () => void): void {
  if (socket.destroyed) return;
  socket.end();
  if (socket.writableFinished) close();
  else socket.once('finish', close);
}
