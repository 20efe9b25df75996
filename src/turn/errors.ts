import { reasonPhrase } from '../stun/constants.js';

/** A request failure with the STUN error code the client receives. */
export class TurnError extends Error {
  constructor(
    readonly code: number,
    readonly reason: string = reasonPhrase(code),
  ) {
    super(`${code} ${reason}`);
    this.name = 'TurnError';
  }
}
