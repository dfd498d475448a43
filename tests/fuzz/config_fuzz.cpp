// libFuzzer target for the config loader (config::load_from_text) and the views of a loaded config. The input
// is the JSON text, then optionally a NUL byte and environment lines `NAME=value` (at most 16; a line
// starting with `--` is a `ray serve` flag instead: --profile=, --host=, --port=, --backend-url=,
// --model-path=,
// --llama-server=, --allow-unauthenticated-public). Any input must load or give an error naming a path, never
// a crash; a loaded config must validate, round-trip through to_json (config.hpp: "Loading it as a file
// gives back an equal config"), name a source for every leaf, and redact its secrets in the public view.
// Seeds: tests/fuzz/corpus/config/.
#include "ray/config/config.hpp"
#include "ray/config/detail.hpp"

#include <boost/json/parse.hpp>
#include <boost/json/serialize.hpp>

#include <charconv>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string_view>

namespace {

namespace rc = ray::config;
namespace json = boost::json;

constexpr std::size_t max_input = 64 * 1024;
constexpr std::size_t max_env_lines = 16;

void check(bool ok) {
  if (!ok) std::abort();
}

// One `NAME=value` or `--flag[=value]` line. Lines with a NUL byte cannot come from an environment or argv.
void take_line(std::string_view line, rc::env_map& env, rc::flag_overrides& flags) {
  if (line.find('\0') != std::string_view::npos) return;
  auto eq = line.find('=');
  std::string_view name = line.substr(0, eq);
  std::string_view value = eq == std::string_view::npos ? std::string_view{} : line.substr(eq + 1);
  if (name.starts_with("--")) {
    if (name == "--profile") flags.profile = std::string(value);
    if (name == "--host") flags.host = std::string(value);
    if (name == "--backend-url") flags.backend_url = std::string(value);
    if (name == "--model-path") flags.model_path = std::string(value);
    if (name == "--llama-server") flags.llama_server = std::string(value);
    if (name == "--allow-unauthenticated-public") flags.allow_unauthenticated_public = true;
    if (name == "--port") {
      std::uint32_t port{};
      auto [p, ec] = std::from_chars(value.data(), value.data() + value.size(), port);
      if (ec == std::errc() && p == value.data() + value.size()) flags.port = port;
    }
    return;
  }
  if (eq == std::string_view::npos || name.empty()) return;
  env[std::string(name)] = std::string(value);
}

void check_loaded(rc::loaded_config const& loaded) {
  auto const& cfg = loaded.cfg;
  check(rc::validate(cfg).has_value());
  (void)rc::referenced_env_names(cfg);

  // The effective config loads back, as a file, to the same config.
  auto full = rc::to_json(cfg);
  auto text = json::serialize(full);
  auto again = rc::load_from_text(text, {}, {});
  check(again.has_value());
  check(again->cfg == cfg);

  // Every leaf of the effective config has a source.
  json::value full_value(std::move(full));
  std::vector<std::pair<std::string, json::value const*>> leaves;
  rc::detail::flatten(full_value, "", leaves);
  for (auto const& leaf : leaves)
    check(loaded.sources.contains(leaf.first));

  // The public view is JSON with the secrets replaced.
  auto pub = rc::to_public_json(loaded);
  auto const& adapter = pub.at("model").at("adapter");
  for (auto const& kv : adapter.at("headers").as_object())
    check(kv.value() == "[redacted]");
  for (auto const& digest : pub.at("auth").at("apiKeySha256").as_array())
    check(digest == "[redacted]");
  boost::system::error_code ec;
  (void)json::parse(json::serialize(pub), ec);
  check(!ec);
  (void)rc::explain(loaded);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(std::uint8_t const* data, std::size_t size) {
  if (size > max_input) return 0;
  std::string_view input(reinterpret_cast<char const*>(data), size);
  auto nul = input.find('\0');
  std::string_view json_text = input.substr(0, nul);
  rc::env_map env;
  rc::flag_overrides flags;
  if (nul != std::string_view::npos) {
    std::string_view rest = input.substr(nul + 1);
    for (std::size_t n = 0; !rest.empty() && n < max_env_lines; ++n) {
      auto end = rest.find('\n');
      take_line(rest.substr(0, end), env, flags);
      rest = end == std::string_view::npos ? std::string_view{} : rest.substr(end + 1);
    }
  }
  auto loaded = rc::load_from_text(json_text, env, flags);
  if (!loaded) {
    auto const& e = loaded.error();
    check(e.code == ray::errc::invalid_request);
    check(!e.message.empty());
    return 0;
  }
  check_loaded(*loaded);
  return 0;
}
