// The operations endpoint: /metrics for Prometheus, /healthz (the process is
// alive) and /readyz (it should receive new clients; a BGP speaker next to the
// node announces the anycast prefix only while this says yes).

import http from 'node:http';
import type { Registry } from 'prom-client';

export interface Readiness {
  /** Undefined when ready; otherwise why not (e.g. "store unavailable"). */
  notReadyReason(): string | undefined;
}

export class OpsHttpServer {
  private readonly server: http.Server;

  constructor(
    private readonly address: string,
    private readonly requestedPort: number,
    private readonly registry: Registry,
    private readonly readiness: Readiness,
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
      if (req.method !== 'GET' && req.method !== 'HEAD') {
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

  close(): Promise<void> {
    return new Promise((resolve) => {
      this.server.closeAllConnections?.();
      this.server.close(() => resolve());
    });
  }
}
