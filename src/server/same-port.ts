// RFC 8656 §3.1: TURN over TCP listens on the UDP port number. With --listening-port 0
// (tests) the ephemeral number UDP got may be taken for TCP: both process models bind
// again until one number is free for both.

/** Tries at an ephemeral port number free for both UDP and TCP. */
export const SAME_PORT_ATTEMPTS = 20;

/**
 * Runs `bind` (which binds UDP, then checks or binds TCP on the number it got, and undoes
 * its binds when it throws) until it succeeds; when `retry` is false, or after
 * SAME_PORT_ATTEMPTS more tries, its error is thrown.
 */
export async function bindSamePort<T>(retry: boolean, bind: () => Promise<T>): Promise<T> {
  for (let attempt = 0; ; attempt++) {
    try {
      return await bind();
    } catch (err) {
      if (!retry || attempt >= SAME_PORT_ATTEMPTS) throw err;
    }
  }
}
