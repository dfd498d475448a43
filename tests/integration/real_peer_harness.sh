# shellcheck shell=bash
# Shared by openai_client_test.sh and caddy_test.sh (sourced, not run): a private temp dir, the llama-server
# double and `ray serve` on ephemeral loopback ports, the pinned openai npm client installed with `npm ci`, and a
# cleanup trap that stops every process started here (by its own pid) and removes the temp dir.
#
# Waits poll with a deadline (never a fixed sleep standing in for an event).

HARNESS_PIDS=()
HARNESS_DIR=""

harness_log() { printf '[%s] %s\n' "${HARNESS_NAME:-test}" "$*" >&2; }

harness_fail() {
  harness_log "FAIL: $*"
  exit 1
}

# The logs of everything started, printed when the script fails.
harness_dump_logs() {
  local f
  for f in "$HARNESS_DIR"/*.log; do
    [[ -e "$f" ]] || continue
    printf -- '----- %s (last 40 lines) -----\n' "$(basename "$f")" >&2
    tail -n 40 "$f" >&2 || true
  done
}

harness_cleanup() {
  local status=$?
  local pid
  for pid in "${HARNESS_PIDS[@]}"; do
    kill -TERM "$pid" 2>/dev/null || true
  done
  for pid in "${HARNESS_PIDS[@]}"; do
    local i
    for ((i = 0; i < 100; i++)); do  # up to 5 s for a graceful exit, then SIGKILL
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.05
    done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
  if ((status != 0)) && [[ -n "$HARNESS_DIR" ]]; then
    harness_dump_logs
  fi
  [[ -n "$HARNESS_DIR" ]] && rm -rf "$HARNESS_DIR"
  exit "$status"
}

# harness_init NAME: the temp dir and the cleanup trap.
harness_init() {
  HARNESS_NAME=$1
  HARNESS_DIR=$(mktemp -d "${TMPDIR:-/tmp}/ray-${HARNESS_NAME}.XXXXXX")
  trap harness_cleanup EXIT
  trap 'exit 130' INT TERM
}

# harness_skip WHY: prints `SKIP: WHY` and exits 0 — or, with RAY_REQUIRE_TOOLS=1 (CI), fails: a suite must not
# pass by not running.
harness_skip() {
  if [[ "${RAY_REQUIRE_TOOLS:-}" == 1 ]]; then
    echo "FAIL: $1 (RAY_REQUIRE_TOOLS=1: a missing tool is a failure)"
    exit 1
  fi
  echo "SKIP: $1"
  exit 0
}

# harness_require_node: skips (see harness_skip) when node or npm is absent.
harness_require_node() {
  if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
    harness_skip "node not installed"
  fi
}

# harness_npm_setup NODE_DIR: copies the node test package into the temp dir and installs its lockfile there.
# Sets HARNESS_NODE_DIR.
harness_npm_setup() {
  local src=$1
  HARNESS_NODE_DIR="$HARNESS_DIR/node"
  mkdir -p "$HARNESS_NODE_DIR"
  cp "$src/package.json" "$src/package-lock.json" "$HARNESS_NODE_DIR/"
  cp "$src"/*.mjs "$HARNESS_NODE_DIR/"
  harness_log "npm ci ($(node --version), npm $(npm --version))"
  (cd "$HARNESS_NODE_DIR" && npm ci --no-audit --no-fund --loglevel=error) >"$HARNESS_DIR/npm.log" 2>&1 ||
    {
      cat "$HARNESS_DIR/npm.log" >&2
      harness_fail "npm ci failed"
    }
  local version
  version=$(node -p "require('$HARNESS_NODE_DIR/node_modules/openai/package.json').version")
  harness_log "openai npm client $version installed"
}

# harness_start NAME CMD...: starts CMD in the background, stdout to NAME.out, stderr to NAME.log.
# Sets HARNESS_LAST_PID.
harness_start() {
  local name=$1
  shift
  "$@" >"$HARNESS_DIR/$name.out" 2>"$HARNESS_DIR/$name.log" </dev/null &
  HARNESS_LAST_PID=$!
  HARNESS_PIDS+=("$HARNESS_LAST_PID")
}

# harness_wait_match FILE REGEX SECONDS PID: prints the first line of FILE matching the extended REGEX, polling
# until the deadline; fails when the deadline passes or PID exits first.
harness_wait_match() {
  local file=$1 regex=$2 within=$3 pid=$4
  local deadline=$((SECONDS + within))
  local line
  while ((SECONDS <= deadline)); do
    line=$(grep -a -m1 -E "$regex" "$file" 2>/dev/null || true)
    if [[ -n "$line" ]]; then
      printf '%s\n' "$line"
      return 0
    fi
    kill -0 "$pid" 2>/dev/null || harness_fail "process $pid exited before printing /$regex/ in $(basename "$file")"
    sleep 0.02
  done
  harness_fail "no line matching /$regex/ in $(basename "$file") within ${within}s"
}

# harness_start_double NAME ARGS...: the llama-server double on port 0. Sets DOUBLE_PORT.
harness_start_double() {
  local name=$1
  shift
  harness_start "$name" "$FAKE_LLAMA_SERVER" --port 0 "$@"
  local line
  line=$(harness_wait_match "$HARNESS_DIR/$name.out" '^listening [0-9]+$' 10 "$HARNESS_LAST_PID")
  DOUBLE_PORT=${line#listening }
  harness_log "$name: fake_llama_server on 127.0.0.1:$DOUBLE_PORT ($*)"
}

# harness_start_ray NAME CONFIG_JSON BACKEND_PORT: `ray serve` on port 0 attached to the double, reading host
# pressure from an empty tree (so a busy CI box cannot degrade requests). Sets RAY_PORT.
harness_start_ray() {
  local name=$1 config=$2 backend_port=$3
  local dir="$HARNESS_DIR/$name"
  mkdir -p "$dir/system-root"
  printf '%s\n' "$config" >"$dir/ray.json"
  # Both streams go to NAME.log too, so a failure shows the whole log; the listening line is read from stdout.
  (cd "$dir" && exec "$RAY_BINARY" serve --config "$dir/ray.json" --port 0 \
    --backend-url "http://127.0.0.1:$backend_port" --system-root "$dir/system-root") \
    >"$HARNESS_DIR/$name.out" 2>"$HARNESS_DIR/$name.log" </dev/null &
  HARNESS_LAST_PID=$!
  HARNESS_PIDS+=("$HARNESS_LAST_PID")
  local line
  line=$(harness_wait_match "$HARNESS_DIR/$name.out" '"message":"gateway listening"' 10 "$HARNESS_LAST_PID")
  RAY_PORT=$(printf '%s\n' "$line" | grep -o '"port":[0-9]*' | head -n1 | cut -d: -f2)
  [[ -n "$RAY_PORT" ]] || harness_fail "$name: no port in the listening line: $line"
  harness_log "$name: ray on 127.0.0.1:$RAY_PORT"
}

# harness_start_ray_mock NAME CONFIG_JSON: `ray serve` on port 0 with the config's own (mock) adapter, no
# backend URL, host pressure from an empty tree. Sets RAY_PORT.
harness_start_ray_mock() {
  local name=$1 config=$2
  local dir="$HARNESS_DIR/$name"
  mkdir -p "$dir/system-root"
  printf '%s\n' "$config" >"$dir/ray.json"
  (cd "$dir" && exec "$RAY_BINARY" serve --config "$dir/ray.json" --port 0 --system-root "$dir/system-root") \
    >"$HARNESS_DIR/$name.out" 2>"$HARNESS_DIR/$name.log" </dev/null &
  HARNESS_LAST_PID=$!
  HARNESS_PIDS+=("$HARNESS_LAST_PID")
  local line
  line=$(harness_wait_match "$HARNESS_DIR/$name.out" '"message":"gateway listening"' 10 "$HARNESS_LAST_PID")
  RAY_PORT=$(printf '%s\n' "$line" | grep -o '"port":[0-9]*' | head -n1 | cut -d: -f2)
  [[ -n "$RAY_PORT" ]] || harness_fail "$name: no port in the listening line: $line"
  harness_log "$name: ray (mock adapter) on 127.0.0.1:$RAY_PORT"
}

# harness_wait_ready URL SECONDS: polls URL/readyz until 200.
harness_wait_ready() {
  local url=$1 within=$2
  local deadline=$((SECONDS + within))
  while ((SECONDS <= deadline)); do
    if [[ "$(curl -s -o /dev/null -w '%{http_code}' --max-time 2 "$url/readyz" || true)" == "200" ]]; then
      return 0
    fi
    sleep 0.05
  done
  curl -s --max-time 2 "$url/readyz" >&2 || true
  harness_fail "$url/readyz is not 200 within ${within}s"
}

# harness_free_port: an ephemeral loopback port that was free a moment ago (for servers that cannot report
# the port they bound, like Caddy from a Caddyfile).
harness_free_port() {
  node -e 'const s = require("net").createServer().listen(0, "127.0.0.1", () => { console.log(s.address().port); s.close(); });'
}

# The Ray configs of these tests. GATEWAY: the default sub1b scheduler, keep-alives every 100 ms (so the
# keep-alive test needs no long wait). QUEUE: one request in flight and at most two waiting, so the fourth
# concurrent request is refused with 503 queue_full (degradation off; its threshold must still be < maxQueue).
harness_gateway_config() {
  cat <<'EOF'
{"profile":"sub1b","model":{"id":"tiny-llama","adapter":{"kind":"llama.cpp","healthIntervalMs":100,"launchProfile":null}},"rateLimit":{"enabled":false},"server":{"sseKeepAliveMs":100}}
EOF
}

harness_queue_config() {
  cat <<'EOF'
{"profile":"sub1b","model":{"id":"tiny-llama","adapter":{"kind":"llama.cpp","healthIntervalMs":100,"launchProfile":null}},"rateLimit":{"enabled":false},"scheduler":{"concurrency":1,"maxQueue":2,"affinityLookahead":2},"gracefulDegradation":{"enabled":false,"queueDepthThreshold":1}}
EOF
}

# EMBED: an embedding model on the mock adapter (64-dimension unit vectors), for embeddings.create.
harness_embed_config() {
  cat <<'EOF'
{"profile":"tiny","model":{"id":"embedder","kind":"embedding","adapter":{"kind":"mock","latencyMs":0}},"rateLimit":{"enabled":false}}
EOF
}
