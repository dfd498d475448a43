// The pure half of `ray bench`: histograms, what responses and streams said, the summary, baselines, the URL,
// the JSON document and the terminal table. No Asio.
#include "ray/bench/bench.hpp"

#include <boost/json/monotonic_resource.hpp>
#include <boost/json/parse.hpp>
#include <boost/json/serialize.hpp>
#include <boost/json/value.hpp>

#include <algorithm>
#include <bit>
#include <cerrno>
#include <charconv>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <ostream>
#include <sstream>

namespace ray::bench {

namespace {

namespace json = boost::json;

// Histogram layout: values below 2^(sub_bits + 1) have a bucket each; above, 2^sub_bits buckets per power of
// two.
constexpr unsigned sub_bits = 8;
constexpr std::uint64_t exact_below = std::uint64_t{1} << (sub_bits + 1);
constexpr std::uint64_t subs = std::uint64_t{1} << sub_bits;

std::size_t bucket_of(std::uint64_t v) {
  if (v < exact_below) return static_cast<std::size_t>(v);
  unsigned e = 63u - static_cast<unsigned>(std::countl_zero(v));  // >= sub_bits + 1
  std::uint64_t sub = (v >> (e - sub_bits)) & (subs - 1);
  return static_cast<std::size_t>(exact_below + (e - sub_bits - 1) * subs + sub);
}

// The midpoint of a bucket.
std::uint64_t bucket_value(std::size_t i) {
  if (i < exact_below) return i;
  std::uint64_t k = i - exact_below;
  unsigned e = static_cast<unsigned>(k / subs) + sub_bits + 1;
  std::uint64_t sub = k % subs;
  std::uint64_t width = std::uint64_t{1} << (e - sub_bits);
  return ((subs + sub) << (e - sub_bits)) + width / 2;
}

// Parses small JSON documents (response bodies, stream events) into a stack buffer first.
template <class F>
void with_json(std::string_view text, F&& f) {
  unsigned char buf[8192];
  json::monotonic_resource mr(buf, sizeof buf);
  boost::system::error_code ec;
  json::value v = json::parse(text, ec, json::storage_ptr(&mr));
  if (!ec) f(v);
}

json::value const* find(json::object const& o, std::string_view key) {
  auto it = o.find(key);
  return it == o.end() || it->value().is_null() ? nullptr : &it->value();
}

std::optional<std::uint64_t> count_of(json::value const* v) {
  if (!v) return std::nullopt;
  if (v->is_int64() && v->get_int64() >= 0) return static_cast<std::uint64_t>(v->get_int64());
  if (v->is_uint64()) return v->get_uint64();
  if (v->is_double() && v->get_double() >= 0) return static_cast<std::uint64_t>(v->get_double());
  return std::nullopt;
}

// `{"error":{"code":"queue_full",…}}` → "queue_full"; a non-string code (llama-server sends the status) gives
// the type; nothing usable: nullopt.
std::optional<std::string> error_code_of(json::value const& v) {
  if (!v.is_object()) return std::nullopt;
  auto e = find(v.get_object(), "error");
  if (!e) return std::nullopt;
  if (e->is_string()) return std::string(e->get_string());
  if (!e->is_object()) return std::nullopt;
  auto const& eo = e->get_object();
  if (auto c = find(eo, "code"); c && c->is_string() && !c->get_string().empty())
    return std::string(c->get_string());
  if (auto t = find(eo, "type"); t && t->is_string() && !t->get_string().empty())
    return std::string(t->get_string());
  return std::nullopt;
}

bool is_rejection(unsigned status) {
  return status == 429 || status == 503;
}

double ms(std::uint64_t ns) {
  return static_cast<double>(ns) / 1e6;
}

std::optional<summary::dist> dist_of(histogram const& h) {
  if (h.count() == 0) return std::nullopt;
  return summary::dist{.p50_ms = ms(h.percentile(50)),
                       .p90_ms = ms(h.percentile(90)),
                       .p99_ms = ms(h.percentile(99)),
                       .max_ms = ms(h.max()),
                       .min_ms = ms(h.min()),
                       .mean_ms = h.mean() / 1e6,
                       .count = h.count()};
}

}  // namespace

// ---------------------------------------------------------------------------------------------------------------
// histogram

void histogram::record(std::uint64_t ns) {
  auto i = bucket_of(ns);
  if (i >= buckets_.size()) buckets_.resize(i + 1, 0);
  ++buckets_[i];
  if (count_ == 0 || ns < min_) min_ = ns;
  max_ = std::max(max_, ns);
  ++count_;
  sum_ += ns;
}

void histogram::merge(histogram const& o) {
  if (o.count_ == 0) return;
  if (o.buckets_.size() > buckets_.size()) buckets_.resize(o.buckets_.size(), 0);
  for (std::size_t i = 0; i < o.buckets_.size(); ++i)
    buckets_[i] += o.buckets_[i];
  min_ = count_ == 0 ? o.min_ : std::min(min_, o.min_);
  max_ = std::max(max_, o.max_);
  count_ += o.count_;
  sum_ += o.sum_;
}

std::uint64_t histogram::percentile(double p) const {
  if (count_ == 0) return 0;
  p = std::clamp(p, 0.0, 100.0);
  auto rank = static_cast<std::uint64_t>(std::ceil(p / 100.0 * static_cast<double>(count_)));
  rank = std::clamp<std::uint64_t>(rank, 1, count_);
  std::uint64_t seen = 0;
  for (std::size_t i = 0; i < buckets_.size(); ++i) {
    seen += buckets_[i];
    if (seen >= rank) return std::clamp(bucket_value(i), min_, max_);
  }
  return max_;
}

// ---------------------------------------------------------------------------------------------------------------
// stream_tracker

void stream_tracker::on_event(std::string_view data, std::uint64_t at_ns) {
  if (trim(data) == "[DONE]") {
    done = true;
    return;
  }
  bool token = false;
  with_json(data, [&](json::value const& v) {
    if (!v.is_object()) return;
    auto const& o = v.get_object();
    if (find(o, "error")) {
      error = error_code_of(v).value_or("stream_error");
      return;
    }
    if (auto u = find(o, "usage"); u && u->is_object()) {
      if (auto n = count_of(find(u->get_object(), "prompt_tokens"))) prompt_tokens = n;
      if (auto n = count_of(find(u->get_object(), "completion_tokens"))) completion_tokens = n;
    }
    auto choices = find(o, "choices");
    if (!choices || !choices->is_array() || choices->get_array().empty()) return;
    auto const& c0 = choices->get_array()[0];
    if (!c0.is_object()) return;
    auto const& c = c0.get_object();
    if (auto d = find(c, "delta"); d && d->is_object()) {
      auto const& delta = d->get_object();
      auto content = find(delta, "content");
      token =
          (content && content->is_string() && !content->get_string().empty()) || find(delta, "tool_calls");
    } else if (auto t = find(c, "text"); t && t->is_string()) {
      token = !t->get_string().empty();
    }
  });
  if (!token) return;
  ++token_events;
  if (!ttft_ns)
    ttft_ns = at_ns;
  else
    gaps_ns.push_back(at_ns >= last_token_ns_ ? at_ns - last_token_ns_ : 0);
  last_token_ns_ = at_ns;
}

// ---------------------------------------------------------------------------------------------------------------
// run_stats

void run_stats::add(response_record const& r) {
  ++requests;
  if (r.status == 0) {
    ++by_status["transport"];
    ++by_code[std::string(r.transport_error.empty() ? "transport_error" : r.transport_error)];
    return;
  }
  ++responses;
  ++by_status[std::to_string(r.status)];
  latency.record(r.latency_ns);
  bool const success = r.status >= 200 && r.status < 300;
  if (!success) {
    if (is_rejection(r.status)) ++rejections;
    std::optional<std::string> code;
    if (!r.stream) with_json(r.body, [&](json::value const& v) { code = error_code_of(v); });
    ++by_code[code.value_or("http_" + std::to_string(r.status))];
    return;
  }
  if (r.stream) {
    auto const& st = *r.stream;
    ++stream_responses;
    token_events += st.token_events;
    if (st.ttft_ns) ttft.record(*st.ttft_ns);
    for (auto g : st.gaps_ns)
      itl.record(g);
    if (st.completion_tokens) {
      ++usage_responses;
      completion_tokens += *st.completion_tokens;
      prompt_tokens += st.prompt_tokens.value_or(0);
    }
    if (st.error) {
      ++by_code["stream:" + *st.error];
      return;
    }
    if (!st.done) {
      ++by_code["stream_incomplete"];
      return;
    }
    ++ok;  // a stream does not say whether it was a cache hit (Ray sets x-ray-cache only on whole answers)
    return;
  }
  ++ok;
  if (r.openai) {
    ++cache_known;
    cached += r.x_ray_cache_hit ? 1 : 0;
  }
  with_json(r.body, [&](json::value const& v) {
    if (!v.is_object()) return;
    auto const& o = v.get_object();
    if (!r.openai) {
      if (auto c = find(o, "cached"); c && c->is_bool()) {
        ++cache_known;
        cached += c->get_bool() ? 1 : 0;
      }
      if (auto d = find(o, "deduplicated"); d && d->is_bool()) {
        ++dedupe_known;
        deduplicated += d->get_bool() ? 1 : 0;
      }
    }
    auto u = find(o, "usage");
    if (!u || !u->is_object()) return;
    auto const& uo = u->get_object();
    std::optional<std::uint64_t> pt, ct;
    if (r.openai) {
      pt = count_of(find(uo, "prompt_tokens"));
      ct = count_of(find(uo, "completion_tokens"));
    } else if (auto t = find(uo, "tokens"); t && t->is_object()) {
      pt = count_of(find(t->get_object(), "prompt"));
      ct = count_of(find(t->get_object(), "completion"));
    }
    if (ct) {
      ++usage_responses;
      completion_tokens += *ct;
      prompt_tokens += pt.value_or(0);
    }
  });
}

summary summarize(run_stats const& s, double elapsed_s) {
  summary out;
  out.elapsed_s = elapsed_s;
  if (elapsed_s > 0) {
    out.rps = static_cast<double>(s.responses) / elapsed_s;
    out.ok_rps = static_cast<double>(s.ok) / elapsed_s;
  }
  if (s.requests > 0) {
    out.error_rate = static_cast<double>(s.requests - s.ok) / static_cast<double>(s.requests);
    out.rejection_rate = static_cast<double>(s.rejections) / static_cast<double>(s.requests);
  }
  out.latency = dist_of(s.latency);
  out.ttft = dist_of(s.ttft);
  out.itl = dist_of(s.itl);
  if (s.cache_known > 0)
    out.cache_hit_rate = static_cast<double>(s.cached) / static_cast<double>(s.cache_known);
  if (s.dedupe_known > 0)
    out.dedupe_rate = static_cast<double>(s.deduplicated) / static_cast<double>(s.dedupe_known);
  if (s.usage_responses > 0 && elapsed_s > 0)
    out.tokens_per_s = static_cast<double>(s.completion_tokens) / elapsed_s;
  return out;
}

// ---------------------------------------------------------------------------------------------------------------
// baseline

result<std::vector<std::string>> evaluate_baseline(json::object const& thresholds, summary const& s) {
  using getter = std::optional<double> (*)(summary const&);
  struct rule {
    std::string_view key;
    bool upper;  // the measured value must be <= the threshold (else >=)
    getter get;
    std::string_view unmeasured;  // why it can be missing
  };
  static constexpr std::string_view no_latency = "no request got a response";
  static constexpr std::string_view no_stream =
      "no stream carried tokens (send streaming requests: --stream)";
  static constexpr std::string_view no_itl = "no stream carried two or more token events (send --stream)";
  static const rule rules[] = {
      {"p50_ms", true,
       [](summary const& x) { return x.latency ? std::optional(x.latency->p50_ms) : std::nullopt; },
       no_latency},
      {"p90_ms", true,
       [](summary const& x) { return x.latency ? std::optional(x.latency->p90_ms) : std::nullopt; },
       no_latency},
      {"p99_ms", true,
       [](summary const& x) { return x.latency ? std::optional(x.latency->p99_ms) : std::nullopt; },
       no_latency},
      {"max_ms", true,
       [](summary const& x) { return x.latency ? std::optional(x.latency->max_ms) : std::nullopt; },
       no_latency},
      {"mean_ms", true,
       [](summary const& x) { return x.latency ? std::optional(x.latency->mean_ms) : std::nullopt; },
       no_latency},
      {"ttft_p50_ms", true,
       [](summary const& x) { return x.ttft ? std::optional(x.ttft->p50_ms) : std::nullopt; }, no_stream},
      {"ttft_p90_ms", true,
       [](summary const& x) { return x.ttft ? std::optional(x.ttft->p90_ms) : std::nullopt; }, no_stream},
      {"ttft_p99_ms", true,
       [](summary const& x) { return x.ttft ? std::optional(x.ttft->p99_ms) : std::nullopt; }, no_stream},
      {"itl_p50_ms", true,
       [](summary const& x) { return x.itl ? std::optional(x.itl->p50_ms) : std::nullopt; }, no_itl},
      {"itl_p99_ms", true,
       [](summary const& x) { return x.itl ? std::optional(x.itl->p99_ms) : std::nullopt; }, no_itl},
      {"min_rps", false, [](summary const& x) { return std::optional(x.rps); }, ""},
      {"min_ok_rps", false, [](summary const& x) { return std::optional(x.ok_rps); }, ""},
      {"max_error_rate", true, [](summary const& x) { return std::optional(x.error_rate); }, ""},
      {"max_rejection_rate", true, [](summary const& x) { return std::optional(x.rejection_rate); }, ""},
      {"min_cache_hit_rate", false, [](summary const& x) { return x.cache_hit_rate; },
       "no response said whether it was a cache hit"},
      {"min_tokens_per_s", false, [](summary const& x) { return x.tokens_per_s; },
       "no response reported usage"},
  };
  std::vector<std::string> violations;
  for (auto const& kv : thresholds) {
    auto const* r =
        std::find_if(std::begin(rules), std::end(rules), [&](rule const& x) { return x.key == kv.key(); });
    if (r == std::end(rules)) {
      std::string known;
      for (auto const& x : rules)
        known += (known.empty() ? "" : ", ") + std::string(x.key);
      return ray::error{errc::invalid_request, "baseline: unknown threshold \"" + std::string(kv.key()) +
                                                   "\" (known: " + known + ")"};
    }
    auto const& v = kv.value();
    if (!v.is_number())
      return ray::error{errc::invalid_request,
                        "baseline: \"" + std::string(kv.key()) + "\" must be a number"};
    double const limit = v.to_number<double>();
    auto measured = r->get(s);
    char line[256];
    if (!measured) {
      std::snprintf(line, sizeof line, "%s: not measured (%.*s); threshold %g", r->key.data(),
                    static_cast<int>(r->unmeasured.size()), r->unmeasured.data(), limit);
      violations.emplace_back(line);
      continue;
    }
    bool const ok = r->upper ? *measured <= limit : *measured >= limit;
    if (ok) continue;
    std::snprintf(line, sizeof line, "%s: measured %.6g, threshold %s %g", r->key.data(), *measured,
                  r->upper ? "<=" : ">=", limit);
    violations.emplace_back(line);
  }
  return violations;
}

result<json::object> load_baseline(std::string const& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in)
    return ray::error{errc::invalid_request,
                      "cannot read the baseline " + path + ": " + std::strerror(errno)};
  std::ostringstream ss;
  ss << in.rdbuf();
  boost::system::error_code ec;
  json::value v = json::parse(ss.str(), ec);
  if (ec)
    return ray::error{errc::invalid_request, "baseline " + path + ": not valid JSON (" + ec.message() + ")"};
  if (!v.is_object())
    return ray::error{errc::invalid_request,
                      "baseline " + path + ": must be a JSON object of thresholds, e.g. {\"p99_ms\": 50}"};
  return std::move(v.get_object());
}

