// Replies.error (src/turn/reply.ts) keeps the ERROR-CODE value of each code once built
// (without a reason phrase, and with the standard one): every answer must still carry its
// own code and the reason asked for, whatever was built before it.

import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { describe, it } from 'node:test';

import { decodeErrorCode } from '../../../src/stun/attributes.js';
import { Attr, MessageClass, Method, reasonPhrase } from '../../../src/stun/constants.js';
import { decodeMessage, getAttribute, type StunMessage } from '../../../src/stun/message.js';
import { MessageWriter } from '../../../src/stun/writer.js';
import { EngineCounters } from '../../../src/turn/counters.js';
import { Replies } from '../../../src/turn/reply.js';

function request(): StunMessage {
  const d = decodeMessage(new MessageWriter(Method.Allocate, MessageClass.Request, randomBytes(12)).toBuffer());
  assert.ok(d.ok);
  return d.message;
}

function errorOf(w: MessageWriter): { code: number; reason: string } {
  const d = decodeMessage(w.toBuffer());
  assert.ok(d.ok);
  const e = decodeErrorCode(getAttribute(d.message, Attr.ErrorCode)!);
  assert.ok(e);
  return { code: e.code, reason: e.reason };
}

describe('Replies.error', () => {
  it('gives each answer its code and reason: none, the standard phrase, or the one given, in any order', () => {
    const replies = new Replies(new EngineCounters(), '');
    const cases: [number, string | undefined, string][] = [
      [401, '', ''],
      [401, undefined, reasonPhrase(401)],
      [401, '', ''],
      [437, undefined, reasonPhrase(437)],
      [437, 'Custom reason', 'Custom reason'],
      [437, undefined, reasonPhrase(437)],
      [438, '', ''],
      [401, 'Another', 'Another'],
      [401, '', ''],
      [508, undefined, reasonPhrase(508)],
    ];
    for (let round = 0; round < 2; round++) {
      for (const [code, reason, expected] of cases) {
        const m = request();
        const w = replies.error(m, code, reason);
        assert.deepEqual(errorOf(w), { code, reason: expected }, `${code} ${JSON.stringify(reason)}`);
        assert.deepEqual(w.toBuffer().subarray(8, 20), m.transactionId);
      }
    }
  });
});
