// The allocation floor (bench/allocations/floor-allocate.ts) answers part 1's lifecycle
// from the benchmark's own driver (fullSequence: 401, authenticated Allocate,
// CreatePermission, ChannelBind), in both relay modes; its answers carry a
// MESSAGE-INTEGRITY and FINGERPRINT this repository's codec accepts; a wrong password is
// refused. Real UDP sockets on 127.0.0.1; the credentials are the benchmark's (bench/servers.ts).

import assert from 'node:assert/strict';
import dgram from 'node:dgram';
import { randomBytes } from 'node:crypto';
import { after, describe, it } from 'node:test';

import { CHANNEL, fullSequence } from '../../../bench/allocations/context.js';
import { FloorServer, parseFloorOptions, type RelayMode } from '../../../bench/allocations/floor-allocate.js';
import { PASSWORD, REALM, USER } from '../../../bench/servers.js';
import { AllocationClient, DriverStats, TurnRequestError } from '../../../bench/turn-driver.js';
import { encodeRequestedTransport } from '../../../src/stun/attributes.js';
import { Attr, MessageClass, Method, TRANSPORT_UDP } from '../../../src/stun/constants.js';
import { longTermKey, verifyIntegritySha1 } from '../../../src/stun/integrity.js';
import { decodeMessage, getAttribute, type StunMessage } from '../../../src/stun/message.js';
import { MessageWriter } from '../../../src/stun/writer.js';

const PEER = { address: '127.0.0.1', port: 9 };

async function startFloor(relay: RelayMode): Promise<{ floor: FloorServer; endpoint: { address: string; port: number } }> {
  const floor = new FloorServer(parseFloorOptions(['--listening-port', '0', '--user', `${USER}:${PASSWORD}`, '--realm', REALM, '--relay', relay]));
  const port = await floor.listen();
  return { floor, endpoint: { address: '127.0.0.1', port } };
}

function exchange(socket: dgram.Socket, port: number, request: Buffer): Promise<StunMessage> {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error('no answer')), 5000);
    socket.once('message', (buf) => {
      clearTimeout(timer);
      const d = decodeMessage(buf);
      if (d.ok) resolve(d.message);
      else reject(new Error(`undecodable answer: ${d.reason}`));
    });
    socket.send(request, port, '127.0.0.1');
  });
}

for (const relay of ['per-allocation', 'shared'] as const) {
  describe(`floor-allocate, --relay ${relay}`, () => {
    const clients: AllocationClient[] = [];
    let floor: FloorServer | undefined;
    after(async () => {
      floor?.close();
      await Promise.all(clients.map((c) => c.close()));
    });

    it('answers the benchmark lifecycle: one challenge each, distinct relayed ports', async () => {
      const started = await startFloor(relay);
      floor = started.floor;
      const stats = new DriverStats();
      for (let i = 0; i < 3; i++) await fullSequence(started.endpoint, PEER, stats, clients, true);
      assert.equal(floor.allocationCount, 3);
      assert.equal(stats.challenges, 3);
      assert.equal(stats.rechallenges, 0);
      assert.equal(stats.requests, 3 * 4);
      const ports = new Set(clients.map((c) => c.relayed?.port));
      assert.equal(ports.size, 3);
      for (const c of clients) assert.equal(c.relayed?.address, '127.0.0.1');
    });
  });
}

describe('floor-allocate answers', () => {
  it('seals with MESSAGE-INTEGRITY and FINGERPRINT the codec accepts, and keeps the Allocate answer for a retransmission', async () => {
    const { floor, endpoint } = await startFloor('per-allocation');
    const socket = dgram.createSocket('udp4');
    await new Promise<void>((resolve) => socket.bind(0, '127.0.0.1', resolve));
    try {
      const allocate = (nonce?: string, realm?: string, tid = randomBytes(12)): Buffer => {
        const w = new MessageWriter(Method.Allocate, MessageClass.Request, tid);
        w.add(Attr.RequestedTransport, encodeRequestedTransport(TRANSPORT_UDP));
        if (nonce !== undefined && realm !== undefined) {
          w.addText(Attr.Username, USER)
            .addText(Attr.Realm, realm)
            .addText(Attr.Nonce, nonce)
            .addIntegrity(longTermKey(USER, realm, PASSWORD));
        }
        return w.addFingerprint().toBuffer();
      };
      const challenge = await exchange(socket, endpoint.port, allocate());
      assert.equal(challenge.cls, MessageClass.ErrorResponse);
      assert.ok(challenge.fingerprintOffset >= 0);
      const nonce = getAttribute(challenge, Attr.Nonce)?.toString('latin1');
      const realm = getAttribute(challenge, Attr.Realm)?.toString('utf8');
      assert.equal(realm, REALM);
      assert.ok(nonce);
      const request = allocate(nonce, realm);
      const ok = await exchange(socket, endpoint.port, request);
      assert.equal(ok.cls, MessageClass.SuccessResponse);
      assert.ok(ok.fingerprintOffset >= 0);
      assert.ok(verifyIntegritySha1(ok.raw, ok.integrityOffset, longTermKey(USER, REALM, PASSWORD)));
      assert.ok(getAttribute(ok, Attr.XorRelayedAddress));
      const again = await exchange(socket, endpoint.port, request);
      assert.deepEqual(again.raw, ok.raw);
      assert.equal(floor.allocationCount, 1);
    } finally {
      socket.close();
      floor.close();
    }
  });

  it('refuses a wrong password with 401 and allocates nothing', async () => {
    const { floor, endpoint } = await startFloor('per-allocation');
    const stats = new DriverStats();
    const client = await AllocationClient.open(endpoint, { username: USER, password: 'wrong' }, stats);
    try {
      await assert.rejects(client.allocate(), (err: unknown) => err instanceof TurnRequestError && err.code === 401);
      assert.equal(floor.allocationCount, 0);
      assert.equal(stats.challenges, 1);
      assert.equal(stats.rechallenges, 1);
    } finally {
      await client.close();
      floor.close();
    }
  });

  it('answers nothing to a ChannelBind from a client without an allocation', async () => {
    const { floor, endpoint } = await startFloor('shared');
    const socket = dgram.createSocket('udp4');
    await new Promise<void>((resolve) => socket.bind(0, '127.0.0.1', resolve));
    try {
      const w = new MessageWriter(Method.ChannelBind, MessageClass.Request, randomBytes(12));
      w.add(Attr.ChannelNumber, Buffer.from([CHANNEL >> 8, CHANNEL & 255, 0, 0]));
      // Then a Binding: its answer is the first one back only if the ChannelBind got none.
      socket.send(w.toBuffer(), endpoint.port, '127.0.0.1');
      const binding = await exchange(socket, endpoint.port, new MessageWriter(Method.Binding, MessageClass.Request, randomBytes(12)).toBuffer());
      assert.equal(binding.method, Method.Binding);
      assert.equal(binding.cls, MessageClass.SuccessResponse);
    } finally {
      socket.close();
      floor.close();
    }
  });
});
