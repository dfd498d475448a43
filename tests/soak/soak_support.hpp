// What the soak tests share: knobs from the environment, the RSS of the `ray` under test, whether that `ray`
// is the sanitizer build (its bounds differ), and whether its stderr holds a sanitizer report.
#pragma once

#include <sys/types.h>

#include <cstdlib>
#include <fstream>
#include <string>
#include <utility>

namespace ray::itest {

inline int env_int(char const* name, int fallback) {
  char const* v = std::getenv(name);
  if (v == nullptr || *v == '\0') return fallback;
  return std::atoi(v);
}

// Peak resident set (VmHWM) and current RSS of a process in MiB, from /proc (-1 when unreadable).
inline std::pair<double, double> rss_mib(pid_t pid) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/status");
  std::string line;
  double hwm = -1, rss = -1;
  while (std::getline(in, line)) {
    if (line.starts_with("VmHWM:")) hwm = std::stod(line.substr(6)) / 1024.0;
    if (line.starts_with("VmRSS:")) rss = std::stod(line.substr(6)) / 1024.0;
  }
  return {hwm, rss};
}

// The `ray` under test is this build's (so sanitized when this build is) unless RAY_TEST_BINARY names
// another.
inline bool sanitized_ray() {
#ifdef RAY_SANITIZED
  return std::getenv("RAY_TEST_BINARY") == nullptr;
#else
  return false;
#endif
}

inline bool sanitizer_report(std::string const& text) {
  return text.find("AddressSanitizer") != std::string::npos ||
         text.find("LeakSanitizer") != std::string::npos || text.find("runtime error:") != std::string::npos;
}

}  // namespace ray::itest
