// Answers to requests: error writers, sealing (MESSAGE-INTEGRITY, FINGERPRINT,
// SOFTWARE), sending on the request's path, and counting each answer with how
// long it took from receipt.

import { performance } from 'node:perf_hooks';
import { Attr, MessageClass, reasonPhrase } from '../stun/constants.js';
import { encodeErrorCode } from '../stun/attributes.js';
import { type StunMessage, hasAttribute } from '../stun/message.js';
import { MessageWriter } from '../stun/writer.js';
import type { EngineCounters } from './counters.js';
import type { ListenerHandle } from './ports.js';

export class Replies {
  /**
   * ERROR-CODE values (RFC 8489 §14.8) by code: without a reason phrase (answers to
   * unauthenticated requests, every 401) and with the standard one. Built once per code
   * rather than once per answer; the writer copies them, so one value serves every answer.
   */
  private readonly bareErrorCodes = new Map<number, Buffer>();
  private readonly standardErrorCodes = new Map<number, Buffer>();

  constructor(
    private readonly counters: EngineCounters,
    /** SOFTWARE attribute; empty leaves it out. */
    private readonly software: string,
  ) {}

  /** Notes when a request arrived (performance.now() read before it was decoded). */
  received(request: StunMessage, at: number): void {
    request.receivedAt = at;
  }

  /**
   * An error response. `reason` '' leaves the reason phrase out (RFC 8489 §14.8 allows an
   * empty one): answers to unauthenticated requests carry none, they would only add bytes
   * towards a possibly spoofed source (a 401 went from 4.2x to 3.6x the request's size).
   */
  error(message: StunMessage, code: number, reason?: string): MessageWriter {
    const w = new MessageWriter(message.method, MessageClass.ErrorResponse, message.transactionId);
    if (reason !== undefined && reason !== '') return w.addErrorCode(code, reason);
    const cache = reason === '' ? this.bareErrorCodes : this.standardErrorCodes;
    let value = cache.get(code);
    if (value === undefined) cache.set(code, (value = encodeErrorCode(code, reason ?? reasonPhrase(code))));
    return w.add(Attr.ErrorCode, value);
  }

  /**
   * Seals (integrity when authenticated; FINGERPRINT when the request had one) and sends.
   * RFC 8489 §9.2.4: MESSAGE-INTEGRITY-SHA256 (the full 32 bytes, §14.6), unless the
   * request was taken as MD5 for want of PASSWORD-ALGORITHM(S) (an RFC 5389 client): then
   * MESSAGE-INTEGRITY, except that a request signed with MESSAGE-INTEGRITY-SHA256 alone gets
   * the same back (authenticate() checked that one, so the client has it).
   */
  send(
    listener: ListenerHandle,
    request: StunMessage,
    w: MessageWriter,
    key: Buffer | undefined,
    address: string,
    port: number,
    label: string,
    code: number,
  ): Buffer {
    if (this.software) w.addText(Attr.Software, this.software);
    if (key) {
      if (request.integritySha256Offset >= 0 || hasAttribute(request, Attr.PasswordAlgorithm)) w.addIntegritySha256(key);
      else w.addIntegrity(key);
    }
    if (request.fingerprintOffset >= 0) w.addFingerprint();
    const out = w.finish();
    listener.path.sendMessage(out, port, address);
    this.answered(request, label, code);
    return out;
  }

  /** Counts an answered request and how long it took from receipt to response. */
  answered(request: StunMessage, label: string, code: number): void {
    this.counters.countRequest(label, code);
    const receivedAt = request.receivedAt;
    if (receivedAt !== 0) this.counters.observeRequestSeconds(label, (performance.now() - receivedAt) / 1000);
  }
}
