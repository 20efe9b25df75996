// The transport-independent half of the test TURN client: request building
// with the long-term credential (RFC 8489 §9.2), the retry after a 401 or a
// 438 Stale Nonce as a real client does, and the TURN methods. A transport
// (udp.ts, stream.ts) supplies how one request gets its answer.

import { randomBytes } from 'node:crypto';
import { decodeAddress } from '../../../src/stun/address.js';
import { decodeUint32, encodeChannelNumber, encodeRequestedTransport } from '../../../src/stun/attributes.js';
import { Attr, MessageClass, Method, TRANSPORT_UDP } from '../../../src/stun/constants.js';
import { longTermKey } from '../../../src/stun/integrity.js';
import { type StunMessage, getAttribute } from '../../../src/stun/message.js';
import { MessageWriter } from '../../../src/stun/writer.js';
import { type Credentials, type Decorate, type Endpoint, type Response, codeOf } from './messages.js';

export interface BuildOptions {
  readonly auth?: boolean;
  readonly fingerprint?: boolean;
  readonly transactionId?: Buffer;
}

export abstract class TurnSession {
  /**
   * 438 Stale Nonce answers received by request() (which retries with the
   * fresh NONCE, as a real client does). Counted so the tests that claim "no
   * 438" (e.g. across a reroute) can assert it.
   */
  staleNonces = 0;
  nonce: string | undefined;
  realm: string;

  protected constructor(readonly credentials: Credentials) {
    this.realm = credentials.realm;
  }

  /** Sends one request and resolves with its answer; throws when there is none. */
  protected abstract exchange(method: number, buf: Buffer, transactionId: Buffer): Promise<StunMessage>;

  key(): Buffer {
    return longTermKey(this.credentials.username, this.realm, this.credentials.password);
  }

  /** Builds a request; with auth, adds USERNAME, REALM, NONCE and MESSAGE-INTEGRITY (and FINGERPRINT if asked). */
  build(method: number, decorate: Decorate = () => undefined, options: BuildOptions = {}): { buf: Buffer; transactionId: Buffer } {
    const transactionId = options.transactionId ?? randomBytes(12);
    const w = new MessageWriter(method, MessageClass.Request, transactionId);
    decorate(w);
    if (options.auth !== false && this.nonce !== undefined) {
      w.addText(Attr.Username, this.credentials.username);
      w.addText(Attr.Realm, this.realm);
      w.addText(Attr.Nonce, this.nonce);
      w.addIntegrity(this.key());
    }
    if (options.fingerprint) w.addFingerprint();
    return { buf: w.toBuffer(), transactionId };
  }

  /**
   * An authenticated request: learns REALM/NONCE from a 401 or 438 and retries,
   * as a real client does (RFC 8489 §9.2.5). Returns the final response.
   */
  async request(method: number, decorate: Decorate = () => undefined, options: { fingerprint?: boolean } = {}): Promise<Response> {
    for (let attempt = 0; attempt < 3; attempt++) {
      const { buf, transactionId } = this.build(method, decorate, options);
      const m = await this.exchange(method, buf, transactionId);
      const code = codeOf(m);
      const hadNonce = this.nonce !== undefined;
      if (code === 438) this.staleNonces++;
      if (code === 401 || code === 438) {
        const nonce = getAttribute(m, Attr.Nonce);
        const realm = getAttribute(m, Attr.Realm);
        if (nonce) this.nonce = nonce.toString('utf8');
        if (realm) this.realm = realm.toString('utf8');
        if (code === 438 || !hadNonce) continue;
      }
      return { message: m, code };
    }
    throw new Error('authentication did not converge');
  }

  async allocate(decorate: Decorate = () => undefined): Promise<{ response: Response; relayed?: Endpoint; lifetimeSeconds?: number }> {
    const response = await this.request(Method.Allocate, (w) => {
      w.add(Attr.RequestedTransport, encodeRequestedTransport(TRANSPORT_UDP));
      decorate(w);
    });
    if (response.code !== 200) return { response };
    const m = response.message;
    const relayed = decodeAddress(getAttribute(m, Attr.XorRelayedAddress)!, m.transactionId)!;
    const lifetimeSeconds = decodeUint32(getAttribute(m, Attr.Lifetime)!);
    return { response, relayed: { address: relayed.address, port: relayed.port }, lifetimeSeconds };
  }

  createPermission(...peers: Endpoint[]): Promise<Response> {
    return this.request(Method.CreatePermission, (w) => {
      for (const p of peers) w.addXorAddress(Attr.XorPeerAddress, p.address, p.port);
    });
  }

  channelBind(channel: number, peer: Endpoint): Promise<Response> {
    return this.request(Method.ChannelBind, (w) => {
      w.add(Attr.ChannelNumber, encodeChannelNumber(channel));
      w.addXorAddress(Attr.XorPeerAddress, peer.address, peer.port);
    });
  }

  refresh(lifetimeSeconds?: number): Promise<Response> {
    return this.request(Method.Refresh, (w) => {
      if (lifetimeSeconds !== undefined) {
        const v = Buffer.alloc(4);
        v.writeUInt32BE(lifetimeSeconds, 0);
        w.add(Attr.Lifetime, v);
      }
    });
  }

  /** A Send indication (RFC 8656 §11.4) carrying `data` to `peer`. */
  sendIndicationBuffer(peer: Endpoint, data: Buffer): Buffer {
    const w = new MessageWriter(Method.Send, MessageClass.Indication, randomBytes(12));
    w.addXorAddress(Attr.XorPeerAddress, peer.address, peer.port);
    w.add(Attr.Data, data);
    return w.toBuffer();
  }
}
