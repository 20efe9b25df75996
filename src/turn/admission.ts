// Whether this node takes a new allocation at all, decided after authentication
// and before any work: --alternate-server redirects every Allocate (300), a
// draining node refuses them (403). Live allocations are never affected.

import { ErrorCode } from '../stun/constants.js';

export interface AlternateServer {
  readonly address: string;
  readonly port: number;
}

/** Why an Allocate is refused; undefined from the hook lets it proceed. */
export type AllocateRefusal =
  | { readonly code: typeof ErrorCode.TryAlternate; readonly alternateServer: AlternateServer }
  | { readonly code: typeof ErrorCode.Forbidden; readonly reason: string };

/** Called once per Allocate with the client's source address. */
export type AllocateAdmission = (clientAddress: string) => AllocateRefusal | undefined;

export const DRAINING_REASON = 'Server is draining';

export interface AdmissionOptions {
  readonly alternateServers: readonly AlternateServer[];
  readonly isDraining: () => boolean;
}

/**
 * Round robin over the alternates of the client's address family: RFC 8489 §14.15
 * wants ALTERNATE-SERVER in the family of the request's source address, so a client
 * whose family has no alternate is not redirected. A redirect beats the drain 403:
 * both keep the client off this node, and the redirect tells it where to go.
 */
export function createAllocateAdmission(o: AdmissionOptions): AllocateAdmission {
  const v4 = o.alternateServers.filter((a) => !a.address.includes(':'));
  const v6 = o.alternateServers.filter((a) => a.address.includes(':'));
  let next4 = 0;
  let next6 = 0;
  return (clientAddress) => {
    if (clientAddress.includes(':')) {
      const alternate = v6[next6 % Math.max(v6.length, 1)];
      if (alternate) {
        next6 = (next6 + 1) % v6.length;
        return { code: ErrorCode.TryAlternate, alternateServer: alternate };
      }
    } else {
      const alternate = v4[next4 % Math.max(v4.length, 1)];
      if (alternate) {
        next4 = (next4 + 1) % v4.length;
        return { code: ErrorCode.TryAlternate, alternateServer: alternate };
      }
    }
    if (o.isDraining()) return { code: ErrorCode.Forbidden, reason: DRAINING_REASON };
    return undefined;
  };
}
