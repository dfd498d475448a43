// ray::prompt — template rendering (built-in email templates + prompts.templates) and, later, the prompt
// compiler. Pure functions; no I/O; thread-safe.
#pragma once

#include "ray/config/config.hpp"
#include "ray/core/core.hpp"

#include <map>
#include <string>

namespace ray::prompt {

struct rendered {
  std::string system;  // empty when the template has none
  std::string input;
  std::string family;
  config::lane lane{config::lane::draft};
  std::optional<std::uint32_t> default_max_tokens{};
  std::optional<std::string> response_format{};
};

// Renders `{{ name }}` placeholders (spaces inside the braces optional) of template `id`, looked up in the
// configured templates first, then the built-in ones. Errors (400 invalid_request): unknown template, a
// declared variable missing or blank, a variable that the template does not declare.
result<rendered> render_template(config::config const& cfg, std::string const& id,
                                 std::map<std::string, std::string> const& variables);

// Substitutes placeholders in one text; unknown names are an error naming them.
result<std::string> substitute(std::string_view text, std::map<std::string, std::string> const& variables);

// ---- Prompt compiler (native routes only; serving-core.md "Prompt compiler") ----

struct compiled {
  std::string system;
  std::string input;
  std::string family_key;         // "template:<family>" | "meta:<key>=<value>" | "shape:<16 hex>"
  std::uint64_t affinity_key{0};  // hash of the family key and the final system prompt
  std::size_t chars_before{0};    // code points of system + input before compiling
  std::size_t chars_after{0};
};

// Whitespace collapse and repeated-line dedupe as configured (each only when enabled, and nothing at all when
// cfg.enabled is false), then the family key. Never leaves a non-blank input empty.
compiled compile(config::prompt_compiler_config const& cfg, std::string system, std::string input,
                 std::string_view template_family, std::map<std::string, std::string> const& metadata);

// CRLF→LF, trim each line, runs of spaces/tabs → one space, at most one blank line in a row, trim.
std::string collapse_whitespace(std::string_view text);
// Drops later duplicates of a line (case-insensitive, trimmed); blank lines are kept.
std::string dedupe_lines(std::string_view text);
// The input with lines of ≥ 20 chars that repeat a system line removed (unless that would empty it).
std::string drop_lines_repeating_system(std::string_view input, std::string_view system);
// The shape of an input: URLs, emails, numbers, quoted values and long hex masked, first 240 chars.
std::string input_shape(std::string_view input);

// Prompt-length degradation: cuts system + input to at most max_chars code points, system first (the input
// keeps priority), never splitting a code point. Returns true when anything was cut.
bool truncate_prompt(std::string& system, std::string& input, std::size_t max_chars);

// 64-bit FNV-1a (stable across runs; used for affinity keys and family shapes).
std::uint64_t hash64(std::string_view data, std::uint64_t seed = 0xcbf29ce484222325ULL) noexcept;

}  // namespace ray::prompt
