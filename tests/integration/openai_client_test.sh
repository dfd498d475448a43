#!/usr/bin/env bash
# The real `openai` npm client (pinned 4.x, installed here with `npm ci`) against Ray's OpenAI-compatible routes
# (spec/http-api.md §3, spec/quality.md "Real peers"). Ray is attached to the llama-server double; the assertions
# are in node/openai_client.test.mjs (node's built-in test runner).
#
# usage: openai_client_test.sh RAY_BINARY FAKE_LLAMA_SERVER NODE_DIR
set -euo pipefail

if (($# != 3)); then
  echo "usage: $0 RAY_BINARY FAKE_LLAMA_SERVER NODE_DIR" >&2
  exit 2
fi
RAY_BINARY=$(realpath "$1")
FAKE_LLAMA_SERVER=$(realpath "$2")
NODE_DIR=$(realpath "$3")
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=real_peer_harness.sh
source "$HERE/real_peer_harness.sh"

harness_require_node
harness_init openai_client
harness_npm_setup "$NODE_DIR"

# One token every 100 ms per slot; 2048 tokens of KV over 2 slots = 1024 per request.
GEN_TPS=10
harness_start_double double -c 2048 -np 2 --gen-tps "$GEN_TPS"
DOUBLE="http://127.0.0.1:$DOUBLE_PORT"

harness_start_ray ray "$(harness_gateway_config)" "$DOUBLE_PORT"
RAY="http://127.0.0.1:$RAY_PORT"
harness_start_ray ray-queue "$(harness_queue_config)" "$DOUBLE_PORT"
RAY_QUEUE="http://127.0.0.1:$RAY_PORT"
harness_start_ray_mock ray-embed "$(harness_embed_config)"
RAY_EMBED="http://127.0.0.1:$RAY_PORT"
harness_wait_ready "$RAY" 20
harness_wait_ready "$RAY_QUEUE" 20
harness_wait_ready "$RAY_EMBED" 20

cd "$HARNESS_NODE_DIR"
RAY_URL="$RAY" RAY_QUEUE_URL="$RAY_QUEUE" RAY_EMBED_URL="$RAY_EMBED" DOUBLE_URL="$DOUBLE" GEN_TPS="$GEN_TPS" CTX_PER_REQUEST=1024 \
  node --test --test-reporter=spec openai_client.test.mjs
