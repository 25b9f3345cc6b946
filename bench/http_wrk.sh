#!/usr/bin/env bash
# wrk against the example service: /user/1 once cached vs /constant (a fixed
# body, no cache) on the same server in the same run, alternating, 3 rounds.
#
#   http_wrk.sh PATH/TO/cacheflight_http_service [SECONDS]
set -euo pipefail
server=$1
secs=${2:-5}
log=$(mktemp)
"$server" --port 0 --threads 1 >"$log" 2>&1 &
pid=$!
trap 'kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; rm -f "$log"' EXIT
port=""
for _ in $(seq 1 100); do
  port=$(sed -n 's/^listening on 127\.0\.0\.1:\([0-9]*\)$/\1/p' "$log")
  [ -n "$port" ] && break
  sleep 0.1
done
base="http://127.0.0.1:$port"
curl -s "$base/user/1" >/dev/null  # load it once: every request below is a hit
rate() { wrk -t1 -c50 -d"${secs}s" "$base$1" | sed -n 's/^Requests\/sec: *\([0-9.]*\)/\1/p'; }
user=() constant=()
for round in 1 2 3; do
  user+=("$(rate /user/1)")
  constant+=("$(rate /constant)")
  echo "round $round: /user/1 ${user[-1]} req/s, /constant ${constant[-1]} req/s"
done
median() { printf '%s\n' "$@" | sort -n | sed -n 2p; }
u=$(median "${user[@]}")
c=$(median "${constant[@]}")
echo "median: /user/1 $u req/s, /constant $c req/s, ratio $(awk -v u="$u" -v c="$c" 'BEGIN { printf "%.3f", u / c }') (target >= 0.9)"