// ---------------------------------------------------------------------------------------------------------------
// URL

result<endpoint_url> parse_url(std::string_view url) {
  auto bad = [&](std::string const& why) {
    return ray::error{errc::invalid_request, "--url " + std::string(url) + ": " + why};
  };
  constexpr std::string_view scheme = "http://";
  if (url.starts_with("https://"))
    return bad("https is not supported (benchmark Ray itself over plain HTTP on its own address)");
  if (!url.starts_with(scheme)) return bad("must start with http:// (e.g. http://127.0.0.1:3000)");
  std::string_view rest = url.substr(scheme.size());
  auto slash = rest.find_first_of("/?#");
  std::string_view authority = rest.substr(0, slash);
  std::string_view path = slash == std::string_view::npos ? std::string_view{} : rest.substr(slash);
  if (!path.empty() && path.front() != '/') return bad("a query or fragment is not allowed");
  if (path.find_first_of("?#") != std::string_view::npos) return bad("a query or fragment is not allowed");
  if (authority.find('@') != std::string_view::npos)
    return bad("credentials in the URL are not supported (use --header)");
  endpoint_url out;
  std::string_view port_text;
  if (authority.starts_with("[")) {
    auto close = authority.find(']');
    if (close == std::string_view::npos) return bad("unterminated [IPv6] address");
    out.host = std::string(authority.substr(1, close - 1));
    auto after = authority.substr(close + 1);
    if (!after.empty()) {
      if (after.front() != ':') return bad("unexpected text after the [IPv6] address");
      port_text = after.substr(1);
      if (port_text.empty()) return bad("empty port");
    }
  } else {
    auto colon = authority.rfind(':');
    out.host = std::string(authority.substr(0, colon));
    if (colon != std::string_view::npos) {
      port_text = authority.substr(colon + 1);
      if (port_text.empty()) return bad("empty port");
    }
  }
  if (out.host.empty()) return bad("no host");
  if (!port_text.empty()) {
    unsigned port = 0;
    auto [p, ec] = std::from_chars(port_text.data(), port_text.data() + port_text.size(), port);
    if (ec != std::errc{} || p != port_text.data() + port_text.size() || port == 0 || port > 65535)
      return bad("port must be a number from 1 to 65535");
    out.port = static_cast<std::uint16_t>(port);
  }
  while (!path.empty() && path.back() == '/')
    path.remove_suffix(1);
  out.base_path = std::string(path);
  return out;
}

