// A throwaway self-signed certificate for TLS tests, made with the openssl CLI
// in a temporary directory. Without openssl the test fails loudly (.ci/run
// installs it).

import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

export interface SelfSignedCertificate {
  readonly dir: string;
  readonly certFile: string;
  readonly keyFile: string;
  readonly cert: Buffer;
  readonly key: Buffer;
  /** Removes the directory. */
  remove(): void;
}

/** `openssl req -x509 -newkey rsa:2048 -nodes ... -subj /CN=localhost` into a fresh temp dir. */
export function makeSelfSignedCertificate(): SelfSignedCertificate {
  const dir = mkdtempSync(join(tmpdir(), 'anyturn-tls-'));
  const certFile = join(dir, 'c.pem');
  const keyFile = join(dir, 'k.pem');
  const args = ['req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-keyout', keyFile, '-out', certFile, '-days', '1', '-subj', '/CN=localhost'];
  const run = spawnSync('openssl', args, { encoding: 'utf8' });
  if (run.error || run.status !== 0) {
    rmSync(dir, { recursive: true, force: true });
    const why = run.error ? run.error.message : `exit ${String(run.status)}: ${run.stderr}`;
    throw new Error(`cannot make a test certificate with \`openssl ${args.join(' ')}\` (${why}); install openssl (.ci/run does)`);
  }
  return {
    dir,
    certFile,
    keyFile,
    cert: readFileSync(certFile),
    key: readFileSync(keyFile),
    remove: () => rmSync(dir, { recursive: true, force: true }),
  };
}
