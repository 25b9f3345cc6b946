# Starts the example HTTP service on a free loopback port. Sourced, not run.
#
#   start_service PATH/TO/cacheflight_http_service [service flags...]
#
# Sets `port`, `pid` and `service_log`, and stops the service on exit.
start_service() {
  local server=$1
  shift
  service_log=$(mktemp)
  "$server" --port 0 "$@" >"$service_log" 2>&1 &
  pid=$!
  trap 'stop_service; rm -f "$service_log"' EXIT
  port=""
  for _ in $(seq 1 100); do
    port=$(sed -n 's/^listening on 127\.0\.0\.1:\([0-9]*\)$/\1/p' "$service_log")
    [ -n "$port" ] && return 0
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  cat "$service_log"
  echo "the service did not start"
  return 1
}

# Stops the service with SIGTERM and waits for it; returns its exit status.
stop_service() {
  [ -n "${pid:-}" ] || return 0
  kill -TERM "$pid" 2>/dev/null || true
  local status=0
  wait "$pid" 2>/dev/null || status=$?
  pid=""
  return $status
}

# expect NAME WANT GOT: prints "ok NAME", or "FAIL ..." and counts it in `failures`.
expect() {
  if [ "$2" = "$3" ]; then echo "ok   $1"; else echo "FAIL $1: want $2, got $3"; failures=$((failures + 1)); fi
}

# unanswered BASE_URL FROM TO: GETs BASE_URL/user/ID for each ID in FROM..TO,
# 0.1 s apart (5 s at most each), and prints the statuses that were not 200.
unanswered() {
  local codes=""
  for id in $(seq "$2" "$3"); do
    codes+="$(curl -s -o /dev/null -m 5 -w '%{http_code}' "$1/user/$id") "
    sleep 0.1
  done
  tr ' ' '\n' <<<"$codes" | grep -v '^200$' | grep -v '^$' || true
}
