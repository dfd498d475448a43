#include "ray/http/http.hpp"

#include <gtest/gtest.h>

namespace {

TEST(HostHeader, AcceptsNamesAddressesAndPorts) {
  for (auto h : {"localhost", "localhost:3000", "my_container:80", "10.0.0.1", "api.example.com", "[::1]",
                 "[::1]:8080", "example.com.", "a-b.c_d:65535"})
    EXPECT_TRUE(ray::http::is_valid_host(h)) << h;
}

TEST(HostHeader, RejectsBadCharactersPortsAndBrackets) {
  for (auto h : {"", "a b", "exa$mple", "host:0", "host:70000", "host:", "host:12a", "[::1", "[zz]:80", "..",
                 "a..b", "[::1]x", "user@host"})
    EXPECT_FALSE(ray::http::is_valid_host(h)) << h;
}

}  // namespace
