#!/usr/bin/env bash
# The example service with a Redis Cluster as its L2: three masters and three
# replicas. Two instances share the cluster (each knows one seed node): the
# users one loads are spread over every master and served by the other without
# a database call. A master is then killed with SIGKILL: requests keep being
# answered during the failover, and afterwards users whose keys belong to the
# killed master's slots are written to the replica promoted in its place.
#
#   http_redis_cluster.sh PATH/TO/cacheflight_http_service
set -euo pipefail
server=$1
here=$(dirname "${BASH_SOURCE[0]}")
source "$here/../../scripts/lib/service.sh"
work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  bash "$here/redis_cluster.sh" stop "$work" || true
  rm -rf "$work"
}
trap cleanup EXIT
bash "$here/redis_cluster.sh" start "$work"
IFS=, read -r -a nodes <"$work/nodes"
mapfile -t masters <"$work/masters"
failures=0
ports=()
for seed in "${nodes[0]}" "${nodes[3]}"; do
  start_service "$server" --db-latency-ms 1 --redis-cluster "$seed" || exit 1
  pids+=("$pid")
  ports+=("$port")
  pid=""  # stopped by cleanup
  trap cleanup EXIT
done
a=http://127.0.0.1:${ports[0]}
b=http://127.0.0.1:${ports[1]}
stat() { curl -s "$1/stats" | sed -n "s/.*\"$2\":\([0-9]*\).*/\1/p"; }
for _ in $(seq 1 50); do curl -s "$a/user/0" | grep -q '"id"' && break; sleep 0.1; done
for id in $(seq 1 60); do curl -s -o /dev/null "$a/user/$id"; done
keys() { redis-cli -p "${1##*:}" --scan --pattern 'demo:users:*' | wc -l; }
total=0
for m in "${masters[@]}"; do
  for _ in $(seq 1 50); do [ "$(keys "$m")" -gt 0 ] && break; sleep 0.1; done
  n=$(keys "$m")
  [ "$n" -gt 0 ] && expect "master $m holds some of the users" yes yes || expect "master $m holds some of the users" yes no
  total=$((total + n))
done
expect "the cluster holds every user loaded, once" 61 "$total"
for id in $(seq 1 60); do curl -s -o /dev/null "$b/user/$id"; done
expect "the second instance reads them from the cluster" 0 "$(stat "$b" db_calls)"

victim=${masters[0]}
bash "$here/redis_cluster.sh" kill "$work" "${victim##*:}"
expect "every request during the failover is answered" "" "$(unanswered "$a" 100 130)"
bash "$here/redis_cluster.sh" wait-ok "$work"
# The replica promoted in the victim's place: a master now that was not before.
promoted=""
for n in "${nodes[@]}"; do
  [ "$n" = "$victim" ] && continue
  if ! printf '%s\n' "${masters[@]}" | grep -qx "$n" && redis-cli -p "${n##*:}" role | head -1 | grep -q master; then
    promoted=$n
  fi
done
[ -n "$promoted" ] && expect "a replica was promoted" yes yes || expect "a replica was promoted" yes no
before=$(keys "$promoted")
for _ in $(seq 1 100); do
  curl -s -o /dev/null "$a/user/$((1000 + RANDOM % 10000))"
  [ "$(keys "$promoted")" -gt "$before" ] && break
  sleep 0.05
done
[ "$(keys "$promoted")" -gt "$before" ] && expect "the service writes to the promoted replica" yes yes ||
  expect "the service writes to the promoted replica" yes no
[ "$failures" -eq 0 ]
