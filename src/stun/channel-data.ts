// ChannelData framing (RFC 8656 §12.4): channel number (16), length (16), data.
// Over UDP the padding is optional; over streams the data is padded to 4 bytes.

import { CHANNEL_MAX, CHANNEL_MIN } from './constants.js';

export const CHANNEL_DATA_HEADER_LENGTH = 4;
/** The length field is 16 bits. */
export const CHANNEL_DATA_MAX_LENGTH = 0xffff;

/** True when the first two bits are 01: a ChannelData message (RFC 8656 §12). */
export function looksLikeChannelData(buf: Uint8Array): boolean {
  return buf.length >= CHANNEL_DATA_HEADER_LENGTH && (buf[0]! & 0xc0) === 0x40;
}

export function isValidChannelNumber(channel: number): boolean {
  return channel >= CHANNEL_MIN && channel <= CHANNEL_MAX;
}

export function readChannelNumber(buf: Uint8Array): number {
  return (buf[0]! << 8) | buf[1]!;
}

/** The data length the header announces. */
export function readChannelDataLength(buf: Uint8Array): number {
  return (buf[2]! << 8) | buf[3]!;
}

/** Writes a ChannelData header at out[offset]. */
export function writeChannelDataHeader(out: Uint8Array, offset: number, channel: number, length: number): void {
  out[offset] = channel >>> 8;
  out[offset + 1] = channel & 255;
  out[offset + 2] = length >>> 8;
  out[offset + 3] = length & 255;
}

/** Bytes a ChannelData message with `length` bytes of data occupies on a stream (padded to 4). */
export function streamChannelDataLength(length: number): number {
  return CHANNEL_DATA_HEADER_LENGTH + ((length + 3) & ~3);
}

/** A whole ChannelData message as a new buffer (for tests and clients; the relay path writes headers in place). */
export function encodeChannelData(channel: number, data: Uint8Array, pad = false): Buffer {
  const total = pad ? streamChannelDataLength(data.length) : CHANNEL_DATA_HEADER_LENGTH + data.length;
  const out = Buffer.alloc(total);
  writeChannelDataHeader(out, 0, channel, data.length);
  out.set(data, CHANNEL_DATA_HEADER_LENGTH);
  return out;
}
