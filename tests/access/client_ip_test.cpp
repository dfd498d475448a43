#include "ray/access/access.hpp"

#include <gtest/gtest.h>

#include <string>
#include <vector>

namespace {

using ray::access::is_private_address;

// Proxies on loopback and the private ranges (the rule these cases were written for).
ray::access::proxy_list const& private_proxies() {
  static auto const list = *ray::access::proxy_list::parse(
      {"127.0.0.0/8", "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "::1", "fc00::/7", "fe80::/10"});
  return list;
}

std::string ip(std::string_view peer, std::vector<std::string_view> xff, bool trust = true) {
  return ray::access::client_ip(peer, std::span<std::string_view const>(xff), trust, private_proxies());
}

// Review finding: any private peer counted as a trusted proxy. Now only rateLimit.trustedProxies do
// (loopback by default).
TEST(ClientIp, OnlyListedProxiesAreBelieved) {
  ray::config::rate_limit_config defaults;
  auto loopback = *ray::access::proxy_list::parse(defaults.trusted_proxies);
  std::vector<std::string_view> xff{"198.51.100.1"};
  auto call = [&](std::string_view peer, ray::access::proxy_list const& l) {
    return ray::access::client_ip(peer, std::span<std::string_view const>(xff), true, l);
  };
  EXPECT_EQ(call("127.0.0.1", loopback), "198.51.100.1");
  EXPECT_EQ(call("::1", loopback), "198.51.100.1");
  EXPECT_EQ(call("10.1.2.3", loopback), "10.1.2.3");  // a private neighbour is not our proxy
  EXPECT_EQ(call("192.168.1.9", loopback), "192.168.1.9");
  auto lan = *ray::access::proxy_list::parse({"10.1.0.0/16"});
  EXPECT_EQ(call("10.1.2.3", lan), "198.51.100.1");
  EXPECT_EQ(call("10.2.0.1", lan), "10.2.0.1");
  EXPECT_EQ(call("::ffff:10.1.2.3", lan), "198.51.100.1");  // IPv4-mapped peer
  // A forwarded chain: entries that are trusted proxies are skipped from the right, the next one is the
  // client.
  std::vector<std::string_view> chain{"203.0.113.5, 10.1.0.7"};
  EXPECT_EQ(ray::access::client_ip("10.1.2.3", std::span<std::string_view const>(chain), true, lan),
            "203.0.113.5");
  EXPECT_EQ(ray::access::client_ip("10.1.2.3", std::span<std::string_view const>(chain), true, loopback),
            "10.1.2.3");
}

TEST(ClientIp, TrustedProxyEntriesAreValidated) {
  using ray::access::proxy_list;
  EXPECT_TRUE(proxy_list::parse({"10.0.0.0/8", "fd00::/8", "::1/128"}).has_value());
  auto bad = proxy_list::parse({"10.0.0.0/8", "10.0.0.0/33"});
  ASSERT_FALSE(bad);
  EXPECT_EQ(bad.error().message,
            "rateLimit.trustedProxies[1]: '10.0.0.0/33' has a prefix longer than 32 bits");
  EXPECT_FALSE(proxy_list::parse({"proxy.local"}));
  EXPECT_FALSE(proxy_list::parse({"10.0.0.0/"}));
  EXPECT_FALSE(proxy_list::parse({"::/129"}));
}

TEST(ClientIp, WithoutForwardedHeadersThePeerIsTheClient) {
  EXPECT_EQ(ip("203.0.113.7", {}), "203.0.113.7");
  EXPECT_EQ(ip("127.0.0.1", {}), "127.0.0.1");
  EXPECT_EQ(ip("2001:db8::1", {}), "2001:db8::1");
}

TEST(ClientIp, SpoofedForwardedForFromAPublicPeerIsIgnored) {
  EXPECT_EQ(ip("203.0.113.7", {"198.51.100.1"}), "203.0.113.7");
  EXPECT_EQ(ip("2001:db8::7", {"198.51.100.1, 10.0.0.1"}), "2001:db8::7");
}

TEST(ClientIp, ForwardedForIsIgnoredWhenProxyHeadersAreNotTrusted) {
  EXPECT_EQ(ip("127.0.0.1", {"198.51.100.1"}, false), "127.0.0.1");
}

TEST(ClientIp, RightmostNonPrivateEntryIsUsedBehindALoopbackProxy) {
  // A client-written (spoofed) entry on the left, the real client appended by the proxy, then internal hops.
  EXPECT_EQ(ip("127.0.0.1", {"6.6.6.6, 198.51.100.1, 10.0.0.2"}), "198.51.100.1");
  EXPECT_EQ(ip("::1", {"198.51.100.1"}), "198.51.100.1");
  EXPECT_EQ(ip("10.1.2.3", {"6.6.6.6", "198.51.100.1,192.168.1.1", "172.16.0.9"}), "198.51.100.1");
}

TEST(ClientIp, EveryPrivateRangeCountsAsAProxyPeer) {
  for (std::string_view peer :
       {"127.0.0.1", "127.255.0.9", "10.0.0.1", "172.16.0.1", "172.31.255.255", "192.168.0.1", "::1",
        "fc00::1", "fd12:3456::1", "fe80::1", "fe80::1%eth0", "::ffff:10.0.0.1", "::ffff:127.0.0.1"})
    EXPECT_EQ(ip(peer, {"198.51.100.1"}), "198.51.100.1") << peer;
}

TEST(ClientIp, AddressesJustOutsideThePrivateRangesAreNotTrusted) {
  for (std::string_view peer : {"172.15.255.255", "172.32.0.1", "192.169.0.1", "11.0.0.1", "128.0.0.1",
                                "fec0::1", "fe00::1", "fb00::1", "::2", "::ffff:8.8.8.8", "169.254.1.1"})
    EXPECT_NE(ip(peer, {"198.51.100.1"}), "198.51.100.1") << peer;
}

TEST(ClientIp, APrivateOnlyChainGivesTheLeftmostValidEntry) {
  EXPECT_EQ(ip("127.0.0.1", {"192.168.1.20, 10.0.0.2, 172.16.0.3"}), "192.168.1.20");
  EXPECT_EQ(ip("127.0.0.1", {"garbage, 192.168.1.20", "10.0.0.2"}), "192.168.1.20");
}

TEST(ClientIp, Ipv4MappedAddressesAreNormalisedEverywhere) {
  EXPECT_EQ(ip("::ffff:203.0.113.7", {}), "203.0.113.7");
  EXPECT_EQ(ip("::ffff:127.0.0.1", {"::ffff:198.51.100.1"}), "198.51.100.1");
  EXPECT_EQ(ip("::FFFF:7f00:1", {"[::ffff:198.51.100.1]:443"}), "198.51.100.1");
  EXPECT_EQ(ip("127.0.0.1", {"198.51.100.1, ::ffff:10.0.0.1"}), "198.51.100.1");
  EXPECT_EQ(ip("::ffff:127.0.0.1", {"::ffff:10.0.0.5"}), "10.0.0.5");
}

TEST(ClientIp, PortsBracketsZonesAndSpacesAreStripped) {
  EXPECT_EQ(ip("127.0.0.1", {"198.51.100.1:5678"}), "198.51.100.1");
  EXPECT_EQ(ip("127.0.0.1", {"[2001:db8::1]:80"}), "2001:db8::1");
  EXPECT_EQ(ip("127.0.0.1", {"[2001:DB8:0:0::1]"}), "2001:db8::1");
  EXPECT_EQ(ip("127.0.0.1", {" \t2001:db8::1 \t"}), "2001:db8::1");
  EXPECT_EQ(ip("fe80::1%eth0", {}), "fe80::1");
}

TEST(ClientIp, GarbageEntriesAreSkipped) {
  EXPECT_EQ(ip("127.0.0.1", {"198.51.100.1, unknown, , 1.2.3, 1.2.3.4.5, 256.1.1.1, 1.2.3.4:99999, [::1, "
                             "1.2.3.4:, :80, [2001:db8::1]x, 2001:db8::1:80:zz, 0.0.0.0, ::, _hidden, "
                             "1.2.3.4%eth0, \"1.2.3.4\""}),
            "198.51.100.1");
  EXPECT_EQ(ip("127.0.0.1", {"not an address", ",,,"}), "127.0.0.1");
  EXPECT_EQ(ip("127.0.0.1", {""}), "127.0.0.1");
  EXPECT_EQ(ip("127.0.0.1", {std::string_view("1.2.3.4\0", 8)}), "127.0.0.1");
}

TEST(ClientIp, OnlyTheRightmost32EntriesAreConsidered) {
  // 100 entries: a public client far left, private hops after it. Only the last 32 are looked at, all
  // private, so the leftmost of those wins — the far-left entry is never reached.
  std::string xff = "198.51.100.1";
  for (int i = 0; i < 99; ++i)
    xff += ", 10.0.0." + std::to_string(i % 250 + 1);
  EXPECT_EQ(ip("127.0.0.1", {xff}), "10.0.0.68");  // entry 69 of 100 (index 68 = 99 - 31)

  std::vector<std::string> values;
  values.push_back("198.51.100.1");
  for (int i = 0; i < 99; ++i)
    values.push_back("10.0.1." + std::to_string(i + 1));
  std::vector<std::string_view> views(values.begin(), values.end());
  EXPECT_EQ(ip("127.0.0.1", views), "10.0.1.68");
}

TEST(ClientIp, OnlyTheLastKibibyteIsConsidered) {
  std::string padding(2000, 'x');
  EXPECT_EQ(ip("127.0.0.1", {"198.51.100.1, " + padding + ", 10.0.0.1"}), "10.0.0.1");
  std::string many_spaces = "198.51.100.1," + std::string(1100, ' ') + ",10.0.0.1";
  EXPECT_EQ(ip("127.0.0.1", {many_spaces}), "10.0.0.1");
  std::string near_limit = "198.51.100.1," + std::string(900, ' ') + ",10.0.0.1";
  EXPECT_EQ(ip("127.0.0.1", {near_limit}), "198.51.100.1");
}

TEST(ClientIp, AnUnparseablePeerIsReturnedBoundedAndForwardedForIgnored) {
  EXPECT_EQ(ip("unix-socket", {"198.51.100.1"}), "unix-socket");
  EXPECT_EQ(ip(std::string(500, 'p'), {}).size(), 64u);
}

TEST(IsPrivateAddress, ClassifiesLoopbackPrivateAndPublicAddresses) {
  EXPECT_TRUE(is_private_address("10.255.255.255"));
  EXPECT_TRUE(is_private_address("[::1]:8080"));
  EXPECT_TRUE(is_private_address("::ffff:192.168.0.1"));
  EXPECT_FALSE(is_private_address("8.8.8.8"));
  EXPECT_FALSE(is_private_address("2001:db8::1"));
  EXPECT_FALSE(is_private_address("not-an-ip"));
}

}  // namespace
