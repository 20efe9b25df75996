// buildConfig as the config tests drive it: a minimal valid base, and the ConfigError
// that an invalid flag must produce.

import assert from 'node:assert/strict';
import { ConfigError, buildConfig, type RawOptions } from '../../src/config/index.js';

/** The least a config needs to be valid: a listening address and a credential. */
export const BASE: RawOptions = { 'listening-ip': ['127.0.0.1'], user: ['u:p'] };

/** buildConfig(BASE + extra) must throw a ConfigError; returns it for the message checks. */
export function refused(extra: RawOptions): ConfigError {
  try {
    buildConfig({ ...BASE, ...extra });
  } catch (err) {
    assert.ok(err instanceof ConfigError, `a ConfigError, got ${String(err)}`);
    return err;
  }
  assert.fail(`accepted ${JSON.stringify(extra)}`);
}
