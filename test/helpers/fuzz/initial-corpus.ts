// The seed corpus of the coverage-guided loop (fuzz/corpus/<target>/0-*.bin): every seed
// message, the published vectors, ChannelData; for the engine with the control byte of
// targets.ts, in the order a client would send them (allocate, permission, channel, data),
// since the engine keeps state from one input to the next.

import { encodeChannelData } from '../../../src/stun/channel-data.js';
import { MessageClass, Method } from '../../../src/stun/constants.js';
import { encodeSeed } from './packets.js';
import { seedMessages, vectorSeeds } from './seeds.js';

const PEER = { address: '8.8.8.8', port: 5000 };
const order: number[] = [Method.Binding, Method.Allocate, Method.CreatePermission, Method.ChannelBind, Method.Send, Method.Data, Method.Refresh];

export function initialCorpus(target: 'codec' | 'engine'): [string, Buffer][] {
  const seeds = seedMessages({ peer: PEER, otherPeer: { address: '9.9.9.9', port: 6000 } })
    .filter((s) => s.attributes.every((a) => !Buffer.isBuffer(a.value) || a.value.length < 4096))
    .sort((a, b) => order.indexOf(a.method) - order.indexOf(b.method));
  const out: [string, Buffer][] = [];
  const name = (i: number, what: string): string => `0-${String(i).padStart(2, '0')}-${what}.bin`;
  seeds.forEach((seed, i) => {
    const tid = Buffer.alloc(12, i + 1);
    const buf = encodeSeed(seed, tid);
    const what = `${seed.method.toString(16)}-${seed.cls}`;
    if (target === 'codec') out.push([name(i, what), buf]);
    else out.push([name(i, what), Buffer.concat([Buffer.from([seed.auth && seed.cls === MessageClass.Request ? 4 : 0]), buf])]);
  });
  const cd = encodeChannelData(0x4001, Buffer.from('channel data'));
  const extra = [...vectorSeeds(), cd];
  extra.forEach((buf, i) => {
    if (target === 'codec') out.push([name(50 + i, 'raw'), buf]);
    else out.push([name(50 + i, 'raw'), Buffer.concat([Buffer.from([0]), buf])]);
  });
  if (target === 'engine') out.push([name(70, 'peer'), Buffer.concat([Buffer.from([32]), Buffer.from('from the peer')])]);
  return out;
}
