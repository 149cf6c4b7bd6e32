#!/usr/bin/env bash
# Benchmark: direct vs through nginx (one L7 hop, the honest reference) vs through
# detour-sidecar, against one fast loopback upstream (nginx answering a canned
# chat.completion). See docs/benchmarks.md for how to read the numbers.
#
#   bash bench/run.sh                 # builds the release binary, 3 runs x 5 s per case
#   RUNS=5 DURATION=10 bash bench/run.sh
#   SIDECAR_ARGS="--worker-threads 2" bash bench/run.sh   # extra flags for the sidecar
#   BIN=/path/to/detour-sidecar bash bench/run.sh          # another build (no cargo build)
#   PINNED=0 bash bench/run.sh        # skip the c=1 runs with the CPUs fixed
#
# Needs wrk and nginx-light (Debian; installed if missing) and python3. Everything listens
# on 127.0.0.1 only, and every process this script starts is stopped by its PID on exit.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
RUNS=${RUNS:-3}
DURATION=${DURATION:-5}
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/detour/target}"
command -v python3 >/dev/null || { echo "missing python3"; exit 1; }
. bench/lib.sh
need wrk:wrk nginx:nginx-light
if [ -z "${BIN:-}" ]; then
  cargo build -q --release -p detour-sidecar --bins
  BIN="$CARGO_TARGET_DIR/release/detour-sidecar"
fi

# 1,000 concurrent connections need more than the usual 1,024 descriptors.
ulimit -n 8192 2>/dev/null || true
work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT

UP=$(free_port); NG=$(free_port); SC=$(free_port); AD=$(free_port)

reply=$BENCH_REPLY

nginx_conf() { # name port body
  mkdir -p "$work/$1"
  cat > "$work/$1/nginx.conf" <<CONF
worker_processes 1;
master_process off;
daemon off;
pid $work/$1/nginx.pid;
error_log $work/$1/error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path $work/$1/body;
  proxy_temp_path $work/$1/proxy;
  keepalive_requests 1000000;
  $3
}
CONF
}

# A canned stream: one chunk, the finish chunk and [DONE] (real newlines: nginx does not
# unescape \n in strings).
sse=$BENCH_SSE
nginx_conf upstream "$UP" "server { listen 127.0.0.1:$UP;
    location /s/ { default_type text/event-stream; return 200 '$sse'; }
    location / { default_type application/json; return 200 '$reply'; } }"
