// The allocation floor: the least a TURN server written in plain Node.js (node:dgram,
// node:crypto) must spend on part 1's lifecycle (docs/scaling.md, part 1): Allocate without
// credentials -> 401, authenticated Allocate -> 200, CreatePermission -> 200, ChannelBind
// -> 200. It is NOT a TURN server (no lifetimes, no permissions kept, no channel data, no
// limits, no metrics, no logs); it exists so that the benchmark can show how much of
// anyturn's CPU per allocation is anyturn's own and how much any Node server pays.
//
//   node dist/bench/allocations/floor-allocate.js --listening-port P [--listening-ip 127.0.0.1]
//        [--relay-ip 127.0.0.1] [--user name:password] [--realm R] [--relay per-allocation|shared]
//
// What it does per lifecycle, and nothing else (the work RFC 8489 §9.2 long-term
// credentials and RFC 8656 §7-§12 leave no server):
//   - walks each request's attributes by hand (no decoded object, no codec: cheaper than
//     this repository's src/stun/message.ts), IPv4 only;
//   - the 401 carries REALM and a stateless NONCE: 4-byte timestamp + HMAC-SHA256 of it and
//     the client IP, truncated to 8 bytes (one HMAC, as anyturn's src/turn/auth/nonce.ts);
//   - the first authenticated request checks that HMAC (one more); later requests of the same
//     allocation only compare the nonce with the one already checked (as anyturn's cache);
//   - MESSAGE-INTEGRITY (HMAC-SHA1, RFC 8489 §14.5) checked on the three authenticated
//     requests and added to their three answers; FINGERPRINT when the request had one;
//   - `--relay per-allocation`: one UDP relay socket per allocation, bound to an ephemeral
//     port of --relay-ip before the Allocate is answered; `--relay shared`: none (one socket
//     bound at start, relayed ports only counted): what shared relay sockets save;
//   - the Allocate answer is kept on the allocation and sent again to a retransmission;
//   - each answer is one Buffer of its own, sent with one send.
// The long-term key (MD5 of user:realm:password) is computed once at start.
//
// It logs "floor ready" on stdout when it listens and exits on SIGINT/SIGTERM.
import { createHmac, timingSafeEqual } from 'node:crypto';
import dgram from 'node:dgram';
import type { LookupOneOptions } from 'node:dns';
import { isIP } from 'node:net';
import { pathToFileURL } from 'node:url';

import { crc32 } from '../../src/stun/crc32.js';
import { longTermKey } from '../../src/stun/integrity.js';

export type RelayMode = 'per-allocation' | 'shared';

export interface FloorOptions {
  listeningIp: string;
  listeningPort: number;
  relayIp: string;
  user: string;
  password: string;
  realm: string;
  relay: RelayMode;
}

const COOKIE = 0x2112a442;
const FINGERPRINT_XOR = 0x5354554e;
const ALLOCATE = 0x003;
const CREATE_PERMISSION = 0x008;
const CHANNEL_BIND = 0x009;
const BINDING = 0x001;
const A_USERNAME = 0x0006;
const A_INTEGRITY = 0x0008;
const A_ERROR_CODE = 0x0009;
const A_LIFETIME = 0x000d;
const A_REALM = 0x0014;
const A_NONCE = 0x0015;
const A_XOR_RELAYED = 0x0016;
const A_XOR_MAPPED = 0x0020;
const A_FINGERPRINT = 0x8028;
const LIFETIME_SECONDS = 600;
const NONCE_LIFETIME_MS = 600_000;
/** MESSAGE-INTEGRITY attribute: 4 + 20 bytes; FINGERPRINT: 4 + 4. */
const INTEGRITY_BYTES = 24;
const FINGERPRINT_BYTES = 8;

export function parseFloorOptions(argv: readonly string[]): FloorOptions {
  const o: FloorOptions = {
    listeningIp: '127.0.0.1',
    listeningPort: 3478,
    relayIp: '127.0.0.1',
    user: 'bench',
    password: 'bench-password',
    realm: 'bench.anyturn',
    relay: 'per-allocation',
  };
  for (let i = 0; i < argv.length; i += 2) {
    const flag = argv[i];
    const value = argv[i + 1];
    if (value === undefined) throw new Error(`${flag ?? ''} needs a value`);
    if (flag === '--listening-ip') o.listeningIp = value;
    else if (flag === '--listening-port') o.listeningPort = Number(value);
    else if (flag === '--relay-ip') o.relayIp = value;
    else if (flag === '--realm') o.realm = value;
    else if (flag === '--relay') {
      if (value !== 'per-allocation' && value !== 'shared') throw new Error(`--relay '${value}': per-allocation or shared`);
      o.relay = value;
    } else if (flag === '--user') {
      const at = value.indexOf(':');
      if (at < 0) throw new Error('--user wants name:password');
      o.user = value.slice(0, at);
      o.password = value.slice(at + 1);
    } else throw new Error(`unknown argument '${flag ?? ''}'`);
  }
  if (!Number.isInteger(o.listeningPort) || o.listeningPort < 0 || o.listeningPort > 65535) throw new Error(`--listening-port: 0-65535`);
  return o;
}

