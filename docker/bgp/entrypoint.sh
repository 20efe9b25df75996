#!/usr/bin/env bash
# The BGP sidecar of one PoP (docs/anycast-bgp.md): renders bird.conf from the
# BGP_* variables, runs bird2 and the /readyz announcer side by side, and when
# either one exits stops the other and exits too, so that the container's
# restart policy brings both back. A speaker never runs without its health
# loop: with the announcer gone, bird goes down with it, its session drops and
# the router withdraws this PoP's routes (fail closed).
set -euo pipefail

here="$(dirname "$(readlink -f "$0")")"
run_dir="${BIRD_RUN_DIR:-/run/bird}"
mkdir -p "$run_dir"
export BIRD_SOCKET="${BIRD_SOCKET:-$run_dir/bird.ctl}"

node "$here/render-bird-conf.mjs" --template "$here/bird.conf.template" --out "$run_dir/bird.conf"

bird -f -c "$run_dir/bird.conf" -s "$BIRD_SOCKET" &
bird_pid=$!
node "$here/readyz-announce.mjs" &
announce_pid=$!

stop() {
  # The announcer first: it withdraws by a BGP UPDATE (birdc disable) while the
  # session is still up; then bird closes the session with a Cease notification.
  kill -TERM "$announce_pid" 2>/dev/null || true
  wait "$announce_pid" 2>/dev/null || true
  kill -TERM "$bird_pid" 2>/dev/null || true
  wait "$bird_pid" 2>/dev/null || true
}
trap 'stop; exit 0' TERM INT

# Whichever ends first ends both.
status=0
wait -n "$bird_pid" "$announce_pid" || status=$?
echo "anyturn-bgp: bird or the announcer exited ($status); stopping both" >&2
stop
exit "$((status == 0 ? 1 : status))"
