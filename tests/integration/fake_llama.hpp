// The llama-server double as the integration suites drive it. Included by the suites whose CMake target
// defines FAKE_LLAMA_SERVER (the double's path).
#pragma once

#include "http_test_util.hpp"

#include <algorithm>
#include <memory>

namespace ray::itest {

// A number field of a JSON object, -1 when absent or not a number.
inline std::int64_t num(boost::json::object const& o, std::string_view key) {
  auto const* v = o.if_contains(key);
  return v && v->is_number() ? v->to_number<std::int64_t>() : -1;
}

// The llama-server double, started on `port` (0 = ephemeral) with `args`; killed when the object dies.
class fake_llama {
 public:
  explicit fake_llama(std::vector<std::string> args, std::uint16_t port = 0) {
    std::vector<std::string> a{"--port", std::to_string(port)};
    a.insert(a.end(), args.begin(), args.end());
    spawned_at_ = std::chrono::steady_clock::now();
    proc_ = std::make_unique<rt::ray_process>(rt::spawn_options{.binary = FAKE_LLAMA_SERVER, .args = a});
    auto line =
        proc_->wait_for_log([](std::string_view l) { return l.starts_with("listening "); }, rt::in(kIo));
    if (line) {
      port_ = static_cast<std::uint16_t>(std::stoi(line->substr(10)));
      listening_at_ = std::chrono::steady_clock::now();
    }
  }

  bool ok() const { return port_ != 0; }
  std::uint16_t port() const { return port_; }
  std::string url() const { return "http://127.0.0.1:" + std::to_string(port_); }
  std::chrono::steady_clock::time_point spawned_at() const { return spawned_at_; }
  std::chrono::steady_clock::time_point listening_at() const { return listening_at_; }
  rt::ray_process& process() { return *proc_; }
  std::string output() const { return proc_->output(); }

  // The double's /__stats ({} when it does not answer).
  boost::json::object stats() const {
    auto r = roundtrip(port_, get("/__stats"));
    if (!r || r->status != 200) return {};
    return json_body(*r).value_or(boost::json::object{});
  }
  // POST /__control with these knobs.
  bool control(boost::json::object const& knobs) const {
    auto r = roundtrip(port_, post_json("/__control", boost::json::serialize(knobs)));
    return r && r->status == 200;
  }
  // How many GET /metrics the double has received (answered or still waiting).
  std::int64_t metrics_requests() const {
    auto st = stats();
    auto const* req = st.if_contains("requests");
    if (!req || !req->is_object()) return 0;
    return std::max<std::int64_t>(0, num(req->as_object(), "/metrics"));
  }
  // The double's own Prometheus text ("" without --metrics).
  std::string own_metrics() const { return scrape(port_); }

 private:
  std::unique_ptr<rt::ray_process> proc_;
  std::uint16_t port_{0};
  std::chrono::steady_clock::time_point spawned_at_{};
  std::chrono::steady_clock::time_point listening_at_{};
};

// `ray serve` arguments that attach to `f` (and keep the host's pressure out of the test).
inline std::vector<std::string> attach(fake_llama const& f) {
  auto a = no_host_pressure();
  a.push_back("--backend-url");
  a.push_back(f.url());
  return a;
}

}  // namespace ray::itest
