#!/usr/bin/env bash
# Runs every cargo-fuzz target (or the ones named) for a fixed number of executions each.
# Not part of the test suite: it needs libFuzzer, and takes minutes.
#
#   scripts/fuzz.sh                      # every target, FUZZ_RUNS executions each
#   FUZZ_RUNS=1000000 scripts/fuzz.sh token
#
# FUZZ_RUNS      executions per target (default 200000)
# FUZZ_ARGS      extra libFuzzer flags, e.g. "-max_len=8192 -jobs=4"
# FUZZ_SANITIZER address (default) or none (faster; the crate forbids unsafe code)
#
# The seed corpus (fuzz/corpus/<target>, committed) is only read; what the fuzzer finds is
# kept in fuzz/generated/<target> (ignored by git) and reused by the next run. A crash is
# saved to fuzz/artifacts/<target>/ and makes this script exit non-zero; see fuzz/README.md.
set -euo pipefail
cd "$(dirname "$0")/.."

runs="${FUZZ_RUNS:-200000}"
sanitizer="${FUZZ_SANITIZER:-address}"
# cargo-fuzz passes nightly-only flags (-Zsanitizer, sancov); this lets a stable toolchain
# take them.
export RUSTC_BOOTSTRAP=1

command -v cargo >/dev/null 2>&1 || { echo "cargo not found: install Rust from rustup.rs" >&2; exit 1; }
if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "installing cargo-fuzz"
  cargo install cargo-fuzz --locked
fi

if [ $# -gt 0 ]; then
  targets=("$@")
else
  mapfile -t targets < <(cargo fuzz list)
fi

cargo fuzz build --sanitizer "$sanitizer"

failed=()
for target in "${targets[@]}"; do
  echo "=== $target: $runs executions"
  mkdir -p "fuzz/generated/$target" "fuzz/artifacts/$target"
  # shellcheck disable=SC2086 # FUZZ_ARGS is a list of flags
  if ! cargo fuzz run --sanitizer "$sanitizer" "$target" \
    "fuzz/generated/$target" "fuzz/corpus/$target" -- \
    -runs="$runs" -print_final_stats=1 ${FUZZ_ARGS:-}; then
    failed+=("$target")
  fi
done

if [ ${#failed[@]} -gt 0 ]; then
  echo "fuzzing found crashes in: ${failed[*]} (inputs in fuzz/artifacts/)" >&2
  exit 1
fi
echo "fuzzing passed: ${targets[*]} ($runs executions each)"
