#!/usr/bin/env bash
# The example service's edges, over real sockets: routes, bad requests (400),
# unknown paths (404), other methods (405), oversized requests, a client that
# disconnects mid-request, and the metrics and stats bodies.
#
#   http_edges.sh PATH/TO/cacheflight_http_service
set -euo pipefail
server=$1
source "$(dirname "$0")/../../scripts/lib/service.sh"
failures=0

# The command line: --help lists every flag with its default; malformed or
# out-of-range values are errors with exit status 2, never a silent start.
status() { set +e; "$server" "$@" >/dev/null 2>&1; echo $?; set -e; }
help=$("$server" --help)
expect "--help exits 0" 0 "$(status --help)"
for flag in --address --port --threads --db-latency-ms --ttl-ms --redis --redis-prefix --disk --disk-max-mb \
  --disk-durability --redis-tls --redis-tls-ca --redis-tls-cert --redis-tls-key --redis-sentinel --redis-master \
  --redis-tls-server-name --redis-cluster --stale-ms; do
  expect "--help lists $flag" 1 "$(grep -c -- "^ *$flag " <<<"$help")"
done
expect "--help shows the port's default" 1 "$(grep -c -- '--port arg (=8080)' <<<"$help")"
expect "--port abc is an error" 2 "$(status --port abc)"
expect "--port 70000 is an error" 2 "$(status --port 70000)"
expect "--threads -1 is an error" 2 "$(status --threads -1)"
expect "--threads 0 is an error" 2 "$(status --threads 0)"
expect "--ttl-ms 0 is an error" 2 "$(status --ttl-ms 0)"
expect "--stale-ms -1 is an error" 2 "$(status --stale-ms -1)"
expect "--disk-durability sometimes is an error" 2 "$(status --disk-durability sometimes)"
expect "--disk-max-mb 0 is an error" 2 "$(status --disk-max-mb 0)"
expect "an unusable --disk directory stops the service" 1 "$(status --port 0 --disk /proc/self/cacheflight)"
expect "--redis-tls-cert without --redis-tls-key is an error" 2 "$(status --redis-tls-cert /dev/null)"
expect "--redis-sentinel without --redis-master is an error" 2 "$(status --redis-sentinel 127.0.0.1:26379)"
expect "--redis with --redis-sentinel is an error" 2 "$(status --redis 127.0.0.1:6379 --redis-sentinel 127.0.0.1:26379 --redis-master m)"
expect "--redis with --redis-cluster is an error" 2 "$(status --redis 127.0.0.1:6379 --redis-cluster 127.0.0.1:7000)"
expect "a --redis-cluster seed without a port is an error" 2 "$(status --redis-cluster 127.0.0.1:7000,127.0.0.1)"
expect "a --redis-sentinel without a port is an error" 2 "$(status --redis-sentinel 127.0.0.1: --redis-master m)"
expect "--address bogus is an error" 2 "$(status --address bogus)"
expect "--ttl-ms beyond 10^12 is an error" 2 "$(status --ttl-ms 10000000000000)"
expect "--stale-ms beyond 10^12 is an error" 2 "$(status --stale-ms 10000000000000)"
expect "--db-latency-ms beyond 10^12 is an error" 2 "$(status --db-latency-ms 10000000000000)"
expect "--redis with a port that is not a number is an error" 2 "$(status --redis 127.0.0.1:notaport)"
expect "--redis with port 70000 is an error" 2 "$(status --redis 127.0.0.1:70000)"
expect "a --redis-cluster seed with port 0 is an error" 2 "$(status --redis-cluster 127.0.0.1:0)"
expect "an unknown flag is an error" 2 "$(status --bogus 1)"
expect "a flag without its value is an error" 2 "$(status --port)"
expect "the error names the flag" 1 "$("$server" --port abc 2>&1 >/dev/null | grep -c -- 'port')"

start_service "$server" --db-latency-ms 5
base="http://127.0.0.1:$port"
code() { curl -s -o /dev/null -w '%{http_code}' "$@"; }

expect "GET /healthz" 200 "$(code "$base/healthz")"
expect "GET /user/7" 200 "$(code "$base/user/7")"
expect "GET /user/7 body" '{"id":7,"name":"user-7"}' "$(curl -s "$base/user/7")"
expect "GET /user/abc is 400" 400 "$(code "$base/user/abc")"
expect "GET /user/ is 400" 400 "$(code "$base/user/")"
expect "GET /nope is 404" 404 "$(code "$base/nope")"
expect "POST /user/7 is 405" 405 "$(code -X POST "$base/user/7")"
expect "DELETE /stats is 405" 405 "$(code -X DELETE "$base/stats")"
big=$(head -c 9000 /dev/zero | tr '\0' 'x')
expect "oversized header is 400" 400 "$(code -H "X-Big: $big" "$base/healthz")"
expect "oversized body is 400" 400 "$(code -X POST --data-binary "$big" "$base/user/7")"
# A client that sends half a request and disconnects harms nothing.
exec 3<>"/dev/tcp/127.0.0.1/$port"
printf 'GET /user/8 HTTP/1.1\r\nHost: x\r\n' >&3
exec 3>&-
expect "still healthy after a disconnect" 200 "$(code "$base/healthz")"
expect "/metrics has the cache counters" 1 "$(curl -s "$base/metrics" | grep -c '^cacheflight_cache_hits_total ')"
expect "/stats counts database calls" 1 "$(curl -s "$base/stats" | grep -c '"db_calls":1,')"
expect "/metrics has the database's calls" 1 "$(curl -s "$base/metrics" | grep -c '^demo_db_calls_total 1$')"
expect "/metrics has the database's writes" 1 "$(curl -s "$base/metrics" | grep -c '^demo_db_writes_total 0$')"
expect "a second service on the same port exits 1" 1 "$(status --port "$port")"
expect "GET / serves the dashboard" 1 "$(curl -s "$base/" | grep -c '<title>cacheflight demo</title>')"
stop_service
expect "clean shutdown on SIGTERM" 1 "$(grep -c '^stopped after' "$service_log")"

# --stale-ms: once a user's TTL has run out, it is still served at once while
# one background reload replaces it.
start_service "$server" --db-latency-ms 400 --ttl-ms 300 --stale-ms 60000
base="http://127.0.0.1:$port"
expect "GET /user/9 (loaded)" 200 "$(code "$base/user/9")"
sleep 0.5
took=$(curl -s -o /dev/null -w '%{time_total}' "$base/user/9")
expect "a stale user is served without waiting for the database" 1 "$(awk -v t="$took" 'BEGIN { print (t < 0.3) }')"
sleep 0.8
stats=$(curl -s "$base/stats")
expect "/stats counts the stale hit" 1 "$(grep -c '"stale_hits":1,' <<<"$stats")"
expect "one reload ran" 1 "$(grep -c '"db_calls":2,' <<<"$stats")"
stop_service
[ "$failures" = 0 ]
