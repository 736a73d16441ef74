#!/usr/bin/env bash
# Builds the Debian package with cargo-deb, installs it on this machine with dpkg, checks the
# systemd unit with `systemd-analyze verify`, starts the installed binary the way the unit
# does (its ExecStart and Environment, as an unprivileged user, with a state directory of
# its own), waits for /readyz, and purges the package again. Run by CI (.ci/run).
set -euo pipefail
cd "$(dirname "$0")/.."

sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
command -v cargo-deb >/dev/null 2>&1 || cargo install cargo-deb --locked
need_apt=()
command -v systemd-analyze >/dev/null 2>&1 || need_apt+=(systemd)
command -v curl >/dev/null 2>&1 || need_apt+=(curl)
if [ ${#need_apt[@]} -gt 0 ]; then
  export DEBIAN_FRONTEND=noninteractive
  $sudo apt-get update -qq && $sudo apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

# The container files cannot be built here (no container engine): lint them.
python3 -c 'import yaml' 2>/dev/null || pip install -q pyyaml
python3 scripts/lint-containers.py

deb=$(cargo deb -p sessionhub-server --locked | tail -1)
echo "built $deb"
STATE=$(mktemp -d /tmp/sessionhub-package.XXXXXX)
PID=""
cleanup() {
  [ -z "$PID" ] || kill "$PID" 2>/dev/null || true
  $sudo dpkg --purge sessionhub >/dev/null 2>&1 || true
  rm -rf "$STATE"
}
trap cleanup EXIT
$sudo dpkg -i "$deb" >/dev/null

fail() { echo "package test: $*" >&2; exit 1; }
unit=$(dpkg -L sessionhub | grep -E '/systemd/system/sessionhub\.service$') || fail "no systemd unit installed"
[ -x /usr/bin/sessionhub ] || fail "no /usr/bin/sessionhub"
dpkg-query -W -f='${Conffiles}\n' sessionhub | grep -q ' /etc/sessionhub/sessionhub.toml ' \
  || fail "/etc/sessionhub/sessionhub.toml is not a conffile"
/usr/bin/sessionhub --version
# It exits 0 for a directive it ignores, with a line saying so: any output is a failure.
complaints=$(systemd-analyze verify "$unit" 2>&1) || fail "systemd-analyze verify $unit: $complaints"
[ -z "$complaints" ] || fail "systemd-analyze verify $unit: $complaints"

# The unit's command and environment, as systemd would run them.
exec_start=$(sed -n 's/^ExecStart=//p' "$unit")
mapfile -t unit_env < <(sed -n 's/^Environment=//p' "$unit")
# StateDirectory= becomes /var/lib/sessionhub, owned by the dynamic user: here a directory of
# our own, owned by nobody, in its place.
chown nobody "$STATE"
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
# The packaged config listens on 127.0.0.1:8080, which this machine may use: only the port
# moves (the environment beats the file, as documented).
env -i PATH=/usr/bin:/bin "${unit_env[@]}" SESSIONHUB_DATA_DIR="$STATE" \
  SESSIONHUB_LISTEN="127.0.0.1:$port" \
  setpriv --reuid=nobody --regid=nogroup --clear-groups $exec_start >"$STATE.log" 2>&1 &
PID=$!
for _ in $(seq 1 100); do
  if curl -sf -o /dev/null "http://127.0.0.1:$port/readyz"; then
    echo "package test: the installed sessionhub is ready on port $port"
    kill -TERM "$PID"; wait "$PID" || fail "it did not stop cleanly on SIGTERM: $(tail -5 "$STATE.log")"
    PID=""
    grep -q '"version"' "$STATE.log" || fail "its JSON log does not name its version"
    rm -f "$STATE.log"
    exit 0
  fi
  kill -0 "$PID" 2>/dev/null || break
  sleep 0.2
done
cat "$STATE.log" >&2
fail "the installed sessionhub did not become ready"
