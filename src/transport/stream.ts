// The stream framer moved to stream/framer.ts; src/ops/metrics.ts (another branch's file)
// still imports FRAMING_ERRORS from here. Point that import at ./stream/framer.js and delete this file.
export { FRAMING_ERRORS, type FramingError } from './stream/framer.js';
