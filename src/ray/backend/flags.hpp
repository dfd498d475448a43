// ray::backend flags — the ONE llama-server command-line builder, shared by the supervisor, `ray tune` and
// `ray deploy render` (spec/backends.md "Attaching and supervising", spec/operations.md).
//
// Pure functions: no I/O, no Asio; safe from any thread.
#pragma once

#include "ray/config/config.hpp"

#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace ray::backend {

// llama-server's argv for a launch profile, WITHOUT the binary, in this fixed order (spellings as
// llama-server build b1-80fb11a accepts them):
//   -m <modelPath | model_path_override>  --host <host>  --port <port>  [-a <alias>]  -c <ctxSize>
//   -np <parallel>  -t <threads>  [-tb <threadsBatch>]  [--threads-http <threadsHttp>]  -b <batchSize>
//   -ub <ubatchSize>  --cache-reuse <cacheReuse>  --cache-ram <cacheRamMiB>
//   [--no-cache-prompt]  (-cb | --no-cont-batching)  [--metrics]  (--slots | --no-slots)  [--no-warmup]
//   (--kv-unified | --no-kv-unified)  (--context-shift | --no-context-shift)
//   (--cache-idle-slots | --no-cache-idle-slots)  [--embedding [--pooling <pooling>] | --reranking]
//   extraArgs…
// Rules:
// - `-a` only when alias is non-empty; `-tb` / `--threads-http` only when set (else llama-server decides).
// - `--cache-ram` is always written, with llama-server's own meaning: -1 unlimited, 0 off, else MiB — so its
//   8 GiB default prompt cache (a known cause of OOM kills on small boxes) never applies silently.
// - Flags whose llama-server default is on for every build (prompt cache, warm-up) appear only when turned
//   off; `--metrics` has no negation and appears only when on. Flags whose default differs between builds
//   (continuous batching, /slots, unified KV, context shift, idle-slot caching) are always written
//   explicitly, so the server runs what the profile says whatever its build.
// - The model's kind (models.md "Embeddings and rerank"): an embedding model gets `--embedding`, plus
//   `--pooling <pooling>` when the adapter sets one (else llama-server takes the GGUF's); a rerank model gets
//   `--reranking` alone (it implies llama-server's embedding mode with pooling `rank`, which a `--pooling`
//   after it would override); a chat model neither (pooling is ignored).
// - extraArgs are appended unchanged and last (config validation already refuses a flag the profile owns).
std::vector<std::string> llama_server_args(config::launch_profile const& profile,
                                           std::string const& model_path_override = "",
                                           config::model_kind kind = config::model_kind::chat,
                                           std::optional<std::string> const& pooling = std::nullopt);

// One argument quoted for a POSIX shell: unchanged when it contains only [A-Za-z0-9_@%+=:,./-] (and is
// non-empty), else wrapped in single quotes with each ' written as '\''.
std::string shell_quote(std::string_view arg);
// The arguments quoted and joined with single spaces, for display (`ray tune`, logs, unit files). Put the
// binary first to get a complete command line: shell_command({binary, args…}); a first word containing '='
// is quoted too, so a shell does not take it for a variable assignment.
std::string shell_command(std::vector<std::string> const& args);

}  // namespace ray::backend
