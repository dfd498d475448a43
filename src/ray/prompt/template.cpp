#include "ray/prompt/prompt.hpp"

namespace ray::prompt {

result<std::string> substitute(std::string_view text, std::map<std::string, std::string> const& variables) {
  std::string out;
  out.reserve(text.size() + 64);
  std::size_t pos = 0;
  while (pos < text.size()) {
    auto open = text.find("{{", pos);
    if (open == std::string_view::npos) break;
    auto close = text.find("}}", open + 2);
    if (close == std::string_view::npos) break;
    out.append(text.substr(pos, open - pos));
    std::string name(trim(text.substr(open + 2, close - open - 2)));
    auto it = variables.find(name);
    if (it == variables.end())
      return ray::error{errc::invalid_request, "template placeholder '" + name + "' has no value"};
    out.append(it->second);
    pos = close + 2;
  }
  out.append(text.substr(pos));
  return out;
}

result<rendered> render_template(config::config const& cfg, std::string const& id,
                                 std::map<std::string, std::string> const& variables) {
  config::template_config const* tpl = nullptr;
  if (auto it = cfg.templates.find(id); it != cfg.templates.end()) tpl = &it->second;
  if (!tpl) {
    auto const& builtin = config::builtin_templates();
    if (auto it = builtin.find(id); it != builtin.end()) tpl = &it->second;
  }
  if (!tpl) {
    ray::error err{errc::invalid_request, "unknown templateId '" + id + "'"};
    err.param = "templateId";
    return err;
  }
  for (auto const& name : tpl->variables) {
    auto it = variables.find(name);
    if (it == variables.end() || trim(it->second).empty()) {
      ray::error err{errc::invalid_request,
                     "templateVariables." + name + " is required by template '" + id + "'"};
      err.param = "templateVariables." + name;
      return err;
    }
  }
  for (auto const& [name, _] : variables) {
    bool declared = false;
    for (auto const& v : tpl->variables)
      declared = declared || v == name;
    if (!declared) {
      ray::error err{errc::invalid_request,
                     "templateVariables." + name + " is not a variable of template '" + id + "'"};
      err.param = "templateVariables." + name;
      return err;
    }
  }
  rendered out;
  auto input = substitute(tpl->input, variables);
  if (!input) return input.error();
  out.input = std::move(*input);
  if (tpl->system) {
    auto sys = substitute(*tpl->system, variables);
    if (!sys) return sys.error();
    out.system = std::move(*sys);
  }
  out.family = tpl->family;
  out.lane = tpl->lane_;
  out.default_max_tokens = tpl->default_max_tokens;
  out.response_format = tpl->response_format;
  return out;
}

}  // namespace ray::prompt
