// Where allocations keep their Allocate success response for retransmissions (RFC 8656
// §7.2, 40 s: Allocation.prune): copied one after the other into slabs of our own. A
// Buffer of its own per response cost ~260 B of heap and malloc per allocation (the
// Buffer, its ArrayBuffer, the backing store), and a slice of Node's shared 8 KiB pool would
// keep that pool block alive (docs/scaling.md, "At scale"). An allocation holds the slab
// and an offset (no object of its own); a slab is filled in creation order and every
// response in it is let go 40 s after it was kept, so a slab lives ~40 s past its last one.

/** Bytes per slab: ~150 Allocate responses. */
export const KEPT_RESPONSE_SLAB_BYTES = 16 * 1024;

/** Where one kept response lies. */
export interface KeptResponse {
  readonly slab: Buffer;
  readonly offset: number;
}

export class ResponseSlabs {
  private slab: Buffer | undefined = undefined;
  private used = 0;

  constructor(private readonly slabBytes = KEPT_RESPONSE_SLAB_BYTES) {}

  /** Copies `response` into the current slab (a new one when it is full; one of its own when larger than a slab). */
  keep(response: Buffer): KeptResponse {
    if (response.length > this.slabBytes) {
      const own = Buffer.allocUnsafeSlow(response.length);
      response.copy(own);
      return { slab: own, offset: 0 };
    }
    if (this.slab === undefined || this.used + response.length > this.slabBytes) {
      this.slab = Buffer.allocUnsafeSlow(this.slabBytes);
      this.used = 0;
    }
    const offset = this.used;
    response.copy(this.slab, offset);
    this.used += response.length;
    return { slab: this.slab, offset };
  }
}

/** The kept STUN message at `offset` of `slab` (its length from its header: 20 + the attributes' length, RFC 8489 §5). */
export function keptMessage(slab: Buffer, offset: number): Buffer {
  return slab.subarray(offset, offset + 20 + slab.readUInt16BE(offset + 2));
}

/** Whether the kept message at `offset` has this transaction id (RFC 8489 §5: bytes 8-20). */
export function keptTransactionIs(slab: Buffer, offset: number, transactionId: Buffer): boolean {
  return transactionId.length === 12 && slab.compare(transactionId, 0, 12, offset + 8, offset + 20) === 0;
}
