// The configuration: the flag table (flags.ts), the checks across flags (build.ts) and
// the ServerConfig they make (types.ts). The CLI's parser is in args.ts.

export { buildConfig, localIPv4Addresses } from './build.js';
export { ConfigError } from './errors.js';
export { type FlagName, type RawOptions, envName } from './flags.js';
export type { ClusterConfig, ServerConfig, TlsConfig } from './types.js';
