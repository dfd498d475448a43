// libFuzzer target for what a hostile backend sends Ray. Input: a mode byte, a parameter byte, then the bytes
// the backend sent. Modes (byte % 8; the seeds use '0'..'7'):
//   0  an SSE body (http::sse_parser), fed in pieces whose sizes follow the parameter; every event then goes
//      through the stream-chunk handling of remote.cpp (parse_stream_chunk, merge_tool_call_deltas), as
//      generate() does. The events must not depend on how the bytes were split.
//   1  a /metrics body (telemetry::reexport_llamacpp), whole and cut to parameter/256 of its output, then
//      served through a metrics_cache; and the deferred-requests sample read from it
//      (backend::parse_prometheus_sample).
//   2  a /props body (backend::parse_props).
//   3  a /slots body (backend::parse_slots), Ray's own busy slots given by the parameter; and its load view
//      (backend::parse_slots_load, unified KV when the parameter is odd).
//   4  an error body (backend::parse_context_exceeded, excerpt).
//   5  one stream chunk or a whole completion body (backend::parse_stream_chunk).
//   6  text escaping for Ray's own output (telemetry/text_format.hpp) of arbitrary bytes.
//   7  /apply-template and /tokenize bodies (backend::parse_applied_template, parse_token_count).
// Seeds: tests/fuzz/corpus/backend/.
#include "ray/backend/parse.hpp"
#include "ray/http/client.hpp"
#include "ray/telemetry/telemetry.hpp"
#include "ray/telemetry/text_format.hpp"

#include <boost/json/parse.hpp>

#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <string>
#include <string_view>
#include <vector>

