#!/usr/bin/env bash
# Starts a three-node sessionhub cluster on this machine:
#
#   redis-server  127.0.0.1:6390   (skipped when REDIS_URL is set; no persistence)
#   node-a        127.0.0.1:8081   ┐
#   node-b        127.0.0.1:8082   ├ sessionhub serve --redis ...
#   node-c        127.0.0.1:8083   ┘
#   nginx         127.0.0.1:8080   round robin over the nodes, WebSocket upgrades passed on
#
# With BACKEND=sentinel, Redis is a primary (6390) and a replica (6391) watched by three
# Sentinels (26390-26392, master name "sessionhub"), and the nodes find the primary through
# them (--redis-sentinel), so a failover can be tried.
#
# With BACKEND=cluster, Redis is a Redis Cluster of three primaries with a replica each
# (7001-7006, cluster bus 17001-17006), which the nodes reach through seed nodes
# (--redis-cluster); pushes use sharded pub/sub.
#
# With BACKEND=nats, a nats-server with JetStream (127.0.0.1:4290, store under run/) carries
# the pushes (--nats), and Redis keeps the sessions and the online count as with redis.
#
# Everything it creates (pid files, logs, data dirs, nginx scratch) goes under
# examples/cluster/run/. Stop it all with stop.sh.
#
# Environment:
#   BACKEND                   redis (default), sentinel, cluster or nats
#   REDIS_URL                 use this Redis instead of starting one on 6390 (BACKEND=redis, nats)
#   SESSIONHUB_REDIS_PREFIX   key/channel prefix (default sessionhub:), read by the nodes
#   SESSIONHUB_BIN            run this sessionhub binary instead of building one
#   CARGO_TARGET_DIR          where cargo puts the binary (default <repo>/target)
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
run="$here/run"
redis_port=6390
replica_port=6391
sentinel_ports=(26390 26391 26392)
cluster_ports=(7001 7002 7003 7004 7005 7006)
master_name=sessionhub
nats_port=4290
nodes=(node-a:8081 node-b:8082 node-c:8083)
backend="${BACKEND:-redis}"
case "$backend" in
  redis | sentinel | cluster | nats) ;;
  *) echo "start.sh: BACKEND must be redis, sentinel, cluster or nats, not $backend" >&2; exit 1 ;;
esac
proxy_port=8080

die() { echo "start.sh: $*" >&2; exit 1; }

# Whether something accepts connections on 127.0.0.1:<port>.
listening() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# Whether the pid in file $1 is a live process whose command line contains $2.
alive() {
  local pid
  [ -f "$1" ] || return 1
  pid="$(cat "$1" 2>/dev/null)" || return 1
  [ -n "$pid" ] && [ -r "/proc/$pid/cmdline" ] && tr '\0' ' ' <"/proc/$pid/cmdline" | grep -q -- "$2"
}

# Polls command "$@" for up to 10 s.
wait_for() {
  local what="$1"; shift
  for _ in $(seq 1 100); do
    if "$@" >/dev/null 2>&1; then return 0; fi
    sleep 0.1
  done
  die "$what did not come up; see the logs in $run/"
}

for tool in curl nginx; do
  command -v "$tool" >/dev/null 2>&1 || die "$tool not found (nginx: apt-get install nginx)"
done
if [ "$backend" != redis ] && [ "$backend" != nats ] && [ -n "${REDIS_URL:-}" ]; then
  die "REDIS_URL is for BACKEND=redis or nats; BACKEND=$backend starts its own servers"
fi
if [ -z "${REDIS_URL:-}" ]; then
  command -v redis-server >/dev/null 2>&1 || die "redis-server not found (apt-get install redis-server), or set REDIS_URL"
fi
if [ "$backend" = nats ]; then
  command -v nats-server >/dev/null 2>&1 || die "nats-server not found (apt-get install nats-server)"
fi

