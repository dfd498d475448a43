// What is computed from a parsed header: KV-cache size, the memory estimate, JSON, the human summary and the
// `ray gguf inspect` command.
#include "ray/gguf/gguf.hpp"

#include <boost/json/array.hpp>
#include <boost/json/serialize.hpp>
#include <boost/json/value.hpp>

#include <charconv>
#include <cmath>
#include <cstdio>
#include <limits>
#include <ostream>

namespace ray::gguf {
namespace {

error invalid(std::string message) {
  return error{errc::invalid_request, std::move(message)};
}

std::string str(std::uint64_t v) {
  return std::to_string(v);
}

std::uint64_t sat_add(std::uint64_t a, std::uint64_t b) noexcept {
  std::uint64_t r;
  return __builtin_add_overflow(a, b, &r) ? std::numeric_limits<std::uint64_t>::max() : r;
}

std::uint64_t sat_mul(std::uint64_t a, std::uint64_t b) noexcept {
  std::uint64_t r;
  return __builtin_mul_overflow(a, b, &r) ? std::numeric_limits<std::uint64_t>::max() : r;
}

std::uint64_t ceil_mib(std::uint64_t bytes) noexcept {
  return bytes / mib + (bytes % mib != 0 ? 1 : 0);
}

// Valid UTF-8 is copied; every byte that does not start a valid sequence becomes U+FFFD, so JSON output stays
// valid whatever a file holds.
std::string valid_utf8(std::string_view s) {
  std::string out;
  out.reserve(s.size());
  for (std::size_t i = 0; i < s.size();) {
    if (auto const n = utf8_sequence_at(s, i)) {
      out.append(s.substr(i, n));
      i += n;
    } else {
      out += "\xef\xbf\xbd";
      i += 1;
    }
  }
  return out;
}

// float32 values are widened to double when read; shown as the shortest decimal that reads back as the same
// float, 1e-05 rather than 9.99999974737875e-06.
double as_displayed(double d, value_type t) {
  if (t != value_type::float32 || !std::isfinite(d)) return d;
  char buf[64];
  auto const r = std::to_chars(buf, buf + sizeof buf, static_cast<float>(d));
  double out = d;
  std::from_chars(buf, r.ptr, out);
  return out;
}

boost::json::value double_json(double d) {
  if (std::isnan(d)) return "nan";
  if (std::isinf(d)) return d > 0 ? "inf" : "-inf";
  return d;
}

boost::json::value scalar_json(scalar const& s, value_type t) {
  return std::visit(
      [&](auto const& x) -> boost::json::value {
        using T = std::decay_t<decltype(x)>;
        if constexpr (std::is_same_v<T, std::string>) {
          return boost::json::string(valid_utf8(x));
        } else if constexpr (std::is_same_v<T, double>) {
          return double_json(as_displayed(x, t));
        } else {
          return x;
        }
      },
      s);
}

template <class T>
boost::json::value opt_json(std::optional<T> const& v) {
  if (!v) return nullptr;
  return *v;
}

// One line, printable: control characters escaped, cut to about `max_bytes` on a code point boundary.
std::string shorten(std::string_view s, std::size_t max_bytes) {
  std::string const clean = valid_utf8(s);
  std::string_view const head(clean.data(), utf8_safe_prefix(clean, max_bytes));
  std::string out;
  for (char ch : head) {
    auto const c = static_cast<unsigned char>(ch);
    if (ch == '\n') {
      out += "\\n";
    } else if (ch == '\t') {
      out += "\\t";
    } else if (ch == '"') {
      out += "\\\"";
    } else if (ch == '\\') {
      out += "\\\\";
    } else if (c < 0x20 || c == 0x7f) {
      char buf[8];
      std::snprintf(buf, sizeof buf, "\\x%02x", c);
      out += buf;
    } else {
      out.push_back(ch);
    }
  }
  return out;
}

std::string quoted(std::string_view s, std::size_t max_bytes) {
  std::string out = "\"" + shorten(s, max_bytes) + "\"";
  if (s.size() > max_bytes) out += "... (" + str(s.size()) + " bytes)";
  return out;
}

std::string fixed1(double v) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.1f", v);
  return buf;
}

std::string human_bytes(std::uint64_t b) {
  std::string out = str(b) + " bytes";
  static constexpr char const* units[] = {"KiB", "MiB", "GiB", "TiB"};
  double v = static_cast<double>(b);
  int u = -1;
  while (v >= 1024.0 && u < 3) {
    v /= 1024.0;
    ++u;
  }
  if (u >= 0) out += " (" + fixed1(v) + " " + units[u] + ")";
  return out;
}

std::string human_count(std::uint64_t n) {
  static constexpr char const* units[] = {"K", "M", "B", "T"};
  double v = static_cast<double>(n);
  int u = -1;
  while (v >= 1000.0 && u < 3) {
    v /= 1000.0;
    ++u;
  }
  return u < 0 ? str(n) : str(n) + " (" + fixed1(v) + " " + units[u] + ")";
}

std::string scalar_text(scalar const& s, value_type t, std::size_t max_bytes) {
  return std::visit(
      [&](auto const& x) -> std::string {
        using T = std::decay_t<decltype(x)>;
        if constexpr (std::is_same_v<T, std::string>) {
          return quoted(x, max_bytes);
        } else if constexpr (std::is_same_v<T, bool>) {
          return x ? "true" : "false";
        } else if constexpr (std::is_same_v<T, double>) {
          char buf[64];
          auto const r = t == value_type::float32
                             ? std::to_chars(buf, buf + sizeof buf, static_cast<float>(x))
                             : std::to_chars(buf, buf + sizeof buf, x);
          return std::string(buf, r.ptr);
        } else {
          return std::to_string(x);
        }
      },
      s);
}

std::string value_text(metadata_value const& v) {
  if (auto const* a = v.as_array()) {
    std::string out = "[" + std::string(type_name(a->element_type)) + " x " + str(a->length) + "]";
    std::size_t shown = 0;
    for (auto const& e : a->head) {
      if (shown == 8) break;
      out += (shown == 0 ? " " : ", ") + scalar_text(e, a->element_type, 24);
      ++shown;
    }
    if (a->length > shown) out += ", ...";
    return out;
  }
  scalar s = std::visit(
      [](auto const& x) -> scalar {
        if constexpr (std::is_same_v<std::decay_t<decltype(x)>, array_summary>) {
          return std::string{};
        } else {
          return x;
        }
      },
      v.data);
  return scalar_text(s, v.type, 100);
}

std::string opt_text(std::optional<std::uint64_t> v) {
  return v ? str(*v) : "unknown";
}

}  // namespace

