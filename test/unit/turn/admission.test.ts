// Who gets a new allocation: --alternate-server redirects (round robin within the
// client's address family, RFC 8489 §14.15), a draining node refuses with 403.

import { describe, it } from 'node:test';
import assert from 'node:assert/strict';

import { ErrorCode } from '../../../src/stun/constants.js';
import { DRAINING_REASON, createAllocateAdmission } from '../../../src/turn/admission.js';

describe('createAllocateAdmission', () => {
  it('lets every Allocate through with no alternates and no drain', () => {
    const admit = createAllocateAdmission({ alternateServers: [], isDraining: () => false });
    assert.equal(admit('192.0.2.1'), undefined);
    assert.equal(admit('2001:db8::1'), undefined);
  });

  it('refuses with 403 while draining, and admits again after', () => {
    let draining = true;
    const admit = createAllocateAdmission({ alternateServers: [], isDraining: () => draining });
    assert.deepEqual(admit('192.0.2.1'), { code: ErrorCode.Forbidden, reason: DRAINING_REASON });
    assert.deepEqual(admit('2001:db8::1'), { code: ErrorCode.Forbidden, reason: DRAINING_REASON });
    draining = false;
    assert.equal(admit('192.0.2.1'), undefined);
  });

  it('redirects round robin, each family over its own alternates', () => {
    const a = { address: '192.0.2.10', port: 3478 };
    const b = { address: '192.0.2.11', port: 3479 };
    const c = { address: '2001:db8::10', port: 3478 };
    const admit = createAllocateAdmission({ alternateServers: [a, c, b], isDraining: () => false });
    const v4 = [1, 2, 3, 4, 5].map(() => admit('198.51.100.7'));
    assert.deepEqual(
      v4.map((r) => (r?.code === ErrorCode.TryAlternate ? r.alternateServer : undefined)),
      [a, b, a, b, a],
    );
    const v6 = [1, 2].map(() => admit('2001:db8:1::7'));
    assert.deepEqual(
      v6.map((r) => (r?.code === ErrorCode.TryAlternate ? r.alternateServer : undefined)),
      [c, c],
    );
  });

  it('does not redirect a client whose family has no alternate (drain still applies)', () => {
    let draining = false;
    const admit = createAllocateAdmission({ alternateServers: [{ address: '192.0.2.10', port: 3478 }], isDraining: () => draining });
    assert.equal(admit('2001:db8::7'), undefined);
    draining = true;
    assert.equal(admit('2001:db8::7')?.code, ErrorCode.Forbidden);
    // A redirect beats the drain 403: it tells the client where to go.
    assert.equal(admit('192.0.2.7')?.code, ErrorCode.TryAlternate);
  });
});
