// The operations endpoint: /metrics for Prometheus, /healthz (the process is
// alive) and /readyz (it should receive new clients; a BGP speaker next to the
// node announces the anycast prefix only while this says yes). POST /drain and
// POST /undrain switch drain mode, for holders of the --admin-token.

import { createHash, timingSafeEqual } from 'node:crypto';
import http from 'node:http';
import type { Registry } from 'prom-client';

export interface Readiness {
  /** Undefined when ready; otherwise why not (e.g. "store unavailable"). */
  notReadyReason(): string | undefined;
}

/** What POST /drain and POST /undrain do, and who may ask. */
export interface AdminActions {
  /** The bearer token the POSTs need; undefined refuses them all with 403. */
  readonly token: string | undefined;
  drain(): void;
  undrain(): void;
  /** The state the POSTs answer with. */
  state(): { readonly draining: boolean; readonly allocations: number };
}

/** Constant-time: both sides hashed to 32 bytes first, so not even the length leaks. */
function tokenMatches(given: string, expected: string): boolean {
  const a = createHash('sha256').update(given, 'utf8').digest();
  const b = createHash('sha256').update(expected, 'utf8').digest();
  return timingSafeEqual(a, b);
}

const NO_TOKEN_MESSAGE = 'POST /drain and /undrain are off: start anyturn with --admin-token TOKEN (or ANYTURN_ADMIN_TOKEN) to allow them; SIGUSR1 drains without one';

export class OpsHttpServer {
  private readonly server: http.Server;

  constructor(
    private readonly address: string,
    private readonly requestedPort: number,
    /** A prom-client Registry, or anything that renders one (the primary's sum over its workers). */
    private readonly registry: Pick<Registry, 'metrics' | 'contentType'>,
    private readonly readiness: Readiness,
    private readonly admin?: AdminActions,
  ) {
    this.server = http.createServer((req, res) => void this.handle(req, res));
  }

  get port(): number {
    const a = this.server.address();
    return typeof a === 'object' && a ? a.port : 0;
  }

  start(): Promise<void> {
    return new Promise((resolve, reject) => {
      this.server.once('error', reject);
      this.server.listen(this.requestedPort, this.address, () => {
        this.server.off('error', reject);
        resolve();
      });
    });
  }

  private async handle(req: http.IncomingMessage, res: http.ServerResponse): Promise<void> {
    const path = (req.url ?? '/').split('?')[0];
    try {
      if (path === '/drain' || path === '/undrain') {
        this.handleAdmin(req, res, path);
      } else if (req.method !== 'GET' && req.method !== 'HEAD') {
        res.writeHead(405, { allow: 'GET, HEAD' }).end();
      } else if (path === '/metrics') {
        const body = await this.registry.metrics();
        res.writeHead(200, { 'content-type': this.registry.contentType }).end(body);
      } else if (path === '/healthz') {
        res.writeHead(200, { 'content-type': 'application/json' }).end('{"status":"ok"}\n');
      } else if (path === '/readyz') {
        const reason = this.readiness.notReadyReason();
        res
          .writeHead(reason === undefined ? 200 : 503, { 'content-type': 'application/json' })
          .end(reason === undefined ? '{"ready":true}\n' : `${JSON.stringify({ ready: false, reason })}\n`);
      } else {
        res.writeHead(404).end();
      }
    } catch {
      if (!res.headersSent) res.writeHead(500);
      res.end();
    }
  }

  private handleAdmin(req: http.IncomingMessage, res: http.ServerResponse, path: '/drain' | '/undrain'): void {
    const json = (status: number, body: object, headers: Record<string, string> = {}): void => {
      res.writeHead(status, { 'content-type': 'application/json', ...headers }).end(`${JSON.stringify(body)}\n`);
    };
    // The body is never read: drop it rather than buffer it.
    req.resume();
    if (req.method !== 'POST') return json(405, { error: `${path} takes POST` }, { allow: 'POST' });
    const admin = this.admin;
    if (!admin || admin.token === undefined) return json(403, { error: NO_TOKEN_MESSAGE });
    const header = req.headers.authorization ?? '';
    const m = /^Bearer[ \t]+(\S+)[ \t]*$/i.exec(header);
    if (!m?.[1] || !tokenMatches(m[1], admin.token)) {
      return json(401, { error: 'missing or wrong token: send Authorization: Bearer <the --admin-token>' }, { 'www-authenticate': 'Bearer realm="anyturn"' });
    }
    if (path === '/drain') admin.drain();
    else admin.undrain();
    json(200, admin.state());
  }

  close(): Promise<void> {
    return new Promise((resolve) => {
      this.server.closeAllConnections?.();
      this.server.close(() => resolve());
    });
  }
}