// ---------------------------------------------------------------------------------------------------------------
// Memory

result<std::uint64_t> kv_cache_bytes_per_token(model_facts const& m, double kv_type_bytes) {
  if (!std::isfinite(kv_type_bytes) || kv_type_bytes <= 0) {
    return invalid("KV cache element size must be a positive number of bytes");
  }
  std::string const arch = m.architecture.empty() ? std::string("<architecture>") : m.architecture;
  auto missing = [&](std::string_view key) {
    return invalid("cannot compute the KV cache size: the model metadata lacks " + arch + "." +
                   std::string(key));
  };
  if (!m.block_count) return missing("block_count");
  if (!m.head_count_kv) return missing(m.head_count ? "attention.head_count_kv" : "attention.head_count");
  if (!m.key_length) return missing("attention.key_length");
  if (!m.value_length) return missing("attention.value_length");
  auto const overflow = [] { return invalid("KV cache size overflows: the model metadata is implausible"); };

  std::uint64_t kv_heads = 0;  // summed over layers
  if (!m.head_count_kv_per_layer.empty()) {
    if (m.head_count_kv_per_layer.size() < *m.block_count) {
      return invalid("cannot compute the KV cache size: " + arch + ".attention.head_count_kv has " +
                     str(m.head_count_kv_per_layer.size()) + " entries for " + str(*m.block_count) +
                     " layers");
    }
    for (std::uint64_t l = 0; l < *m.block_count; ++l) {
      if (__builtin_add_overflow(kv_heads, m.head_count_kv_per_layer[l], &kv_heads)) return overflow();
    }
  } else if (__builtin_mul_overflow(*m.block_count, *m.head_count_kv, &kv_heads)) {
    return overflow();
  }
  std::uint64_t per_head;
  std::uint64_t elements;
  if (__builtin_add_overflow(*m.key_length, *m.value_length, &per_head) ||
      __builtin_mul_overflow(kv_heads, per_head, &elements)) {
    return overflow();
  }
  long double const bytes = std::ceil(static_cast<long double>(elements) * kv_type_bytes);
  if (bytes >= 9.2e18L) return overflow();
  return static_cast<std::uint64_t>(bytes);
}

result<memory_estimate> estimate_memory(gguf_info const& info, memory_request const& req) {
  auto per_token = kv_cache_bytes_per_token(info.model, req.kv_type_bytes);
  if (!per_token) return per_token.error();
  memory_estimate e;
  e.weights_bytes = info.tensor_bytes;
  // Sizes of unknown tensor types are not in tensor_bytes; the data section bounds them from above.
  if (info.unknown_tensor_types && info.file_size > info.data_offset) {
    e.weights_bytes = std::max(e.weights_bytes, info.file_size - info.data_offset);
  }
  e.kv_bytes = sat_mul(*per_token, req.ctx_size);
  e.cache_ram_bytes = sat_mul(req.cache_ram_mib, mib);
  e.compute_bytes = req.compute_bytes;
  std::uint64_t const base =
      sat_add(sat_add(sat_add(e.weights_bytes, e.kv_bytes), e.cache_ram_bytes), e.compute_bytes);
  long double const share = std::ceil(static_cast<long double>(base) * std::max(0.0, req.headroom_fraction));
  std::uint64_t const fraction =
      share >= 1.8e19L ? std::numeric_limits<std::uint64_t>::max() : static_cast<std::uint64_t>(share);
  e.headroom_bytes = std::max(req.headroom_min_bytes, fraction);
  e.total = sat_add(base, e.headroom_bytes);
  return e;
}

