// Framing of STUN and ChannelData messages on a byte stream (TCP, TLS):
// RFC 8656 §12.5 and RFC 6062. Pure: bytes in, whole messages out; no sockets.
//
// The first two bits of a frame say what it is (RFC 8656 §12): 00 a STUN
// message (20-byte header, length in bytes 2-3, a multiple of 4), 01 a
// ChannelData message (4-byte header, length in bytes 2-3; on streams the
// data is padded to a multiple of 4, and the padding is not in the length).
// Anything else cannot be framed: the stream is lost, the connection closes.

import { CHANNEL_DATA_HEADER_LENGTH } from '../../stun/channel-data.js';

/** Default cap on the bytes of one frame, and so on the unparsed bytes a connection may hold. */
export const DEFAULT_MAX_FRAME_BYTES = 64 * 1024;
const STUN_HEADER_LENGTH = 20;
/** Bytes needed to know a frame's kind and length. */
const FRAME_HEAD_LENGTH = 4;

export const FRAMING_ERRORS = ['not_turn', 'too_long'] as const;
/** Why a stream could not be framed: `not_turn`, neither STUN nor ChannelData; `too_long`, a frame over the cap. */
export type FramingError = (typeof FRAMING_ERRORS)[number];

/** Receives each whole message: a STUN message, or ChannelData without its stream padding. */
export type FrameHandler = (message: Buffer) => void;

/**
 * Reads the head of a frame at buf[offset, offset + 4): returns the frame's
 * length on the stream (padding included) or a framing error. The message
 * length (without padding) is written to `out.messageLength`.
 */
function frameLength(buf: Buffer, offset: number, maxFrameBytes: number, out: { messageLength: number }): number | FramingError {
  const first = buf[offset]! & 0xc0;
  const length = (buf[offset + 2]! << 8) | buf[offset + 3]!;
  let total: number;
  if (first === 0x00) {
    // RFC 8489 §5: every attribute is padded to 4 bytes, so the length is too.
    if ((length & 3) !== 0) return 'not_turn';
    total = STUN_HEADER_LENGTH + length;
    out.messageLength = total;
  } else if (first === 0x40) {
    out.messageLength = CHANNEL_DATA_HEADER_LENGTH + length;
    total = CHANNEL_DATA_HEADER_LENGTH + ((length + 3) & ~3);
  } else {
    return 'not_turn';
  }
  return total > maxFrameBytes ? 'too_long' : total;
}

/**
 * The first buffer a split frame is gathered in, unless more has already arrived:
 * a header announcing 64 KiB costs this much until the bytes themselves come.
 */
const MIN_GATHER_BYTES = 256;

/**
 * Splits a stream into messages. Whole frames inside one chunk are handed on as
 * views of that chunk (no copy); a frame split across chunks is gathered into a
 * buffer that grows with what arrives (doubling, never past the frame's length),
 * not with what its header announces: a client that sends the head of a 64 KiB
 * frame and then nothing holds a few hundred bytes, not 64 KiB. A frame sent
 * byte by byte is copied about twice in all.
 * After an error the framer stays failed: the stream has lost its boundaries.
 */
export class StreamFramer {
  private readonly head = Buffer.alloc(FRAME_HEAD_LENGTH);
  private headFill = 0;
  /** The frame being gathered across chunks, if any: its first partialFill bytes. */
  private partial: Buffer | undefined;
  private partialFill = 0;
  /** The gathered frame's full length on the stream (padding included). */
  private partialTotal = 0;
  private partialMessageLength = 0;
  private failure: FramingError | undefined;
  private readonly lengths = { messageLength: 0 };
  /** Set by stop() from a frame handler: push() hands on nothing more and keeps the rest of its chunk. */
  private stopped = false;
  private rest: Buffer | undefined;

  constructor(readonly maxFrameBytes: number = DEFAULT_MAX_FRAME_BYTES) {
    if (maxFrameBytes < STUN_HEADER_LENGTH) throw new RangeError(`maxFrameBytes ${maxFrameBytes} is below a STUN header`);
  }

  /** Bytes received but not yet handed on as a message (at most maxFrameBytes). */
  get bufferedBytes(): number {
    return this.partial ? this.partialFill : this.headFill;
  }

  /**
   * Bytes of memory this framer holds for unparsed input: the buffer a split frame is
   * gathered in (not counting the fixed 4-byte head). At most about twice bufferedBytes,
   * and never more than the frame.
   */
  get heldBytes(): number {
    return this.partial ? this.partial.length : 0;
  }

