// The packet fuzzer shared by the CI fuzz test (test/integration/fuzz.test.ts) and the
// million-packet run (bench/fuzz.ts): seeded, so a run replays from its seed.
//
// A packet is made one of four ways:
// - structured: a seed message (seeds.ts) whose attributes are mutated (type swaps,
//   duplicates, deletions, insertions, value bit flips, truncated or grown values,
//   channel numbers, lifetimes, ports and address families at their edges, another
//   method or class), THEN signed with a live user's key, so that it passes
//   authentication and reaches the method handlers (RFC 8489 §9.2: the integrity covers
//   whatever the mutation left);
// - bytes: an encoded (maybe signed) seed or a published vector, then bit flips, byte
//   insertions and deletions, lying header or attribute lengths, huge lengths,
//   truncation, garbage after the last attribute;
// - ChannelData (RFC 8656 §12.4): channel numbers at the edges of 0x4000-0x7FFF and on
//   the bound ones, lengths that lie, padding that is missing or extra;
// - noise.
// Over TCP and TLS, streamChunks() cuts the concatenated packets at random points (the
// framer of RFC 8656 §12.5 must put them together again, or close on a framing error).

import { encodeChannelNumber, encodeUint32 } from '../../../src/stun/attributes.js';
import { encodeChannelData } from '../../../src/stun/channel-data.js';
import { Attr, CHANNEL_MAX, CHANNEL_MIN, MessageClass } from '../../../src/stun/constants.js';
import { MessageWriter } from '../../../src/stun/writer.js';
import type { SeededRandom } from '../random.js';
import { KNOWN_ATTRIBUTE_TYPES, type SeedMessage, vectorSeeds } from './seeds.js';

/** A live user's long-term credential (RFC 8489 §9.2), as the server last announced REALM and NONCE. */
export interface Signer {
  readonly username: string;
  readonly realm: string;
  readonly nonce: string;
  readonly key: Buffer;
}

export interface PacketFuzzerOptions {
  /** The credential to sign mutated requests with; undefined: nothing is signed. */
  readonly signer?: () => Signer | undefined;
  /** Channel numbers bound on the sender's allocation: ChannelData on them reaches the relay path. */
  readonly boundChannels?: readonly number[];
  /** Stream transports: ChannelData padded to 4 as RFC 8656 §12.5 asks (mostly). */
  readonly stream?: boolean;
}

/** The edges of the channel number space and just beyond (RFC 8656 §12, RFC 5766 §11). */
export const CHANNEL_EDGES: readonly number[] = [0x0000, 0x3fff, CHANNEL_MIN, CHANNEL_MIN + 1, 0x4fff, 0x5000, 0x7ffe, CHANNEL_MAX, 0x8000, 0xffff];
const LENGTH_LIES = [0, 1, 3, 4, 0x7fff, 0x8000, 0xfffc, 0xffff];
const LIFETIMES = [0, 1, 599, 600, 3600, 0x7fffffff, 0xffffffff];
const PORTS = [0, 1, 1023, 3478, 5349, 65535];

const BYTE_OPS = [
  'bit-flips',
  'bytes-inserted',
  'bytes-deleted',
  'header-length-lie',
  'attribute-length-lie',
  'truncated',
  'appended',
  'overwritten',
  'cookie-or-type',
  'type-swap-in-place',
];

interface MutableAttribute {
  type: number;
  value: Buffer;
}

interface MutableMessage {
  method: number;
  cls: number;
  attributes: MutableAttribute[];
  auth: boolean;
}

/** Offsets of the attribute headers, walking the TLVs without the decoder's rules. */
export function attributeOffsets(buf: Buffer): number[] {
  const out: number[] = [];
  for (let pos = 20; pos + 4 <= buf.length; pos += 4 + ((buf.readUInt16BE(pos + 2) + 3) & ~3)) out.push(pos);
  return out;
}

export class PacketFuzzer {
  /** What made the last packet (for a report or a corpus file name). */
  lastKind = '';
  private readonly vectors = vectorSeeds();

