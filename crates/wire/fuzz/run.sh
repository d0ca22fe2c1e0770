#!/usr/bin/env bash
# Runs every fuzz target of the wire crate for a bounded time and fails on any crash, timeout or
# memory blow-up. Needs a nightly toolchain and cargo-fuzz (installed here if missing).
#   crates/wire/fuzz/run.sh [seconds-per-target]   (default 60)
set -euo pipefail
cd "$(dirname "$0")/.."
secs="${1:-60}"
command -v cargo-fuzz >/dev/null || cargo +stable install cargo-fuzz --locked
status=0
for target in decode_payload frame_codec; do
  mkdir -p "fuzz/corpus/$target"
  log="fuzz/$target.log"
  echo "== $target (${secs}s)"
  if cargo +nightly fuzz run "$target" "fuzz/corpus/$target" "fuzz/seeds/$target" -- \
      -max_total_time="$secs" -rss_limit_mb=2048 -timeout=10 -max_len=4096 >"$log" 2>&1; then
    grep -E '^Done' "$log" || true
  else
    echo "FAILED: see $log and fuzz/artifacts/$target/"; status=1
  fi
done
exit $status
