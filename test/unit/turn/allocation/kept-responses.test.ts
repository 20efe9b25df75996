// ResponseSlabs (allocation/kept-responses.ts): Allocate responses kept for retransmissions
// are copied one after the other into slabs of our own, never overlapping, a full slab
// replaced by a new one, a response larger than a slab given a buffer of its own; and the
// kept message is found by its transaction id and read back whole from its STUN header.

import { describe, it } from 'node:test';
import assert from 'node:assert/strict';

import { MessageClass, Method } from '../../../../src/stun/constants.js';
import { MessageWriter } from '../../../../src/stun/writer.js';
import { ResponseSlabs, keptMessage, keptTransactionIs } from '../../../../src/turn/allocation/kept-responses.js';

function response(id: number, padding = 0): Buffer {
  const transactionId = Buffer.alloc(12, id);
  const w = new MessageWriter(Method.Allocate, MessageClass.SuccessResponse, transactionId);
  if (padding > 0) w.add(0x8022, Buffer.alloc(padding, id));
  return w.toBuffer();
}

describe('ResponseSlabs', () => {
  it('copies responses one after the other into one slab until it is full, then into a new one', () => {
    const slabs = new ResponseSlabs(100);
    const a = response(1, 20); // 44 bytes
    const b = response(2, 20);
    const c = response(3, 20);
    const ka = slabs.keep(a);
    const kb = slabs.keep(b);
    const kc = slabs.keep(c);
    assert.equal(ka.slab, kb.slab, 'two fit in one slab');
    assert.equal(kb.offset, ka.offset + a.length, 'one after the other');
    assert.notEqual(kc.slab, ka.slab, 'the third does not fit: a new slab');
    assert.equal(kc.offset, 0);
    assert.equal(ka.slab.length, 100);
    a.fill(0);
    assert.deepEqual(keptMessage(ka.slab, ka.offset), response(1, 20), 'a copy: the sent buffer may be reused');
    assert.deepEqual(keptMessage(kb.slab, kb.offset), b);
    assert.deepEqual(keptMessage(kc.slab, kc.offset), c);
  });

  it('gives a response larger than a slab a buffer of its own, and goes on filling the slab', () => {
    const slabs = new ResponseSlabs(64);
    const small = slabs.keep(response(1));
    const large = response(2, 100);
    const kept = slabs.keep(large);
    assert.notEqual(kept.slab, small.slab);
    assert.equal(kept.slab.length, large.length);
    assert.deepEqual(keptMessage(kept.slab, kept.offset), large);
    assert.equal(slabs.keep(response(3)).slab, small.slab);
  });

  it('finds a kept message by its transaction id only', () => {
    const slabs = new ResponseSlabs();
    slabs.keep(response(9));
    const kept = slabs.keep(response(7, 8));
    assert.equal(keptTransactionIs(kept.slab, kept.offset, Buffer.alloc(12, 7)), true);
    assert.equal(keptTransactionIs(kept.slab, kept.offset, Buffer.alloc(12, 9)), false, 'the neighbour');
    assert.equal(keptTransactionIs(kept.slab, kept.offset, Buffer.alloc(11, 7)), false, 'not a transaction id');
  });
});
