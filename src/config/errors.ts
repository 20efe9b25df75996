// The one error a configuration can fail with: it names the flag, the value and
// what is allowed, so the CLI can print it as it is (exit 2).

export class ConfigError extends Error {
  readonly code = 'ERR_ANYTURN_CONFIG';
  constructor(
    readonly flag: string,
    readonly value: unknown,
    readonly allowed: string,
    message?: string,
  ) {
    super(message ?? `invalid --${flag} ${typeof value === 'number' ? String(value) : JSON.stringify(value)}: ${allowed}`);
    this.name = 'ConfigError';
  }
}
