#!/usr/bin/env bash
# wrk against the example service: /user/1 once cached vs /constant (a fixed
# body, no cache) on the same server in the same run, alternating, 3 rounds.
#
#   http_wrk.sh PATH/TO/cacheflight_http_service [SECONDS]
set -euo pipefail
server=$1
secs=${2:-5}
source "$(dirname "$0")/../scripts/lib/service.sh"
start_service "$server" --threads 1
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
