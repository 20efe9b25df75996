// What the anycast stream programs put in a datagram, and their shared
// argument parsing. A probe packet: "ATv1", stream id (u8), 3 zero bytes,
// sequence number (u32), zero padding to 32 bytes. The echo peer sends it back
// unchanged, so the client matches each echo to what it sent.

export const PROBE_LENGTH = 32;
const MAGIC = Buffer.from('ATv1');

/** Which allocation and how: the two streaming modes, and the channels bound after the switch. */
export const Stream = {
  /** Allocation A, ChannelData both ways. */
  channel: 0,
  /** Allocation B, Send/Data indications both ways (no channel to that peer). */
  indication: 1,
  /** Allocation A, the channel bound after the switch (to the peer's second port). */
  newChannelA: 2,
  /** Allocation B, the channel bound after the switch (to the peer's second port). */
  newChannelB: 3,
} as const;
export type StreamId = (typeof Stream)[keyof typeof Stream];

export function encodeProbe(stream: number, seq: number): Buffer {
  const b = Buffer.alloc(PROBE_LENGTH);
  MAGIC.copy(b, 0);
  b.writeUInt8(stream, 4);
  b.writeUInt32BE(seq, 8);
  return b;
}

export function decodeProbe(b: Buffer): { stream: number; seq: number } | undefined {
  if (b.length !== PROBE_LENGTH || !b.subarray(0, 4).equals(MAGIC)) return undefined;
  return { stream: b.readUInt8(4), seq: b.readUInt32BE(8) };
}

/** `--name value` pairs into a map (flags without a value are 'true'). */
export function parseFlags(argv: readonly string[]): Map<string, string> {
  const flags = new Map<string, string>();
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]!;
    if (!a.startsWith('--')) continue;
    const next = argv[i + 1];
    if (next !== undefined && !next.startsWith('--')) {
      flags.set(a.slice(2), next);
      i++;
    } else {
      flags.set(a.slice(2), 'true');
    }
  }
  return flags;
}

export function parseEndpoint(text: string): { address: string; port: number } {
  const i = text.lastIndexOf(':');
  const port = Number(text.slice(i + 1));
  if (i <= 0 || !Number.isInteger(port) || port <= 0 || port > 65535) throw new Error(`not an ip:port: ${text}`);
  return { address: text.slice(0, i), port };
}

/**
 * These programs are compiled under dist/test/, where `node --test dist/test/`
 * also finds them; run that way (no flags), they must do nothing at all, and
 * they only ever send to addresses given on the command line.
 */
export function requireFlags(flags: Map<string, string>, names: readonly string[], usage: string): boolean {
  if (names.every((n) => flags.has(n))) return true;
  process.stderr.write(`${usage}\n`);
  return false;
}

/** Wall-clock milliseconds with sub-millisecond resolution (comparable across processes on one machine). */
export function nowMs(): number {
  return performance.timeOrigin + performance.now();
}

/** Reads newline-delimited JSON commands from stdin. */
export function onStdinCommands(handler: (cmd: Record<string, unknown>) => void): void {
  let partial = '';
  process.stdin.setEncoding('utf8');
  process.stdin.on('data', (chunk: string) => {
    partial += chunk;
    let nl: number;
    while ((nl = partial.indexOf('\n')) >= 0) {
      const line = partial.slice(0, nl).trim();
      partial = partial.slice(nl + 1);
      if (!line) continue;
      try {
        const v: unknown = JSON.parse(line);
        if (typeof v === 'object' && v !== null) handler(v as Record<string, unknown>);
      } catch {
        // not a command
      }
    }
  });
}
