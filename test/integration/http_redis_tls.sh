#!/usr/bin/env bash
# The example service with its Redis L2 over TLS: a throwaway CA and a
# redis-server on a TLS port; an instance with --redis-tls-ca loads users and
# writes them to Redis, and a second one reads them from there. An instance
# given another CA gets no Redis at all (errors, no plain-TCP fallback) and
# still serves every request from its database.
#
#   http_redis_tls.sh PATH/TO/cacheflight_http_service
set -euo pipefail
server=$1
here=$(dirname "${BASH_SOURCE[0]}")
source "$here/../../scripts/lib/service.sh"
work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}" ${pid:-}; do kill -TERM "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
  bash "$here/redis_server.sh" stop "$work/redis" || true
  rm -rf "$work"
}
trap cleanup EXIT
bash "$here/tls_certs.sh" "$work/certs"
REDIS_TLS_DIR=$work/certs bash "$here/redis_server.sh" start "$work/redis"
rport=$(cat "$work/redis/port")
failures=0
field() { sed -n "s/.*\"$1\":\\([0-9]*\\).*/\\1/p" <<<"$2"; }
start() {
  start_service "$server" --db-latency-ms 1 --redis "127.0.0.1:$rport" "$@" || { cleanup; exit 1; }
  trap cleanup EXIT
  pids+=("$pid")
  pid=""
}

start --redis-tls-ca "$work/certs/ca.crt"
a=$port
for _ in $(seq 1 50); do
  [ "$(curl -s "http://127.0.0.1:$a/stats" | sed -n 's/.*"l2_breaker":"\([a-z_]*\)".*/\1/p')" = closed ] && break
  sleep 0.05
done
for id in 1 2 3; do curl -s -o /dev/null "http://127.0.0.1:$a/user/$id"; done
for _ in $(seq 1 100); do
  [ "$(redis-cli --tls --cacert "$work/certs/ca.crt" -p "$rport" --scan --pattern 'demo:users:*' | wc -l)" -ge 3 ] && break
  sleep 0.05
done
start --redis-tls-ca "$work/certs/ca.crt"
b=$port
for _ in $(seq 1 50); do
  curl -s "http://127.0.0.1:$b/stats" | grep -q '"l2_breaker":"closed"' && break
  sleep 0.05
done
for id in 1 2 3; do curl -s -o /dev/null "http://127.0.0.1:$b/user/$id"; done
stats=$(curl -s "http://127.0.0.1:$b/stats")
expect "the second instance reads the first one's users from Redis over TLS" 3 "$(field l2_hits "$stats")"
expect "and never calls its database" 0 "$(field db_calls "$stats")"

start --redis-tls-ca "$work/certs/other-ca.crt"
c=$port
sleep 0.3
for id in 1 2 3; do curl -s -o /dev/null "http://127.0.0.1:$c/user/$id"; done
stats=$(curl -s "http://127.0.0.1:$c/stats")
expect "an instance with the wrong CA gets no value from Redis" 0 "$(field l2_hits "$stats")"
expect "and serves every request from its database" 3 "$(field db_calls "$stats")"
[ "$failures" -eq 0 ]