// ---------------------------------------------------------------------------------------------------------------
// Output

namespace {

json::value dist_json(std::optional<summary::dist> const& d) {
  if (!d) return nullptr;
  return json::object{{"p50", d->p50_ms}, {"p90", d->p90_ms},   {"p99", d->p99_ms}, {"max", d->max_ms},
                      {"min", d->min_ms}, {"mean", d->mean_ms}, {"count", d->count}};
}

json::value opt(std::optional<double> v) {
  if (!v) return nullptr;
  return *v;
}

std::string fixed(double v, int digits) {
  char b[64];
  std::snprintf(b, sizeof b, "%.*f", digits, v);
  return b;
}

std::string dist_line(summary::dist const& d) {
  return "p50 " + fixed(d.p50_ms, 3) + " ms   p90 " + fixed(d.p90_ms, 3) + " ms   p99 " + fixed(d.p99_ms, 3) +
         " ms   max " + fixed(d.max_ms, 3) + " ms";
}

std::string percent(double r) {
  return fixed(r * 100, 1) + " %";
}

}  // namespace

json::object to_json(options const& o, std::size_t workload_lines, run_result const& r, summary const& s) {
  auto const& st = r.stats;
  json::object by_status, by_code;
  for (auto const& [k, v] : st.by_status)
    by_status[k] = v;
  for (auto const& [k, v] : st.by_code)
    by_code[k] = v;
  json::object out{
      {"tool", "ray bench"},
      {"version", RAY_VERSION},
      {"url", o.url},
      {"workload", o.workload},
      {"workload_lines", workload_lines},
      {"mode", o.rate > 0 ? "open" : "closed"},
      {"concurrency", o.concurrency},
      {"rate", o.rate > 0 ? json::value(o.rate) : json::value(nullptr)},
      {"stream", o.stream},
      {"openai", o.openai},
      {"interrupted", r.interrupted},
      {"elapsed_s", s.elapsed_s},
      {"requests", st.requests},
      {"responses", st.responses},
      {"ok", st.ok},
      {"errors", st.requests - st.ok - st.rejections},
      {"rejections", st.rejections},
      {"error_rate", s.error_rate},
      {"rejection_rate", s.rejection_rate},
      {"by_status", std::move(by_status)},
      {"by_code", std::move(by_code)},
      {"rps", s.rps},
      {"ok_rps", s.ok_rps},
      {"latency_ms", dist_json(s.latency)},
      {"ttft_ms", dist_json(s.ttft)},
      {"itl_ms", dist_json(s.itl)},
      {"cache_hit_rate", opt(s.cache_hit_rate)},
      {"dedupe_rate", opt(s.dedupe_rate)},
      {"tokens", st.usage_responses > 0
                     ? json::value(json::object{{"prompt", st.prompt_tokens},
                                                {"completion", st.completion_tokens},
                                                {"per_s", opt(s.tokens_per_s)},
                                                {"responses_with_usage", st.usage_responses}})
                     : json::value(nullptr)},
      {"stream_responses", st.stream_responses},
      {"token_events", st.token_events},
      {"connections", st.connections},
      {"late_starts", st.late_starts},
  };
  return out;
}

