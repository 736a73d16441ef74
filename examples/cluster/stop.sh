#!/usr/bin/env bash
# Stops what start.sh started, by the pids it recorded under examples/cluster/run/:
# the nodes first (SIGTERM: each closes its sockets with 1001, which nginx passes on to the
# clients, and withdraws its presence snapshot while Redis is still there), then nginx,
# then NATS and Redis.
# Safe to run twice; a pid that now belongs to some other program is left alone.
set -uo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
run="$here/run"

# Whether pid $1 is still running (a zombie waiting to be reaped counts as stopped).
running() {
  local state
  state="$(sed 's/.*) //' "/proc/$1/stat" 2>/dev/null | cut -d' ' -f1)" || return 1
  [ -n "$state" ] && [ "$state" != Z ]
}

# Stops the process in pid file $1 if its command line contains $2; $3 is the signal.
stop() {
  local file="$1" expect="$2" signal="$3" name pid
  name="$(basename "$file" .pid)"
  [ -f "$file" ] || return 0
  pid="$(cat "$file" 2>/dev/null)"
  if [ -z "$pid" ] || ! [ -r "/proc/$pid/cmdline" ] ||
    ! tr '\0' ' ' <"/proc/$pid/cmdline" | grep -q -- "$expect"; then
    echo "$name: not running"
    rm -f "$file"
    return 0
  fi
  kill "-$signal" "$pid" 2>/dev/null
  for _ in $(seq 1 150); do
    running "$pid" || break
    sleep 0.1
  done
  if running "$pid"; then
    echo "$name: still running after 15 s, sending SIGKILL"
    kill -KILL "$pid" 2>/dev/null
  else
    echo "$name: stopped"
  fi
  rm -f "$file"
}

for id in node-a node-b node-c; do
  stop "$run/$id.pid" sessionhub TERM &
done
wait
# QUIT is nginx's graceful shutdown.
stop "$run/nginx.pid" nginx QUIT
for f in "$run"/sentinel-*.pid "$run"/cluster-*.pid; do
  [ -e "$f" ] && stop "$f" redis-server TERM
done
stop "$run/nats.pid" nats-server TERM
stop "$run/replica.pid" redis-server TERM
stop "$run/redis.pid" redis-server TERM