  constructor(
    private readonly rng: SeededRandom,
    private readonly seeds: readonly SeedMessage[],
    private readonly options: PacketFuzzerOptions = {},
  ) {}

  /** The next packet: structured 45%, bytes 30%, ChannelData 15%, a seed unmutated 4%, noise 6%. */
  next(): Buffer {
    const r = this.rng.int(100);
    if (r < 45) return this.structured();
    if (r < 75) return this.bytes();
    if (r < 90) return this.channelData();
    if (r < 94) {
      this.lastKind = 'seed';
      return this.encode(this.resolve(this.rng.pick(this.seeds)), this.shouldSign(true), this.rng.chance(0.3));
    }
    this.lastKind = 'noise';
    const out = this.rng.bytes(this.rng.int(this.rng.chance(0.05) ? 65_000 : 600));
    if (out.length > 0 && this.rng.chance(0.5)) out[0] = out[0]! & 0x7f;
    return out;
  }

  /** A seed, attributes mutated, then signed (usually) so that it is authenticated. */
  structured(): Buffer {
    const m = this.resolve(this.rng.pick(this.seeds));
    const ops = 1 + this.rng.int(3);
    const names: string[] = [];
    for (let i = 0; i < ops; i++) names.push(this.mutateStructure(m));
    const signed = this.shouldSign(m.auth);
    this.lastKind = `structured:${names.join('+')}${signed ? ':signed' : ''}`;
    const buf = this.encode(m, signed, this.rng.chance(0.25));
    if (!this.rng.chance(0.05)) return buf;
    // Attributes after MESSAGE-INTEGRITY (RFC 8489 §14.5: ignored, except FINGERPRINT).
    const w = Buffer.concat([buf, Buffer.from([0x80, 0x22, 0, 4, 0x61, 0x62, 0x63, 0x64])]);
    w.writeUInt16BE(w.length - 20, 2);
    return w;
  }

  /** An encoded seed or vector, then byte-level damage. */
  bytes(): Buffer {
    const base = this.rng.chance(0.15)
      ? Buffer.from(this.rng.pick(this.vectors))
      : this.encode(this.resolve(this.rng.pick(this.seeds)), this.shouldSign(true), this.rng.chance(0.3));
    const op = this.rng.int(10);
    this.lastKind = `bytes:${BYTE_OPS[op]}`;
    const rng = this.rng;
    switch (op) {
      case 0: {
        const flips = 1 + rng.int(8);
        for (let i = 0; i < flips; i++) base[rng.int(base.length)]! ^= 1 << rng.int(8);
        return base;
      }
      case 1: {
        const at = rng.int(base.length + 1);
        return Buffer.concat([base.subarray(0, at), rng.bytes(1 + rng.int(8)), base.subarray(at)]);
      }
      case 2: {
        const at = rng.int(base.length);
        return Buffer.concat([base.subarray(0, at), base.subarray(Math.min(base.length, at + 1 + rng.int(8)))]);
      }
      case 3:
        base.writeUInt16BE(rng.pick([...LENGTH_LIES, base.length - 20 + 4, Math.max(0, base.length - 24), rng.int(0x10000)]), 2);
        return base;
      case 4: {
        const offsets = attributeOffsets(base);
        if (offsets.length > 0) base.writeUInt16BE(rng.pick([...LENGTH_LIES, rng.int(0x10000)]), rng.pick(offsets) + 2);
        return base;
      }
      case 5:
        return base.subarray(0, rng.int(base.length));
      case 6: {
        const out = Buffer.concat([base, rng.bytes(4 * (1 + rng.int(8)))]);
        out.writeUInt16BE((out.length - 20) & 0xffff, 2);
        return out;
      }
      case 7: {
        const at = rng.int(base.length);
        rng.bytes(Math.min(base.length - at, 1 + rng.int(16))).copy(base, at);
        return base;
      }
      case 8:
        // The magic cookie or the type's top bits.
        base[rng.chance(0.5) ? 4 + rng.int(4) : 0]! ^= 1 << rng.int(8);
        return base;
      default: {
        // An attribute type swapped in place (the integrity no longer matches).
        const offsets = attributeOffsets(base);
        if (offsets.length > 0) base.writeUInt16BE(this.attributeType(), rng.pick(offsets));
        return base;
      }
    }
  }

