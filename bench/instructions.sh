#!/usr/bin/env bash
# Instructions the sidecar executes per proxied request, counted by callgrind: a
# deterministic figure (unlike wall time or CPU time on a shared box) for comparing two
# builds of the request path. Runs the release binary under valgrind against a canned
# loopback upstream (nginx), sends N1 and then N2 requests with `hey` in two separate runs,
# and reports (Ir(N2) - Ir(N1)) / (N2 - N1), so start-up and shutdown cancel out.
#
#   bash bench/instructions.sh                        # 70-byte chat request
#   BODY_BYTES=4096 bash bench/instructions.sh        # a ~4 KB prompt
#   STREAM=1 bash bench/instructions.sh               # a streamed answer (two chunks, [DONE])
#   BIN=/path/to/detour-sidecar bash bench/instructions.sh
#   KEEP=/tmp/cg bash bench/instructions.sh          # keep the callgrind files (callgrind_annotate)
#   OPENAI_HEADERS=1 bash bench/instructions.sh       # the upstream's answers carry the request id
#                                                    # and six rate-limit headers, as OpenAI's do
#
# Needs valgrind, hey and nginx-light (Debian; installed if missing) and python3. Listens on
# 127.0.0.1 only; stops every process it starts by PID.
set -euo pipefail
cd "$(dirname "$0")/.."
N1=${N1:-500}
N2=${N2:-2500}
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/detour/target}"
command -v python3 >/dev/null || { echo "missing python3"; exit 1; }
. bench/lib.sh
need valgrind:valgrind hey:hey nginx:nginx-light
if [ -z "${BIN:-}" ]; then
  cargo build -q --release -p detour-sidecar --bins
  BIN="$CARGO_TARGET_DIR/release/detour-sidecar"
fi

work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT
UP=$(free_port); SC=$(free_port); AD=$(free_port)

reply=$BENCH_REPLY
# OpenAI answers with its request id and six rate-limit headers, which the sidecar passes on.
extra=""
if [ "${OPENAI_HEADERS:-0}" = 1 ]; then
  extra="add_header x-request-id req_0123456789abcdef0123456789abcdef;
    add_header x-ratelimit-limit-requests 10000; add_header x-ratelimit-limit-tokens 2000000;
    add_header x-ratelimit-remaining-requests 9999; add_header x-ratelimit-remaining-tokens 1999950;
    add_header x-ratelimit-reset-requests 6ms; add_header x-ratelimit-reset-tokens 1ms;"
fi
mkdir -p "$work/up"
cat > "$work/up/nginx.conf" <<CONF
worker_processes 1;
master_process off;
daemon off;
pid $work/up/nginx.pid;
error_log $work/up/error.log warn;
events { worker_connections 1024; }
http {
  access_log off;
  client_body_temp_path $work/up/body;
  keepalive_requests 1000000;
  server { listen 127.0.0.1:$UP;
    $extra
    location /s/ { default_type text/event-stream; return 200 '$BENCH_SSE'; }
    location / { default_type application/json; return 200 '$reply'; } }
}
CONF
nginx -c "$work/up/nginx.conf" -e "$work/up/error.log" & pids+=($!)

prefix=""
[ "${STREAM:-0}" = 1 ] && prefix="/s"
cat > "$work/routes.yaml" <<YAML
apiVersion: detour.dev/v1alpha1
kind: RoutingPolicy
metadata: {name: bench}
spec:
  retry: {attempts: 1}
---
apiVersion: detour.dev/v1alpha1
kind: ModelRoute
metadata: {name: fast}
spec:
  model: bench/fast
  policyRef: {name: bench}
  targets:
    - {name: up, provider: openai-compatible, model: up, endpoint: "http://127.0.0.1:$UP$prefix/v1"}
YAML
python3 - "${BODY_BYTES:-0}" "${STREAM:-0}" > "$work/body.json" <<'PY'
import json, sys
size = int(sys.argv[1])
stream = sys.argv[2] == "1"
text = "Say hello."
if size > 0:
    text = ("Explain the trade-offs of consistent hashing in distributed caches. " * (size // 68 + 1))[:size]
body = {"model": "bench/fast", "messages": [{"role": "user", "content": text}]}
if stream:
    body["stream"] = True
print(json.dumps(body))
PY

count() { # requests -> total instructions of one sidecar run
  local n=$1
  valgrind --tool=callgrind --callgrind-out-file="$work/cg.$n" "$BIN" --routes "$work/routes.yaml" \
    --listen "127.0.0.1:$SC" --admin-listen "127.0.0.1:$AD" >/dev/null 2>"$work/vg.$n" &
  local vg=$!
  for _ in $(seq 150); do
    curl -fs "http://127.0.0.1:$AD/readyz" >/dev/null 2>&1 && break
    sleep 0.2
  done
  hey -n "$n" -c 8 -m POST -T application/json -D "$work/body.json" \
    "http://127.0.0.1:$SC/v1/chat/completions" > "$work/hey.$n"
  grep -q '\[200\]' "$work/hey.$n" || { echo "requests failed:"; cat "$work/hey.$n"; exit 1; }
  kill -TERM "$vg"
  wait "$vg" 2>/dev/null || true
  [ -z "${KEEP:-}" ] || { mkdir -p "$KEEP"; cp "$work/cg.$n" "$KEEP/"; }
  callgrind_annotate "$work/cg.$n" 2>/dev/null | awk '/PROGRAM TOTALS/ {gsub(",", "", $1); print $1}'
}
a=$(count "$N1")
b=$(count "$N2")
kind=""
[ "${STREAM:-0}" = 1 ] && kind=", streamed"
python3 -c "print(f'instructions per request: {($b - $a) / ($N2 - $N1):,.0f}  (body: $(wc -c < "$work/body.json") bytes$kind; callgrind, {$N2} - {$N1} requests)')"
