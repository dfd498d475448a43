#!/usr/bin/env bash
# The operator status page (issue 18) in Debian's headless Chromium against the real `ray` attached to the
# llama-server double: "ready", queue and shedding warnings, the backend's unavailable state within 3 s of the
# double being killed, phone width and dark mode, the key prompt with auth on, and no console error, CSP
# violation or request off loopback. The browser is driven by status_page_test.mjs over the DevTools protocol
# (node's built-in test runner; no npm package). Screenshots land in OUT_DIR (status.png, …).
#
# Prints `SKIP: …` and exits 0 when node or chromium is missing (a failure with RAY_REQUIRE_TOOLS=1).
#
# usage: status_page_test.sh RAY_BINARY FAKE_LLAMA_SERVER DRIVER_MJS OUT_DIR
set -euo pipefail

if (($# != 4)); then
  echo "usage: $0 RAY_BINARY FAKE_LLAMA_SERVER DRIVER_MJS OUT_DIR" >&2
  exit 2
fi
RAY_BINARY=$(realpath "$1")
FAKE_LLAMA_SERVER=$(realpath "$2")
DRIVER=$(realpath "$3")
mkdir -p "$4"
OUT_DIR=$(realpath "$4")
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=real_peer_harness.sh
source "$HERE/real_peer_harness.sh"

harness_require_node
CHROMIUM=${RAY_CHROMIUM:-}
if [[ -z "$CHROMIUM" ]]; then
  # Debian's /usr/bin/chromium is a launcher script; the browser it runs is /usr/lib/chromium/chromium.
  for c in /usr/lib/chromium/chromium "$(command -v chromium || true)" "$(command -v chromium-browser || true)"; do
    if [[ -n "$c" && -x "$c" ]]; then
      CHROMIUM=$c
      break
    fi
  done
fi
[[ -n "$CHROMIUM" && -x "$CHROMIUM" ]] || harness_skip "chromium not installed (scripts/bootstrap installs Debian's chromium)"
harness_init status_page

# Two doubles: the first is killed by the test (the unavailable state), the second serves the Ray with auth.
harness_start_double double -c 2048 -np 1 --metrics
DOUBLE_PID=$HARNESS_LAST_PID
DOUBLE="http://127.0.0.1:$DOUBLE_PORT"
harness_start_ray ray "$(
  cat <<EOF
{"profile":"sub1b","model":{"id":"tiny-llama","adapter":{"kind":"llama.cpp","healthIntervalMs":100,"launchProfile":null}},
 "rateLimit":{"enabled":false},
 "scheduler":{"concurrency":1,"maxQueue":2,"affinityLookahead":2},
 "gracefulDegradation":{"enabled":false,"queueDepthThreshold":1},
 "asyncQueue":{"enabled":true,"storageDir":"$HARNESS_DIR/ray/jobs","minFreeStorageMiB":0,"pollIntervalMs":50}}
EOF
)" "$DOUBLE_PORT"
RAY="http://127.0.0.1:$RAY_PORT"

harness_start_double double-auth -c 2048 -np 1 --metrics
export STATUS_PAGE_TEST_KEYS="status-page-key-$RANDOM$RANDOM-0123456789abcdef"
harness_start_ray ray-auth '{"profile":"sub1b","model":{"id":"tiny-llama","adapter":{"kind":"llama.cpp","healthIntervalMs":100,"launchProfile":null}},"rateLimit":{"enabled":false},"auth":{"enabled":true,"apiKeyEnv":"STATUS_PAGE_TEST_KEYS"}}' "$DOUBLE_PORT"
RAY_AUTH="http://127.0.0.1:$RAY_PORT"
harness_wait_ready "$RAY" 20
harness_wait_ready "$RAY_AUTH" 20

harness_log "chromium: $CHROMIUM; screenshots in $OUT_DIR"
cd "$HARNESS_DIR"
CHROMIUM="$CHROMIUM" RAY_URL="$RAY" RAY_AUTH_URL="$RAY_AUTH" RAY_AUTH_KEY="$STATUS_PAGE_TEST_KEYS" \
  DOUBLE_URL="$DOUBLE" DOUBLE_PID="$DOUBLE_PID" SCREENSHOT_DIR="$OUT_DIR" \
  node --test --test-reporter=spec "$DRIVER"