void print_table(std::ostream& out, options const& o, std::size_t workload_lines, run_result const& r,
                 summary const& s) {
  auto const& st = r.stats;
  auto row = [&](std::string_view label, std::string const& value) {
    out << "  " << label;
    for (std::size_t i = label.size(); i < 14; ++i)
      out << ' ';
    out << value << '\n';
  };
  out << "ray bench " << o.url << "  " << o.workload << " (" << workload_lines << " lines)\n";
  row("mode",
      (o.rate > 0 ? "open loop, " + fixed(o.rate, 1) + " req/s, at most " : std::string("closed loop, ")) +
          std::to_string(o.concurrency) + " connection" + (o.concurrency == 1 ? "" : "s") + ", " +
          fixed(s.elapsed_s, 2) + " s" + (r.interrupted ? " (interrupted)" : ""));
  row("requests", std::to_string(st.requests) + "  (ok " + std::to_string(st.ok) + ", rejected " +
                      std::to_string(st.rejections) + ", errors " +
                      std::to_string(st.requests - st.ok - st.rejections) + ")");
  row("throughput", fixed(s.rps, 1) + " req/s  (ok " + fixed(s.ok_rps, 1) + " req/s)");
  if (s.latency) row("latency", dist_line(*s.latency));
  if (s.ttft) row("ttft", dist_line(*s.ttft));
  if (s.itl) row("inter-token", dist_line(*s.itl));
  if (s.cache_hit_rate || s.dedupe_rate)
    row("cache", (s.cache_hit_rate ? "hits " + percent(*s.cache_hit_rate) : std::string("hits n/a")) +
                     (s.dedupe_rate ? "   dedupe joins " + percent(*s.dedupe_rate) : std::string()));
  if (st.usage_responses > 0)
    row("tokens", std::to_string(st.completion_tokens) + " completion, " + std::to_string(st.prompt_tokens) +
                      " prompt" +
                      (s.tokens_per_s ? "  (" + fixed(*s.tokens_per_s, 1) + " completion tokens/s)" : ""));
  std::string statuses;
  for (auto const& [k, v] : st.by_status)
    statuses += (statuses.empty() ? "" : "  ") + k + ": " + std::to_string(v);
  if (!statuses.empty()) row("by status", statuses);
  std::string codes;
  for (auto const& [k, v] : st.by_code)
    codes += (codes.empty() ? "" : "  ") + k + ": " + std::to_string(v);
  if (!codes.empty()) row("by code", codes);
  row("connections", std::to_string(st.connections) + " opened");
  if (st.late_starts > 0)
    row("late starts", std::to_string(st.late_starts) +
                           " requests left > 1 ms after their scheduled time (raise --concurrency)");
}

}  // namespace ray::bench
