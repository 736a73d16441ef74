#!/usr/bin/env bash
# Runs the whole test suite on a fresh machine: installs what the tests need, then runs every
# test. The tests start their own redis-server and nats-server on free ports (never 6379 or
# 4222) and real sessionhub processes; the browser test drives Debian's Chromium with playwright-core from npm
# (playwright never downloads a browser of its own).
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v redis-server >/dev/null 2>&1 || need_apt+=(redis-server)
command -v nats-server >/dev/null 2>&1 || need_apt+=(nats-server)
[ -x /usr/bin/chromium ] || need_apt+=(chromium)
# The SSE test runs nginx with examples/cluster/nginx.conf.
command -v nginx >/dev/null 2>&1 || need_apt+=(nginx)
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "installing: ${need_apt[*]}"
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  export DEBIAN_FRONTEND=noninteractive
  $sudo apt-get update -qq
  $sudo apt-get install -y -qq "${need_apt[@]}"
fi
command -v cargo >/dev/null 2>&1 || { echo "cargo not found: install Rust from rustup.rs" >&2; exit 1; }
command -v npm >/dev/null 2>&1 || { echo "npm not found: install Node.js 20+ for the browser test" >&2; exit 1; }

browser_dir=crates/sessionhub-server/tests/browser
if [ ! -d "$browser_dir/node_modules/playwright-core" ]; then
  (cd "$browser_dir" && PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm ci --no-audit --no-fund)
fi

# The Pusher SDK test (tests/pusher_http.rs) drives the `pusher` npm package and makes its own
# Python venv under target/ for the `pusher` PyPI package.
pusher_dir=crates/sessionhub-server/tests/pusher
if [ ! -d "$pusher_dir/node_modules/pusher" ]; then
  (cd "$pusher_dir" && npm ci --no-audit --no-fund)
fi
if ! python3 -c 'import venv, ensurepip' >/dev/null 2>&1; then
  echo "installing: python3-venv"
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq python3-venv
fi

cargo test --workspace --locked "$@"