type LookupCallback = (err: NodeJS.ErrnoException | null, address: string, family: number) => void;
/** dgram defers every send to an address by a dns.lookup tick; every address here is a literal. */
function literalLookup(address: string, _o: LookupOneOptions | number, callback: LookupCallback): void {
  callback(null, address, isIP(address));
}

interface Allocation {
  readonly nonce: Buffer;
  readonly relay: dgram.Socket | undefined;
  /** The Allocate answer, for a retransmission of the same transaction. */
  readonly response: Buffer;
}

/** Offsets of the attributes of the request in hand (-1: absent); one parse at a time. */
let usernameAt = -1;
let realmAt = -1;
let nonceAt = -1;
let integrityAt = -1;
let fingerprintAt = -1;

/** Walks the attributes; false for a message that is not a well-formed STUN request. */
function parse(buf: Buffer): boolean {
  usernameAt = realmAt = nonceAt = integrityAt = fingerprintAt = -1;
  if (buf.length < 20 || (buf[0]! & 0xc0) !== 0 || buf.readUInt32BE(4) !== COOKIE) return false;
  const end = 20 + buf.readUInt16BE(2);
  if (end !== buf.length) return false;
  let at = 20;
  while (at + 4 <= end) {
    const type = buf.readUInt16BE(at);
    const length = buf.readUInt16BE(at + 2);
    if (at + 4 + length > end) return false;
    if (integrityAt < 0) {
      if (type === A_USERNAME) usernameAt = at;
      else if (type === A_REALM) realmAt = at;
      else if (type === A_NONCE) nonceAt = at;
      else if (type === A_INTEGRITY && length === 20) integrityAt = at;
    }
    if (type === A_FINGERPRINT) fingerprintAt = at;
    at += 4 + ((length + 3) & ~3);
  }
  return true;
}

function attributeAt(buf: Buffer, at: number): Buffer {
  return buf.subarray(at + 4, at + 4 + buf.readUInt16BE(at + 2));
}

export class FloorServer {
  private readonly key: Buffer;
  private readonly nonceKey = createHmac('sha256', 'floor').update(String(Math.random())).digest();
  /** Client IP -> client port -> allocation. */
  private readonly allocations = new Map<string, Map<number, Allocation>>();
  private readonly listener: dgram.Socket;
  private readonly relays: dgram.Socket[] = [];
  private sharedRelay: dgram.Socket | undefined;
  private nextSharedPort = 12000;
  private readonly realm: Buffer;
  private readonly username: Buffer;
  allocationCount = 0;

  constructor(private readonly o: FloorOptions) {
    this.key = longTermKey(o.user, o.realm, o.password);
    this.realm = Buffer.from(o.realm, 'utf8');
    this.username = Buffer.from(o.user, 'utf8');
    this.listener = dgram.createSocket({ type: 'udp4', lookup: literalLookup });
    this.listener.on('message', (buf, rinfo) => this.onMessage(buf, rinfo.address, rinfo.port));
    this.listener.on('error', () => undefined);
  }

  async listen(): Promise<number> {
    await new Promise<void>((resolve, reject) => {
      this.listener.once('error', reject);
      this.listener.bind(this.o.listeningPort, this.o.listeningIp, () => {
        this.listener.off('error', reject);
        resolve();
      });
    });
    if (this.o.relay === 'shared') this.sharedRelay = await this.bindRelay();
    return this.listener.address().port;
  }

  close(): void {
    this.listener.close();
    for (const r of this.relays) r.close();
    this.sharedRelay?.close();
  }

  private bindRelay(): Promise<dgram.Socket> {
    return new Promise((resolve, reject) => {
      const s = dgram.createSocket({ type: 'udp4', lookup: literalLookup });
      s.on('message', dropPeerPacket);
      s.once('error', reject);
      s.bind(0, this.o.relayIp, () => {
        s.off('error', reject);
        resolve(s);
      });
    });
  }

