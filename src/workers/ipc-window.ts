// How many handed-over datagrams may wait in a worker's IPC channel.

/** Datagrams handed to one worker and not yet written to its IPC channel, at most. */
export const MAX_IPC_IN_FLIGHT = 10_000;

/**
 * The primary's IPC backpressure towards one worker. worker.send() queues in the
 * parent's memory when the channel is full (it returns false, and its callback runs
 * once the message is written): a junk flood faster than the worker reads would queue
 * without bound. Past `max` messages in flight a datagram is dropped and counted.
 * `release` is made once per worker, not per message.
 */
export class IpcWindow {
  inFlight = 0;
  dropped = 0;
  readonly release = (): void => {
    this.inFlight--;
  };
  constructor(readonly max: number = MAX_IPC_IN_FLIGHT) {}

  /** True when one more message may go (counted in flight); false: drop it (counted). */
  acquire(): boolean {
    if (this.inFlight >= this.max) {
      this.dropped++;
      return false;
    }
    this.inFlight++;
    return true;
  }
}
