// Whether the kernel data plane's tests can run here: root, and the eBPF program and its
// loader built (`npm run build:dataplane`, which needs clang and libbpf-dev). Under
// CI=true nothing is a reason to skip: .ci/run installs and builds all of it.

import { existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';

/** dist/test/helpers/dataplane.js -> build/dataplane/ at the repository root. */
export const DATAPLANE_BUILD_DIR = fileURLToPath(new URL('../../../build/dataplane/', import.meta.url));

/** Runs a command as root without the capabilities the kernel path needs (a container without CAP_BPF/CAP_NET_ADMIN). */
export const WITHOUT_BPF_CAPABILITIES = ['setpriv', '--bounding-set=-bpf,-net_admin,-sys_admin,-perfmon', '--inh-caps=-all'] as const;

export function kernelDataplaneUnavailableReason(): string | undefined {
  if (process.env.CI === 'true') return undefined;
  if (process.platform !== 'linux') return 'the kernel data plane needs Linux';
  if (typeof process.getuid === 'function' && process.getuid() !== 0) return 'the kernel data plane needs root';
  for (const file of ['relay.bpf.o', 'anyturn-dataplane']) {
    if (!existsSync(`${DATAPLANE_BUILD_DIR}${file}`)) return `build/dataplane/${file} is not built (npm run build:dataplane needs clang and libbpf-dev)`;
  }
  return undefined;
}
