#!/usr/bin/env bash
# deploy/prod-config-smoke.sh: the shipped production configuration, started as an operator would.
#
# config/proxy.toml is copied with ONLY its addresses, keys and CA replaced for loopback (sed on
# the copy; the diff is printed), against the chatd simulator and the partner server as separate
# processes, both on HTTPS with certificates from a throwaway local CA. Then one Partner user
# enlists (HTTPS to both), logs in through the proxy (whose JWKS fetch is HTTPS), and the proxy's
# metrics must show the login forwarded, chatd's acceptance, and no JWKS TLS failure.
#
# Binaries from BIN_DIR (default target/release): interop-proxy, chatd-sim, partner-server,
# interop-client, and interop-local for the throwaway CA (gen-local-ca). Loopback ports: SMOKE_EDGE_PORT (35222), SMOKE_ADMIN_PORT (39090).
set -euo pipefail
cd "$(dirname "$0")/.."
BIN_DIR=${BIN_DIR:-target/release}
EDGE_PORT=${SMOKE_EDGE_PORT:-35222}
ADMIN_PORT=${SMOKE_ADMIN_PORT:-39090}
TMP=$(mktemp -d -t prod-config-smoke.XXXXXX)
PIDS=()

cleanup() {
    local pid
    for pid in "${PIDS[@]}"; do
        kill -TERM "$pid" 2>/dev/null || true
    done
    # The proxy drains over [drain] window_secs (30 s as shipped); a second SIGTERM stops it now.
    sleep 0.3
    for pid in "${PIDS[@]}"; do
        kill -TERM "$pid" 2>/dev/null || true
    done
    for pid in "${PIDS[@]}"; do
        wait "$pid" 2>/dev/null || true
    done
    rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
log() { echo "prod-config-smoke: $*" >&2; }
fail() {
    log "FAILED: $*"
    for f in "$TMP"/*.log; do
        [[ -f $f ]] && { echo "---- $f" >&2; tail -n 30 "$f" >&2; }
    done
    exit 1
}

for b in interop-proxy chatd-sim partner-server interop-client interop-local; do
    [[ -x $BIN_DIR/$b ]] || fail "$BIN_DIR/$b missing (cargo build --release -p proxy -p chatd-sim -p partner-server -p client -p local-world)"
done

# 1. A local CA and loopback certificates for the two HTTPS servers (production: the PKI's).
"$BIN_DIR/interop-local" gen-local-ca --out "$TMP/pki" --cert partner --cert chatd-sim >/dev/null
CA=$TMP/pki/ca.pem

# wait_line FILE PREFIX: the rest of the first line of FILE starting with PREFIX (30 s bound).
wait_line() {
    local i line
    for ((i = 0; i < 300; i++)); do
        line=$(grep -m1 "^$2" "$1" 2>/dev/null || true)
        [[ -n $line ]] && { echo "${line#"$2"}"; return 0; }
        sleep 0.1
    done
    fail "no '$2' line in $1"
}

# 2. The partner server over HTTPS.
cat >"$TMP/partner-server.toml" <<EOF
listen = "127.0.0.1:0"
audience = "whatsapp"
[tls]
cert = "$TMP/pki/partner.pem"
key = "$TMP/pki/partner.key"
EOF
"$BIN_DIR/partner-server" --config "$TMP/partner-server.toml" >"$TMP/partner.out" 2>"$TMP/partner.log" &
PIDS+=($!)
PARTNER=$(wait_line "$TMP/partner.out" "base_url: ")
JWKS=$(wait_line "$TMP/partner.out" "jwks_url: ")
[[ $PARTNER == https://* ]] || fail "partner server is not on HTTPS: $PARTNER"
log "partner server at $PARTNER"

# 3. The chatd simulator: its HTTP side on HTTPS, trusting the CA for the Partner's JWKS.
cat >"$TMP/chatd-sim.toml" <<EOF
[chat]
listen = "127.0.0.1:0"
[http]
listen = "127.0.0.1:0"
partner_ca_file = "$CA"
[http.tls]
cert = "$TMP/pki/chatd-sim.pem"
key = "$TMP/pki/chatd-sim.key"
[[integrators]]
id = 1
base_url = "$PARTNER"
issuer = "$PARTNER"
audience = "whatsapp"
EOF
"$BIN_DIR/chatd-sim" --config "$TMP/chatd-sim.toml" >"$TMP/sim.out" 2>"$TMP/sim.log" &
PIDS+=($!)
CHAT=$(wait_line "$TMP/sim.out" "chat_addr=")
SIM=$(wait_line "$TMP/sim.out" "http_url=")
ROOT=$(wait_line "$TMP/sim.out" "root_public_key=")
[[ $SIM == https://* ]] || fail "simulator is not on HTTPS: $SIM"
log "chatd simulator: chat $CHAT, https $SIM"

# 4. config/proxy.toml as shipped, with only addresses, keys and the CA replaced.
cp config/proxy.toml "$TMP/proxy.toml"
sed -i \
    -e "s|^listen = \"0.0.0.0:5222\"|listen = \"127.0.0.1:$EDGE_PORT\"|" \
    -e "s|^addr = \"g.whatsapp.net:5222\"|addr = \"$CHAT\"|" \
    -e "s|^# root_public_key = \"[0-9a-f]*\"|root_public_key = \"$ROOT\"|" \
    -e "s|^jwks_url = \"https://partner.example/.well-known/oauth/openid/jwks\"|jwks_url = \"$JWKS\"|" \
    -e "s|^# jwks_ca_file = \".*\"|jwks_ca_file = \"$CA\"|" \
    -e "s|^issuer = \"https://partner.example\"|issuer = \"$PARTNER\"|" \
    -e "s|^listen = \"127.0.0.1:9090\"|listen = \"127.0.0.1:$ADMIN_PORT\"|" \
    "$TMP/proxy.toml"
log "config/proxy.toml, as edited for loopback:"
diff config/proxy.toml "$TMP/proxy.toml" >&2 || true
# Every edit must have landed, and nothing else may differ.
changed=$(diff config/proxy.toml "$TMP/proxy.toml" | grep -c '^>' || true)
[[ $changed == 7 ]] || fail "expected 7 edited lines in the copy of config/proxy.toml, got $changed"
"$BIN_DIR/interop-proxy" check-config --config "$TMP/proxy.toml" >/dev/null || fail "check-config refused the copy"

"$BIN_DIR/interop-proxy" --config "$TMP/proxy.toml" >"$TMP/proxy.out" 2>"$TMP/proxy.log" &
PIDS+=($!)
wait_line "$TMP/proxy.out" "clients connect to   tcp://" >/dev/null
log "interop-proxy started on config/proxy.toml: edge 127.0.0.1:$EDGE_PORT, admin 127.0.0.1:$ADMIN_PORT"

# 5. One Partner user enlists (HTTPS) and logs in through the proxy.
"$BIN_DIR/interop-client" --state "$TMP/alice" --ca-file "$CA" \
    enlist --user alice --partner "$PARTNER" --chatd "$SIM" >"$TMP/enlist.out" 2>"$TMP/client.log" ||
    fail "enlistment over HTTPS"
JID=$(sed -n 's/^enlisted: //p' "$TMP/enlist.out")
"$BIN_DIR/interop-client" --state "$TMP/alice" --proxy "127.0.0.1:$EDGE_PORT" login >"$TMP/login.out" 2>>"$TMP/client.log" ||
    fail "login through the proxy"
grep -q "$JID" "$TMP/login.out" || fail "login did not report $JID"

metrics=$(curl -fsS --max-time 3 "http://127.0.0.1:$ADMIN_PORT/metrics") || fail "metrics"
grep -q '^waproxy_logins_total{result="forwarded"} 1$' <<<"$metrics" || fail "the proxy did not count the login: $(grep logins_total <<<"$metrics")"
grep -q '^waproxy_upstream_logins_total{result="accepted"} 1$' <<<"$metrics" || fail "chatd did not accept the login"
grep -q '^waproxy_jwks_refreshes_total [1-9]' <<<"$metrics" || fail "no JWKS fetch counted"
grep -q '^waproxy_jwks_tls_failures_total 0$' <<<"$metrics" || fail "JWKS TLS failures counted"
log "ok: $JID logged in through interop-proxy on config/proxy.toml (JWKS over HTTPS, partner and simulator on HTTPS)"
