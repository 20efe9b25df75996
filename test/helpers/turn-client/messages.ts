// What the test TURN client says and hears, whatever the transport: the
// shared types, the reading of error codes and the sorting of one whole
// incoming message (a datagram, or one frame cut from a stream) into relayed
// data or a STUN message.

import { decodeAddress } from '../../../src/stun/address.js';
import { decodeErrorCode } from '../../../src/stun/attributes.js';
import { looksLikeChannelData, readChannelDataLength, readChannelNumber } from '../../../src/stun/channel-data.js';
import { Attr, MessageClass, Method } from '../../../src/stun/constants.js';
import { type StunMessage, decodeMessage, getAttribute } from '../../../src/stun/message.js';
import type { MessageWriter } from '../../../src/stun/writer.js';

export interface Credentials {
  readonly username: string;
  readonly password: string;
  readonly realm: string;
}

export interface Endpoint {
  readonly address: string;
  readonly port: number;
}

/** Relayed data that reached the client: ChannelData (RFC 8656 §12.4) or a Data indication (§11.6). */
export interface Received {
  readonly kind: 'data-indication' | 'channel-data';
  readonly peer?: Endpoint;
  readonly channel?: number;
  readonly data: Buffer;
}

export interface Response {
  readonly message: StunMessage;
  /** 200 for a success response, else the ERROR-CODE. */
  readonly code: number;
}

export type Decorate = (w: MessageWriter) => void;

/**
 * How long a request waits for its answer (retransmitting) before the client
 * gives up: RFC 8489 §6.2.1's transaction timeout with the default RTO of
 * 500 ms and Rc = 7, 39.5 s. A live server answers long before; this bounds
 * only a dead or deaf one, so a slow, loaded machine is never read as "no
 * answer". Callers that poll for a server coming up pass a shorter one.
 */
export const TRANSACTION_TIMEOUT_MS = 39_500;

/** 200 for a success response, the ERROR-CODE for an error response, 0 otherwise. */
export function codeOf(m: StunMessage): number {
  if (m.cls === MessageClass.SuccessResponse) return 200;
  return decodeErrorCode(getAttribute(m, Attr.ErrorCode) ?? Buffer.alloc(0))?.code ?? 0;
}

/** The reason phrase of an error response ('' when there is none). */
export function reasonOf(m: StunMessage): string {
  return decodeErrorCode(getAttribute(m, Attr.ErrorCode) ?? Buffer.alloc(0))?.reason ?? '';
}

/** Attribute types of a message, in order (attributes after MESSAGE-INTEGRITY other than FINGERPRINT excluded). */
export function attributeTypes(m: StunMessage): number[] {
  return m.attributes.map((a) => a.type);
}

/** One whole incoming message, sorted: relayed data, or any other STUN message. */
export type Incoming = Received | { readonly kind: 'message'; readonly message: StunMessage };

/**
 * Sorts one whole message (a datagram, or one frame of a stream): ChannelData
 * and Data indications become Received (their data copied out of `buf`), any
 * other STUN message is returned as decoded; undefined when it does not decode.
 */
export function parseIncoming(buf: Buffer): Incoming | undefined {
  if (looksLikeChannelData(buf)) {
    const length = readChannelDataLength(buf);
    return { kind: 'channel-data', channel: readChannelNumber(buf), data: Buffer.from(buf.subarray(4, 4 + length)) };
  }
  const decoded = decodeMessage(buf);
  if (!decoded.ok) return undefined;
  const m = decoded.message;
  if (m.cls === MessageClass.Indication && m.method === Method.Data) {
    const peer = decodeAddress(getAttribute(m, Attr.XorPeerAddress) ?? Buffer.alloc(0), m.transactionId);
    return {
      kind: 'data-indication',
      peer: peer ? { address: peer.address, port: peer.port } : undefined,
      data: Buffer.from(getAttribute(m, Attr.Data) ?? Buffer.alloc(0)),
    };
  }
  return { kind: 'message', message: m };
}
