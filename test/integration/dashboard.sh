#!/usr/bin/env bash
# Drives the example service's dashboard in headless Chromium: the page fires a
# burst of 200 concurrent requests for one id from the browser, and the figures
# the page then shows must say 200 requests, 200 ok, 1 database call. A
# screenshot of the page is written to SCREENSHOT.
#
#   dashboard.sh PATH/TO/cacheflight_http_service PATH/TO/chromium SCREENSHOT.png
set -euo pipefail
server=$1
chromium=$2
shot=$3
profile=$(mktemp -d)
source "$(dirname "$0")/../../scripts/lib/service.sh"
start_service "$server" --db-latency-ms 50
trap 'stop_service; rm -rf "$service_log" "$profile"' EXIT

browse() {
  timeout 60 "$chromium" --headless --no-sandbox --disable-gpu --no-first-run --disable-background-networking \
    --disable-component-update --disable-sync --user-data-dir="$profile" --virtual-time-budget=10000 "$@" \
    2>/dev/null
}

url="http://127.0.0.1:$port/?burst=200&ids=1&first=5000"
dom=$(browse --dump-dom "$url")
summary=$(grep -o '<span id="burst-summary"[^>]*>' <<<"$dom" | grep -v '${' | head -n 1 || true)
echo "page shows: ${summary:-nothing}"
want='data-requests="200" data-ok="200" data-db-calls="1"'
if [[ "$summary" != *"$want"* ]]; then
  echo "FAIL: expected $want"
  exit 1
fi

# The screenshot: a second visit bursts over 20 ids so the chart has a shape.
browse --window-size=900,760 --screenshot="$shot" "http://127.0.0.1:$port/?burst=300&ids=20&first=6000" >/dev/null
[ -s "$shot" ] || { echo "FAIL: no screenshot"; exit 1; }
echo "screenshot: $shot"
