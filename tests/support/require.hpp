// RAY_SKIP_OR_FAIL(why): a test that cannot run here — a tool or target is missing — is skipped on a
// developer's machine but fails where everything must run (CI exports RAY_REQUIRE_TOOLS=1), so a suite can
// never pass by silently not running. Use it instead of GTEST_SKIP in a test body.
#pragma once

#include <gtest/gtest.h>

#include <cstdlib>
#include <string_view>

namespace ray::test {

inline bool tools_required() {
  char const* v = std::getenv("RAY_REQUIRE_TOOLS");
  return v != nullptr && std::string_view(v) == "1";
}

}  // namespace ray::test

#define RAY_SKIP_OR_FAIL(why)                                                 \
  do {                                                                        \
    if (::ray::test::tools_required()) {                                      \
      FAIL() << why << " (RAY_REQUIRE_TOOLS=1: a missing tool is a failure)"; \
    } else {                                                                  \
      GTEST_SKIP() << why;                                                    \
    }                                                                         \
  } while (0)
