// Internal to ray::config: the JSON decoder, the validator with source-aware messages, and small helpers
// shared by the loader and the JSON views. Not part of the component's public API.
#pragma once

#include "ray/config/config.hpp"

#include <boost/json/value.hpp>

#include <functional>
#include <initializer_list>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace ray::config::detail {

namespace json = boost::json;

// "a" + "b" -> "a.b" ("" + "b" -> "b").
std::string join(std::string_view path, std::string_view key);

// A JSON value as shown in messages: compact JSON, cut to 80 characters.
std::string show(json::value const& v);

// Levenshtein distance on ASCII-lowercased text; "max_queue" and "maxQueue" count as equal.
std::size_t key_distance(std::string_view a, std::string_view b);

// The closest of `candidates` to `key` when it is close enough to be a plausible typo, else "".
std::string closest(std::string_view key, std::vector<std::string_view> const& candidates);

// " (set by RAY_X)" for "env:RAY_X", " (set by --port)" for "flag:--port", "" for the file and profiles.
std::string origin_note(std::string_view source);

// The error of a field: `<path>: <rule><origin note>`, with `param` = path.
error field_error(std::string const& path, std::string const& message, std::string_view source = {});

// The source recorded for `path`, or for its nearest ancestor that has one; "" when none.
std::string find_source(source_map const& sources, std::string const& path);

// Decodes one JSON document over a config: objects merge into what is there, arrays and scalars replace.
// Checks JSON types, that integers fit their field, and unknown keys (with a suggestion); ranges and
// cross-field rules are validate()'s. Every leaf it writes is recorded in `sources` under its JSON path.
// Stops at the first error.
class decoder {
 public:
  decoder(source_map& sources, std::string source) : sources_(sources), source_(std::move(source)) {}

  void root(json::value const& v, config& cfg);

  std::optional<error> const& failure() const noexcept { return err_; }
  // JSON paths of the TypeScript-era keys that were accepted and ignored, in document order.
  std::vector<std::string> const& ignored() const noexcept { return ignored_; }

 private:
  using handler = std::function<void(json::value const&, std::string const&)>;
  struct field {
    std::string_view key;
    handler fn;
  };

  void fail(std::string const& path, std::string const& message);
  void mark(std::string const& path) { sources_[path] = source_; }
  void object(json::value const& v, std::string const& path, std::initializer_list<field> fields,
              std::initializer_list<std::string_view> ignored = {});
  std::optional<std::int64_t> integer(json::value const& v, std::string const& path, std::int64_t lo,
                                      std::int64_t hi);

  handler u32(std::uint32_t& dst);
  handler u64(std::uint64_t& dst);
  handler i64(std::int64_t& dst);
  handler opt_u32(std::optional<std::uint32_t>& dst);
  handler opt_i32(std::optional<std::int32_t>& dst);
  handler opt_i64(std::optional<std::int64_t>& dst);
  handler number(double& dst);
  handler opt_number(std::optional<double>& dst);
  handler boolean(bool& dst);
  handler string(std::string& dst);
  handler opt_string(std::optional<std::string>& dst);
  handler strings(std::vector<std::string>& dst);
  handler string_map(std::map<std::string, std::string>& dst);
  template <class E>
  handler choice(E& dst, std::initializer_list<std::pair<std::string_view, E>> options);

  void server(json::value const& v, std::string const& path, server_config& s);
  void openai(json::value const& v, std::string const& path, openai_config& o);
  void model(json::value const& v, std::string const& path, model_config& m);
  void models(json::value const& v, std::string const& path, config& cfg);
  void residency(json::value const& v, std::string const& path, residency_config& r);
  void adapter(json::value const& v, std::string const& path, adapter_config& a);
  void launch(json::value const& v, std::string const& path, std::optional<launch_profile>& l);
  void warmups(json::value const& v, std::string const& path, std::vector<warmup_request>& w);
  void scheduler(json::value const& v, std::string const& path, scheduler_config& s);
  void cache(json::value const& v, std::string const& path, cache_config& c);
  void degradation(json::value const& v, std::string const& path, degradation_config& g);
  void prompt_compiler(json::value const& v, std::string const& path, prompt_compiler_config& p);
  void prompts(json::value const& v, std::string const& path, std::map<std::string, template_config>& t);
  void one_template(json::value const& v, std::string const& path, template_config& t);
  void async_queue(json::value const& v, std::string const& path, async_queue_config& q);
  void telemetry(json::value const& v, std::string const& path, telemetry_config& t);
  void auth(json::value const& v, std::string const& path, auth_config& a);
  void rate_limit(json::value const& v, std::string const& path, rate_limit_config& r);

  source_map& sources_;
  std::string source_;
  std::optional<error> err_;
  std::vector<std::string> ignored_;
};

// validate() with messages that say which layer set the offending value (`sources` may be null).
result<void> validate_with(config const& cfg, source_map const* sources);

// The leaves of a JSON document in document order: scalars, arrays, empty objects and nulls, by JSON path.
void flatten(json::value const& v, std::string const& path,
             std::vector<std::pair<std::string, json::value const*>>& out);

}  // namespace ray::config::detail
