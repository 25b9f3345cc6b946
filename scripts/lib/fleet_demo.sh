#!/usr/bin/env bash
# Three instances of the example HTTP service, started with --fleet, share one
# Redis (a throwaway redis-server on a free loopback port). Bursts spread over
# the three for one cold id, then for 100 cold ids: the database sees one call
# per id in total. A write (PUT) through one instance reaches the other two:
# 1000 writes, each read back from both, with the propagation delay's p50, p99
# and maximum. Exits non-zero otherwise. Used by scripts/demo.
#
# With --full (the integration test), it goes on: the invalidation connections
# killed (CLIENT KILL TYPE pubsub) and then the data connections: memory is
# flushed, the link comes back and writes propagate again; Redis restarted
# under requests: every request is answered and the instances relink; a lease
# holder killed with SIGKILL in the middle of its load: another instance loads
# once the lease expires.
#
#   fleet_demo.sh PATH/TO/cacheflight_http_service PATH/TO/cacheflight_burst PATH/TO/cacheflight_fleet_probe [--full]
set -euo pipefail
server=$1
burst=$2
probe=$3
full=${4:-}
here=$(dirname "${BASH_SOURCE[0]}")
redis_script=$here/../../test/integration/redis_server.sh
ulimit -n "$(ulimit -Hn)" 2>/dev/null || ulimit -n 4096 2>/dev/null || true
source "$here/service.sh"

redis_dir=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}" ${pid:-}; do kill -TERM "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
  bash "$redis_script" stop "$redis_dir" || true
  rm -rf "$redis_dir"
}
trap cleanup EXIT
bash "$redis_script" start "$redis_dir"
rport=$(cat "$redis_dir/port")
echo "redis-server on 127.0.0.1:$rport"

failures=0
ports=()
start_instance() {
  start_service "$server" --redis "127.0.0.1:$rport" --fleet "$@" || { cleanup; exit 1; }
  trap cleanup EXIT
  pids+=("$pid")
  ports+=("$port")
  pid=""
}
stats_of() { curl -s "http://127.0.0.1:$1/stats"; }
field() { sed -n "s/.*\"$1\":\\([0-9a-z]*\\).*/\\1/p" <<<"$2"; }
db_calls_total() {
  local total=0
  for p in "$@"; do total=$((total + $(field db_calls "$(stats_of "$p")"))); done
  echo "$total"
}
# Waits until every instance given reports its invalidation link up.
wait_linked() {
  for p in "$@"; do
    for _ in $(seq 1 200); do
      [ "$(field linked "$(stats_of "$p")")" = true ] && break
      sleep 0.05
    done
  done
}
all_linked() {
  for p in "$@"; do [ "$(field linked "$(stats_of "$p")")" = true ] || { echo false; return; }; done
  echo true
}

for _ in 1 2 3; do start_instance --db-latency-ms 50; done
a=${ports[0]} b=${ports[1]} c=${ports[2]}
echo "instances on 127.0.0.1:$a, :$b and :$c, each with --redis 127.0.0.1:$rport --fleet"
wait_linked "$a" "$b" "$c"

# burst FIRST SPREAD: 1000 requests at each instance at once, over SPREAD ids from FIRST.
burst_all() {
  local outs=() bursts=()
  for p in "$a" "$b" "$c"; do
    outs+=("$(mktemp)")
    "$burst" --url "http://127.0.0.1:$p/user/$1" --requests 1000 --connections 500 --spread "$2" >"${outs[-1]}" &
    bursts+=($!)
  done
  wait "${bursts[@]}"
  local i=0
  for p in "$a" "$b" "$c"; do
    echo "-- at :$p"
    grep -E '^(requests|statuses|latency)' "${outs[$i]}"
    rm -f "${outs[$i]}"
    i=$((i + 1))
  done
}

# bursts_count FIRST SPREAD TITLE: the bursts, and the database calls of all
# three instances together, which must be SPREAD: one per cold id.
bursts_count() {
  echo
  echo "== 3000 concurrent requests $3, 1000 at each instance"
  local before calls
  before=$(db_calls_total "$a" "$b" "$c")
  burst_all "$1" "$2"
  calls=$(( $(db_calls_total "$a" "$b" "$c") - before ))
  echo "=> database calls, all instances together: $calls"
  expect "$2 cold id(s) over three instances: $2 database call(s)" "$2" "$calls"
}
bursts_count 9000 1 "for one cold id (/user/9000)"
bursts_count 7000 100 "over 100 cold ids (/user/7000 .. /user/7099)"

echo
echo "== PUT /user/7000 through :$a, read back from :$b and :$c"
curl -s -X PUT --data 'Ada Lovelace' "http://127.0.0.1:$a/user/7000" >/dev/null
got_b=$(curl -s "http://127.0.0.1:$b/user/7000")
got_c=$(curl -s "http://127.0.0.1:$c/user/7000")
echo "$got_b"
echo "$got_c"
expect "the other instances serve the new name" 2 "$(grep -c 'Ada Lovelace' <<<"$got_b"$'\n'"$got_c")"

