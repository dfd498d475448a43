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

}  // namespace ray::prompt
