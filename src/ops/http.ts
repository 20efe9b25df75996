// The operations endpoint: /metrics for Prometheus, /healthz (the process is
// alive) and /readyz (it should receive new clients; a BGP speaker next to the
// node announces the anycast prefix only while this says yes). POST /drain and
// POST /undrain switch drain mode, for holders of the --admin-token.
//
// It runs on the relay's own event loop and answers without authentication
// (only the POSTs need the token), so it listens on loopback unless told
// otherwise (--metrics-ip), and what anyone who can reach it may cost is
// bounded: a few connections, short header and request deadlines, small
// headers, a limit of requests per kept-alive connection, and /metrics, which
// walks every allocation, rendered at most once per --metrics-cache-ms.

import { createHash, timingSafeEqual } from 'node:crypto';
import http from 'node:http';
import type { Socket } from 'node:net';
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

/** What one client of the endpoint may cost; every field has a default (OPS_HTTP_DEFAULTS). */
export interface OpsHttpLimits {
  /** Open connections at most; more are closed at accept (Prometheus, a BGP health check and a person need a handful). */
  readonly maxConnections?: number;
  /** A request whose headers have not all arrived this long after it began is answered 408 and its connection closed (slowloris). */
  readonly headersTimeoutMs?: number;
  /** A whole request (body included) must have arrived within this. */
  readonly requestTimeoutMs?: number;
  /** A kept-alive connection with no request for this long is closed. */
  readonly keepAliveTimeoutMs?: number;
  /** A socket with no activity at all for this long is closed (what the deadlines above do not see). */
  readonly idleTimeoutMs?: number;
  /** Requests served per connection; the last is answered with Connection: close. */
  readonly maxRequestsPerSocket?: number;
  /** Most bytes of request line and headers; more get 431. */
  readonly maxHeaderBytes?: number;
  /** /metrics is rendered at most once per this many milliseconds; scrapes in between get that rendering. 0: every scrape renders. */
  readonly metricsCacheMs?: number;
}

export const OPS_HTTP_DEFAULTS: Required<OpsHttpLimits> = {
  maxConnections: 32,
  headersTimeoutMs: 5_000,
  requestTimeoutMs: 10_000,
  keepAliveTimeoutMs: 5_000,
  idleTimeoutMs: 30_000,
  maxRequestsPerSocket: 100,
  // A scrape's or curl's request line and headers take a few hundred bytes; Node's default is 16 KiB.
  maxHeaderBytes: 4096,
  metricsCacheMs: 1_000,
};

const NO_TOKEN_MESSAGE =
  'POST /drain and /undrain are off: start anyturn with --admin-token TOKEN (or ANYTURN_ADMIN_TOKEN) to allow them; SIGUSR1 drains without one';

export class OpsHttpServer {
  private readonly server: http.Server;
  private readonly metricsCacheMs: number;
  /** The last /metrics rendering, and when it began (performance.now()). */
  private rendered: { readonly atMs: number; readonly body: Promise<string> } | undefined;
  private refused = 0;
  /** Requests answered per connection (for maxRequestsPerSocket). */
  private readonly served = new WeakMap<Socket, number>();

