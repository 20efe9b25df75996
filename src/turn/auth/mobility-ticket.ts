// RFC 8016 mobility tickets. The RFC leaves the ticket's contents to the server (§3.3,
// its Appendix A shows one made of the allocation's 5-tuple under an encryption key):
// ours names the allocation by its store key and its identity (creation time and
// relayed port, fixed for its life: allocation/allocation.ts matches()), and carries the
// allocation's move count when it was issued. It is sealed with AES-256-GCM under a key
// derived for this purpose alone (keys.ts), from the cluster secret in a cluster: any
// node opens a ticket any other node issued, so a client that lands on another PoP keeps
// its allocation; nobody without the secret can make or alter one.
//
// A ticket moves an allocation once (docs/security.md, "Mobility"): every move bumps the
// allocation's generation, which every node reads from its record, and a ticket whose
// generation is not the current one is refused. A captured or replayed ticket is then
// dead as soon as its client has used it, and it never works without the allocation's
// own credentials (methods/mobility.ts).

import { type KeyObject, createCipheriv, createDecipheriv, createSecretKey, randomBytes } from 'node:crypto';
import { MOBILITY_KEY_LABEL, deriveKey } from '../../keys.js';

const VERSION = 1;
const IV_BYTES = 12;
const TAG_BYTES = 16;
/** version (1), generation (4), createdAtMs (6), relayed port (2), then the store key. */
const FIXED_BYTES = 13;
/** Longer is not ours: refused before any decryption. */
export const MAX_TICKET_BYTES = 512;
const AAD = Buffer.from(MOBILITY_KEY_LABEL, 'latin1');

/** What a ticket says about the allocation it was issued for. */
export interface TicketClaims {
  /** The allocation's store key (its 5-tuple) when the ticket was issued. */
  readonly key: string;
  readonly createdAtMs: number;
  readonly relayedPort: number;
  /** The allocation's move count when the ticket was issued. */
  readonly generation: number;
}

export class MobilityTickets {
  private readonly key: KeyObject;

  /** `secret`: --cluster-secret in a cluster, else the nonce secret (server/engine.ts). */
  constructor(secret: Uint8Array) {
    this.key = createSecretKey(deriveKey(secret, MOBILITY_KEY_LABEL));
  }

  /** A fresh ticket (a random IV each time: two tickets for one allocation never look alike). */
  seal(claims: TicketClaims): Buffer {
    const name = Buffer.from(claims.key, 'utf8');
    const plain = Buffer.alloc(FIXED_BYTES + name.length);
    plain.writeUInt8(VERSION, 0);
    plain.writeUInt32BE(claims.generation >>> 0, 1);
    plain.writeUIntBE(claims.createdAtMs, 5, 6);
    plain.writeUInt16BE(claims.relayedPort, 11);
    name.copy(plain, FIXED_BYTES);
    const iv = randomBytes(IV_BYTES);
    const cipher = createCipheriv('aes-256-gcm', this.key, iv);
    cipher.setAAD(AAD);
    const body = Buffer.concat([cipher.update(plain), cipher.final()]);
    return Buffer.concat([iv, body, cipher.getAuthTag()]);
  }

  /** The claims of a ticket this cluster sealed; undefined for anything else (RFC 8016 §3.2: 400). */
  open(ticket: Buffer): TicketClaims | undefined {
    if (ticket.length < IV_BYTES + FIXED_BYTES + 1 + TAG_BYTES || ticket.length > MAX_TICKET_BYTES) return undefined;
    const iv = ticket.subarray(0, IV_BYTES);
    const tag = ticket.subarray(ticket.length - TAG_BYTES);
    let plain: Buffer;
    try {
      const decipher = createDecipheriv('aes-256-gcm', this.key, iv);
      decipher.setAAD(AAD);
      decipher.setAuthTag(tag);
      plain = Buffer.concat([decipher.update(ticket.subarray(IV_BYTES, ticket.length - TAG_BYTES)), decipher.final()]);
    } catch {
      return undefined;
    }
    if (plain.readUInt8(0) !== VERSION) return undefined;
    return {
      generation: plain.readUInt32BE(1),
      createdAtMs: plain.readUIntBE(5, 6),
      relayedPort: plain.readUInt16BE(11),
      key: plain.subarray(FIXED_BYTES).toString('utf8'),
    };
  }
}