  private onMessage(buf: Buffer, address: string, port: number): void {
    if (!parse(buf)) return;
    const type = buf.readUInt16BE(0);
    if ((type & 0x0110) !== 0) return; // only requests (RFC 8489 §5: class bits C1 C0 = 00)
    const method = type & 0x3eef;
    if (method === BINDING) return this.binding(buf, address, port);
    const allocation = this.allocations.get(address)?.get(port);
    if (method === ALLOCATE && allocation !== undefined) {
      if (allocation.response.subarray(8, 20).equals(buf.subarray(8, 20))) this.listener.send(allocation.response, port, address);
      return;
    }
    if (method !== ALLOCATE && method !== CREATE_PERMISSION && method !== CHANNEL_BIND) return;
    if (method !== ALLOCATE && allocation === undefined) return;
    if (integrityAt < 0 || usernameAt < 0 || realmAt < 0 || nonceAt < 0) return this.challenge(buf, method, address, port);
    const nonce = attributeAt(buf, nonceAt);
    if (allocation !== undefined ? !nonce.equals(allocation.nonce) : !this.nonceValid(nonce, address)) return this.challenge(buf, method, address, port);
    if (!attributeAt(buf, usernameAt).equals(this.username) || !attributeAt(buf, realmAt).equals(this.realm) || !this.integrityValid(buf)) {
      return this.challenge(buf, method, address, port);
    }
    if (method !== ALLOCATE) return this.send(this.answer(buf, type | 0x100, 0), port, address);
    if (this.sharedRelay !== undefined) this.allocated(buf, address, port, Buffer.from(nonce), undefined, this.nextSharedPort++);
    else {
      this.bindRelay().then(
        (s) => {
          this.relays.push(s);
          this.allocated(buf, address, port, Buffer.from(nonce), s, s.address().port);
        },
        () => undefined,
      );
    }
  }

  private allocated(request: Buffer, address: string, port: number, nonce: Buffer, relay: dgram.Socket | undefined, relayPort: number): void {
    const out = this.answer(request, ALLOCATE | 0x100, 12 + 8 + 12);
    let at = 20;
    at = writeXorAddress(out, at, A_XOR_RELAYED, this.o.relayIp, relayPort);
    out.writeUInt16BE(A_LIFETIME, at);
    out.writeUInt16BE(4, at + 2);
    out.writeUInt32BE(LIFETIME_SECONDS, at + 4);
    at = writeXorAddress(out, at + 8, A_XOR_MAPPED, address, port);
    this.seal(out, at);
    let byPort = this.allocations.get(address);
    if (byPort === undefined) this.allocations.set(address, (byPort = new Map()));
    byPort.set(port, { nonce, relay, response: out });
    this.allocationCount++;
    this.listener.send(out, port, address);
  }

  /**
   * A success answer with room for `attributesBytes` of attributes, then MESSAGE-INTEGRITY and
   * (when the request had one) FINGERPRINT; sealed here when it has no attributes.
   */
  private answer(request: Buffer, type: number, attributesBytes: number): Buffer {
    const fingerprint = fingerprintAt >= 0 ? FINGERPRINT_BYTES : 0;
    const out = Buffer.allocUnsafe(20 + attributesBytes + INTEGRITY_BYTES + fingerprint);
    out.writeUInt16BE(type, 0);
    request.copy(out, 4, 4, 20);
    if (attributesBytes === 0) this.seal(out, 20);
    return out;
  }

  /** MESSAGE-INTEGRITY at `at` (RFC 8489 §14.5: length counts up to it), then FINGERPRINT if room is left. */
  private seal(out: Buffer, at: number): void {
    out.writeUInt16BE(at + INTEGRITY_BYTES - 20, 2);
    out.writeUInt16BE(A_INTEGRITY, at);
    out.writeUInt16BE(20, at + 2);
    createHmac('sha1', this.key)
      .update(out.subarray(0, at))
      .digest()
      .copy(out, at + 4);
    at += INTEGRITY_BYTES;
    if (at === out.length) return;
    out.writeUInt16BE(at + FINGERPRINT_BYTES - 20, 2);
    out.writeUInt16BE(A_FINGERPRINT, at);
    out.writeUInt16BE(4, at + 2);
    out.writeUInt32BE((crc32(out, 0, at) ^ FINGERPRINT_XOR) >>> 0, at + 4);
  }

  /** RFC 8489 §14.5: the HMAC covers the message up to MESSAGE-INTEGRITY, its length field as if it ended there. */
  private integrityValid(buf: Buffer): boolean {
    const length = buf.readUInt16BE(2);
    buf.writeUInt16BE(integrityAt + INTEGRITY_BYTES - 20, 2);
    const mac = createHmac('sha1', this.key).update(buf.subarray(0, integrityAt)).digest();
    buf.writeUInt16BE(length, 2);
    return timingSafeEqual(mac, buf.subarray(integrityAt + 4, integrityAt + INTEGRITY_BYTES));
  }

