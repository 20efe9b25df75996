// Caps on what one allocation may hold and one request may ask (config flags
// --max-permissions-per-allocation, --max-channels-per-allocation, --max-peers-per-request).

/**
 * What one allocation may hold and one request may ask: without caps, a few datagrams
 * install tens of thousands of permissions, and every later request, tick and store
 * write walks them all. Over a cap the request gets 508 (RFC 8656 §10.2, §12.2: a
 * capacity limit), all or nothing.
 */
export interface AllocationLimits {
  /** Peer IPs with a permission (--max-permissions-per-allocation). */
  readonly permissionsPerAllocation: number;
  /** Channel bindings, quarantined ones included (--max-channels-per-allocation). */
  readonly channelsPerAllocation: number;
  /** XOR-PEER-ADDRESS attributes in one CreatePermission (--max-peers-per-request). */
  readonly peersPerRequest: number;
}

export const ALLOCATION_LIMIT_DEFAULTS: AllocationLimits = { permissionsPerAllocation: 1000, channelsPerAllocation: 1000, peersPerRequest: 200 };