std::string refusal_message(memory_estimate const& e, std::uint64_t limit_bytes) {
  return "needs about " + str(ceil_mib(e.total)) + " MiB, limit " + str(limit_bytes / mib) +
         " MiB (weights " + str(ceil_mib(e.weights_bytes)) + " MiB + KV cache " + str(ceil_mib(e.kv_bytes)) +
         " MiB + cache RAM " + str(ceil_mib(e.cache_ram_bytes)) + " MiB + " +
         (e.compute_bytes > 0 ? "compute " + str(ceil_mib(e.compute_bytes)) + " MiB + " : std::string()) +
         "headroom " + str(ceil_mib(e.headroom_bytes)) + " MiB)";
}

std::uint64_t compute_buffer_bytes(model_facts const& m, std::uint64_t ubatch, std::uint64_t kv_cells,
                                   bool flash_attention) {
  constexpr std::uint64_t f32 = 4;
  std::uint64_t const logits = sat_mul(sat_mul(m.vocab_size.value_or(0), ubatch), f32);
  std::uint64_t const scores =
      flash_attention ? 0 : sat_mul(sat_mul(sat_mul(m.head_count.value_or(0), ubatch), kv_cells), f32);
  std::uint64_t const width =
      sat_add(sat_mul(4, m.embedding_length.value_or(0)), sat_mul(2, m.feed_forward_length.value_or(0)));
  std::uint64_t const activations = sat_mul(sat_mul(ubatch, width), f32);
  return sat_add(sat_add(logits, scores), activations);
}

// ---------------------------------------------------------------------------------------------------------------
// Output

boost::json::object to_json(gguf_info const& info) {
  namespace json = boost::json;
  json::object o;
  o["version"] = info.version;
  o["tensor_count"] = info.tensor_count;
  o["metadata_count"] = info.metadata_count;
  o["alignment"] = info.alignment;
  o["header_bytes"] = info.header_bytes;
  o["data_offset"] = info.data_offset;
  o["file_size"] = info.file_size;

  auto const& m = info.model;
  json::object model;
  model["architecture"] = valid_utf8(m.architecture);
  model["name"] = valid_utf8(m.name);
  model["context_length"] = opt_json(m.context_length);
  model["embedding_length"] = opt_json(m.embedding_length);
  model["block_count"] = opt_json(m.block_count);
  model["feed_forward_length"] = opt_json(m.feed_forward_length);
  model["head_count"] = opt_json(m.head_count);
  model["head_count_kv"] = opt_json(m.head_count_kv);
  if (!m.head_count_kv_per_layer.empty()) {
    json::array per_layer;
    for (auto v : m.head_count_kv_per_layer)
      per_layer.push_back(v);
    model["head_count_kv_per_layer"] = std::move(per_layer);
  }
  model["key_length"] = opt_json(m.key_length);
  model["value_length"] = opt_json(m.value_length);
  model["expert_count"] = opt_json(m.expert_count);
  model["expert_used_count"] = opt_json(m.expert_used_count);
  model["vocab_size"] = opt_json(m.vocab_size);
  model["file_type"] = opt_json(m.file_type);
  model["file_type_name"] = m.file_type_name;
  model["chat_template"] = m.chat_template;
  model["parameter_count"] = info.parameter_count;
  model["tensor_bytes"] = info.tensor_bytes;
  model["unknown_tensor_types"] = info.unknown_tensor_types;
  if (auto kv = kv_cache_bytes_per_token(m)) {
    model["kv_bytes_per_token_f16"] = *kv;
  } else {
    model["kv_bytes_per_token_f16"] = nullptr;
  }
  o["model"] = std::move(model);

  json::array types;
  for (auto const& t : info.by_type) {
    types.push_back(json::object{{"type", t.name},
                                 {"id", t.type},
                                 {"tensors", t.tensors},
                                 {"elements", t.elements},
                                 {"bytes", opt_json(t.bytes)}});
  }
  o["tensor_types"] = std::move(types);

  json::array metadata;
  for (auto const& e : info.metadata) {
    json::object entry;
    entry["key"] = valid_utf8(e.key);
    entry["type"] = type_name(e.value.type);
    if (auto const* a = e.value.as_array()) {
      entry["element_type"] = type_name(a->element_type);
      entry["length"] = a->length;
      json::array head;
      for (auto const& s : a->head)
        head.push_back(scalar_json(s, a->element_type));
      entry["head"] = std::move(head);
    } else {
      std::visit(
          [&](auto const& x) {
            if constexpr (!std::is_same_v<std::decay_t<decltype(x)>, array_summary>)
              entry["value"] = scalar_json(x, e.value.type);
          },
          e.value.data);
    }
    metadata.push_back(std::move(entry));
  }
  o["metadata"] = std::move(metadata);

  json::array tensors;
  for (auto const& t : info.tensors) {
    json::array dims;
    for (auto d : t.dims)
      dims.push_back(d);
    tensors.push_back(json::object{{"name", valid_utf8(t.name)},
                                   {"type", ggml_type_name(t.type)},
                                   {"type_id", t.type},
                                   {"dims", std::move(dims)},
                                   {"offset", t.offset},
                                   {"elements", t.elements},
                                   {"bytes", opt_json(t.bytes)}});
  }
  o["tensors"] = std::move(tensors);

  json::array warnings;
  for (auto const& w : info.warnings)
    warnings.push_back(json::string(valid_utf8(w)));
  o["warnings"] = std::move(warnings);
  return o;
}

