// The llama-server flag builder (flags.hpp). Spellings are llama-server's (common/arg.cpp of the build whose
// replies are recorded in tests/fixtures/llama-server).
#include "ray/backend/flags.hpp"

namespace ray::backend {

std::vector<std::string> llama_server_args(config::launch_profile const& p,
                                           std::string const& model_path_override, config::model_kind kind,
                                           std::optional<std::string> const& pooling) {
  std::vector<std::string> a;
  a.reserve(48 + p.extra_args.size());
  auto opt = [&](char const* flag, std::string value) {
    a.emplace_back(flag);
    a.push_back(std::move(value));
  };
  auto num = [&](char const* flag, auto value) { opt(flag, std::to_string(value)); };

  opt("-m", model_path_override.empty() ? p.model_path : model_path_override);
  opt("--host", p.host);
  num("--port", p.port);
  if (!p.alias.empty()) opt("-a", p.alias);
  num("-c", p.ctx_size);
  num("-np", p.parallel);
  num("-t", p.threads);
  if (p.threads_batch) num("-tb", *p.threads_batch);
  if (p.threads_http) num("--threads-http", *p.threads_http);
  num("-b", p.batch_size);
  num("-ub", p.ubatch_size);
  num("--cache-reuse", p.cache_reuse);
  num("--cache-ram", p.cache_ram_mib);

  if (!p.cache_prompt) a.emplace_back("--no-cache-prompt");
  a.emplace_back(p.continuous_batching ? "-cb" : "--no-cont-batching");
  if (p.enable_metrics) a.emplace_back("--metrics");
  a.emplace_back(p.expose_slots ? "--slots" : "--no-slots");
  if (!p.warmup) a.emplace_back("--no-warmup");
  a.emplace_back(p.enable_unified_kv ? "--kv-unified" : "--no-kv-unified");
  a.emplace_back(p.context_shift ? "--context-shift" : "--no-context-shift");
  a.emplace_back(p.cache_idle_slots ? "--cache-idle-slots" : "--no-cache-idle-slots");

  if (kind == config::model_kind::embedding) {
    a.emplace_back("--embedding");
    if (pooling && !pooling->empty()) opt("--pooling", *pooling);
  } else if (kind == config::model_kind::rerank) {
    a.emplace_back("--reranking");
  }

  a.insert(a.end(), p.extra_args.begin(), p.extra_args.end());
  return a;
}

namespace {

std::string single_quoted(std::string_view arg) {
  std::string out = "'";
  for (char c : arg) {
    if (c == '\'')
      out += "'\\''";
    else
      out += c;
  }
  out += '\'';
  return out;
}

}  // namespace

std::string shell_quote(std::string_view arg) {
  auto safe = [](char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' ||
           c == '@' || c == '%' || c == '+' || c == '=' || c == ':' || c == ',' || c == '.' || c == '/' ||
           c == '-';
  };
  bool plain = !arg.empty();
  for (char c : arg)
    plain = plain && safe(c);
  return plain ? std::string(arg) : single_quoted(arg);
}

std::string shell_command(std::vector<std::string> const& args) {
  std::string out;
  for (std::size_t i = 0; i < args.size(); ++i) {
    if (i > 0) out += ' ';
    // A first word containing '=' would be read as a variable assignment, not as the command.
    if (i == 0 && args[i].find('=') != std::string::npos)
      out += single_quoted(args[i]);
    else
      out += shell_quote(args[i]);
  }
  return out;
}

}  // namespace ray::backend
