#!/usr/bin/env bash
# A replicated Redis set behind Sentinel on 127.0.0.1, for the Sentinel tests:
# a master, one replica and three sentinels on free ports. Data nodes require
# the password "data-pw", sentinels "sentinel-pw"; the set is named
# "cfmaster", and a master unreachable for 400 ms is failed over.
#
#   redis_sentinel.sh start DIR        writes DIR/master_port, DIR/replica_port and
#                                      DIR/sentinels ("127.0.0.1:P,127.0.0.1:Q,...")
#   redis_sentinel.sh kill-master DIR  SIGKILL to the master
#   redis_sentinel.sh stop DIR
set -euo pipefail
cmd=$1
dir=$2
source "$(dirname "${BASH_SOURCE[0]}")/servers_lib.sh"

free_port() {
  local p
  while :; do
    p=$((20000 + RANDOM % 12000))
    if port_free "$p"; then echo "$p"; return; fi
  done
}
cli() { redis-cli --no-auth-warning "$@"; }
# Whether the data node on PORT is the one whose pid is in PIDFILE.
ours() {
  [ -s "$2" ] && cli -p "$1" -a data-pw info server | tr -d '\r' | grep -qx "process_id:$(cat "$2")"
}

case "$cmd" in
  start)
    mkdir -p "$dir"
    # Another test's server may take a port between the check and the bind:
    # the data nodes start again on other ports unless both are this set's
    # own (the pid in their pid file answers) and the replica is in sync.
    for attempt in 1 2 3; do
      stop_all
      mport=$(free_port)
      rport=$mport
      while [ "$rport" = "$mport" ]; do rport=$(free_port); done
      ok=1
      for node in master replica; do
        mkdir -p "$dir/$node"
        port=$([ $node = master ] && echo "$mport" || echo "$rport")
        args=(--port "$port" --bind 127.0.0.1 --save '' --appendonly no --daemonize yes --requirepass data-pw
              --masterauth data-pw --pidfile "$dir/$node/pid" --logfile "$dir/$node/log" --dir "$dir/$node")
        [ $node = replica ] && args+=(--replicaof 127.0.0.1 "$mport")
        redis-server "${args[@]}"
        if ! wait_until 5 ours "$port" "$dir/$node/pid"; then
          echo "attempt $attempt: the $node did not start on port $port"; cat "$dir/$node/log" || true; ok=0; break
        fi
      done
      if [ $ok = 1 ]; then
        wait_until 10 bash -c "redis-cli --no-auth-warning -p $rport -a data-pw info replication | grep -q master_link_status:up" &&
          break
        echo "attempt $attempt: the replica did not sync"; cat "$dir/replica/log" || true
      fi
      [ "$attempt" -lt 3 ] || exit 1
    done
    sentinels=()
    for i in 1 2 3; do
      mkdir -p "$dir/s$i"
      port=$(free_port)
      cat >"$dir/s$i/sentinel.conf" <<CONF
port $port
bind 127.0.0.1
daemonize yes
pidfile $dir/s$i/pid
logfile $dir/s$i/log
dir $dir/s$i
requirepass sentinel-pw
sentinel monitor cfmaster 127.0.0.1 $mport 2
sentinel auth-pass cfmaster data-pw
sentinel down-after-milliseconds cfmaster 400
sentinel failover-timeout cfmaster 2000
sentinel parallel-syncs cfmaster 1
CONF
      redis-server "$dir/s$i/sentinel.conf" --sentinel
      sentinels+=("127.0.0.1:$port")
    done
    # Every sentinel must know the replica and the other two before a failover can happen.
    for s in "${sentinels[@]}"; do
      p=${s##*:}
      wait_until 20 bash -c "redis-cli --no-auth-warning -p $p -a sentinel-pw sentinel ckquorum cfmaster | grep -q '3 usable'" ||
        { echo "sentinel $s has no quorum"; cat "$dir"/s*/log; exit 1; }
      wait_until 20 bash -c "redis-cli --no-auth-warning -p $p -a sentinel-pw sentinel replicas cfmaster | grep -q $rport" ||
        { echo "sentinel $s does not know the replica"; exit 1; }
    done
    echo "$mport" >"$dir/master_port"
    echo "$rport" >"$dir/replica_port"
    (IFS=,; echo "${sentinels[*]}") >"$dir/sentinels"
    ;;
  kill-master)
    kill -KILL "$(cat "$dir/master/pid")"
    rm -f "$dir/master/pid"
    ;;
  stop)
    stop_all
    ;;
  *)
    echo "usage: $0 start|kill-master|stop DIR"; exit 2
    ;;
esac