nginx_conf proxy "$NG" "upstream up { server 127.0.0.1:$UP; keepalive 64; }
  server { listen 127.0.0.1:$NG; location / { proxy_pass http://up; proxy_http_version 1.1; proxy_set_header Connection \"\"; } }"
nginx -c "$work/upstream/nginx.conf" -e "$work/upstream/error.log" & UPID=$!; pids+=($UPID)
nginx -c "$work/proxy/nginx.conf" -e "$work/proxy/error.log" & NPID=$!; pids+=($NPID)

cat > "$work/routes.yaml" <<YAML
apiVersion: detour.dev/v1alpha1
kind: RoutingPolicy
metadata: {name: bench}
spec:
  retry: {attempts: 1}
  health: {failureThreshold: 1, cooldown: 1h, maxCooldown: 1h}
---
apiVersion: detour.dev/v1alpha1
kind: ModelRoute
metadata: {name: fast}
spec:
  model: bench/fast
  policyRef: {name: bench}
  targets:
    - {name: up, provider: openai-compatible, model: up, endpoint: "http://127.0.0.1:$UP/v1"}
---
apiVersion: detour.dev/v1alpha1
kind: ModelRoute
metadata: {name: open}
spec:
  model: bench/open-primary
  policyRef: {name: bench}
  targets:
    - {name: dead, provider: openai-compatible, model: up, endpoint: "http://127.0.0.1:9/v1"}
    - {name: up, provider: openai-compatible, model: up, endpoint: "http://127.0.0.1:$UP/v1"}
---
apiVersion: detour.dev/v1alpha1
kind: ModelRoute
metadata: {name: stream}
spec:
  model: bench/stream
  policyRef: {name: bench}
  targets:
    - {name: up, provider: openai-compatible, model: up, endpoint: "http://127.0.0.1:$UP/s/v1"}
---
apiVersion: detour.dev/v1alpha1
kind: ModelRoute
metadata: {name: held}
spec:
  model: bench/held
  targets:
    - {name: m, provider: mock, model: m, mock: {latency: 4s}}
YAML
"$BIN" ${SIDECAR_ARGS:-} --routes "$work/routes.yaml" --listen "127.0.0.1:$SC" --admin-listen "127.0.0.1:$AD" \
  >/dev/null 2>"$work/sidecar.err" & SPID=$!; pids+=($SPID)

for _ in $(seq 100); do
  curl -fs "http://127.0.0.1:$AD/readyz" >/dev/null 2>&1 && curl -fs "http://127.0.0.1:$UP/" >/dev/null 2>&1 \
    && curl -fs "http://127.0.0.1:$NG/" >/dev/null 2>&1 && break
  sleep 0.1
done
rss_idle=$(awk '/VmRSS/ {print $2}' "/proc/$SPID/status")
# 1,000 streaming requests held in flight at once (the mock answers after 4 s): sets $held
# (what the sidecar counts in flight) and $rss_held.
held_streams() {
  BENCH_BODY='{"model":"bench/held","stream":true,"messages":[{"role":"user","content":"Say hello."}]}' \
    wrk -t2 -c1000 -d6s --timeout 10s -s bench/post.lua "http://127.0.0.1:$SC/v1/chat/completions" >/dev/null 2>&1 &
  local w=$!
  sleep 3
  held=$(curl -fs "http://127.0.0.1:$AD/metrics" | awk '/^detour_in_flight_requests / {print $2}')
  rss_held=$(awk '/VmRSS/ {print $2}' "/proc/$SPID/status")
  wait "$w" || true
}
held_streams # on the fresh process, before any other load
held_fresh=$held rss_held_fresh=$rss_held
# Open the dead primary's breaker (one connect error with failureThreshold 1).
curl -fs "http://127.0.0.1:$SC/v1/chat/completions" -H 'content-type: application/json' \
  -d '{"model":"bench/open-primary","messages":[{"role":"user","content":"x"}]}' >/dev/null

ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
run() { # label url conns threads pid-under-test [body] — one run of one case
  local label=$1 url=$2 c=$3 t=$4 pid=$5 body=${6:-}
  local t0; t0=$(ticks "$pid")
  BENCH_BODY="$body" ${PIN_WRK:+taskset -c "$PIN_WRK"} wrk -t"$t" -c"$c" -d"${DURATION}s" --latency -s bench/post.lua "$url" > "$work/wrk.out" || true
  local t1; t1=$(ticks "$pid")
  python3 - "$label" "$c" "$work/wrk.out" "$((t1 - t0))" "$(getconf CLK_TCK)" >> "$work/results.tsv" <<'PY'
import re, sys
label, c, path, ticks, hz = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
text = open(path).read()
def us(v):
    n, u = re.match(r"([\d.]+)(us|ms|s)", v).groups()
    return float(n) * {"us": 1, "ms": 1e3, "s": 1e6}[u]
p50 = us(re.search(r"\s50%\s+(\S+)", text).group(1))
p99 = us(re.search(r"\s99%\s+(\S+)", text).group(1))
rps = float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1))
non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", text)
n = int(re.search(r"(\d+) requests in", text).group(1))
cpu = ticks / hz * 1e6 / max(n, 1)
print(f"{label}\t{c}\t{p50:.0f}\t{p99:.0f}\t{rps:.0f}\t{non2xx.group(1) if non2xx else 0}\t{cpu:.1f}")
PY
}

stream_body='{"model":"bench/stream","stream":true,"messages":[{"role":"user","content":"Say hello."}]}'
# The cases of one concurrency take turns run by run (direct, nginx, sidecar, direct, ...),
# so a slow spell of the machine falls on all three instead of on one case's runs.
for c in ${CONCURRENCY:-1 32 256}; do
  t=$([ "$c" = 1 ] && echo 1 || echo 2)
  for _ in $(seq "$RUNS"); do
    run direct "http://127.0.0.1:$UP/v1/chat/completions" "$c" "$t" "$UPID"
    run nginx "http://127.0.0.1:$NG/v1/chat/completions" "$c" "$t" "$NPID"
    run sidecar "http://127.0.0.1:$SC/v1/chat/completions" "$c" "$t" "$SPID"
    # Streaming: the whole canned stream is three small events, so wrk's latency (to the
    # last byte) is the time to first byte plus a few microseconds.
    run direct-stream "http://127.0.0.1:$UP/s/v1/chat/completions" "$c" "$t" "$UPID" "$stream_body"
    run nginx-stream "http://127.0.0.1:$NG/s/v1/chat/completions" "$c" "$t" "$NPID" "$stream_body"
    run sidecar-stream "http://127.0.0.1:$SC/v1/chat/completions" "$c" "$t" "$SPID" "$stream_body"
    if [ "$c" = 1 ]; then
      run sidecar-open-primary "http://127.0.0.1:$SC/v1/chat/completions" 1 1 "$SPID" \
        '{"model":"bench/open-primary","messages":[{"role":"user","content":"Say hello."}]}'
    fi
  done