  private nonceMac(timestamp: Buffer, address: string): Buffer {
    return createHmac('sha256', this.nonceKey).update(timestamp).update(address, 'latin1').digest().subarray(0, 8);
  }

  private nonceValid(nonce: Buffer, address: string): boolean {
    if (nonce.length !== 24) return false;
    const raw = Buffer.from(nonce.toString('latin1'), 'hex');
    if (raw.length !== 12) return false;
    const issuedMs = raw.readUInt32BE(0) * 1000;
    return Date.now() - issuedMs < NONCE_LIFETIME_MS && timingSafeEqual(this.nonceMac(raw.subarray(0, 4), address), raw.subarray(4));
  }

  /** 401 with REALM and a fresh NONCE (RFC 8489 §9.2.4), no reason phrase; FINGERPRINT if asked. */
  private challenge(request: Buffer, method: number, address: string, port: number): void {
    const timestamp = Buffer.allocUnsafe(4);
    timestamp.writeUInt32BE(Math.floor(Date.now() / 1000) >>> 0, 0);
    const nonce = timestamp.toString('hex') + this.nonceMac(timestamp, address).toString('hex');
    const realmPadded = (this.realm.length + 3) & ~3;
    const fingerprint = fingerprintAt >= 0 ? FINGERPRINT_BYTES : 0;
    const out = Buffer.alloc(20 + 8 + 4 + realmPadded + 4 + 24 + fingerprint);
    out.writeUInt16BE(method | 0x110, 0);
    request.copy(out, 4, 4, 20);
    out.writeUInt16BE(A_ERROR_CODE, 20);
    out.writeUInt16BE(4, 22);
    out.writeUInt8(4, 26);
    out.writeUInt8(1, 27);
    out.writeUInt16BE(A_REALM, 28);
    out.writeUInt16BE(this.realm.length, 30);
    this.realm.copy(out, 32);
    let at = 32 + realmPadded;
    out.writeUInt16BE(A_NONCE, at);
    out.writeUInt16BE(24, at + 2);
    out.write(nonce, at + 4, 'latin1');
    at += 28;
    out.writeUInt16BE(at - 20 + fingerprint, 2);
    if (fingerprint > 0) {
      out.writeUInt16BE(A_FINGERPRINT, at);
      out.writeUInt16BE(4, at + 2);
      out.writeUInt32BE((crc32(out, 0, at) ^ FINGERPRINT_XOR) >>> 0, at + 4);
    }
    this.send(out, port, address);
  }

  private binding(request: Buffer, address: string, port: number): void {
    const out = Buffer.allocUnsafe(32);
    out.writeUInt16BE(0x0101, 0);
    request.copy(out, 4, 4, 20);
    out.writeUInt16BE(12, 2);
    writeXorAddress(out, 20, A_XOR_MAPPED, address, port);
    this.send(out, port, address);
  }

  private send(out: Buffer, port: number, address: string): void {
    this.listener.send(out, port, address);
  }
}

function dropPeerPacket(): void {}

/** XOR-*-ADDRESS for IPv4 (RFC 8489 §14.2); returns the offset after it. */
function writeXorAddress(out: Buffer, at: number, type: number, address: string, port: number): number {
  out.writeUInt16BE(type, at);
  out.writeUInt16BE(8, at + 2);
  out.writeUInt16BE(1, at + 4);
  out.writeUInt16BE(port ^ (COOKIE >>> 16), at + 6);
  let ip = 0;
  let part = 0;
  for (let i = 0; i < address.length; i++) {
    const c = address.charCodeAt(i);
    if (c === 46) {
      ip = ip * 256 + part;
      part = 0;
    } else part = part * 10 + c - 48;
  }
  ip = ip * 256 + part;
  out.writeUInt32BE((ip ^ COOKIE) >>> 0, at + 8);
  return at + 12;
}

async function main(): Promise<void> {
  const floor = new FloorServer(parseFloorOptions(process.argv.slice(2)));
  const port = await floor.listen();
  console.log(`floor ready on port ${port}`);
  const stop = (): void => {
    floor.close();
    process.exit(0);
  };
  process.on('SIGINT', stop);
  process.on('SIGTERM', stop);
}

if (process.argv[1] !== undefined && import.meta.url === pathToFileURL(process.argv[1]).href) {
  main().catch((err: unknown) => {
    console.error(err);
    process.exit(1);
  });
}
