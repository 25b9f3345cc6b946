#!/usr/bin/env bash
# Starts the example HTTP service on a free loopback port, bursts 1000
# concurrent requests for one id and then 1000 spread over 100 ids, prints what
# happened and stops the service. Exits non-zero unless the database saw exactly
# 1 and then 100 calls. Used by scripts/demo and by the integration test.
#
#   burst_demo.sh PATH/TO/cacheflight_http_service PATH/TO/cacheflight_burst
set -euo pipefail
server=$1
burst=$2
# 1000 concurrent connections need more descriptors than the usual soft limit of 1024.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || ulimit -n 4096 2>/dev/null || true
source "$(dirname "${BASH_SOURCE[0]}")/service.sh"
start_service "$server" --db-latency-ms 50
echo "service listening on 127.0.0.1:$port (database latency 50 ms)"

status=0
run() {  # run NAME EXPECTED_DB_CALLS burst-args...
  local name=$1 expected=$2
  shift 2
  local out
  echo
  echo "== $name"
  if ! out=$("$burst" "$@"); then
    echo "$out"
    echo "FAIL: some requests failed"
    status=1
    return
  fi
  echo "$out"
  local calls
  calls=$(sed -n 's/^database calls: *\([0-9]*\)$/\1/p' <<<"$out")
  local requests
  requests=$(sed -n 's/^requests: *\([0-9]*\) .*/\1/p' <<<"$out")
  if [ "$calls" = "$expected" ]; then
    echo "=> $requests requests reached the database $calls time$([ "$calls" = 1 ] || echo s) (expected $expected)"
  else
    echo "FAIL: expected $expected database calls, saw ${calls:-none}"
    status=1
  fi
}

run "1000 concurrent requests for /user/42" 1 \
  --url "http://127.0.0.1:$port/user/42" --requests 1000 --connections 1000
run "1000 concurrent requests over 100 ids (/user/1000 .. /user/1099)" 100 \
  --url "http://127.0.0.1:$port/user/1000" --requests 1000 --connections 1000 --spread 100

stop_service || true
echo
tail -n 1 "$service_log"
exit $status