  /** ChannelData with edge or bound channel numbers, lying lengths and odd padding. */
  channelData(): Buffer {
    const rng = this.rng;
    const bound = this.options.boundChannels ?? [];
    const channel = bound.length > 0 && rng.chance(0.5) ? rng.pick(bound) : rng.chance(0.7) ? rng.pick(CHANNEL_EDGES) : CHANNEL_MIN + rng.int(0x4000);
    const data = rng.bytes(rng.chance(0.03) ? 65_000 + rng.int(500) : rng.int(300));
    const pad = this.options.stream ? !rng.chance(0.1) : rng.chance(0.2);
    const cd = encodeChannelData(channel, data, pad);
    const op = rng.int(4);
    this.lastKind = `channel-data:${['as-is', 'length-lie', 'truncated', 'trailing-bytes'][op]}`;
    if (op === 1) cd.writeUInt16BE(rng.pick([...LENGTH_LIES, data.length + 1, Math.max(0, data.length - 1), rng.int(0x10000)]), 2);
    if (op === 2) return cd.subarray(0, rng.int(cd.length + 1));
    if (op === 3) return Buffer.concat([cd, rng.bytes(1 + rng.int(7))]);
    return cd;
  }

  private shouldSign(auth: boolean): boolean {
    return this.options.signer?.() !== undefined && this.rng.chance(auth ? 0.85 : 0.2);
  }

  private attributeType(): number {
    const r = this.rng.int(4);
    if (r < 2) return this.rng.pick(KNOWN_ATTRIBUTE_TYPES);
    if (r === 2) return this.rng.int(0x8000);
    return 0x8000 + this.rng.int(0x8000);
  }

  /** A seed with its XOR addresses encoded against a fresh transaction id (kept in the message). */
  private resolve(seed: SeedMessage): MutableMessage & { tid: Buffer } {
    const tid = this.rng.bytes(12);
    const attributes = seed.attributes.map((at) => {
      if (Buffer.isBuffer(at.value)) return { type: at.type, value: Buffer.from(at.value) };
      const w = new MessageWriter(0, 0, tid).addXorAddress(at.type, at.value.xor, at.value.port).toBuffer();
      return { type: at.type, value: Buffer.from(w.subarray(24)) };
    });
    return { method: seed.method, cls: seed.cls, attributes, auth: seed.auth, tid };
  }

