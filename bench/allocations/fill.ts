// Part 2b: how full a small relay range gets before Allocates are refused.
import { AllocationClient, DriverStats } from '../turn-driver.js';
import { PASSWORD, USER } from '../servers.js';
import { LABELS, distinct, type Context, type ServerKind } from './context.js';
import { RELAY_MIN } from './options.js';
import { startServer, withRig } from './servers.js';

export const FILL_PORTS = 1000;
export const FILL_ATTEMPTS = 1100;

export interface FillResult {
  readonly kind: ServerKind;
  readonly server: string;
  readonly store: string;
  readonly ports: number;
  readonly attempted: number;
  readonly ok: number;
  /** 1-based index of the first refused Allocate (sequential, one at a time). */
  readonly firstRefusal: number | undefined;
  /** Refusals while fewer than `ports` allocations were live: a free port existed. */
  readonly refusedWhileFree: number;
  readonly errors: string[];
}

export function runFill(ctx: Context, kind: ServerKind): Promise<FillResult> {
  return withRig(ctx, kind, 'fill', async (rig) => {
    const { redis, clients } = rig;
    const server = (rig.server = await startServer(ctx, kind, {
      redis,
      name: `fill-${kind}`,
      relayPorts: { min: RELAY_MIN, max: RELAY_MIN + FILL_PORTS - 1 },
    }));
    const stats = new DriverStats();
    let ok = 0;
    let firstRefusal: number | undefined;
    let refusedWhileFree = 0;
    const errors: string[] = [];
    // One at a time, so the index of the first refusal means something.
    for (let i = 0; i < FILL_ATTEMPTS && !ctx.stop(); i++) {
      const c = await AllocationClient.open(server.endpoint, { username: USER, password: PASSWORD }, stats);
      clients.push(c);
      try {
        await c.allocate();
        ok++;
      } catch (err) {
        firstRefusal ??= i + 1;
        if (ok < FILL_PORTS) refusedWhileFree++;
        errors.push(err instanceof Error ? err.message : String(err));
      }
    }
    return { kind, ...LABELS[kind], ports: FILL_PORTS, attempted: FILL_ATTEMPTS, ok, firstRefusal, refusedWhileFree, errors: distinct(errors) };
  });
}
