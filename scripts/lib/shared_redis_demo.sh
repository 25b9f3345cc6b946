#!/usr/bin/env bash
# Two instances of the example HTTP service share one Redis L2. Starts a
# throwaway redis-server on a free loopback port and instances A and B with
# --redis; bursts 1000 requests over 100 ids at A (its database sees 100
# calls), then the same burst at B: B finds every user in Redis and its database
# sees none. Prints both bursts and B's L2 figures; exits non-zero otherwise.
# Used by scripts/demo and by the integration test.
#
#   shared_redis_demo.sh PATH/TO/cacheflight_http_service PATH/TO/cacheflight_burst
set -euo pipefail
server=$1
burst=$2
here=$(dirname "${BASH_SOURCE[0]}")
redis_script=$here/../../test/integration/redis_server.sh
ulimit -n "$(ulimit -Hn)" 2>/dev/null || ulimit -n 4096 2>/dev/null || true
source "$here/service.sh"

redis_dir=$(mktemp -d)
pid_a=""
pid_b=""
# Stops both instances (and one that failed to start) and the server.
cleanup() {
  for p in $pid_a $pid_b ${pid:-}; do kill -TERM "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
  bash "$redis_script" stop "$redis_dir" || true
  rm -rf "$redis_dir"
}
trap cleanup EXIT
bash "$redis_script" start "$redis_dir"
redis_port=$(cat "$redis_dir/port")
echo "redis-server on 127.0.0.1:$redis_port"

# start_service sets an exit trap of its own: put cleanup back after it, and
# clean up everything when it fails.
start_instance() {
  start_service "$server" --db-latency-ms 50 --redis "127.0.0.1:$redis_port" || { cleanup; exit 1; }
  trap cleanup EXIT
}
start_instance
pid_a=$pid port_a=$port pid=""
start_instance
pid_b=$pid port_b=$port pid=""
echo "instance A on 127.0.0.1:$port_a, instance B on 127.0.0.1:$port_b, both with --redis 127.0.0.1:$redis_port"

status=0
calls_of() { sed -n 's/^database calls: *\([0-9]*\)$/\1/p' <<<"$1"; }

echo
echo "== A: 1000 concurrent requests over 100 ids (/user/5000 .. /user/5099)"
out=$("$burst" --url "http://127.0.0.1:$port_a/user/5000" --requests 1000 --connections 1000 --spread 100) || status=1
echo "$out"
calls_a=$(calls_of "$out")

# A writes what it loaded to Redis behind its callers' backs: wait for the 100 keys.
for _ in $(seq 1 100); do
  n=$(redis-cli -p "$redis_port" --scan --pattern 'demo:users:*' | wc -l)
  [ "$n" -ge 100 ] && break
  sleep 0.05
done

echo
echo "== B: the same burst"
out=$("$burst" --url "http://127.0.0.1:$port_b/user/5000" --requests 1000 --connections 1000 --spread 100) || status=1
echo "$out"
calls_b=$(calls_of "$out")
stats_b=$(curl -s "http://127.0.0.1:$port_b/stats")
l2_hits=$(sed -n 's/.*"l2_hits":\([0-9]*\).*/\1/p' <<<"$stats_b")
echo
echo "=> A's database: ${calls_a:-?} calls; B's database: ${calls_b:-?} calls, B's Redis hits: ${l2_hits:-?}"
if [ "${calls_a:-}" != 100 ] || [ "${calls_b:-}" != 0 ] || [ "${l2_hits:-}" != 100 ]; then
  echo "FAIL: expected 100 calls at A, none at B and 100 Redis hits at B"
  echo "$stats_b"
  status=1
fi
exit $status
