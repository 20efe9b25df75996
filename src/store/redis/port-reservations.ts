// The Redis store's port reservations for EVEN-PORT with the R bit (RFC 8656
// §18.6) and RESERVATION-TOKEN (§18.9): a token key naming the port, and the
// port key naming the token.

import type { ReservedPort } from '../types.js';
import { checkPort, checkTime, isFiniteNumber, isObject, parseJson } from './records.js';
import { RELEASE_IF_HELD, TAKE } from './scripts.js';
import type { StoreContext } from './store-context.js';

/*
 * reservePort: the token first (SET NX: a token in use refuses), then the port
 * (SET NX naming the token); a taken port deletes the token key again.
 */
export async function reservePort(ctx: StoreContext, token: string, port: ReservedPort, ttlMs: number): Promise<boolean> {
  checkPort(port.relayedPort);
  checkTime('ttlMs', ttlMs);
  const { client, keys } = ctx;
  const px = Math.max(1, Math.ceil(ttlMs));
  const resvKey = keys.reservation(token);
  const value = JSON.stringify({ relayedAddress: port.relayedAddress, relayedPort: port.relayedPort });
  if ((await client.set(resvKey, value, 'PX', px, 'NX')) === null) return false;
  const holder = `resv|${keys.tokenTag(token)}`;
  let portSet: string | null;
  try {
    portSet = await client.set(keys.port(port.relayedAddress, port.relayedPort), holder, 'PX', px, 'NX');
  } catch (err) {
    await RELEASE_IF_HELD.run(client, resvKey, value).catch((e: unknown) => ctx.warnStep('undo-reservation', resvKey, e));
    await RELEASE_IF_HELD.run(client, keys.port(port.relayedAddress, port.relayedPort), holder).catch(() => undefined);
    throw err;
  }
  if (portSet === null) {
    await RELEASE_IF_HELD.run(client, resvKey, value);
    return false;
  }
  return true;
}

export async function takeReservation(ctx: StoreContext, token: string): Promise<ReservedPort | undefined> {
  const value = await TAKE.run(ctx.client, ctx.keys.reservation(token));
  const parsed = parseJson(value);
  if (!isObject(parsed) || typeof parsed.relayedAddress !== 'string' || !isFiniteNumber(parsed.relayedPort)) return undefined;
  const port: ReservedPort = { relayedAddress: parsed.relayedAddress, relayedPort: parsed.relayedPort };
  const holder = `resv|${ctx.keys.tokenTag(token)}`;
  await RELEASE_IF_HELD.run(ctx.client, ctx.keys.port(port.relayedAddress, port.relayedPort), holder).catch((e: unknown) =>
    ctx.warnStep('release-reserved-port', token, e),
  );
  return port;
}