std::string describe(gguf_info const& info) {
  auto const& m = info.model;
  std::string out;
  auto line = [&](std::string_view label, std::string const& value) {
    out += label;
    out.append(label.size() < 16 ? 16 - label.size() : 1, ' ');
    out += value;
    out += '\n';
  };
  line("format", "GGUF v" + str(info.version) + ", " + str(info.tensor_count) + " tensors, " +
                     str(info.metadata_count) + " metadata keys, alignment " + str(info.alignment) +
                     ", data at offset " + str(info.data_offset));
  line("file size", human_bytes(info.file_size));
  line("architecture", m.architecture.empty() ? "unknown" : shorten(m.architecture, 64));
  if (!m.name.empty()) line("name", shorten(m.name, 100));
  line("file type",
       m.file_type ? m.file_type_name + " (general.file_type " + str(*m.file_type) + ")" : "unknown");
  line("parameters", human_count(info.parameter_count));
  line("weights",
       human_bytes(info.tensor_bytes) + (info.unknown_tensor_types ? " (excluding unknown types)" : ""));
  line("context length", opt_text(m.context_length));
  line("embedding", opt_text(m.embedding_length));
  line("layers", opt_text(m.block_count));
  std::string heads = opt_text(m.head_count) + ", KV heads " + opt_text(m.head_count_kv);
  if (!m.head_count_kv_per_layer.empty()) heads += " (per layer)";
  heads += ", head dim " + opt_text(m.key_length);
  if (m.value_length != m.key_length) heads += " (K) / " + opt_text(m.value_length) + " (V)";
  line("heads", heads);
  if (m.feed_forward_length) line("feed forward", str(*m.feed_forward_length));
  if (m.expert_count) line("experts", str(*m.expert_count) + ", " + opt_text(m.expert_used_count) + " used");
  line("vocab size", opt_text(m.vocab_size));
  line("chat template", m.chat_template ? "yes" : "no");
  if (auto kv = kv_cache_bytes_per_token(m)) {
    std::string text = str(*kv) + " bytes/token";
    if (m.context_length) {
      text += ", " + human_bytes(sat_mul(*kv, *m.context_length)) + " at context " + str(*m.context_length);
    }
    line("KV cache (f16)", text);
  } else {
    line("KV cache (f16)", "unknown: " + kv.error().message);
  }
  bool first = true;
  for (auto const& t : info.by_type) {
    line(first ? "tensor types" : "", t.name + ": " + str(t.tensors) + " tensors, " + str(t.elements) +
                                          " elements, " + (t.bytes ? human_bytes(*t.bytes) : "size unknown"));
    first = false;
  }
  for (auto const& w : info.warnings)
    line("warning", w);
  out += "metadata (" + str(info.metadata.size()) + " keys)\n";
  for (auto const& e : info.metadata) {
    out += "  " + shorten(e.key, 80) + " (" + std::string(type_name(e.value.type)) +
           ") = " + value_text(e.value) + "\n";
  }
  return out;
}

int inspect_command(std::string path, bool json, std::ostream& out, std::ostream& err) {
  auto info = read_header_file(path);
  if (!info) {
    auto const& message = info.error().message;
    err << "ray gguf inspect: " << (message.find(path) == std::string::npos ? path + ": " : "") << message
        << '\n';
    return 1;
  }
  if (json) {
    auto o = to_json(*info);
    o["file"] = valid_utf8(path);
    out << boost::json::serialize(o) << '\n';
  } else {
    out << "file            " << path << '\n' << describe(*info);
  }
  return 0;
}

}  // namespace ray::gguf