  constructor(
    private readonly address: string,
    private readonly requestedPort: number,
    /** A prom-client Registry, or anything that renders one (the primary's sum over its workers). */
    private readonly registry: Pick<Registry, 'metrics' | 'contentType'>,
    private readonly readiness: Readiness,
    private readonly admin?: AdminActions,
    limits: OpsHttpLimits = {},
  ) {
    const l = { ...OPS_HTTP_DEFAULTS, ...limits };
    this.metricsCacheMs = l.metricsCacheMs;
    this.server = http.createServer(
      {
        maxHeaderSize: l.maxHeaderBytes,
        headersTimeout: l.headersTimeoutMs,
        requestTimeout: l.requestTimeoutMs,
        keepAliveTimeout: l.keepAliveTimeoutMs,
        // Node checks the two deadlines above this often (30 s by default, which would let a
        // slow client hold a connection long past a 5 s deadline).
        connectionsCheckingInterval: Math.max(10, Math.min(1000, Math.floor(Math.min(l.headersTimeoutMs, l.requestTimeoutMs) / 2))),
      },
      (req, res) => void this.handle(req, res),
    );
    this.server.maxConnections = l.maxConnections;
    this.server.maxRequestsPerSocket = l.maxRequestsPerSocket;
    this.server.setTimeout(l.idleTimeoutMs, (socket) => socket.destroy());
    // Connections over maxConnections are destroyed by Node at accept; counted here.
    this.server.on('drop', () => this.refused++);
    // No 'clientError' listener: Node's own answers a bad request 400, headers over
    // maxHeaderSize 431, a headers or request deadline 408, and closes the connection.
  }

  get port(): number {
    const a = this.server.address();
    return typeof a === 'object' && a ? a.port : 0;
  }

  /** The address the endpoint is bound to (127.0.0.1 unless --metrics-ip says otherwise). */
  get boundAddress(): string | undefined {
    const a = this.server.address();
    return typeof a === 'object' && a ? a.address : undefined;
  }

  /** Connections closed at accept because maxConnections were open. */
  get refusedConnections(): number {
    return this.refused;
  }

  /** The next scrape renders afresh (after a change a scraper should see at once, such as a drain). */
  invalidateMetrics(): void {
    this.rendered = undefined;
  }

  /**
   * The /metrics text: rendered afresh at most once per metricsCacheMs (every scrape walks
   * every allocation, on the relay's event loop), so a flood of scrapes costs one rendering
   * per period. Scrapes while a rendering is under way share it.
   */
  private metricsText(): Promise<string> {
    const now = performance.now();
    const last = this.rendered;
    if (last !== undefined && now - last.atMs < this.metricsCacheMs) return last.body;
    const body = this.registry.metrics();
    const entry = { atMs: now, body };
    this.rendered = this.metricsCacheMs > 0 ? entry : undefined;
    // A failed rendering is not served again.
    body.catch(() => {
      if (this.rendered === entry) this.rendered = undefined;
    });
    return body;
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
    // Node answers the last request a connection may make (maxRequestsPerSocket) with
    // Connection: close but leaves the socket open for the client to close; end it once
    // that answer is out.
    const served = (this.served.get(req.socket) ?? 0) + 1;
    this.served.set(req.socket, served);
    if (served >= this.server.maxRequestsPerSocket!) res.once('finish', () => req.socket.end());
    try {
      if (path === '/drain' || path === '/undrain') {
        this.handleAdmin(req, res, path);
      } else if (path !== '/metrics' && path !== '/healthz' && path !== '/readyz') {
        res.writeHead(404).end();
      } else if (req.method !== 'GET' && req.method !== 'HEAD') {
        // HEAD stays: it is GET without the body (RFC 9110 §9.3.2), and costs no more with the cache.
        res.writeHead(405, { allow: 'GET, HEAD' }).end();
      } else if (path === '/metrics') {
        const body = await this.metricsText();
        res.writeHead(200, { 'content-type': this.registry.contentType }).end(body);
      } else if (path === '/healthz') {
        res.writeHead(200, { 'content-type': 'application/json' }).end('{"status":"ok"}\n');
      } else if (path === '/readyz') {
        const reason = this.readiness.notReadyReason();
        res
          .writeHead(reason === undefined ? 200 : 503, { 'content-type': 'application/json' })
          .end(reason === undefined ? '{"ready":true}\n' : `${JSON.stringify({ ready: false, reason })}\n`);
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
    // The next scrape shows the new state (anyturn_draining) rather than a cached one.
    this.invalidateMetrics();
    json(200, admin.state());
  }

  close(): Promise<void> {
    return new Promise((resolve) => {
      this.server.closeAllConnections?.();
      this.server.close(() => resolve());
    });
  }
}
