#!/usr/bin/env bash
# Conformance against an independent implementation: an unmodified, pinned Baileys 7 (a WhatsApp
# Web client library from npm) as a WhatsApp-side user of the simulator, next to interop-client
# behind the proxy (interop-local: the proxy with the simulator and the partner server
# in-process). Nothing fetched is committed: the packages go to a cache under target/.
#
#   conformance/run.sh            # builds the release binaries, installs Baileys, runs the checks
#   PROFILE=debug conformance/run.sh   # uses target/debug (faster to build while developing)
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"

BAILEYS_VERSION="7.0.0-rc14"
PINO_VERSION="9.14.0"
PROFILE="${PROFILE:-release}"
CACHE="${CONFORMANCE_NPM_CACHE:-$root/target/conformance-npm}"

command -v node >/dev/null || { echo "conformance: node (>= 20) is required" >&2; exit 2; }
command -v npm >/dev/null || { echo "conformance: npm is required" >&2; exit 2; }

if [ "$PROFILE" = release ]; then
  cargo build --release --bin interop-local --bin interop-client
else
  cargo build --bin interop-local --bin interop-client
fi

mkdir -p "$CACHE"
want="@whiskeysockets/baileys@$BAILEYS_VERSION pino@$PINO_VERSION"
if [ "$(cat "$CACHE/.installed" 2>/dev/null)" != "$want" ]; then
  [ -f "$CACHE/package.json" ] || echo '{"name":"conformance-cache","private":true}' > "$CACHE/package.json"
  # Unmodified packages from the registry, exact versions; install scripts are not run.
  (cd "$CACHE" && npm install --no-audit --no-fund --ignore-scripts --save-exact \
    "@whiskeysockets/baileys@$BAILEYS_VERSION" "pino@$PINO_VERSION")
  echo "$want" > "$CACHE/.installed"
fi

export CONFORMANCE_NODE_MODULES="$CACHE/node_modules"
export CONFORMANCE_BIN="$root/target/$PROFILE"
start=$(date +%s)
node --test --test-concurrency=1 "$root/conformance/baileys.test.mjs"
echo "conformance: passed in $(( $(date +%s) - start )) s (Baileys $BAILEYS_VERSION)"
