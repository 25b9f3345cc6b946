#!/usr/bin/env bash
# Starts or stops a throwaway redis-server on 127.0.0.1 for the integration tests.
#
#   redis_server.sh start DIR [PASSWORD]   picks a free port, starts the server
#                                           (no persistence), writes DIR/port
#   redis_server.sh stop DIR
set -euo pipefail
cmd=$1
dir=$2
case "$cmd" in
  start)
    mkdir -p "$dir"
    if [ -f "$dir/pid" ] && kill -0 "$(cat "$dir/pid")" 2>/dev/null; then kill "$(cat "$dir/pid")"; fi
    port=""
    for _ in $(seq 1 50); do
      candidate=$((20000 + RANDOM % 40000))
      if ! (exec 3<>"/dev/tcp/127.0.0.1/$candidate") 2>/dev/null; then port=$candidate; break; fi
    done
    [ -n "$port" ] || { echo "no free port"; exit 1; }
    args=(--port "$port" --bind 127.0.0.1 --save '' --appendonly no --daemonize yes
          --pidfile "$dir/pid" --logfile "$dir/log" --dir "$dir")
    [ -n "${3:-}" ] && args+=(--requirepass "$3")
    redis-server "${args[@]}"
    for _ in $(seq 1 100); do
      if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then echo "$port" >"$dir/port"; exit 0; fi
      sleep 0.05
    done
    echo "redis-server did not start"; cat "$dir/log" || true; exit 1
    ;;
  stop)
    if [ -f "$dir/pid" ]; then kill "$(cat "$dir/pid")" 2>/dev/null || true; rm -f "$dir/pid" "$dir/port"; fi
    ;;
esac
