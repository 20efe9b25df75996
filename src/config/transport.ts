// The client transport flags: UDP, TCP and TLS listeners (--no-udp/--no-tcp/--no-tls,
// --cert/--pkey read and checked at startup) and the protections of the stream listeners.

import { X509Certificate, createPrivateKey } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { createSecureContext } from 'node:tls';
import { ConfigError } from './errors.js';
import { type RawOptions, read } from './flags.js';
import type { ServerConfig, TlsConfig } from './types.js';

type TransportFields =
  | 'udp'
  | 'tcp'
  | 'tls'
  | 'tcpRelay'
  | 'maxTcpConnections'
  | 'maxTcpConnectionsPerIp'
  | 'tcpIdleTimeoutSeconds'
  | 'tcpUnallocatedTimeoutSeconds'
  | 'unauthErrorRate'
  | 'unauthErrorBurst';

export function transportConfig(raw: RawOptions, listeningPort: number): Pick<ServerConfig, TransportFields> {
  // --no-udp arrives as udp = false, ANYTURN_NO_UDP=true as no-udp = true; the same for tcp, tls.
  const udp = read(raw, 'udp') !== false && read(raw, 'no-udp') !== true;
  const tcp = read(raw, 'tcp') !== false && read(raw, 'no-tcp') !== true;
  const tlsOn = read(raw, 'tls') !== false && read(raw, 'no-tls') !== true;
  const port = read(raw, 'tls-listening-port');
  const tls = tlsConfig(raw, tcp ? listeningPort : undefined, tlsOn, port);
  if (!udp && !tcp && !tls) {
    throw new ConfigError(
      'no-udp',
      true,
      'at least one transport',
      'nothing to listen on: --no-udp and --no-tcp leave only TLS, which needs --cert and --pkey (and no --no-tls)',
    );
  }
  return {
    udp,
    tcp,
    tls,
    tcpRelay: read(raw, 'tcp-relay') !== false && read(raw, 'no-tcp-relay') !== true,
    maxTcpConnections: read(raw, 'max-tcp-connections'),
    maxTcpConnectionsPerIp: read(raw, 'max-tcp-connections-per-ip'),
    tcpIdleTimeoutSeconds: read(raw, 'tcp-idle-timeout'),
    tcpUnallocatedTimeoutSeconds: read(raw, 'tcp-unallocated-timeout'),
    unauthErrorRate: read(raw, 'unauth-error-rate'),
    unauthErrorBurst: read(raw, 'unauth-error-burst'),
  };
}

/**
 * --cert and --pkey go together; with both (and not --no-tls) they are read and checked now,
 * so a bad file stops the start instead of the first handshake. `plainTcpPort`: the port
 * plain TCP listens on, which TLS cannot share (undefined with --no-tcp).
 */
function tlsConfig(raw: RawOptions, plainTcpPort: number | undefined, tlsOn: boolean, port: number): TlsConfig | undefined {
  const certFile = read(raw, 'cert');
  const keyFile = read(raw, 'pkey');
  if ((certFile === undefined) !== (keyFile === undefined)) {
    const [flag, other] = certFile === undefined ? ['cert', 'pkey'] : ['pkey', 'cert'];
    throw new ConfigError(
      flag,
      '',
      `a PEM file when --${other} is given`,
      `missing --${flag}: TLS needs both --cert FILE (certificate chain, PEM) and --pkey FILE (private key, PEM)`,
    );
  }
  if (certFile === undefined || keyFile === undefined || !tlsOn) return undefined;
  const cert = readPem('cert', certFile, 'PEM certificate');
  const key = readPem('pkey', keyFile, 'PEM private key');
  try {
    new X509Certificate(cert);
  } catch (err) {
    throw new ConfigError('cert', certFile, `a PEM certificate (${(err as Error).message})`);
  }
  try {
    createPrivateKey(key);
  } catch (err) {
    throw new ConfigError('pkey', keyFile, `a PEM private key without a passphrase (${(err as Error).message})`);
  }
  try {
    createSecureContext({ cert, key });
  } catch (err) {
    throw new ConfigError('pkey', keyFile, `the private key of the --cert certificate ${certFile} (${(err as Error).message})`);
  }
  if (plainTcpPort !== undefined && port !== 0 && port === plainTcpPort)
    throw new ConfigError('tls-listening-port', port, `a port other than --listening-port ${plainTcpPort}, where plain TCP listens (or --no-tcp)`);
  return { port, cert, key, certFile, keyFile };
}

function readPem(flag: string, file: string, what: string): Buffer {
  try {
    return readFileSync(file);
  } catch (err) {
    throw new ConfigError(flag, file, `a readable ${what} file (${(err as Error).message})`);
  }
}
