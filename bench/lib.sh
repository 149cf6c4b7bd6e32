# Shared by the benchmark scripts (sourced, not run).

# need CMD:PACKAGE ... — installs the Debian packages whose command is missing.
need() {
  local missing=() pair
  for pair in "$@"; do
    command -v "${pair%%:*}" >/dev/null || missing+=("${pair#*:}")
  done
  [ ${#missing[@]} -gt 0 ] || return 0
  local sudo_cmd=""
  [ "$(id -u)" = 0 ] || sudo_cmd="sudo"
  $sudo_cmd apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

# A free TCP port on 127.0.0.1.
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# The canned chat.completion the loopback upstream answers.
BENCH_REPLY='{"id":"chatcmpl-bench","object":"chat.completion","created":0,"model":"up","choices":[{"index":0,"message":{"role":"assistant","content":"Hello!"},"finish_reason":"stop"}],"usage":{"prompt_tokens":9,"completion_tokens":2,"total_tokens":11}}'

# The canned stream it answers under /s/: two chunks and [DONE].
bench_chunk='{"id":"c","object":"chat.completion.chunk","created":0,"model":"up","choices":[{"index":0,"delta":{"role":"assistant","content":"Hello!"},"finish_reason":null}]}'
bench_last='{"id":"c","object":"chat.completion.chunk","created":0,"model":"up","choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}'
BENCH_SSE="data: $bench_chunk

data: $bench_last

data: [DONE]

"
