#!/usr/bin/env bash
# A Redis Cluster on 127.0.0.1 for the Cluster tests: three masters and three
# replicas (redis-server --cluster-enabled yes, joined by redis-cli --cluster
# create) on free ports. A master unreachable for 500 ms is failed over to its
# replica; the cluster keeps serving the slots it still covers meanwhile
# (cluster-require-full-coverage no).
#
# With REDIS_TLS_DIR set (certificates made by tls_certs.sh), every node
# listens with TLS only (the port is a TLS port), and the cluster bus and
# replication use TLS too. With REDIS_CLUSTER_REPLICAS=0, three masters alone.
#
#   redis_cluster.sh start DIR        writes DIR/nodes ("127.0.0.1:P,..." all six),
#                                     DIR/masters (one "127.0.0.1:P" per line)
#   redis_cluster.sh kill DIR PORT    SIGKILL to the node on PORT
#   redis_cluster.sh pause DIR PORT   SIGSTOP to the node on PORT (resume: SIGCONT)
#   redis_cluster.sh wait-ok DIR      waits until every live node says cluster_state:ok
#   redis_cluster.sh migrate DIR SLOT FROM TO [ORDER]
#                                     moves SLOT from the master on port FROM to the
#                                     one on port TO as redis-cli --cluster reshard
#                                     does (SETSLOT IMPORTING/MIGRATING, MIGRATE),
#                                     one key at a time, 5 ms apart, then SETSLOT NODE
#                                     on every master: the new owner first (ORDER
#                                     new-owner-first, the default, as redis-cli does)
#                                     or the old one first, 50 ms before the next
#                                     (old-owner-first)
#   redis_cluster.sh stop DIR
set -euo pipefail
cmd=$1
dir=$2
source "$(dirname "${BASH_SOURCE[0]}")/servers_lib.sh"

