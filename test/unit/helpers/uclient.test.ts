// The interop tests run turnutils_uclient once more only after its own channel-number
// collision; these outputs were captured from coturn 4.6.1's uclient -v with its random
// draw forced to collide (against anyturn and against coturn), and cut to the setup lines.

import assert from 'node:assert/strict';
import { describe, it } from 'node:test';

import { uclientChannelCollision } from '../../helpers/uclient.js';

const PROBE = [
  '0: : IPv4. Connected from: 127.0.0.1:34728',
  '0: : IPv4. Connected to: 127.0.0.1:46110',
  '0: : allocate sent',
  '0: : allocate response received: ',
  '0: : allocate sent',
  '0: : allocate response received: ',
  '0: : success',
  '0: : IPv4. Received relay addr: 127.0.0.1:46382',
  '0: : clnet_allocate: rtv=0',
  '0: : refresh sent',
  '0: : refresh response received: ',
  '0: : success',
];

function session(binds: readonly string[]): string[] {
  return [...PROBE, ...binds.flatMap((b) => ['0: : channel bind sent', '0: : cb response received: ', b])];
}

const ANYTURN_ERROR = '0: : channel bind: error 400 (Channel bound to another peer)';
const COTURN_ERROR = '0: : channel bind: error 400 (You cannot use the same channel number with different peer)';
const STATS = ['1: start_mclient: tot_send_msgs=100, tot_recv_msgs=100', '1: Total lost packets 0 (0.000000%), total send dropped 0 (0.000000%)'];

describe('uclientChannelCollision', () => {
  it('recognizes the third ChannelBind of a session refused after two successes with one number', () => {
    for (const error of [ANYTURN_ERROR, COTURN_ERROR]) {
      const output = session(['0: : success: 0x5234', '0: : success: 0x5234', error]).join('\n');
      const found = uclientChannelCollision(output);
      assert.ok(found, error);
      assert.match(found, /0x5234 bound to the peer's port\+1 twice/);
    }
    // An earlier session that went through, and an ignored stale response, change nothing.
    const earlier = session(['0: : success: 0x4a52', '0: : success: 0x4a52', '0: : success: 0x72b2', '0: : success: 0x72b2']);
    const output = [
      ...earlier,
      ...session(['0: : success: 0x5234', '0: : Received wrong response tid; trying again...\n0: : success: 0x5234', ANYTURN_ERROR]),
    ].join('\n');
    assert.ok(uclientChannelCollision(output));
  });

  it('does not excuse a refusal a correct server would never give', () => {
    const cases: Record<string, string[]> = {
      'first bind of a session (after a session whose last two binds shared a number)': [
        ...session(['0: : success: 0x4a52', '0: : success: 0x4a52', '0: : success: 0x72b2', '0: : success: 0x72b2']),
        ...session([ANYTURN_ERROR]),
      ],
      'second bind': session(['0: : success: 0x5234', ANYTURN_ERROR]),
      'fourth bind': session(['0: : success: 0x5234', '0: : success: 0x5234', '0: : success: 0x4a52', ANYTURN_ERROR]),
      'two different numbers before': session(['0: : success: 0x5234', '0: : success: 0x5235', ANYTURN_ERROR]),
      'another error': session(['0: : success: 0x5234', '0: : success: 0x5234', '0: : channel bind: error 403 (Forbidden IP)']),
      'a run that finished': [...session(['0: : success: 0x5234', '0: : success: 0x5234', ANYTURN_ERROR]), ...STATS],
      'no error at all': ['0: : ERROR: Cannot complete Allocation'],
    };
    for (const [name, lines] of Object.entries(cases)) assert.equal(uclientChannelCollision(lines.join('\n')), undefined, name);
  });

  it('without -v (TLS logs every record with it) goes by the message alone', () => {
    assert.ok(uclientChannelCollision(`0: : IPv4. Connected from: 127.0.0.1:1\n${ANYTURN_ERROR}\n`));
    assert.equal(uclientChannelCollision(`${ANYTURN_ERROR}\n0: : ERROR: something else\n`), undefined);
  });
});