namespace {

namespace json = boost::json;

constexpr std::size_t max_input = 64 * 1024;

void check(bool ok) {
  if (!ok) std::abort();
}

// Length of the well-formed UTF-8 sequence at s[i] (Unicode 15, table 3-7), 0 when ill-formed. Written
// independently of text::utf8_sequence_length, which it checks.
std::size_t utf8_len(std::string_view s, std::size_t i) {
  auto at = [&](std::size_t k) { return static_cast<unsigned char>(s[k]); };
  auto cont = [&](std::size_t k, unsigned lo = 0x80, unsigned hi = 0xBF) {
    return k < s.size() && at(k) >= lo && at(k) <= hi;
  };
  unsigned c = at(i);
  if (c < 0x80) return 1;
  if (c >= 0xC2 && c <= 0xDF) return cont(i + 1) ? 2 : 0;
  if (c == 0xE0) return cont(i + 1, 0xA0, 0xBF) && cont(i + 2) ? 3 : 0;
  if ((c >= 0xE1 && c <= 0xEC) || c == 0xEE || c == 0xEF) return cont(i + 1) && cont(i + 2) ? 3 : 0;
  if (c == 0xED) return cont(i + 1, 0x80, 0x9F) && cont(i + 2) ? 3 : 0;
  if (c == 0xF0) return cont(i + 1, 0x90, 0xBF) && cont(i + 2) && cont(i + 3) ? 4 : 0;
  if (c >= 0xF1 && c <= 0xF3) return cont(i + 1) && cont(i + 2) && cont(i + 3) ? 4 : 0;
  if (c == 0xF4) return cont(i + 1, 0x80, 0x8F) && cont(i + 2) && cont(i + 3) ? 4 : 0;
  return 0;
}

bool valid_utf8(std::string_view s) {
  for (std::size_t i = 0; i < s.size();) {
    auto n = utf8_len(s, i);
    if (n == 0) return false;
    i += n;
  }
  return true;
}

bool is_name_char(char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_';
}

// ---- 0: SSE + stream chunks ----------------------------------------------------------------------------

struct stream_state {
  std::string text;
  json::array tool_calls;
  std::string finish;
  bool done{false};
  bool failed{false};
};

// What generate() does with one event.
void on_event(stream_state& st, ray::http::sse_event const& ev) {
  if (st.done || st.failed) return;
  if (ev.data == "[DONE]") {
    st.done = true;
    return;
  }
  auto chunk = ray::backend::parse_stream_chunk(ev.data);
  if (!chunk) {
    auto code = chunk.error().code;
    check(code == ray::errc::provider_invalid_response || code == ray::errc::provider_upstream_error);
    st.failed = true;
    return;
  }
  st.text += chunk->content;
  if (chunk->tool_calls.is_array()) {
    ray::backend::merge_tool_call_deltas(st.tool_calls, chunk->tool_calls.get_array());
    check(st.tool_calls.size() <= 65);
  }
  if (chunk->finish_reason) st.finish = *chunk->finish_reason;
}

void check_tool_calls(json::array const& calls) {
  check(calls.size() <= 65);
  for (auto const& c : calls) {
    auto const& o = c.as_object();
    check(o.at("id").is_string() && o.at("type").is_string());
    auto const& fn = o.at("function").as_object();
    check(fn.at("name").is_string() && fn.at("arguments").is_string());
  }
}

void fuzz_sse(std::uint8_t param, std::string_view body) {
  // Reference: the whole body at once.
  ray::http::sse_parser whole;
  std::vector<ray::http::sse_event> expected;
  bool whole_ok = whole.feed(body);
  while (auto ev = whole.next())
    expected.push_back(std::move(*ev));

  // The same bytes in pieces of 1..64 bytes (sizes from a generator seeded by the parameter), events popped
  // after every piece as response_stream::next_event does.
  ray::http::sse_parser pieces;
  std::vector<ray::http::sse_event> got;
  stream_state st;
  std::uint32_t rng = 0x9E3779B9u ^ (param * 0x01000193u);
  bool pieces_ok = true;
  for (std::size_t pos = 0; pos < body.size() && pieces_ok;) {
    rng ^= rng << 13;
    rng ^= rng >> 17;
    rng ^= rng << 5;
    std::size_t n = std::min<std::size_t>(1 + rng % 64, body.size() - pos);
    pieces_ok = pieces.feed(body.substr(pos, n));
    pos += n;
    while (auto ev = pieces.next()) {
      on_event(st, *ev);
      got.push_back(std::move(*ev));
    }
  }
  if (whole_ok && pieces_ok) {
    check(got.size() == expected.size());
    for (std::size_t i = 0; i < got.size(); ++i)
      check(got[i].event == expected[i].event && got[i].data == expected[i].data);
    check(pieces.comments_seen() == whole.comments_seen());
  }
  check_tool_calls(st.tool_calls);

  // A small bound, fed in reads of 97 bytes: an event over the bound is an error (client.hpp), never
  // delivered.
  constexpr std::size_t small_max = 256, read = 97;
  ray::http::sse_parser small(small_max);
  for (std::size_t pos = 0; pos < body.size(); pos += read) {
    if (!small.feed(body.substr(pos, read))) break;
    while (auto ev = small.next())
      check(ev->data.size() <= small_max);
  }
}

// ---- 1: /metrics ---------------------------------------------------------------------------------------

void check_exposition(std::string_view out, std::size_t max) {
  check(out.size() <= max);
  check(out.empty() || out.back() == '\n');
  check(valid_utf8(out));
  constexpr std::string_view prefix = "ray_backend_llamacpp_";
  while (!out.empty()) {
    auto nl = out.find('\n');
    std::string_view line = out.substr(0, nl);
    out.remove_prefix(nl + 1);
    std::string_view name;
    if (line.starts_with("# HELP ") || line.starts_with("# TYPE ")) {
      bool type = line.starts_with("# TYPE ");
      line.remove_prefix(7);
      auto sp = line.find(' ');
      check(sp != std::string_view::npos);
      name = line.substr(0, sp);
      if (type) {
        auto t = line.substr(sp + 1);
        check(t == "counter" || t == "gauge" || t == "histogram" || t == "summary" || t == "untyped");
      }
    } else {
      auto end = line.find_first_of("{ ");
      check(end != std::string_view::npos);
      name = line.substr(0, end);
    }
    check(name.starts_with(prefix) && name.size() > prefix.size());
    for (char c : name)
      check(is_name_char(c));
  }
}

void fuzz_metrics(std::uint8_t param, std::string_view body) {
  auto full = ray::telemetry::reexport_llamacpp(body);
  check_exposition(full, ray::telemetry::default_reexport_max_bytes);
  std::size_t max = full.size() * param / 256;
  auto cut = ray::telemetry::reexport_llamacpp(body, max);
  check_exposition(cut, max);
  check(std::string_view(full).starts_with(cut));

  ray::telemetry::metrics_cache cache;
  ray::manual_clock clock;
  cache.store(cut, clock.now());
  std::string served;
  cache.append_to(served);
  check(served.empty() || served.back() == '\n');
  check(!cache.stale(clock.now(), std::chrono::seconds(1)));

  if (auto d = ray::backend::parse_prometheus_sample(body, "llamacpp:requests_deferred"))
    check(std::isfinite(*d));
}

// ---- 2-5, 7: JSON bodies -------------------------------------------------------------------------------

void fuzz_props(std::string_view body) {
  auto p = ray::backend::parse_props(body);
  if (!p) return;
  if (p->n_ctx) check(*p->n_ctx <= (1u << 22));
  if (p->total_slots) check(*p->total_slots <= (1u << 9));
  // The KV pool Ray derives from them fits 32 bits.
  std::uint64_t pool = std::uint64_t{p->n_ctx.value_or(0)} * p->total_slots.value_or(1);
  check(pool <= UINT32_MAX);
}

void fuzz_slots(std::uint8_t param, std::string_view body) {
  std::vector<bool> busy(param % 9);
  for (std::size_t i = 0; i < busy.size(); ++i)
    busy[i] = (param >> (i % 8)) & 1;
  if (auto load = ray::backend::parse_slots_load(body, param & 1)) {
    check(load->slots <= (1u << 9) && load->processing <= load->slots);
    check(load->capacity <= (std::uint64_t{load->slots} << 22));
    check(load->tokens_held <= load->capacity || (param & 1));  // unified: each slot is bounded by the one
    if (load->kv_usage) check(load->capacity > 0 && *load->kv_usage >= 0.0 && *load->kv_usage <= 1.0);
    if (!load->kv_usage) check(load->capacity == 0);
    // JSON either way: parse_slots answers exactly when the load view does.
    check(ray::backend::parse_slots(body, busy).has_value());
  } else {
    check(!ray::backend::parse_slots(body, busy).has_value());
  }
  auto ext = ray::backend::parse_slots(body, busy);
  if (!ext) return;
  check(ext->size() == busy.size());
  for (std::size_t i = 0; i < busy.size(); ++i)
    check(!((*ext)[i] && busy[i]));
}

void fuzz_error_body(std::uint8_t param, std::string_view body) {
  (void)ray::backend::parse_context_exceeded(body);
  std::size_t n = param;
  auto e = ray::backend::excerpt(body, n);
  check(e.size() <= n && e.size() <= body.size());
  check(e.find_first_of("\r\n") == std::string::npos);
  if (valid_utf8(body)) check(valid_utf8(e));
}

void fuzz_chunk(std::string_view body) {
  auto chunk = ray::backend::parse_stream_chunk(body);
  if (!chunk) {
    check(!chunk.error().message.empty());
    return;
  }
  json::array calls;
  if (chunk->tool_calls.is_array())
    ray::backend::merge_tool_call_deltas(calls, chunk->tool_calls.get_array());
  check_tool_calls(calls);
}

void fuzz_tokens(std::string_view body) {
  if (auto t = ray::backend::parse_applied_template(body)) check(!t->empty());
  if (auto n = ray::backend::parse_token_count(body)) check(*n <= body.size());
}

// ---- 6: text escaping ----------------------------------------------------------------------------------

// Same JSON structure (numbers compare as numbers whatever their kind; a non-finite double, which Boost.JSON
// reads from an overflowing literal, is written as null).
bool same_shape(json::value const& a, json::value const& b) {
  if (a.is_double() && !std::isfinite(a.get_double())) return b.is_null();
  if (a.is_number() && b.is_number()) return true;
  if (a.kind() != b.kind()) return false;
  if (a.is_string()) return a.get_string() == b.get_string();
  if (a.is_bool()) return a.get_bool() == b.get_bool();
  if (a.is_array()) {
    auto const &x = a.get_array(), &y = b.get_array();
    if (x.size() != y.size()) return false;
    for (std::size_t i = 0; i < x.size(); ++i)
      if (!same_shape(x[i], y[i])) return false;
    return true;
  }
  if (a.is_object()) {
    auto const &x = a.get_object(), &y = b.get_object();
    if (x.size() != y.size()) return false;
    auto i = x.begin();
    auto j = y.begin();
    for (; i != x.end(); ++i, ++j)
      if (i->key() != j->key() || !same_shape(i->value(), j->value())) return false;
    return true;
  }
  return true;
}

void fuzz_text(std::string_view s) {
  namespace text = ray::telemetry::text;
  for (std::size_t i = 0; i < s.size(); ++i)
    check(text::utf8_sequence_length(s, i) == utf8_len(s, i));

  // A JSON string of any bytes is JSON, and holds the bytes themselves when they were UTF-8.
  std::string out;
  text::append_json_string(out, s);
  boost::system::error_code ec;
  auto v = json::parse(out, ec);
  check(!ec && v.is_string());
  if (valid_utf8(s)) check(v.get_string() == s);

  for (auto* append : {&text::append_label_value, &text::append_help}) {
    out.clear();
    append(out, s);
    check(valid_utf8(out));
    check(out.find('\n') == std::string::npos);
  }

  // A number from the first 8 bytes: the text reads back to the same double.
  if (s.size() >= 8) {
    double d;
    std::memcpy(&d, s.data(), sizeof d);
    out.clear();
    text::append_number(out, d);
    if (std::isnan(d)) {
      check(out == "NaN");
    } else if (std::isinf(d)) {
      check(out == (d > 0 ? "+Inf" : "-Inf"));
    } else {
      double back{};
      auto [p, err] = std::from_chars(out.data(), out.data() + out.size(), back);
      check(err == std::errc() && p == out.data() + out.size() && back == d);
    }
    out.clear();
    text::append_json_number(out, d);
    auto n = json::parse(out, ec);
    check(!ec && (n.is_number() || (n.is_null() && !std::isfinite(d))));
  }

  // Any JSON value comes out as JSON of the same shape.
  auto doc = json::parse(s, ec);
  if (!ec) {
    out.clear();
    text::append_json_value(out, doc);
    auto again = json::parse(out, ec);
    check(!ec && same_shape(doc, again));
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(std::uint8_t const* data, std::size_t size) {
  if (size < 2 || size > max_input) return 0;
  std::uint8_t const mode = data[0] % 8;
  std::uint8_t const param = data[1];
  std::string_view body(reinterpret_cast<char const*>(data) + 2, size - 2);
  switch (mode) {
    case 0:
      fuzz_sse(param, body);
      break;
    case 1:
      fuzz_metrics(param, body);
      break;
    case 2:
      fuzz_props(body);
      break;
    case 3:
      fuzz_slots(param, body);
      break;
    case 4:
      fuzz_error_body(param, body);
      break;
    case 5:
      fuzz_chunk(body);
      break;
    case 6:
      fuzz_text(body);
      break;
    default:
      fuzz_tokens(body);
      break;
  }
  return 0;
}
