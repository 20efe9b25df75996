#!/bin/sh
# npm run build:dataplane: builds the kernel data plane when the tools are
# here, otherwise says in one line why not and succeeds, so that the quick
# start (JavaScript path) works without clang or root (docs/dataplane.md).
cd "$(dirname "$0")/../.." || exit 1
if [ "$(uname -s)" != Linux ]; then
  echo "build:dataplane: skipped, the kernel data plane needs Linux"
  exit 0
fi
for tool in clang make cc; do
  if ! command -v "$tool" >/dev/null 2>&1; then
    echo "build:dataplane: skipped, $tool is not installed (apt-get install clang llvm make gcc libbpf-dev libelf-dev zlib1g-dev)"
    exit 0
  fi
done
if [ ! -f /usr/include/bpf/libbpf.h ]; then
  echo "build:dataplane: skipped, libbpf headers are missing (apt-get install libbpf-dev libelf-dev zlib1g-dev)"
  exit 0
fi
exec make -s -C native/dataplane OUT="$(pwd)/build/dataplane"
