// Private to `ray deploy render`: what render.cpp computes once and the unit templates (render_units.cpp)
// read.
#pragma once

#include "ray/ops/ops.hpp"

#include <string>
#include <vector>

namespace ray::ops::detail {

// Where the rendered files are installed (INSTALL.md copies them there).
inline constexpr char const* config_dir = "/etc/ray";
inline constexpr char const* installed_config = "/etc/ray/ray.json";
inline constexpr char const* installed_env = "/etc/ray/ray.env";
inline constexpr char const* working_dir = "/var/lib/ray";
inline constexpr char const* gateway_unit = "ray-gateway.service";
inline constexpr char const* backend_unit = "ray-llama-cpp.service";

struct unit_inputs {
  config::config const* cfg{nullptr};
  render_options const* opts{nullptr};
  bool supervise{false};                  // llama-server runs inside Ray's unit (launchProfile.supervise)
  bool own_backend{false};                // a separate llama-server unit is written
  std::uint64_t ray_high{0}, ray_max{0};  // MemoryHigh/MemoryMax of ray-gateway.service
  std::uint64_t backend_high{0}, backend_max{0};  // of ray-llama-cpp.service
  std::vector<std::string> read_write_paths;      // absolute
  std::vector<std::string> backend_args;          // llama-server argv (binary first), secrets removed
  bool mlock{false};
};

// systemd's ExecStart= word quoting: shell_quote, then % and $ doubled (specifiers and variables).
std::string unit_command(std::vector<std::string> const& argv);
std::string gateway_service(unit_inputs const& in);
std::string backend_service(unit_inputs const& in);

}  // namespace ray::ops::detail
