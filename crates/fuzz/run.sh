#!/usr/bin/env bash
# Runs every fuzz target for a bounded time and fails on any crash, timeout or memory blow-up.
# Needs a nightly toolchain and cargo-fuzz (installed here if missing).
#   crates/fuzz/run.sh [seconds-per-target] [target ...]     (default: 60 s, every target)
#   FUZZ_RUNS=10000000 crates/fuzz/run.sh 3600 handshake     (stop at N executions, time as a cap)
set -euo pipefail
cd "$(dirname "$0")/../.."
secs="${1:-60}"
shift || true
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  targets=(decode_payload frame_codec edge_login login_compressed proxy_header handshake cert_chain ws_stream)
fi
command -v cargo-fuzz >/dev/null || cargo +stable install cargo-fuzz --locked
status=0
for target in "${targets[@]}"; do
  mkdir -p "crates/fuzz/corpus/$target" "crates/fuzz/seeds/$target"
  log="crates/fuzz/$target.log"
  # The login parser's budget is 64 KiB inflated plus a small arena: any single allocation of
  # 1 MiB or more while parsing a login is a failure.
  extra=()
  [ "$target" = login_compressed ] && extra=(-malloc_limit_mb=1)
  echo "== $target (${secs}s)"
  if cargo +nightly fuzz run --fuzz-dir crates/fuzz "$target" "crates/fuzz/corpus/$target" "crates/fuzz/seeds/$target" -- \
      -max_total_time="$secs" ${FUZZ_RUNS:+-runs=$FUZZ_RUNS} -rss_limit_mb=2048 -timeout=10 -max_len=4096 "${extra[@]}" >"$log" 2>&1; then
    grep -E '^Done' "$log" || true
  else
    echo "FAILED: see $log and crates/fuzz/artifacts/$target/"; status=1
  fi
done
exit $status