mkdir -p "$run"
# If anything fails after the first process started, take everything down again.
started=0
trap 'rc=$?; if [ "$rc" -ne 0 ] && [ "$started" = 1 ]; then echo "start.sh: stopping what was started" >&2; "$here/stop.sh" >&2; fi' EXIT
for f in "$run"/*.pid; do
  [ -e "$f" ] || continue
  if alive "$f" "sessionhub\|redis-server\|nats-server\|nginx"; then
    die "already running ($(basename "$f")); run $here/stop.sh first"
  fi
  rm -f "$f"
done

ports=("$proxy_port")
for n in "${nodes[@]}"; do ports+=("${n#*:}"); done
case "$backend" in
  redis) [ -n "${REDIS_URL:-}" ] || ports+=("$redis_port") ;;
  sentinel) ports+=("$redis_port" "$replica_port" "${sentinel_ports[@]}") ;;
  cluster) for p in "${cluster_ports[@]}"; do ports+=("$p" "$((p + 10000))"); done ;;
  nats) [ -n "${REDIS_URL:-}" ] || ports+=("$redis_port"); ports+=("$nats_port") ;;
esac
for port in "${ports[@]}"; do
  if listening "$port"; then die "port $port is taken (ss -ltnp 'sport = :$port')"; fi
done

if [ -n "${SESSIONHUB_BIN:-}" ]; then
  binary="$SESSIONHUB_BIN"
else
  command -v cargo >/dev/null 2>&1 || die "cargo not found: install Rust from rustup.rs"
  echo "building the release binary..."
  (cd "$root" && cargo build --release --locked -p sessionhub-server)
  binary="${CARGO_TARGET_DIR:-$root/target}/release/sessionhub"
fi
[ -x "$binary" ] || die "no executable at $binary"

# Starts redis-server with the config lines in $2 (one per line), logging to run/$1.log.
start_redis() {
  local name="$1" conf="$run/$1.conf"
  printf '%s\n' "$2" >"$conf"
  started=1
  nohup redis-server "$conf" ${3:-} >"$run/$name.log" 2>&1 &
  echo $! >"$run/$name.pid"
}

redis_args=()
if [ "$backend" = cluster ]; then
  # A new cluster each time: a node that finds its old view of the cluster, or the data a
  # replica was sent, refuses to join a new one.
  rm -f "$run"/cluster-*.nodes.conf "$run"/cluster-*.rdb
  seeds=()
  for port in "${cluster_ports[@]}"; do
    echo "starting a cluster node on 127.0.0.1:$port"
    start_redis "cluster-$port" "port $port
bind 127.0.0.1
dir $run
dbfilename cluster-$port.rdb
cluster-enabled yes
cluster-config-file cluster-$port.nodes.conf
cluster-node-timeout 2000
save \"\"
appendonly no"
    seeds+=("127.0.0.1:$port")
  done
  for port in "${cluster_ports[@]}"; do
    wait_for "the cluster node on $port" listening "$port"
  done
  echo "joining them: 3 primaries, a replica each"
  redis-cli --cluster create "${seeds[@]}" --cluster-replicas 1 --cluster-yes >"$run/cluster-create.log" 2>&1 ||
    die "redis-cli --cluster create failed; see $run/cluster-create.log"
  cluster_ok() { redis-cli -p "${cluster_ports[0]}" CLUSTER INFO | grep -q 'cluster_state:ok'; }
  wait_for "the Redis Cluster" cluster_ok
  redis_args=(--redis-cluster "$(IFS=,; echo "${seeds[*]}")")
  redis_shown="the Redis Cluster on ${cluster_ports[*]}"
elif [ "$backend" = sentinel ]; then
  data="bind 127.0.0.1
dir $run
save \"\"
appendonly no
repl-diskless-sync-delay 0"
  echo "starting the primary on 127.0.0.1:$redis_port and a replica on 127.0.0.1:$replica_port"
  start_redis redis "port $redis_port
$data"
  wait_for "redis-server" listening "$redis_port"
  start_redis replica "port $replica_port
$data
replicaof 127.0.0.1 $redis_port"
  wait_for "the replica" listening "$replica_port"
  sentinels=()
  for port in "${sentinel_ports[@]}"; do
    echo "starting a sentinel on 127.0.0.1:$port"
    # A file of its own: a sentinel rewrites its config as it learns the deployment.
    start_redis "sentinel-$port" "port $port
bind 127.0.0.1
dir $run
sentinel resolve-hostnames no
sentinel monitor $master_name 127.0.0.1 $redis_port 2
sentinel down-after-milliseconds $master_name 2000
sentinel failover-timeout $master_name 10000" --sentinel
    sentinels+=("127.0.0.1:$port")
  done
  for port in "${sentinel_ports[@]}"; do
    wait_for "the sentinel on $port" listening "$port"
  done
  redis_args=(--redis-sentinel "$(IFS=,; echo "${sentinels[*]}")" --redis-sentinel-master "$master_name")
  redis_shown="the primary the Sentinels on ${sentinel_ports[*]} name ($master_name)"
else
  if [ -z "${REDIS_URL:-}" ]; then
    REDIS_URL="redis://127.0.0.1:$redis_port"
    echo "starting redis-server on 127.0.0.1:$redis_port"
    start_redis redis "port $redis_port
bind 127.0.0.1
dir $run
save \"\"
appendonly no"
    wait_for "redis-server" listening "$redis_port"
  fi
  redis_args=(--redis "$REDIS_URL")
  # The URL may carry a password: show it only if it does not.
  case "$REDIS_URL" in *@*) redis_shown="(from REDIS_URL)" ;; *) redis_shown="$REDIS_URL" ;; esac
fi

if [ "$backend" = nats ]; then
  echo "starting nats-server (JetStream) on 127.0.0.1:$nats_port"
  started=1
  nohup nats-server --addr 127.0.0.1 --port "$nats_port" --jetstream --store_dir "$run/nats" \
    >"$run/nats.log" 2>&1 &
  echo $! >"$run/nats.pid"
  wait_for "nats-server" listening "$nats_port"
  redis_args+=(--nats "nats://127.0.0.1:$nats_port")
  redis_shown="$redis_shown, pushes through NATS on 127.0.0.1:$nats_port"
fi

for n in "${nodes[@]}"; do
  id="${n%%:*}"
  port="${n#*:}"
  echo "starting $id on 127.0.0.1:$port"
  started=1
  nohup "$binary" serve \
    --listen "127.0.0.1:$port" \
    --node-id "$id" \
    --data-dir "$run/$id" \
    "${redis_args[@]}" \
    --trusted-proxies 127.0.0.1 \
    >"$run/$id.log" 2>&1 &
  echo $! >"$run/$id.pid"
done
for n in "${nodes[@]}"; do
  wait_for "${n%%:*}" curl -fsS "http://127.0.0.1:${n#*:}/readyz"
done

echo "starting nginx on 127.0.0.1:$proxy_port"
nginx -p "$run" -c "$here/nginx.conf" -e "$run/nginx-error.log"
wait_for "nginx" curl -fsS "http://127.0.0.1:$proxy_port/readyz"

cat <<EOF

cluster up: nginx http://127.0.0.1:$proxy_port -> nodes 8081 8082 8083, Redis $redis_shown
logs and pids in $run/

  curl -si -c /tmp/jar -b /tmp/jar 'http://127.0.0.1:$proxy_port/login?username=alice'
  curl -si -c /tmp/jar -b /tmp/jar  http://127.0.0.1:$proxy_port/get-session
  curl -s http://127.0.0.1:$proxy_port/api/online

stop everything with: $here/stop.sh
EOF
