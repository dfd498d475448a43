// fake_llama_server knobs: the llama-server flags the double understands (those Ray's flag builder emits) and
// the test knobs. Every knob can be given as a flag at start and changed at run time through
// `POST /__control` with a JSON object whose keys are the flag names without leading dashes, dashes or
// underscores alike (`{"gen_tps": 10}` == `{"gen-tps": 10}`). No Asio here.
#pragma once

#include <boost/json/object.hpp>

#include <cstdint>
#include <string>
#include <vector>

namespace fake_llama {

struct knobs {
  // --- llama-server flags that change behaviour
  std::string model_path{"models/tiny-llama-512x8.gguf"};  // -m / --model
  std::string alias{"tiny-llama"};  // -a / --alias (default: "tiny-llama", or -m's file name)
  std::string host{"127.0.0.1"};    // --host
  int port{8080};                   // --port (0 = ephemeral; the bound port is printed)
  int ctx_size{2048};               // -c / --ctx-size: the KV pool in tokens
  int parallel{2};                  // -np / --parallel: slots
  bool kv_unified{false};  // --kv-unified: n_ctx per request = ctx_size (shared pool); else ctx_size/parallel
  bool metrics{false};     // --metrics: serve /metrics (else 501 like llama-server)
  bool slots_endpoint{true};  // --slots / --no-slots
  bool cache_prompt{true};    // --cache-prompt / --no-cache-prompt (default of the per-request field)
  std::string api_key;        // --api-key (or the first line of --api-key-file)
  bool embedding{false};  // --embedding / --embeddings: serve /v1/embeddings (else 501, like llama-server)
  std::string pooling{};  // --pooling none|mean|cls|last|rank ("" = the model's: mean); --reranking (or
                          //   --rerank) = --embedding --pooling rank, in argument order like llama-server
  int embd_dim{64};       // --embd-dim N: the vectors' length (a real server takes n_embd from the model)

  // --- test knobs
  std::string build_info{"b1-80fb11a"};  // --build-info: /props build_info and system_fingerprint
  std::int64_t load_delay_ms{0};         // --load-delay-ms: 503 "Loading model" this long after start
  double prompt_tps{0};                  // --prompt-tps: prefill speed, tokens/s (0 = instant)
  double gen_tps{0};                     // --gen-tps: generation speed per slot, tokens/s (0 = instant)
  std::int64_t crash_after_ms{-1};       // --crash-after-ms: abort() this long after start (-1 = never)
  int crash_exit_code{-1};               // --crash-exit-code: _exit(code) instead of abort() when >= 0
  bool hang_before_first_token{false};   // --hang-before-first-token: hold every request after prefill
  int fail_status{0};                    // --fail-status: answer inference with this status (0 = off)
  int fail_after_tokens{-1};   // --fail-after-tokens N: a stream sends `data: {"error":…}` after N tokens
  bool malformed_json{false};  // --malformed-json: inference responses carry broken JSON
  std::int64_t slow_health_ms{0};      // --slow-health-ms: delay every /health answer
  std::int64_t slow_slots_ms{0};       // --slow-slots-ms: delay every /slots answer
  bool slots_block_on_prefill{false};  // --slots-block-on-prefill: /slots and /metrics wait for prefills
  int hold_until_clients{0};           // --hold-until-clients N: hold before the first token until N
                                       //   inference requests are in flight at once (0 = off)
  int eos_after{0};                    // --eos-after N: the N-th generated token is EOS (finish "stop")
  bool ctx_check_prompt_only{false};   // --ctx-check prompt|total: what must fit n_ctx (default total:
                                       //   prompt + n_predict; "prompt" = like llama-server, cut at n_ctx)
  std::int64_t start_delay_ms{0};      // --start-delay-ms: sleep before binding (the "starting" phase)
  std::int64_t keep_alive_ms{5000};    // --keep-alive-ms: idle keep-alive timeout (llama-server: 5 s)
  bool ignore_sigterm{false};          // --ignore-sigterm: only SIGKILL (or SIGINT) ends the process
  bool verbose{false};                 // -v / --verbose: log every request to stderr

  // The pooling in effect, and whether /v1/rerank is served (embedding mode with pooling rank).
  std::string pooling_type() const { return pooling.empty() ? "mean" : pooling; }
  bool reranking() const { return embedding && pooling_type() == "rank"; }

  // n_ctx of one request (what /props reports as default_generation_settings.n_ctx).
  int n_ctx_per_request() const {
    if (kv_unified || parallel <= 1) return ctx_size;
    return ctx_size / parallel;
  }
};

// Parses argv. Unknown flags print a warning to stderr and are skipped (with the next argument when it does
// not look like a flag). Returns false and sets `error` on a bad value of a known flag.
bool parse_args(int argc, char** argv, knobs& k, std::string& error);

// Side effects of a control request that the server applies itself.
struct control_actions {
  bool crash_now{false};
  bool reset_stats{false};
  bool reset_slots{false};
  bool load_delay_changed{false};  // restart the loading phase: now + load_delay_ms
  bool crash_timer_changed{false};
  bool slots_changed{false};  // ctx_size / parallel / kv_unified changed: rebuild the slots
};

// Applies a `/__control` body to a copy of the knobs. Returns false and sets `error` (naming the key) on an
// unknown key or a value of the wrong type; `k` is then unchanged.
bool apply_control(boost::json::object const& body, knobs& k, control_actions& actions, std::string& error);

// The current knobs as JSON (answer of `/__control` and part of `/__stats`).
boost::json::object knobs_json(knobs const& k);

}  // namespace fake_llama
