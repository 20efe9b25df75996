// The transport-independent half of the test TURN client: request building
// with the long-term credential (RFC 8489 §9.2), the retry after a 401 or a
// 438 Stale Nonce as a real client does, and the TURN methods. A transport
// (udp.ts, stream.ts) supplies how one request gets its answer.

import { randomBytes } from 'node:crypto';
import { decodeAddress } from '../../../src/stun/address.js';
import {
  decodePasswordAlgorithms,
  decodeUint32,
  encodeChannelNumber,
  encodePasswordAlgorithm,
  encodeRequestedTransport,
} from '../../../src/stun/attributes.js';
import { Attr, MessageClass, Method, PasswordAlgorithm, TRANSPORT_UDP } from '../../../src/stun/constants.js';
import { longTermKey, userhash } from '../../../src/stun/integrity.js';
import { type StunMessage, getAttribute } from '../../../src/stun/message.js';
import { SecurityFeature, nonceCookieFeatures } from '../../../src/stun/nonce-cookie.js';
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
  /**
   * Behave as an RFC 8489 client (§9.2.5): echo the PASSWORD-ALGORITHMS of the last 401 or
   * 438, name the first algorithm of it this client supports (SHA-256, MD5) in
   * PASSWORD-ALGORITHM, sign with MESSAGE-INTEGRITY-SHA256, and send USERHASH when the nonce
   * cookie says "Username anonymity". Off (the default): an RFC 5389 client, MD5 and
   * MESSAGE-INTEGRITY, as browsers are.
   */
  rfc8489 = false;
  /** PASSWORD-ALGORITHMS as the server last sent it (RFC 8489 mode). */
  offeredAlgorithms: Buffer | undefined;
  /** The algorithm chosen from it; MD5 for an RFC 5389 client. */
  algorithm: PasswordAlgorithm = PasswordAlgorithm.MD5;
  /** USERHASH in place of USERNAME (RFC 8489 mode, when the cookie asks for it). */
  useUserhash = false;

  protected constructor(readonly credentials: Credentials) {
    this.realm = credentials.realm;
  }

  /** Sends one request and resolves with its answer; throws when there is none. */
  protected abstract exchange(method: number, buf: Buffer, transactionId: Buffer): Promise<StunMessage>;

  key(): Buffer {
    return longTermKey(this.credentials.username, this.realm, this.credentials.password, this.algorithm);
  }

  /** Takes REALM, NONCE and (RFC 8489 mode) PASSWORD-ALGORITHMS and the cookie's bits from a 401 or 438. */
  learnChallenge(m: StunMessage): void {
    const nonce = getAttribute(m, Attr.Nonce);
    const realm = getAttribute(m, Attr.Realm);
    if (nonce) this.nonce = nonce.toString('utf8');
    if (realm) this.realm = realm.toString('utf8');
    if (!this.rfc8489 || this.nonce === undefined) return;
    const features = nonceCookieFeatures(this.nonce) ?? 0;
    const offered = getAttribute(m, Attr.PasswordAlgorithms);
    // §9.2.5: the cookie announces PASSWORD-ALGORITHMS but there is none: MUST NOT retry.
    if (features & SecurityFeature.PasswordAlgorithms && !offered)
      throw new Error('the nonce cookie says "Password algorithms" but the answer has no PASSWORD-ALGORITHMS');
    this.offeredAlgorithms = offered ? Buffer.from(offered) : undefined;
    const supported = (decodePasswordAlgorithms(offered ?? Buffer.alloc(0)) ?? []).find(
      (e) => e.algorithm === PasswordAlgorithm.SHA256 || e.algorithm === PasswordAlgorithm.MD5,
    );
    if (offered && !supported) throw new Error('no supported algorithm in PASSWORD-ALGORITHMS');
    this.algorithm = (supported?.algorithm as PasswordAlgorithm | undefined) ?? PasswordAlgorithm.MD5;
    this.useUserhash = (features & SecurityFeature.UsernameAnonymity) !== 0;
  }

  /** Builds a request; with auth, adds USERNAME, REALM, NONCE and MESSAGE-INTEGRITY (and FINGERPRINT if asked). */
  build(method: number, decorate: Decorate = () => undefined, options: BuildOptions = {}): { buf: Buffer; transactionId: Buffer } {
    const transactionId = options.transactionId ?? randomBytes(12);
    const w = new MessageWriter(method, MessageClass.Request, transactionId);
    decorate(w);
    if (options.auth !== false && this.nonce !== undefined) {
      if (this.rfc8489 && this.useUserhash) w.add(Attr.Userhash, userhash(this.credentials.username, this.realm));
      else w.addText(Attr.Username, this.credentials.username);
      w.addText(Attr.Realm, this.realm);
      w.addText(Attr.Nonce, this.nonce);
      if (this.rfc8489 && this.offeredAlgorithms) {
        w.add(Attr.PasswordAlgorithms, this.offeredAlgorithms);
        w.add(Attr.PasswordAlgorithm, encodePasswordAlgorithm(this.algorithm));
      }
      if (this.rfc8489) w.addIntegritySha256(this.key());
      else w.addIntegrity(this.key());
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
        this.learnChallenge(m);
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
