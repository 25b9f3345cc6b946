#!/usr/bin/env bash
# redis::client against redis-benchmark, on one throwaway redis-server on a
# free loopback port: GET throughput at 1 and 50 connections, pipeline 1 and
# 16, both single-threaded, in alternating rounds (the best round of each is
# kept); then N coroutines sharing one connection (automatic pipelining); then
# the cost of an L2 hit through cache::async_get; then the cost of reading a
# GET reply, in time and heap allocations; then redis::client over TLS
# against itself over plain TCP, on a second server with a TLS port
# (throwaway certificates); then redis::client against
# `redis-benchmark --cluster` on a cluster of three masters and three replicas
# (test/integration/redis_cluster.sh), at 3 and 48 connections in all.
#
#   bench/redis.sh PATH/TO/cacheflight_redis_bench [SECONDS per round] [ROUNDS]
set -euo pipefail
bench=$1
seconds=${2:-2}
rounds=${3:-3}
here=$(dirname "${BASH_SOURCE[0]}")
dir=$(mktemp -d)
trap 'bash "$here/../test/integration/redis_server.sh" stop "$dir"; bash "$here/../test/integration/redis_server.sh" stop "$dir/tls"; bash "$here/../test/integration/redis_cluster.sh" stop "$dir/cluster"; rm -rf "$dir"' EXIT
bash "$here/../test/integration/redis_server.sh" start "$dir"
port=$(cat "$dir/port")
# The key both clients read. Without -r, `redis-benchmark -t get` reads the
# literal key "key:__rand_int__" (it substitutes random numbers only with -r);
# the value is 3 bytes, its default value size (-d 3).
redis-cli -p "$port" set 'key:__rand_int__' xxx >/dev/null

best() { sort -g | tail -n 1; }
# redis-benchmark -q redraws its progress line with carriage returns.
rps() { tr '\r' '\n' | sed -n 's/^GET: \([0-9.]*\) requests.*/\1/p'; }
# The rate cacheflight_redis_bench prints ("<mode> GET: <n> requests per second").
ours_rps() { sed -n 's/^[a-z]* GET: \([0-9.]*\) .*/\1/p'; }
# compare LABEL "CONNS..." BENCH_MODE PORT [REDIS-BENCHMARK FLAGS...]: GETs of
# redis-benchmark and of `$bench BENCH_MODE PORT C P` at each C in CONNS and P
# in 1 and 16, alternating rounds, best of each.
compare() {
  local label=$1 conns_list=$2 mode=$3 port=$4
  shift 4
  printf '%-24s %18s %18s %8s\n' "connections x pipeline" "redis-benchmark/s" "redis::client/s" "ratio"
  for conns in $conns_list; do
    for pipeline in 1 16; do
      # Enough requests for redis-benchmark to run about as long as a client round.
      probe=$(redis-benchmark "$@" -p "$port" -t get -n 20000 -c "$conns" -P "$pipeline" -q | rps)
      n=$(awk -v r="${probe:-0}" -v s="$seconds" 'BEGIN { printf "%d", r * s }')
      [ "$n" -gt 0 ] || { echo "cannot read redis-benchmark's output"; exit 1; }
      theirs=() ours=()
      for _ in $(seq 1 "$rounds"); do
        theirs+=("$(redis-benchmark "$@" -p "$port" -t get -n "$n" -c "$conns" -P "$pipeline" -q | rps)")
        ours+=("$("$bench" "$mode" "$port" "$conns" "$pipeline" "$seconds" | ours_rps)")
      done
      t=$(printf '%s\n' "${theirs[@]}" | best)
      o=$(printf '%s\n' "${ours[@]}" | best)
      printf '%-24s %18.0f %18.0f %7.2fx\n' "$conns x $pipeline$label" "$t" "$o" "$(awk -v a="$o" -v b="$t" 'BEGIN { print a / b }')"
    done
  done
}
compare "" "1 50" client "$port"
echo
# Automatic pipelining: N coroutines, one GET at a time each, on one connection.
printf '%-24s %18s\n' "coroutines on 1 conn" "redis::client/s"
for n in 1 50 1000; do
  ours=()
  for _ in $(seq 1 "$rounds"); do
    ours+=("$("$bench" coroutines "$port" "$n" "$seconds" | ours_rps)")
  done
  printf '%-24s %18.0f\n' "$n" "$(printf '%s\n' "${ours[@]}" | best)"
done
echo
for c in 1 50; do "$bench" l2 "$port" "$c" "$seconds"; done
echo
# Reading replies, without the server: time and heap allocations per reply.
"$bench" replies 2000000

echo
bash "$here/../test/integration/tls_certs.sh" "$dir/certs"
REDIS_TLS_DIR=$dir/certs bash "$here/../test/integration/redis_server.sh" start "$dir/tls"
tls_port=$(cat "$dir/tls/port")
# The same literal key and 3-byte value as on the plain server above: the
# client reads "key:__rand_int__" on both.
redis-cli --tls --cacert "$dir/certs/ca.crt" -p "$tls_port" set 'key:__rand_int__' xxx >/dev/null
printf '%-24s %18s %18s %8s\n' "connections x pipeline" "plain TCP/s" "TLS/s" "ratio"
for conns in 1 50; do
  for pipeline in 1 16; do
    plain=() tls=()
    for _ in $(seq 1 "$rounds"); do
      plain+=("$("$bench" client "$port" "$conns" "$pipeline" "$seconds" | ours_rps)")
      tls+=("$(CACHEFLIGHT_BENCH_TLS_CA=$dir/certs/ca.crt "$bench" client "$tls_port" "$conns" "$pipeline" "$seconds" |
        ours_rps)")
    done
    p=$(printf '%s\n' "${plain[@]}" | best)
    t=$(printf '%s\n' "${tls[@]}" | best)
    printf '%-24s %18.0f %18.0f %7.2fx\n' "$conns x $pipeline" "$p" "$t" "$(awk -v a="$t" -v b="$p" 'BEGIN { print a / b }')"
  done
done

echo
bash "$here/../test/integration/redis_cluster.sh" start "$dir/cluster"
seed=$(head -n 1 "$dir/cluster/masters")
seed=${seed##*:}
# Both read absent keys: redis-benchmark --cluster reads "key:{tag}:__rand_int__"
# with a tag for each master, which nobody set; the client one absent key per master.
compare " (cluster)" "3 48" cluster "$seed" --cluster
