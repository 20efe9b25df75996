// From runs to comparisons: anyturn over coturn and over the floor per case, the
// median run of each server with --rounds, and the ratios within every round.
import { CASE_NAMES, type CaseName } from '../uclient.js';
import { SERVER_NAMES, type ServerName } from '../servers.js';
import type { RunResult } from './measure.js';

export interface Ratio {
  readonly case: CaseName;
  /** anyturn / coturn */
  readonly cpuMicrosPerRelayedPacket: number | undefined;
  readonly serverCpuMicros: number | undefined;
  /** anyturn / floor */
  readonly cpuMicrosPerRelayedPacketOverFloor: number | undefined;
  readonly lostPercentAnyturn: number | undefined;
  readonly lostPercentCoturn: number | undefined;
  readonly lostPercentFloor: number | undefined;
}

export function ratios(results: readonly RunResult[]): Ratio[] {
  const out: Ratio[] = [];
  for (const c of CASE_NAMES) {
    const a = results.find((r) => r.case === c && r.server === 'anyturn');
    const b = results.find((r) => r.case === c && r.server === 'coturn');
    const f = results.find((r) => r.case === c && r.server === 'floor');
    if (a === undefined || (b === undefined && f === undefined)) continue;
    const div = (x: number | undefined, y: number | undefined, other: RunResult | undefined): number | undefined =>
      x === undefined || y === undefined || y === 0 || !a.ok || other === undefined || !other.ok ? undefined : x / y;
    out.push({
      case: c,
      cpuMicrosPerRelayedPacket: div(a.cpuMicrosPerRelayedPacket, b?.cpuMicrosPerRelayedPacket, b),
      serverCpuMicros: div(a.serverCpuMicros, b?.serverCpuMicros, b),
      cpuMicrosPerRelayedPacketOverFloor: div(a.cpuMicrosPerRelayedPacket, f?.cpuMicrosPerRelayedPacket, f),
      lostPercentAnyturn: a.ok ? a.lostPercent : undefined,
      lostPercentCoturn: b?.ok === true ? b.lostPercent : undefined,
      lostPercentFloor: f?.ok === true ? f.lostPercent : undefined,
    });
  }
  return out;
}

/**
 * Per case and server, the run with the median CPU per relayed packet (the lower middle for
 * an even count). A failed run is shown instead, so that no failure hides behind a median.
 */
export function medianRuns(results: readonly RunResult[]): RunResult[] {
  const out: RunResult[] = [];
  for (const c of CASE_NAMES) {
    for (const s of SERVER_NAMES) {
      const runs = results.filter((r) => r.case === c && r.server === s);
      if (runs.length === 0) continue;
      const failed = runs.find((r) => !r.ok && !r.skipped);
      const measured = runs.filter((r) => r.ok && r.cpuMicrosPerRelayedPacket !== undefined);
      measured.sort((x, y) => x.cpuMicrosPerRelayedPacket! - y.cpuMicrosPerRelayedPacket!);
      out.push(failed ?? measured[Math.floor((measured.length - 1) / 2)] ?? runs[0]!);
    }
  }
  return out;
}

export interface RoundRatio {
  readonly case: CaseName;
  readonly round: number;
  /** anyturn / coturn and anyturn / floor, CPU per relayed packet, within the round. */
  readonly overCoturn: number | undefined;
  readonly overFloor: number | undefined;
  /** Messages lost in the round, per server. */
  readonly lost: Partial<Record<ServerName, number>>;
}

export function roundRatios(results: readonly RunResult[]): RoundRatio[] {
  const out: RoundRatio[] = [];
  for (const c of CASE_NAMES) {
    const rounds = [...new Set(results.filter((r) => r.case === c && r.round !== undefined).map((r) => r.round!))].sort((x, y) => x - y);
    for (const round of rounds) {
      const inRound = results.filter((r) => r.case === c && r.round === round);
      const cpu = (s: ServerName): number | undefined => {
        const r = inRound.find((x) => x.server === s);
        return r?.ok === true ? r.cpuMicrosPerRelayedPacket : undefined;
      };
      const over = (s: ServerName): number | undefined => {
        const a = cpu('anyturn');
        const b = cpu(s);
        return a === undefined || b === undefined || b === 0 ? undefined : a / b;
      };
      const lost: Partial<Record<ServerName, number>> = {};
      for (const r of inRound) if (!r.skipped) lost[r.server] = r.lost;
      out.push({ case: c, round, overCoturn: over('coturn'), overFloor: over('floor'), lost });
    }
  }
  return out;
}
