#!/usr/bin/env bash
# The example HTTP service with a disk tier survives a crash. Starts an
# instance with --disk on a fresh directory, bursts 1000 requests over 100 ids
# (its database sees 100 calls), waits until the disk tier committed them,
# kills the instance with SIGKILL, starts a new one on the same directory and
# bursts again: every user comes from the disk and the database sees no call.
# Prints both bursts and the disk tier's figures; exits non-zero otherwise.
# Used by scripts/demo and by the integration test.
#
#   disk_restart_demo.sh PATH/TO/cacheflight_http_service PATH/TO/cacheflight_burst
set -euo pipefail
server=$1
burst=$2
here=$(dirname "${BASH_SOURCE[0]}")
ulimit -n "$(ulimit -Hn)" 2>/dev/null || ulimit -n 4096 2>/dev/null || true
source "$here/service.sh"

store=$(mktemp -d)
cleanup() {
  stop_service || true
  rm -rf "$store"
}
start_instance() {
  start_service "$server" --db-latency-ms 50 --disk "$store/users" || { cleanup; exit 1; }
  trap cleanup EXIT
}
field() { sed -n "s/.*\"$1\":\\([0-9]*\\).*/\\1/p" <<<"$2"; }
calls_of() { sed -n 's/^database calls: *\([0-9]*\)$/\1/p' <<<"$1"; }
status=0

start_instance
echo "instance 1 on 127.0.0.1:$port with --disk $store/users"
echo
echo "== 1000 concurrent requests over 100 ids (/user/7000 .. /user/7099)"
out=$("$burst" --url "http://127.0.0.1:$port/user/7000" --requests 1000 --connections 1000 --spread 100) || status=1
echo "$out"
calls_1=$(calls_of "$out")

# Loaded values go to the disk behind the callers' backs: wait for the commits.
for _ in $(seq 1 200); do
  stats=$(curl -s "http://127.0.0.1:$port/stats")
  [ "$(field entries "$stats")" -ge 100 ] 2>/dev/null && [ "$(field queued_writes "$stats")" = 0 ] && break
  sleep 0.05
done
echo "disk tier: $(field entries "$stats") entries committed, $(field used_bytes "$stats") bytes"
echo
echo "== kill -9 $pid"
kill -KILL "$pid"
wait "$pid" 2>/dev/null || true
pid=""

start_instance
echo "instance 2 on 127.0.0.1:$port, same directory"
echo
echo "== the same burst"
out=$("$burst" --url "http://127.0.0.1:$port/user/7000" --requests 1000 --connections 1000 --spread 100) || status=1
echo "$out"
calls_2=$(calls_of "$out")
stats=$(curl -s "http://127.0.0.1:$port/stats")
disk_hits=$(sed -n 's/.*"disk":{"hits":\([0-9]*\).*/\1/p' <<<"$stats")
echo
echo "=> before the kill: ${calls_1:-?} database calls; after the restart: ${calls_2:-?} database calls, ${disk_hits:-?} disk hits"
if [ "${calls_1:-}" != 100 ] || [ "${calls_2:-}" != 0 ] || [ "${disk_hits:-}" != 100 ]; then
  echo "FAIL: expected 100 database calls, then none and 100 disk hits after the restart"
  echo "$stats"
  status=1
fi
exit $status
