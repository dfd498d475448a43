#!/usr/bin/env bash
# Caddy in front of Ray (spec/operations.md, spec/quality.md "Real peers"): the Caddyfile snippet recommended in
# docs/openai.md is validated as written, then run with its domain and upstream port substituted. Through it:
# a streaming chat read with curl -N, whose events must arrive one by one (spread over at least 10 token
# intervals, not all at the end), then the whole openai-client suite (node/openai_client.test.mjs).
#
# usage: caddy_test.sh RAY_BINARY FAKE_LLAMA_SERVER NODE_DIR DOCS_OPENAI_MD
set -euo pipefail

if (($# != 4)); then
  echo "usage: $0 RAY_BINARY FAKE_LLAMA_SERVER NODE_DIR DOCS_OPENAI_MD" >&2
  exit 2
fi
RAY_BINARY=$(realpath "$1")
FAKE_LLAMA_SERVER=$(realpath "$2")
NODE_DIR=$(realpath "$3")
DOCS=$(realpath "$4")
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=real_peer_harness.sh
source "$HERE/real_peer_harness.sh"

harness_require_node
if ! command -v caddy >/dev/null 2>&1; then
  harness_skip "caddy not installed (scripts/bootstrap installs it)"
fi
harness_init caddy
harness_log "$(caddy version)"

# Caddy keeps its state under the temp dir, never in the user's home.
export HOME="$HARNESS_DIR/home" XDG_CONFIG_HOME="$HARNESS_DIR/home/config" XDG_DATA_HOME="$HARNESS_DIR/home/data"
mkdir -p "$XDG_CONFIG_HOME" "$XDG_DATA_HOME"

# --- the documented snippet: the fenced block after the marker comment ---------------------------------------
SNIPPET="$HARNESS_DIR/Caddyfile.doc"
awk '/^<!-- caddy_test\.sh runs this exact block/ { found = 1; next }
     found && /^```/ { if (inside) exit; inside = 1; next }
     inside { print }' "$DOCS" >"$SNIPPET"
grep -q '^ray\.example\.com {$' "$SNIPPET" || harness_fail "no Caddyfile snippet for ray.example.com in $DOCS"
grep -q 'reverse_proxy 127\.0\.0\.1:3000 {' "$SNIPPET" || harness_fail "the snippet does not proxy 127.0.0.1:3000"
grep -q 'flush_interval -1' "$SNIPPET" || harness_fail "the snippet lacks flush_interval -1"
caddy validate --config "$SNIPPET" --adapter caddyfile >"$HARNESS_DIR/caddy-validate.log" 2>&1 ||
  {
    cat "$HARNESS_DIR/caddy-validate.log" >&2
    harness_fail "caddy validate rejects the documented snippet"
  }
harness_log "caddy validate: the documented snippet is valid"

harness_npm_setup "$NODE_DIR"

GEN_TPS=10
TOKENS=20
harness_start_double double -c 2048 -np 2 --gen-tps "$GEN_TPS"
DOUBLE="http://127.0.0.1:$DOUBLE_PORT"
harness_start_ray ray "$(harness_gateway_config)" "$DOUBLE_PORT"
RAY_A=$RAY_PORT
harness_start_ray ray-queue "$(harness_queue_config)" "$DOUBLE_PORT"
RAY_B=$RAY_PORT
harness_wait_ready "http://127.0.0.1:$RAY_A" 20
harness_wait_ready "http://127.0.0.1:$RAY_B" 20

# The snippet with its site address made a loopback HTTP address and its upstream made Ray's port.
site_for() { # site_for LISTEN_PORT RAY_PORT
  sed -e "s|^ray\\.example\\.com {\$|http://127.0.0.1:$1 {|" -e "s|127\\.0\\.0\\.1:3000|127.0.0.1:$2|" "$SNIPPET"
}

# Caddy cannot bind port 0 and report it: take free ports, and try again if one was taken meanwhile.
CADDY_OK=""
for attempt in 1 2 3; do
  PA=$(harness_free_port)
  PB=$(harness_free_port)
  [[ "$PA" != "$PB" ]] || continue
  {
    printf '{\n\tadmin off\n\tdefault_bind 127.0.0.1\n}\n\n'
    site_for "$PA" "$RAY_A"
    printf '\n'
    site_for "$PB" "$RAY_B"
  } >"$HARNESS_DIR/Caddyfile"
  if ! grep -q "^http://127.0.0.1:$PA {" "$HARNESS_DIR/Caddyfile" ||
    ! grep -q "reverse_proxy 127.0.0.1:$RAY_B {" "$HARNESS_DIR/Caddyfile"; then
    harness_fail "substituting the snippet failed:
$(cat "$HARNESS_DIR/Caddyfile")"
  fi
  harness_start "caddy-$attempt" caddy run --config "$HARNESS_DIR/Caddyfile" --adapter caddyfile
  CADDY_PID=$HARNESS_LAST_PID
  deadline=$((SECONDS + 15))
  while ((SECONDS <= deadline)) && kill -0 "$CADDY_PID" 2>/dev/null; do
    if [[ "$(curl -s -o /dev/null -w '%{http_code}' --max-time 2 "http://127.0.0.1:$PA/readyz" || true)" == 200 &&
      "$(curl -s -o /dev/null -w '%{http_code}' --max-time 2 "http://127.0.0.1:$PB/readyz" || true)" == 200 ]]; then
      CADDY_OK=1
      break
    fi
    sleep 0.05
  done
  [[ -n "$CADDY_OK" ]] && break
  harness_log "caddy attempt $attempt did not come up (port taken?):"
  tail -n 5 "$HARNESS_DIR/caddy-$attempt.log" >&2 || true
  kill -TERM "$CADDY_PID" 2>/dev/null || true
done
[[ -n "$CADDY_OK" ]] || harness_fail "caddy did not proxy /readyz to Ray"
CADDY_A="http://127.0.0.1:$PA"
CADDY_B="http://127.0.0.1:$PB"
harness_log "caddy: $CADDY_A -> ray :$RAY_A, $CADDY_B -> ray :$RAY_B"

# --- a stream through Caddy, each line stamped on arrival -------------------------------------------------------
BODY='{"model":"gpt-4o-mini","temperature":0,"max_tokens":'"$TOKENS"',"stream":true,"stream_options":{"include_usage":true},"messages":[{"role":"user","content":"Tell a story through Caddy"}]}'
START=$EPOCHREALTIME
curl -sS -N --max-time 30 -D "$HARNESS_DIR/stream.headers" -H 'content-type: application/json' -d "$BODY" \
  "$CADDY_A/v1/chat/completions" |
  while IFS= read -r line; do printf '%s %s\n' "$EPOCHREALTIME" "$line"; done >"$HARNESS_DIR/stream.events"

tr -d '\r' <"$HARNESS_DIR/stream.headers" >"$HARNESS_DIR/stream.headers.txt"
grep -q '^HTTP/[0-9.]* 200' "$HARNESS_DIR/stream.headers.txt" || harness_fail "stream status: $(head -n1 "$HARNESS_DIR/stream.headers.txt")"
grep -qi '^content-type: text/event-stream' "$HARNESS_DIR/stream.headers.txt" || harness_fail "stream content-type:
$(cat "$HARNESS_DIR/stream.headers.txt")"
grep -qi '^server: Caddy' "$HARNESS_DIR/stream.headers.txt" || harness_fail "the stream did not pass through Caddy:
$(cat "$HARNESS_DIR/stream.headers.txt")"

# first data event, [DONE], the number of content events, and how many distinct 50 ms windows they arrived in
read -r FIRST DONE CONTENT WINDOWS < <(awk -v start="$START" '
  $2 == "data:" && first == "" { first = $1 }
  $2 == "data:" && $3 == "[DONE]" { done = $1 }
  $2 == "data:" && /"content":"[^"]/ { content++; w[int(($1 - start) * 20)] = 1 }
  END { n = 0; for (k in w) n++; printf "%s %s %d %d\n", (first == "" ? "none" : first), (done == "" ? "none" : done), content, n }
' "$HARNESS_DIR/stream.events")
[[ "$FIRST" != none ]] || harness_fail "no data event through Caddy: $(head -c 2000 "$HARNESS_DIR/stream.events")"
[[ "$DONE" != none ]] || harness_fail "no [DONE] through Caddy: $(tail -c 2000 "$HARNESS_DIR/stream.events")"
SPREAD_MS=$(awk -v a="$FIRST" -v b="$DONE" 'BEGIN { printf "%d", (b - a) * 1000 }')
FIRST_MS=$(awk -v a="$START" -v b="$FIRST" 'BEGIN { printf "%d", (b - a) * 1000 }')
MIN_SPREAD_MS=$((10 * 1000 / GEN_TPS)) # 10 token intervals of the double's --gen-tps
harness_log "through Caddy: first data event at ${FIRST_MS} ms, [DONE] ${SPREAD_MS} ms later;" \
  "$CONTENT content events in $WINDOWS distinct 50 ms windows"
((SPREAD_MS >= MIN_SPREAD_MS)) ||
  harness_fail "Caddy buffered the stream: first event and [DONE] ${SPREAD_MS} ms apart (< ${MIN_SPREAD_MS} ms)"
((FIRST_MS < SPREAD_MS)) || harness_fail "the first event came late: ${FIRST_MS} ms, then ${SPREAD_MS} ms to [DONE]"
((CONTENT >= TOKENS / 2)) || harness_fail "only $CONTENT content events for $TOKENS tokens"
((WINDOWS >= TOKENS / 2)) || harness_fail "content events arrived in only $WINDOWS distinct 50 ms windows"
grep -q '"usage":{' "$HARNESS_DIR/stream.events" || harness_fail "no usage chunk through Caddy"

# --- the openai client suite through Caddy ---------------------------------------------------------------------
cd "$HARNESS_NODE_DIR"
RAY_URL="$CADDY_A" RAY_QUEUE_URL="$CADDY_B" DOUBLE_URL="$DOUBLE" GEN_TPS="$GEN_TPS" CTX_PER_REQUEST=1024 \
  node --test --test-reporter=spec openai_client.test.mjs