free_port() {  # a port free for the node and for its cluster bus (port + 10000): apart from
  local p       # the other test servers (20000 and up) and the ephemeral range (32768 and up)
  while :; do
    p=$((3000 + RANDOM % 7000))
    if port_free "$p" && port_free $((p + 10000)) && ! grep -qx "$p" "$dir/ports" 2>/dev/null; then
      echo "$p"
      return
    fi
  done
}
cli() {  # redis-cli, with TLS when the cluster has it
  if [ -f "$dir/tls" ]; then
    redis-cli --tls --cacert "$(cat "$dir/tls")/ca.crt" "$@"
  else
    redis-cli "$@"
  fi
}
replica_up() { cli -p "$1" info replication | grep -q master_link_status:up; }
state_ok() {  # every node still running reports cluster_state:ok and all slots
  for f in "$dir"/*/pid; do
    [ -f "$f" ] || continue
    kill -0 "$(cat "$f")" 2>/dev/null || continue
    local p
    p=$(basename "$(dirname "$f")")
    cli -p "$p" cluster info | grep -q 'cluster_state:ok' || return 1
    cli -p "$p" cluster info | grep -q 'cluster_slots_assigned:16384' || return 1
  done
}

case "$cmd" in
  start)
    mkdir -p "$dir"
    stop_all
    rm -f "$dir/ports" "$dir/tls"
    replicas=${REDIS_CLUSTER_REPLICAS:-1}
    tls=()
    if [ -n "${REDIS_TLS_DIR:-}" ]; then
      echo "$REDIS_TLS_DIR" >"$dir/tls"
      tls=(--tls-cluster yes --tls-replication yes --tls-cert-file "$REDIS_TLS_DIR/server.crt"
           --tls-key-file "$REDIS_TLS_DIR/server.key" --tls-ca-cert-file "$REDIS_TLS_DIR/ca.crt"
           --tls-client-cert-file "$REDIS_TLS_DIR/client.crt" --tls-client-key-file "$REDIS_TLS_DIR/client.key"
           --tls-auth-clients no)
    fi
    ports=()
    for _ in $(seq 1 $((3 * (replicas + 1)))); do
      p=$(free_port)
      echo "$p" >>"$dir/ports"
      ports+=("$p")
    done
    for p in "${ports[@]}"; do
      # A node of an earlier cluster that used this port left its nodes.conf:
      # a new node must start empty.
      rm -rf "${dir:?}/$p"
      mkdir -p "$dir/$p"
      if [ ${#tls[@]} -gt 0 ]; then listen=(--port 0 --tls-port "$p" "${tls[@]}"); else listen=(--port "$p"); fi
      redis-server "${listen[@]}" --bind 127.0.0.1 --save '' --appendonly no --daemonize yes \
        --cluster-enabled yes --cluster-config-file "$dir/$p/nodes.conf" --cluster-node-timeout 500 \
        --cluster-require-full-coverage no --cluster-replica-validity-factor 0 \
        --pidfile "$dir/$p/pid" --logfile "$dir/$p/log" --dir "$dir/$p"
    done
    for p in "${ports[@]}"; do
      wait_until 5 cli -p "$p" ping || { cat "$dir/$p/log"; exit 1; }
    done
    addrs=()
    for p in "${ports[@]}"; do addrs+=("127.0.0.1:$p"); done
    cli --cluster create "${addrs[@]}" --cluster-replicas "$replicas" --cluster-yes >"$dir/create.log" 2>&1 ||
      { cat "$dir/create.log"; exit 1; }
    wait_until 20 state_ok || { echo "the cluster did not converge"; cli -p "${ports[0]}" cluster nodes; exit 1; }
    # Every replica in sync with its master, so that a failover loses nothing.
    for p in "${ports[@]}"; do
      if cli -p "$p" role | head -1 | grep -q slave; then
        wait_until 20 replica_up "$p" ||
          { echo "replica $p did not sync"; exit 1; }
      fi
    done
    (IFS=,; echo "${addrs[*]}") >"$dir/nodes"
    cli -p "${ports[0]}" cluster nodes | awk '$3 ~ /master/ { sub(/@.*/, "", $2); print $2 }' | sort >"$dir/masters"
    ;;
  kill)
    f="$dir/$3/pid"
    kill -KILL "$(cat "$f")"
    rm -f "$f"
    ;;
  pause)
    kill -STOP "$(cat "$dir/$3/pid")"
    ;;
  resume)
    kill -CONT "$(cat "$dir/$3/pid")"
    ;;
  wait-ok)
    wait_until 20 state_ok
    ;;
  migrate)
    slot=$3 from=$4 to=$5 order=${6:-new-owner-first}
    from_id=$(cli -p "$from" cluster myid)
    to_id=$(cli -p "$to" cluster myid)
    cli -p "$to" cluster setslot "$slot" importing "$from_id" >/dev/null
    cli -p "$from" cluster setslot "$slot" migrating "$to_id" >/dev/null
    while :; do
      keys=$(cli -p "$from" cluster getkeysinslot "$slot" 1)
      [ -n "$keys" ] || break
      cli -p "$from" migrate 127.0.0.1 "$to" "" 0 5000 keys $keys >/dev/null
      sleep 0.005
    done
    # SETSLOT NODE on every master, in the order asked; the cluster bus tells the replicas.
    if [ "$order" = old-owner-first ]; then
      cli -p "$from" cluster setslot "$slot" node "$to_id" >/dev/null
      sleep 0.05
    fi
    for p in "$to" "$from" $(sed 's/.*://' "$dir/masters"); do
      cli -p "$p" cluster setslot "$slot" node "$to_id" >/dev/null 2>&1 || true
    done
    ;;
  stop)
    stop_all
    ;;
  *)
    echo "usage: $0 start|kill|pause|resume|wait-ok|migrate|stop DIR [ARGS]" >&2
    exit 2
    ;;
esac
