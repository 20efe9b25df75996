// Part 2, the kernel side: slab memory per bound UDP socket, which RSS does not show.
import { readFileSync } from 'node:fs';
import dgram from 'node:dgram';

import { LOOPBACK } from '../turn-driver.js';
import { sleep } from '../host.js';

/** Slab caches a bound UDP socket takes objects from (socket, inode, file, dentry, epoll item). */
export const SOCKET_CACHES = ['UDP', 'sock_inode_cache', 'filp', 'dentry', 'eventpoll_epi', 'eventpoll_pwq'];

/** /proc/slabinfo as cache -> bytes in active objects (active_objs x objsize). */
export function slabBytes(): Map<string, number> | undefined {
  try {
    const out = new Map<string, number>();
    for (const line of readFileSync('/proc/slabinfo', 'utf8').split('\n').slice(2)) {
      const f = line.split(/\s+/);
      if (f.length > 3) out.set(f[0]!, Number(f[1]) * Number(f[3]));
    }
    return out;
  } catch {
    return undefined;
  }
}

export interface SlabCalibration {
  readonly sockets: number;
  /** Kernel slab bytes per bound UDP socket in the socket-related caches. */
  readonly bytesPerSocket: number | undefined;
  readonly byCache: Record<string, number>;
}

/**
 * Kernel memory per bound UDP socket, the part of a relay socket's cost that RSS does
 * not show: the driver binds `n` sockets on 127.0.0.1 (Node dgram, as anyturn's relay
 * sockets, so each is also in libuv's epoll set) and reads /proc/slabinfo before and
 * after. Host-wide: other processes move the same caches, so it is a rough figure.
 */
export async function slabPerSocket(n: number): Promise<SlabCalibration> {
  const sockets: dgram.Socket[] = [];
  const s0 = slabBytes();
  try {
    for (let i = 0; i < n; i++) {
      const s = dgram.createSocket('udp4');
      await new Promise<void>((resolve, reject) => {
        s.once('error', reject);
        s.bind(0, LOOPBACK, () => resolve());
      });
      s.on('message', () => undefined);
      sockets.push(s);
    }
    await sleep(200);
    const s1 = slabBytes();
    if (s0 === undefined || s1 === undefined) return { sockets: n, bytesPerSocket: undefined, byCache: {} };
    const byCache: Record<string, number> = {};
    let total = 0;
    for (const c of SOCKET_CACHES) {
      const d = ((s1.get(c) ?? 0) - (s0.get(c) ?? 0)) / n;
      byCache[c] = d;
      total += d;
    }
    return { sockets: n, bytesPerSocket: total, byCache };
  } finally {
    await Promise.all(sockets.map((s) => new Promise<void>((r) => s.close(() => r()))));
  }
}
