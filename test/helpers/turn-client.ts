// The one TURN client of the tests, by transport: TestTurnClient over UDP,
// StreamTurnClient over TCP or TLS, both on the shared session in
// turn-client/session.ts (request building, the 401/438 retry, the TURN
// methods) and the message sorting in turn-client/messages.ts. The anycast
// tests' namespace programs (test/anycast/*.ts) are built on it too.

export {
  type Credentials,
  type Decorate,
  type Endpoint,
  type Incoming,
  type Received,
  type Response,
  TRANSACTION_TIMEOUT_MS,
  attributeTypes,
  codeOf,
  parseIncoming,
  reasonOf,
} from './turn-client/messages.js';
export { TestPeer } from './turn-client/peer.js';
export { type BuildOptions, TurnSession } from './turn-client/session.js';
export { StreamTurnClient, type StreamReceived, type StreamResponse } from './turn-client/stream.js';
export { TestTurnClient } from './turn-client/udp.js';