done
# c=1 again with every process's CPU fixed, the same for each case: wrk on CPU 0, the upstream
# and the proxy under test (all its threads) on CPU 1. Left free, the scheduler settles the
# three processes differently for nginx (next to the upstream) and for the sidecar (alone,
# so each of its four hand-offs per request wakes an idle CPU), and that placement, not the
# proxy, decides tens of microseconds at c=1 (docs/benchmarks.md). PINNED=0 skips it.
if [ "${PINNED:-1}" = 1 ] && [ "$(nproc)" -ge 2 ] && command -v taskset >/dev/null; then
  every="0-$(( $(nproc) - 1 ))"
  for p in "$UPID" "$NPID" "$SPID"; do taskset -a -p -c 1 "$p" >/dev/null; done
  for _ in $(seq "$RUNS"); do
    PIN_WRK=0 run direct-pinned "http://127.0.0.1:$UP/v1/chat/completions" 1 1 "$UPID"
    PIN_WRK=0 run nginx-pinned "http://127.0.0.1:$NG/v1/chat/completions" 1 1 "$NPID"
    PIN_WRK=0 run sidecar-pinned "http://127.0.0.1:$SC/v1/chat/completions" 1 1 "$SPID"
  done
  for p in "$UPID" "$NPID" "$SPID"; do taskset -a -p -c "$every" "$p" >/dev/null; done
fi
rss_after=$(awk '/VmRSS/ {print $2}' "/proc/$SPID/status")

held_streams # 1,000 streaming requests held in flight again, after all the load
held_after=$held rss_held_after=$rss_held

python3 - "$work/results.tsv" "$rss_idle" "$rss_after" "$RUNS" "$DURATION" "$held_fresh" "$rss_held_fresh" \
  "$held_after" "$rss_held_after" <<'PY'
import statistics, sys, collections
path, rss_idle, rss_after, runs, dur, held, rss_held, held_after, rss_held_after = sys.argv[1:10]
rows = collections.defaultdict(list)
for line in open(path):
    label, c, p50, p99, rps, bad, cpu = line.split("\t")
    rows[(label, int(c))].append((float(p50), float(p99), float(rps), int(bad), float(cpu)))
med = {k: tuple(statistics.median(x[i] for x in v) for i in range(3)) + (sum(x[3] for x in v),
       statistics.median(x[4] for x in v)) for k, v in rows.items()}
print(f"median of {runs} runs x {dur} s (wrk); latency in microseconds\n")
print("| case | conc | p50 µs | p99 µs | req/s | non-2xx | CPU µs/req of the process under test |")
print("|---|---|---|---|---|---|---|")
for (label, c), (p50, p99, rps, bad, cpu) in sorted(med.items(), key=lambda kv: (kv[0][1], kv[0][0])):
    print(f"| {label} | {c} | {p50:.0f} | {p99:.0f} | {rps:.0f} | {bad} | {cpu:.1f} |")
print()
kinds = {"": "plain", "-stream": "streaming (≈ time to first byte)",
         "-pinned": "plain, CPUs fixed (wrk on 0; upstream and proxy on 1)"}
for suffix, kind in kinds.items():
    for c in sorted({k[1] for k in med}):
        d, n, s = (med.get((x + suffix, c)) for x in ("direct", "nginx", "sidecar"))
        if d and n and s:
            print(f"- {kind}, c={c}: added p50 sidecar {s[0]-d[0]:.0f} µs vs nginx {n[0]-d[0]:.0f} µs; "
                  f"added p99 sidecar {s[1]-d[1]:.0f} µs vs nginx {n[1]-d[1]:.0f} µs; "
                  f"throughput sidecar/direct {s[2]/d[2]:.2f}, sidecar/nginx {s[2]/n[2]:.2f}; "
                  f"CPU µs/req sidecar {s[4]:.1f} vs nginx {n[4]:.1f}")
o, s = med.get(("sidecar-open-primary", 1)), med.get(("sidecar", 1))
if o and s:
    print(f"- open-breaker primary, c=1: p50 {o[0]:.0f} µs vs healthy {s[0]:.0f} µs (+{o[0]-s[0]:.0f} µs)")
print(f"- sidecar RSS: {int(rss_idle)/1024:.1f} MiB idle; {int(rss_held)/1024:.1f} MiB with {held} streaming "
      f"requests in flight on the fresh process; {int(rss_after)/1024:.1f} MiB after the load runs, "
      f"{int(rss_held_after)/1024:.1f} MiB with {held_after} streaming requests in flight then")
PY