  private mutateStructure(m: MutableMessage): string {
    const rng = this.rng;
    const at = m.attributes.length > 0 ? rng.int(m.attributes.length) : -1;
    const target = at >= 0 ? m.attributes[at]! : undefined;
    switch (rng.int(12)) {
      case 0:
        if (target && target.value.length > 0) for (let i = 1 + rng.int(4); i > 0; i--) target.value[rng.int(target.value.length)]! ^= 1 << rng.int(8);
        return 'value-flip';
      case 1:
        if (target) target.type = this.attributeType();
        return 'type-swap';
      case 2:
        // Duplicates: usually a few, sometimes thousands (one request, many XOR-PEER-ADDRESS).
        if (target)
          for (let i = rng.chance(0.05) ? 2000 : 1 + rng.int(3); i > 0; i--)
            m.attributes.splice(at, 0, { type: target.type, value: Buffer.from(target.value) });
        return 'duplicate';
      case 3:
        if (target) m.attributes.splice(at, 1);
        return 'delete';
      case 4:
        m.attributes.splice(rng.int(m.attributes.length + 1), 0, { type: this.attributeType(), value: rng.bytes(rng.pick([0, 1, 4, 8, 20, rng.int(64)])) });
        return 'insert';
      case 5:
        if (target)
          target.value = rng.chance(0.5)
            ? target.value.subarray(0, rng.int(target.value.length + 1))
            : Buffer.concat([target.value, rng.bytes(1 + rng.int(24))]);
        return 'resize';
      case 6:
        this.setOrAdd(m, Attr.ChannelNumber, encodeChannelNumber(rng.pick(CHANNEL_EDGES)));
        return 'channel-edge';
      case 7:
        this.setOrAdd(m, Attr.Lifetime, encodeUint32(rng.pick(LIFETIMES)));
        return 'lifetime-edge';
      case 8:
        if (rng.chance(0.5)) m.method = rng.chance(0.7) ? rng.pick([0x001, 0x003, 0x004, 0x006, 0x007, 0x008, 0x009, 0x00a, 0x00b, 0x00c]) : rng.int(0x1000);
        else m.cls = rng.int(4);
        return 'method-class';
      case 9:
        for (let i = m.attributes.length - 1; i > 0; i--) {
          const j = rng.int(i + 1);
          [m.attributes[i], m.attributes[j]] = [m.attributes[j]!, m.attributes[i]!];
        }
        return 'shuffle';
      case 10: {
        // XOR-PEER-ADDRESS: the family says one thing, the length another; or the port at an edge.
        const peer = m.attributes.find((x) => x.type === Attr.XorPeerAddress || x.type === Attr.XorRelayedAddress);
        if (!peer || peer.value.length < 4) return 'family';
        if (rng.chance(0.5)) peer.value[1] = rng.pick([0, 1, 2, 3, 0xff]);
        else peer.value.writeUInt16BE(rng.pick(PORTS) ^ 0x2112, 2);
        return 'family-port';
      }
      default:
        m.cls = rng.chance(0.8) ? MessageClass.Request : rng.int(4);
        m.auth = true;
        return 'as-request';
    }
  }

  private setOrAdd(m: MutableMessage, type: number, value: Buffer): void {
    const existing = m.attributes.find((x) => x.type === type);
    if (existing) existing.value = value;
    else m.attributes.push({ type, value });
  }

  /** Writes the message; signed: USERNAME, REALM, NONCE and MESSAGE-INTEGRITY over what is there (RFC 8489 §14.5). */
  private encode(m: MutableMessage & { tid: Buffer }, signed: boolean, fingerprint: boolean): Buffer {
    const w = new MessageWriter(m.method & 0xfff, (m.cls & 3) as MessageClass, m.tid);
    const signer = signed ? this.options.signer?.() : undefined;
    // The writer keeps the header length honest: the message stays within UDP's largest
    // datagram (65,507 bytes over IPv4), room left for signing.
    const room = 65_507 - 20 - (signer ? 200 : 0) - (fingerprint ? 8 : 0);
    let size = 0;
    for (const at of m.attributes) {
      const value = at.value.subarray(0, 0xffff);
      size += 4 + ((value.length + 3) & ~3);
      if (size > room) break;
      w.add(at.type & 0xffff, value);
    }
    if (signer) {
      w.addText(Attr.Username, signer.username).addText(Attr.Realm, signer.realm).addText(Attr.Nonce, signer.nonce);
      w.addIntegrity(signer.key);
    }
    if (fingerprint) w.addFingerprint();
    return w.toBuffer();
  }
}

/** Cuts the concatenation of `packets` at random points: TCP gives no message boundaries (RFC 8656 §12.5). */
export function streamChunks(rng: SeededRandom, packets: readonly Buffer[]): Buffer[] {
  const all = Buffer.concat(packets);
  const out: Buffer[] = [];
  for (let at = 0; at < all.length; ) {
    const size = rng.chance(0.2) ? 1 + rng.int(3) : 1 + rng.int(rng.chance(0.5) ? 64 : 4096);
    out.push(all.subarray(at, at + size));
    at += size;
  }
  return out;
}

/** A seed as it is, unsigned, with its XOR addresses encoded against `transactionId`. */
export function encodeSeed(seed: SeedMessage, transactionId: Buffer): Buffer {
  const w = new MessageWriter(seed.method, seed.cls as MessageClass, transactionId);
  for (const at of seed.attributes) {
    if (Buffer.isBuffer(at.value)) w.add(at.type, at.value);
    else w.addXorAddress(at.type, at.value.xor, at.value.port);
  }
  return w.toBuffer();
}
