#include "knobs.hpp"

#include <boost/json/value.hpp>
#include <boost/json/value_from.hpp>

#include <charconv>
#include <cstdio>
#include <fstream>
#include <string_view>
#include <variant>

namespace fake_llama {

namespace json = boost::json;

namespace {

using member =
    std::variant<std::string knobs::*, int knobs::*, std::int64_t knobs::*, double knobs::*, bool knobs::*>;

// A knob with a value. `flags` are the command-line spellings (space-separated); the control key is `key`
// or any flag spelling normalized (leading dashes dropped, '-' → '_').
struct value_def {
  std::string_view key;
  std::string_view flags;
  member m;
};

// clang-format off
value_def const value_defs[] = {
    {"model_path", "-m --model", &knobs::model_path},
    {"alias", "-a --alias", &knobs::alias},
    {"host", "--host", &knobs::host},
    {"port", "--port", &knobs::port},
    {"ctx_size", "-c --ctx-size", &knobs::ctx_size},
    {"parallel", "-np --parallel", &knobs::parallel},
    {"api_key", "--api-key", &knobs::api_key},
    {"pooling", "--pooling", &knobs::pooling},
    {"embd_dim", "--embd-dim", &knobs::embd_dim},
    {"build_info", "--build-info", &knobs::build_info},
    {"load_delay_ms", "--load-delay-ms", &knobs::load_delay_ms},
    {"prompt_tps", "--prompt-tps", &knobs::prompt_tps},
    {"gen_tps", "--gen-tps", &knobs::gen_tps},
    {"crash_after_ms", "--crash-after-ms", &knobs::crash_after_ms},
    {"crash_exit_code", "--crash-exit-code", &knobs::crash_exit_code},
    {"fail_status", "--fail-status", &knobs::fail_status},
    {"fail_after_tokens", "--fail-after-tokens", &knobs::fail_after_tokens},
    {"slow_health_ms", "--slow-health-ms", &knobs::slow_health_ms},
    {"slow_slots_ms", "--slow-slots-ms", &knobs::slow_slots_ms},
    {"hold_until_clients", "--hold-until-clients", &knobs::hold_until_clients},
    {"eos_after", "--eos-after", &knobs::eos_after},
    {"start_delay_ms", "--start-delay-ms", &knobs::start_delay_ms},
    {"keep_alive_ms", "--keep-alive-ms", &knobs::keep_alive_ms},
};

// Boolean knobs: each spelling sets the member to `value`. In a control body the value comes from the JSON.
struct bool_def {
  std::string_view flag;
  bool knobs::*m;
  bool value;
};

bool_def const bool_defs[] = {
    {"--kv-unified", &knobs::kv_unified, true},
    {"-kvu", &knobs::kv_unified, true},
    {"--no-kv-unified", &knobs::kv_unified, false},
    {"--metrics", &knobs::metrics, true},
    {"--embedding", &knobs::embedding, true},
    {"--embeddings", &knobs::embedding, true},
    {"--slots", &knobs::slots_endpoint, true},
    {"--no-slots", &knobs::slots_endpoint, false},
    {"--cache-prompt", &knobs::cache_prompt, true},
    {"--no-cache-prompt", &knobs::cache_prompt, false},
    {"--hang-before-first-token", &knobs::hang_before_first_token, true},
    {"--malformed-json", &knobs::malformed_json, true},
    {"--slots-block-on-prefill", &knobs::slots_block_on_prefill, true},
    {"--ignore-sigterm", &knobs::ignore_sigterm, true},
    {"-v", &knobs::verbose, true},
    {"--verbose", &knobs::verbose, true},
};

// llama-server flags accepted and ignored: with a value, and without.
std::string_view const ignored_value_flags[] = {
    "-t", "--threads", "-tb", "--threads-batch", "--threads-http", "-b", "--batch-size", "-ub",
    "--ubatch-size", "--cache-reuse", "-cram", "--cache-ram", "-ngl", "--n-gpu-layers", "--gpu-layers",
    "-fa", "--flash-attn", "--log-file", "-to", "--timeout", "--slot-save-path", "-sps",
    "--slot-prompt-similarity", "--chat-template", "--chat-template-file", "-n", "--n-predict", "-s", "--seed",
    "--temp", "--top-k", "--top-p", "--min-p", "--repeat-penalty", "-ctk", "--cache-type-k", "-ctv",
    "--cache-type-v", "--keep", "--numa", "-dev", "--device", "--mlock-limit", "--reasoning-format",
    "--sleep-idle-seconds", "--log-verbosity", "-lv", "--path", "--api-prefix", "--rope-scaling",
    "--rope-freq-base", "--yarn-orig-ctx", "-ot", "--override-tensor", "--override-kv", "-dt",
    "--defrag-thold", "--ssl-key-file", "--ssl-cert-file", "--props", "--media-path"};
std::string_view const ignored_bool_flags[] = {
    "-cb", "--cont-batching", "-nocb", "--no-cont-batching", "--warmup", "--no-warmup",
    "--cache-idle-slots", "--no-cache-idle-slots", "--context-shift", "--no-context-shift", "--jinja",
    "--no-jinja", "--no-webui", "--webui", "--mlock", "--no-mmap", "--mmap", "--log-disable", "--log-colors", "--no-perf", "--log-prefix", "--log-timestamps", "--check-tensors",
    "--swa-full", "--no-op-offload", "--direct-io", "--no-direct-io", "--enable-reasoning"};
// clang-format on

bool has_spelling(std::string_view flags, std::string_view arg) {
  while (!flags.empty()) {
    auto sp = flags.find(' ');
    if (flags.substr(0, sp) == arg) return true;
    if (sp == std::string_view::npos) break;
    flags.remove_prefix(sp + 1);
  }
  return false;
}

std::string normalize(std::string_view s) {
  while (!s.empty() && s.front() == '-')
    s.remove_prefix(1);
  std::string out(s);
  for (char& c : out)
    if (c == '-') c = '_';
  return out;
}

bool key_matches(value_def const& d, std::string_view normalized) {
  if (d.key == normalized) return true;
  std::string_view flags = d.flags;
  while (!flags.empty()) {
    auto sp = flags.find(' ');
    if (normalize(flags.substr(0, sp)) == normalized) return true;
    if (sp == std::string_view::npos) break;
    flags.remove_prefix(sp + 1);
  }
  return false;
}

template <class T>
bool parse_number(std::string_view s, T& out) {
  auto r = std::from_chars(s.data(), s.data() + s.size(), out);  // GCC 12 has it for double too
  return r.ec == std::errc{} && r.ptr == s.data() + s.size();
}

bool set_from_text(knobs& k, member m, std::string_view text) {
  return std::visit(
      [&](auto mp) -> bool {
        using T = std::remove_reference_t<decltype(k.*mp)>;
        if constexpr (std::is_same_v<T, std::string>) {
          k.*mp = std::string(text);
          return true;
        } else if constexpr (std::is_same_v<T, bool>) {
          if (text == "1" || text == "true" || text == "on") return (k.*mp = true), true;
          if (text == "0" || text == "false" || text == "off") return (k.*mp = false), true;
          return false;
        } else {
          return parse_number(text, k.*mp);
        }
      },
      m);
}

bool set_from_json(knobs& k, member m, json::value const& v) {
  return std::visit(
      [&](auto mp) -> bool {
        using T = std::remove_reference_t<decltype(k.*mp)>;
        if constexpr (std::is_same_v<T, std::string>) {
          if (!v.is_string()) return false;
          k.*mp = std::string(v.get_string());
          return true;
        } else if constexpr (std::is_same_v<T, bool>) {
          if (!v.is_bool()) return false;
          k.*mp = v.get_bool();
          return true;
        } else if constexpr (std::is_same_v<T, double>) {
          if (!v.is_number()) return false;
          k.*mp = v.to_number<double>();
          return true;
        } else {
          if (!v.is_int64() && !v.is_uint64()) return false;
          std::error_code ec;
          T n = v.to_number<T>(ec);
          if (ec) return false;
          k.*mp = n;
          return true;
        }
      },
      m);
}

bool valid_pooling(std::string_view p) {
  return p.empty() || p == "none" || p == "mean" || p == "cls" || p == "last" || p == "rank";
}

bool looks_like_flag(std::string_view a) {
  if (a.size() < 2 || a[0] != '-') return false;
  return !(a[1] >= '0' && a[1] <= '9') && a[1] != '.';
}

}  // namespace

bool parse_args(int argc, char** argv, knobs& k, std::string& error) {
  bool alias_given = false;
  bool model_given = false;
  for (int i = 1; i < argc; ++i) {
    std::string_view a = argv[i];
    std::string inline_value;
    bool has_inline = false;
    if (a.starts_with("--")) {
      if (auto eq = a.find('='); eq != std::string_view::npos) {
        inline_value = std::string(a.substr(eq + 1));
        a = a.substr(0, eq);
        has_inline = true;
      }
    }
    auto next_value = [&](std::string_view& out) -> bool {
      if (has_inline) {
        out = inline_value;
        return true;
      }
      if (i + 1 >= argc) {
        error = "error: missing value for " + std::string(a);
        return false;
      }
      out = argv[++i];
      return true;
    };

    bool done = false;
    for (auto const& d : value_defs) {
      if (!has_spelling(d.flags, a)) continue;
      std::string_view v;
      if (!next_value(v)) return false;
      if (!set_from_text(k, d.m, v)) {
        error = "error: invalid value for " + std::string(a) + ": '" + std::string(v) + "'";
        return false;
      }
      if (d.key == "alias") alias_given = true;
      if (d.key == "model_path") model_given = true;
      done = true;
      break;
    }
    if (done) continue;
    for (auto const& d : bool_defs) {
      if (d.flag != a) continue;
      k.*d.m = d.value;
      done = true;
      break;
    }
    if (done) continue;
    if (a == "--ctx-check") {
      std::string_view v;
      if (!next_value(v)) return false;
      if (v != "prompt" && v != "total") {
        error = "error: --ctx-check takes prompt|total";
        return false;
      }
      k.ctx_check_prompt_only = v == "prompt";
      continue;
    }
    if (a == "--reranking" || a == "--rerank") {
      k.embedding = true;  // llama-server: embedding mode with rank pooling (a later --pooling overrides it)
      k.pooling = "rank";
      continue;
    }
    if (a == "--api-key-file") {
      std::string_view v;
      if (!next_value(v)) return false;
      std::ifstream f{std::string(v)};
      std::string line;
      if (!f || !std::getline(f, line)) {
        error = "error: cannot read --api-key-file " + std::string(v);
        return false;
      }
      k.api_key = line;
      continue;
    }
    for (auto f : ignored_value_flags) {
      if (f != a) continue;
      std::string_view v;
      if (!next_value(v)) return false;
      done = true;
      break;
    }
    if (done) continue;
    for (auto f : ignored_bool_flags) {
      if (f != a) continue;
      done = true;
      break;
    }
    if (done) continue;
    // Unknown: warn, and take the next argument as its value unless it looks like a flag.
    bool takes_value = !has_inline && i + 1 < argc && !looks_like_flag(argv[i + 1]);
    std::fprintf(stderr, "warning: fake_llama_server ignores unknown argument %s%s%s\n", argv[i],
                 takes_value ? " " : "", takes_value ? argv[i + 1] : "");
    if (takes_value) ++i;
  }
  if (model_given && !alias_given) {
    std::string_view p = k.model_path;
    if (auto slash = p.rfind('/'); slash != std::string_view::npos) p.remove_prefix(slash + 1);
    k.alias = std::string(p);
  }
  if (k.parallel < 1 || k.ctx_size < 1 || k.n_ctx_per_request() < 1) {
    error = "error: -c and -np must be positive (and -c >= -np without --kv-unified)";
    return false;
  }
  if (k.port < 0 || k.port > 65535) {
    error = "error: --port out of range";
    return false;
  }
  if (!valid_pooling(k.pooling)) {
    error = "error: invalid value for --pooling: '" + k.pooling + "' (none|mean|cls|last|rank)";
    return false;
  }
  if (k.embd_dim < 1 || k.embd_dim > 65536) {
    error = "error: --embd-dim must be 1..65536";
    return false;
  }
  return true;
}

bool apply_control(json::object const& body, knobs& k, control_actions& actions, std::string& error) {
  knobs next = k;
  control_actions acts;
  for (auto const& kv : body) {
    std::string_view raw_key = kv.key();
    json::value const& v = kv.value();
    std::string key = normalize(raw_key);
    auto bad = [&] {
      error = "bad value for '" + std::string(raw_key) + "'";
      return false;
    };
    if (key == "crash_now") {
      if (!v.is_bool()) return bad();
      acts.crash_now = v.get_bool();
      continue;
    }
    if (key == "reset_stats" || key == "reset_slots") {
      if (!v.is_bool()) return bad();
      (key == "reset_stats" ? acts.reset_stats : acts.reset_slots) = v.get_bool();
      continue;
    }
    if (key == "reranking" || key == "rerank") {
      if (!v.is_bool()) return bad();
      next.embedding = v.get_bool();
      next.pooling = v.get_bool() ? "rank" : "";
      continue;
    }
    if (key == "ctx_check") {
      if (!v.is_string() || (v.get_string() != "prompt" && v.get_string() != "total")) return bad();
      next.ctx_check_prompt_only = v.get_string() == "prompt";
      continue;
    }
    bool found = false;
    for (auto const& d : value_defs) {
      if (!key_matches(d, key)) continue;
      if (!set_from_json(next, d.m, v)) return bad();
      if (d.key == "load_delay_ms") acts.load_delay_changed = true;
      if (d.key == "crash_after_ms") acts.crash_timer_changed = true;
      if (d.key == "ctx_size" || d.key == "parallel") acts.slots_changed = true;
      found = true;
      break;
    }
    if (found) continue;
    for (auto const& d : bool_defs) {
      std::string flag_key = normalize(d.flag);
      // "no_slots": true means slots_endpoint = false; "slots": true means true.
      if (flag_key != key) continue;
      if (!v.is_bool()) return bad();
      next.*d.m = v.get_bool() ? d.value : !d.value;
      if (d.m == &knobs::kv_unified) acts.slots_changed = true;
      found = true;
      break;
    }
    if (found) continue;
    if (key == "slots_endpoint") {
      if (!v.is_bool()) return bad();
      next.slots_endpoint = v.get_bool();
      continue;
    }
    error = "unknown control key '" + std::string(raw_key) + "'";
    return false;
  }
  if (next.parallel < 1 || next.ctx_size < 1 || next.n_ctx_per_request() < 1) {
    error = "ctx_size and parallel must be positive";
    return false;
  }
  if (!valid_pooling(next.pooling) || next.embd_dim < 1 || next.embd_dim > 65536) {
    error = "pooling must be none|mean|cls|last|rank and embd_dim 1..65536";
    return false;
  }
  k = std::move(next);
  actions = acts;
  return true;
}

json::object knobs_json(knobs const& k) {
  json::object o;
  for (auto const& d : value_defs) {
    std::visit([&](auto mp) { o[d.key] = json::value_from(k.*mp); }, d.m);
  }
  o["kv_unified"] = k.kv_unified;
  o["metrics"] = k.metrics;
  o["embedding"] = k.embedding;
  o["reranking"] = k.reranking();
  o["slots_endpoint"] = k.slots_endpoint;
  o["cache_prompt"] = k.cache_prompt;
  o["hang_before_first_token"] = k.hang_before_first_token;
  o["malformed_json"] = k.malformed_json;
  o["slots_block_on_prefill"] = k.slots_block_on_prefill;
  o["ignore_sigterm"] = k.ignore_sigterm;
  o["verbose"] = k.verbose;
  o["ctx_check"] = k.ctx_check_prompt_only ? "prompt" : "total";
  o["n_ctx"] = k.n_ctx_per_request();
  return o;
}

}  // namespace fake_llama
