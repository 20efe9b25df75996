// A framed send: what the engine hands every ClientPath.sendFramed (a ChannelData
// head or a Data indication head, then part of a received datagram), laid out as the
// one message the client receives. Every transport builds it here; they differ only
// in where the bytes go next (a scratch buffer and a datagram, a stream write, IPC).

/**
 * The bytes head[0, headLength) + payload[offset, offset + length) take as one message,
 * with zero padding of the payload to a multiple of 4 when `padTo4` (a Data indication's
 * DATA attribute, RFC 8489 §14; ChannelData on a stream, RFC 8656 §12.5).
 */
export function framedLength(headLength: number, length: number, padTo4: boolean): number {
  return headLength + length + (padTo4 ? (4 - (length & 3)) & 3 : 0);
}

/**
 * Writes the framed message into out[0, total) and returns total (framedLength); `out`
 * must hold that many bytes. Allocates nothing: it runs once per relayed packet.
 */
export function writeFramed(out: Buffer, head: Buffer, headLength: number, payload: Buffer, offset: number, length: number, padTo4: boolean): number {
  const total = framedLength(headLength, length, padTo4);
  // Heads are a few bytes (4 for ChannelData, at most 36 for a Data indication): a loop
  // beats Buffer.copy, which makes a view of a partial source.
  for (let i = 0; i < headLength; i++) out[i] = head[i]!;
  if (offset === 0 && length === payload.length) out.set(payload, headLength);
  else payload.copy(out, headLength, offset, offset + length);
  for (let i = headLength + length; i < total; i++) out[i] = 0;
  return total;
}
