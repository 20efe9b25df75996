// readAllocateRequest and requestedLifetimeSeconds: what an Allocate asks for, and the
// error each malformed or unsatisfiable request is answered with (RFC 8656 §7.2).

import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { encodeAddressFamily, encodeEvenPort, encodeRequestedTransport, encodeUint32 } from '../../../../src/stun/attributes.js';
import { AddressFamily, Attr, ErrorCode, MessageClass, Method, TRANSPORT_UDP } from '../../../../src/stun/constants.js';
import { type StunMessage, decodeMessage } from '../../../../src/stun/message.js';
import { MessageWriter } from '../../../../src/stun/writer.js';
import { DEFAULT_LIFETIME_SECONDS, readAllocateRequest, requestedLifetimeSeconds } from '../../../../src/turn/methods/allocate-request.js';
import { TurnError } from '../../../../src/turn/errors.js';

const MAX_LIFETIME = 3600;
const BOTH = { ipv4: true, ipv6: true };
const IPV4_ONLY = { ipv4: true, ipv6: false };

function request(decorate: (w: MessageWriter) => void, method: number = Method.Allocate): StunMessage {
  const w = new MessageWriter(method, MessageClass.Request, randomBytes(12));
  decorate(w);
  const decoded = decodeMessage(w.toBuffer());
  assert.ok(decoded.ok);
  return decoded.message;
}

const udp = (w: MessageWriter): void => {
  w.add(Attr.RequestedTransport, encodeRequestedTransport(TRANSPORT_UDP));
};

function refusal(f: () => unknown): { code: number; reason: string | undefined } {
  try {
    f();
  } catch (err) {
    assert.ok(err instanceof TurnError, `a TurnError, got ${String(err)}`);
    return { code: err.code, reason: err.reason };
  }
  assert.fail('expected a refusal');
}

