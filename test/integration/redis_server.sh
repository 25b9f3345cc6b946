#!/usr/bin/env bash
# Starts or stops a throwaway redis-server on 127.0.0.1 for the integration tests.
#
#   redis_server.sh start DIR [PASSWORD]   picks a free port, starts the server
#                                           (no persistence), writes DIR/port;
#                                           without TLS it also listens on a unix
#                                           socket, whose path it writes to DIR/socket
#   redis_server.sh stop DIR
#   redis_server.sh kill DIR                 stops it, keeping its port for a restart
#   redis_server.sh restart DIR [PASSWORD]   starts it again on the same port
#
# With REDIS_TLS_DIR set (certificates made by tls_certs.sh), the port is a TLS
# port and plain TCP is off; REDIS_TLS_AUTH_CLIENTS (no, optional or yes) says
# whether clients must present a certificate.
set -euo pipefail
cmd=$1
dir=$2

# Stops the server of DIR and waits until it is gone: a dying server removes
# its pid file, which must not be the next server's.
terminate() {
  [ -f "$dir/pid" ] || return 0
  local pid
  pid=$(cat "$dir/pid")
  kill "$pid" 2>/dev/null || true
  for _ in $(seq 1 200); do kill -0 "$pid" 2>/dev/null || break; sleep 0.05; done
  rm -f "$dir/pid"
}

case "$cmd" in
  start)
    mkdir -p "$dir"
    terminate
    # Ports below the usual ephemeral range (32768 and up), so that no outgoing
    # connection holds the one picked; a port taken between the check and the
    # bind is retried with another (a restart keeps its port, and retries it).
    for attempt in $(seq 1 20); do
      port=${RESTART_PORT:-}
      while [ -z "$port" ]; do
        candidate=$((20000 + RANDOM % 12000))
        if ! (exec 3<>"/dev/tcp/127.0.0.1/$candidate") 2>/dev/null; then port=$candidate; fi
      done
      args=(--port "$port" --bind 127.0.0.1 --save '' --appendonly no --daemonize yes
            --pidfile "$dir/pid" --logfile "$dir/log" --dir "$dir")
      [ -n "${3:-}" ] && args+=(--requirepass "$3")
      # Under /tmp, named by the port: a socket's path has at most 107 bytes,
      # fewer than a build directory may take.
      socket=""
      [ -z "${REDIS_TLS_DIR:-}" ] && socket=/tmp/cacheflight-redis-$port.sock &&
        args+=(--unixsocket "$socket" --unixsocketperm 700)
      if [ -n "${REDIS_TLS_DIR:-}" ]; then
        args[1]=0
        args+=(--tls-port "$port" --tls-cert-file "$REDIS_TLS_DIR/server.crt"
               --tls-key-file "$REDIS_TLS_DIR/server.key" --tls-ca-cert-file "$REDIS_TLS_DIR/ca.crt"
               --tls-auth-clients "${REDIS_TLS_AUTH_CLIENTS:-no}")
      fi
      : >"$dir/log"
      redis-server "${args[@]}"
      for _ in $(seq 1 100); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && [ -f "$dir/pid" ]; then
          echo "$port" >"$dir/port"
          if [ -n "$socket" ]; then
            for _ in $(seq 1 100); do [ -S "$socket" ] && break; sleep 0.05; done
            echo "$socket" >"$dir/socket"
          fi
          exit 0
        fi
        grep -q "Address already in use" "$dir/log" && break
        sleep 0.05
      done
      terminate
      [ -n "${RESTART_PORT:-}" ] && sleep 0.2
    done
    echo "redis-server did not start"; cat "$dir/log" || true; exit 1
    ;;
  stop)
    terminate
    rm -f "$dir/port" "$dir/socket"
    ;;
  kill)
    terminate
    ;;
  restart)
    RESTART_PORT=$(cat "$dir/port") exec bash "$0" start "$dir" "${3:-}"
    ;;
esac