echo
echo "== 1000 writes through :$a, each read back from :$b and :$c until they serve it"
"$probe" --writer "127.0.0.1:$a" --readers "127.0.0.1:$b,127.0.0.1:$c" --id 7001 --writes 1000 --timeout-ms 1000 ||
  failures=$((failures + 1))

if [ "$full" = --full ]; then
  # write_reaches ID NAME: a PUT through A, then B and C serve NAME within 1 s.
  write_reaches() {
    curl -s -X PUT --data "$2" "http://127.0.0.1:$a/user/$1" >/dev/null
    for _ in $(seq 1 100); do
      curl -s "http://127.0.0.1:$b/user/$1" | grep -q "\"$2\"" && curl -s "http://127.0.0.1:$c/user/$1" | grep -q "\"$2\"" &&
        { echo yes; return; }
      sleep 0.01
    done
    echo no
  }
  flushes() { field memory_flushes "$(stats_of "$1")"; }

  echo
  echo "== the invalidation connections killed"
  curl -s -o /dev/null "http://127.0.0.1:$b/user/7002"
  f=$(flushes "$b")
  redis-cli -p "$rport" CLIENT KILL TYPE pubsub >/dev/null
  for _ in $(seq 1 100); do [ "$(flushes "$b")" -gt "$f" ] && break; sleep 0.02; done
  expect "memory flushed when the invalidation connection is lost" yes "$([ "$(flushes "$b")" -gt "$f" ] && echo yes || echo no)"
  wait_linked "$a" "$b" "$c"
  expect "the link comes back" true "$(all_linked "$a" "$b" "$c")"
  expect "and writes propagate again" yes "$(write_reaches 7002 after-pubsub-kill)"

  echo
  echo "== the data connections killed"
  f=$(flushes "$b")
  for id in $(redis-cli -p "$rport" CLIENT LIST | awk '/flags=[A-Za-z]*t/ { sub("id=", "", $1); print $1 }'); do
    redis-cli -p "$rport" CLIENT KILL ID "$id" >/dev/null
  done
  for _ in $(seq 1 100); do [ "$(flushes "$b")" -gt "$f" ] && break; sleep 0.02; done
  expect "memory flushed when the data connection is lost" yes "$([ "$(flushes "$b")" -gt "$f" ] && echo yes || echo no)"
  wait_linked "$a" "$b" "$c"
  expect "tracking is re-enabled" 3 "$(redis-cli -p "$rport" CLIENT LIST | grep -c 'flags=[A-Za-z]*t')"
  expect "and writes propagate again" yes "$(write_reaches 7003 after-data-kill)"

  echo
  echo "== Redis restarted under requests"
  codes=$(mktemp)
  (for id in $(seq 7100 7140); do
     for p in "$a" "$b" "$c"; do curl -s -o /dev/null -m 5 -w '%{http_code}\n' "http://127.0.0.1:$p/user/$id"; done
     sleep 0.02
   done >"$codes") &
  loop=$!
  sleep 0.2
  bash "$redis_script" restart "$redis_dir"
  wait "$loop"
  expect "every request answered while Redis restarted" 0 "$(grep -vc '^200$' "$codes" || true)"
  rm -f "$codes"
  wait_linked "$a" "$b" "$c"
  expect "the instances relink" true "$(all_linked "$a" "$b" "$c")"
  expect "and writes propagate again" yes "$(write_reaches 7004 after-restart)"

  echo
  echo "== a lease holder killed in the middle of its load"
  start_instance --db-latency-ms 1500 --lease-ms 1000
  d=${ports[3]} d_pid=${pids[3]}
  start_instance --db-latency-ms 100 --lease-ms 1000
  e=${ports[4]}
  wait_linked "$d" "$e"
  curl -s -o /dev/null -m 5 "http://127.0.0.1:$d/user/8000" &
  for _ in $(seq 1 100); do
    [ "$(field leases_granted "$(stats_of "$d")")" = 1 ] && break
    sleep 0.01
  done
  kill -KILL "$d_pid"
  t0=$(date +%s%N)
  code=$(curl -s -o /dev/null -m 10 -w '%{http_code}' "http://127.0.0.1:$e/user/8000")
  ms=$(( ($(date +%s%N) - t0) / 1000000 ))
  echo "another instance answered in $ms ms"
  stats_e=$(stats_of "$e")
  expect "another instance answers" 200 "$code"
  expect "after the lease expired, it loaded" 1 "$(field leases_expired "$stats_e")"
  expect "once" 1 "$(field db_calls "$stats_e")"
  expect "within the lease and one load" yes "$([ "$ms" -lt 4000 ] && echo yes || echo no)"
fi

echo
if [ "$failures" -ne 0 ]; then
  echo "FAIL: $failures check(s) failed"
  exit 1
fi
echo "ok: one load per id for the fleet, and writes reach every instance"