describe('readAllocateRequest', () => {
  it('a plain UDP Allocate: IPv4, default lifetime, no token, no EVEN-PORT, one family', () => {
    assert.deepEqual(readAllocateRequest(request(udp), BOTH, MAX_LIFETIME), {
      token: undefined,
      evenPort: undefined,
      family: AddressFamily.IPv4,
      wantsDual: false,
      additionalError: undefined,
      lifetimeSeconds: DEFAULT_LIFETIME_SECONDS,
    });
  });

  it('reads EVEN-PORT, RESERVATION-TOKEN, REQUESTED-ADDRESS-FAMILY and ADDITIONAL-ADDRESS-FAMILY', () => {
    assert.deepEqual(
      readAllocateRequest(
        request((w) => {
          udp(w);
          w.add(Attr.EvenPort, encodeEvenPort(true));
        }),
        BOTH,
        MAX_LIFETIME,
      ).evenPort,
      { reserveNext: true },
    );
    const token = randomBytes(8);
    assert.deepEqual(
      readAllocateRequest(
        request((w) => {
          udp(w);
          w.add(Attr.ReservationToken, token);
        }),
        BOTH,
        MAX_LIFETIME,
      ).token,
      token,
    );
    const v6 = request((w) => {
      udp(w);
      w.add(Attr.RequestedAddressFamily, encodeAddressFamily(AddressFamily.IPv6));
    });
    assert.equal(readAllocateRequest(v6, BOTH, MAX_LIFETIME).family, AddressFamily.IPv6);
    const dual = request((w) => {
      udp(w);
      w.add(Attr.AdditionalAddressFamily, encodeAddressFamily(AddressFamily.IPv6));
    });
    assert.deepEqual(
      [readAllocateRequest(dual, BOTH, MAX_LIFETIME).wantsDual, readAllocateRequest(dual, BOTH, MAX_LIFETIME).additionalError],
      [true, undefined],
    );
    // Without an IPv6 relay the IPv4 half still goes ahead; ADDRESS-ERROR-CODE will say 440.
    assert.equal(readAllocateRequest(dual, IPV4_ONLY, MAX_LIFETIME).additionalError, ErrorCode.AddressFamilyNotSupported);
  });

  it('answers each bad request with its code', () => {
    const cases: [string, (w: MessageWriter) => void, number, { ipv4: boolean; ipv6: boolean }?][] = [
      ['no REQUESTED-TRANSPORT', () => undefined, ErrorCode.BadRequest],
      ['a 3-byte REQUESTED-TRANSPORT', (w) => w.add(Attr.RequestedTransport, Buffer.from([17, 0, 0])), ErrorCode.BadRequest],
      ['TCP (6)', (w) => w.add(Attr.RequestedTransport, encodeRequestedTransport(6)), ErrorCode.UnsupportedTransportProtocol],
      [
        'RESERVATION-TOKEN with EVEN-PORT',
        (w) => {
          udp(w);
          w.add(Attr.ReservationToken, randomBytes(8));
          w.add(Attr.EvenPort, encodeEvenPort(false));
        },
        ErrorCode.BadRequest,
      ],
      [
        'RESERVATION-TOKEN with REQUESTED-ADDRESS-FAMILY',
        (w) => {
          udp(w);
          w.add(Attr.ReservationToken, randomBytes(8));
          w.add(Attr.RequestedAddressFamily, encodeAddressFamily(AddressFamily.IPv4));
        },
        ErrorCode.BadRequest,
      ],
      [
        'a 7-byte RESERVATION-TOKEN',
        (w) => {
          udp(w);
          w.add(Attr.ReservationToken, randomBytes(7));
        },
        ErrorCode.BadRequest,
      ],
      [
        'an empty EVEN-PORT',
        (w) => {
          udp(w);
          w.add(Attr.EvenPort, Buffer.alloc(0));
        },
        ErrorCode.BadRequest,
      ],
      [
        'REQUESTED- and ADDITIONAL-ADDRESS-FAMILY',
        (w) => {
          udp(w);
          w.add(Attr.RequestedAddressFamily, encodeAddressFamily(AddressFamily.IPv4));
          w.add(Attr.AdditionalAddressFamily, encodeAddressFamily(AddressFamily.IPv6));
        },
        ErrorCode.BadRequest,
      ],
      [
        'family 0x03',
        (w) => {
          udp(w);
          w.add(Attr.RequestedAddressFamily, encodeAddressFamily(3));
        },
        ErrorCode.AddressFamilyNotSupported,
      ],
      [
        'ADDITIONAL-ADDRESS-FAMILY IPv4',
        (w) => {
          udp(w);
          w.add(Attr.AdditionalAddressFamily, encodeAddressFamily(AddressFamily.IPv4));
        },
        ErrorCode.BadRequest,
      ],
      [
        'IPv6 without an IPv6 relay',
        (w) => {
          udp(w);
          w.add(Attr.RequestedAddressFamily, encodeAddressFamily(AddressFamily.IPv6));
        },
        ErrorCode.AddressFamilyNotSupported,
        IPV4_ONLY,
      ],
      ['IPv4 without an IPv4 relay', udp, ErrorCode.AddressFamilyNotSupported, { ipv4: false, ipv6: true }],
      [
        'a 2-byte LIFETIME',
        (w) => {
          udp(w);
          w.add(Attr.Lifetime, Buffer.from([0, 1]));
        },
        ErrorCode.BadRequest,
      ],
    ];
    for (const [name, decorate, code, relays] of cases) {
      const r = refusal(() => readAllocateRequest(request(decorate), relays ?? BOTH, MAX_LIFETIME));
      assert.equal(r.code, code, name);
    }
  });
});

describe('requestedLifetimeSeconds', () => {
  const withLifetime = (seconds: number): StunMessage => request((w) => w.add(Attr.Lifetime, encodeUint32(seconds)), Method.Refresh);
  it('absent: the default; 0: 0; otherwise clamped to [default, max]', () => {
    assert.equal(
      requestedLifetimeSeconds(
        request(() => undefined, Method.Refresh),
        MAX_LIFETIME,
      ),
      DEFAULT_LIFETIME_SECONDS,
    );
    assert.equal(requestedLifetimeSeconds(withLifetime(0), MAX_LIFETIME), 0);
    assert.equal(requestedLifetimeSeconds(withLifetime(1), MAX_LIFETIME), DEFAULT_LIFETIME_SECONDS);
    assert.equal(requestedLifetimeSeconds(withLifetime(1200), MAX_LIFETIME), 1200);
    assert.equal(requestedLifetimeSeconds(withLifetime(0xffffffff), MAX_LIFETIME), MAX_LIFETIME);
  });
  it('an Allocate asking for 0 gets the default (a new allocation cannot start expired)', () => {
    assert.equal(
      readAllocateRequest(
        request((w) => {
          udp(w);
          w.add(Attr.Lifetime, encodeUint32(0));
        }),
        BOTH,
        MAX_LIFETIME,
      ).lifetimeSeconds,
      DEFAULT_LIFETIME_SECONDS,
    );
  });
});
