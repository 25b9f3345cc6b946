#!/usr/bin/env bash
# The example service with its Redis L2 found through Sentinel: a master, a
# replica and three sentinels; the service loads users and writes them to the
# master; the master is killed with SIGKILL; requests keep being answered
# during the failover, and afterwards the service writes to the promoted
# replica.
#
#   http_redis_sentinel.sh PATH/TO/cacheflight_http_service
set -euo pipefail
server=$1
here=$(dirname "${BASH_SOURCE[0]}")
source "$here/../../scripts/lib/service.sh"
work=$(mktemp -d)
cleanup() {
  stop_service || true
  bash "$here/redis_sentinel.sh" stop "$work" || true
  rm -rf "$work"
}
trap cleanup EXIT
bash "$here/redis_sentinel.sh" start "$work"
rport=$(cat "$work/replica_port")
failures=0
start_service "$server" --db-latency-ms 1 --redis-sentinel "$(cat "$work/sentinels")" --redis-master cfmaster \
  --redis-password data-pw --redis-sentinel-password sentinel-pw || { cleanup; exit 1; }
trap cleanup EXIT
base=http://127.0.0.1:$port
breaker() { curl -s "$base/stats" | sed -n 's/.*"l2_breaker":"\([a-z_]*\)".*/\1/p'; }
for _ in $(seq 1 50); do [ "$(breaker)" = closed ] && break; sleep 0.1; done
for id in 1 2 3; do curl -s -o /dev/null "$base/user/$id"; done
keys() { redis-cli --no-auth-warning -p "$1" -a data-pw --scan --pattern 'demo:users:*' | wc -l; }
for _ in $(seq 1 50); do [ "$(keys "$rport")" -ge 3 ] && break; sleep 0.1; done
expect "users written to the master reach the replica" 3 "$(keys "$rport")"

bash "$here/redis_sentinel.sh" kill-master "$work"
expect "every request during the failover is answered" "" "$(unanswered "$base" 100 130)"
# Once the promoted replica is found, loads are written to it.
for _ in $(seq 1 100); do
  curl -s -o /dev/null "$base/user/$((1000 + RANDOM % 1000))"
  [ "$(keys "$rport")" -gt 3 ] && break
  sleep 0.1
done
[ "$(keys "$rport")" -gt 3 ] && expect "the service writes to the promoted replica" yes yes ||
  expect "the service writes to the promoted replica" yes no
[ "$failures" -eq 0 ]