  get failed(): FramingError | undefined {
    return this.failure;
  }

  /**
   * Feeds one chunk; calls onFrame for every message it completes, in order.
   * Returns a framing error when the stream cannot be framed (messages before
   * the bad frame have been handed on), else undefined.
   */
  push(chunk: Buffer, onFrame: FrameHandler): FramingError | undefined {
    if (this.failure) return this.failure;
    if (this.stopped) return undefined;
    let offset = 0;
    const end = chunk.length;

    // 1. Finish what the previous chunks left.
    if (this.headFill > 0 || this.partial) {
      if (!this.partial) {
        const n = Math.min(FRAME_HEAD_LENGTH - this.headFill, end);
        chunk.copy(this.head, this.headFill, 0, n);
        this.headFill += n;
        offset = n;
        if (this.headFill < FRAME_HEAD_LENGTH) return undefined;
        const total = frameLength(this.head, 0, this.maxFrameBytes, this.lengths);
        if (typeof total === 'string') return this.fail(total);
        this.startPartial(total, FRAME_HEAD_LENGTH + (end - offset));
        this.head.copy(this.partial!, 0);
        this.partialFill = FRAME_HEAD_LENGTH;
        this.headFill = 0;
      }
      offset += this.gather(chunk, offset, end);
      if (this.partialFill < this.partialTotal) return undefined;
      const whole = this.partial!;
      this.partial = undefined;
      this.partialFill = 0;
      onFrame(whole.subarray(0, this.partialMessageLength));
      if (this.stopped) return this.keepRest(chunk, offset);
    }

    // 2. Whole frames straight from the chunk.
    while (end - offset >= FRAME_HEAD_LENGTH) {
      const total = frameLength(chunk, offset, this.maxFrameBytes, this.lengths);
      if (typeof total === 'string') return this.fail(total);
      if (end - offset < total) {
        // 3a. A frame whose head is here but not its end: gather what is here.
        this.startPartial(total, end - offset);
        chunk.copy(this.partial!, 0, offset, end);
        this.partialFill = end - offset;
        return undefined;
      }
      onFrame(chunk.subarray(offset, offset + this.lengths.messageLength));
      offset += total;
      if (this.stopped) return this.keepRest(chunk, offset);
    }

    // 3b. Fewer than 4 bytes of the next frame.
    if (offset < end) {
      chunk.copy(this.head, 0, offset, end);
      this.headFill = end - offset;
    }
    return undefined;
  }

  /**
   * Ends framing (RFC 6062 §5.4: after a ConnectionBind the stream carries raw bytes).
   * Called from a frame handler: the bytes after that frame are kept for takeRest().
   */
  stop(): void {
    this.stopped = true;
  }

  /** The bytes that followed the last frame before stop() (empty if none); once. */
  takeRest(): Buffer {
    const rest = this.rest ?? Buffer.alloc(0);
    this.rest = undefined;
    return rest;
  }

  private keepRest(chunk: Buffer, offset: number): undefined {
    if (offset < chunk.length) this.rest = chunk.subarray(offset);
    return undefined;
  }

  /** Begins gathering a frame of `total` bytes, `available` of which are at hand. */
  private startPartial(total: number, available: number): void {
    // Its own memory (allocUnsafeSlow, not a slice of Node's shared pool), so that what a
    // connection holds is what heldBytes says.
    this.partial = Buffer.allocUnsafeSlow(Math.min(total, Math.max(MIN_GATHER_BYTES, available)));
    this.partialTotal = total;
    this.partialMessageLength = this.lengths.messageLength;
  }

  /** Appends chunk[start, end) to the gathered frame, up to its end; returns the bytes taken. */
  private gather(chunk: Buffer, start: number, end: number): number {
    const n = Math.min(this.partialTotal - this.partialFill, end - start);
    const needed = this.partialFill + n;
    let buf = this.partial!;
    if (needed > buf.length) {
      const grown = Buffer.allocUnsafeSlow(Math.min(this.partialTotal, Math.max(needed, 2 * buf.length)));
      buf.copy(grown, 0, 0, this.partialFill);
      this.partial = buf = grown;
    }
    chunk.copy(buf, this.partialFill, start, start + n);
    this.partialFill = needed;
    return n;
  }

  private fail(error: FramingError): FramingError {
    this.failure = error;
    this.partial = undefined;
    this.partialFill = 0;
    this.headFill = 0;
    return error;
  }
}
