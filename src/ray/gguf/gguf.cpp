// GGUF header reader: byte sources, a bounded buffered cursor, the parser and the derived model facts.
#include "ray/gguf/gguf.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <bit>
#include <cerrno>
#include <cstring>
#include <limits>
#include <map>
#include <utility>

namespace ray::gguf {
namespace {

error invalid(std::string message) {
  return error{errc::invalid_request, std::move(message)};
}

constexpr std::uint64_t max_i64 = static_cast<std::uint64_t>(std::numeric_limits<std::int64_t>::max());
// Reads are served from a window of this size, so walking a 250k-entry token list costs a few hundred preads.
constexpr std::size_t window_bytes = 64 * 1024;
constexpr std::uint32_t max_value_type = 12;  // float64

// Error text must stay one readable line whatever bytes a hostile file holds: escape everything but printable
// ASCII and cut long names.
std::string printable(std::string_view s) {
  constexpr std::size_t max_chars = 64;
  std::string out;
  for (std::size_t i = 0; i < s.size() && i < max_chars; ++i) {
    auto c = static_cast<unsigned char>(s[i]);
    if (c >= 0x20 && c < 0x7f && c != '\\') {
      out.push_back(static_cast<char>(c));
    } else {
      static constexpr char hex[] = "0123456789abcdef";
      out += "\\x";
      out.push_back(hex[c >> 4]);
      out.push_back(hex[c & 0xf]);
    }
  }
  if (s.size() > max_chars) out += "...";
  return out;
}

std::string str(std::uint64_t v) {
  return std::to_string(v);
}

// A forward-only reader over a byte_source that checks every read against the source size and
// limits::max_header_bytes before touching memory. `context` names the item being read in error messages.
class cursor {
 public:
  cursor(byte_source& source, limits const& lim) : source_(source), lim_(lim), size_(source.size()) {}

  std::uint64_t pos() const noexcept { return pos_; }
  std::string context;

  error fail(std::string message) const {
    if (!context.empty()) message += " (" + context + ")";
    return invalid(std::move(message));
  }

  // The next n bytes exist in the source and lie within the header limit.
  result<void> check(std::uint64_t n, std::string_view what) const {
    std::uint64_t const remaining = pos_ <= size_ ? size_ - pos_ : 0;
    if (n > remaining) return fail("truncated at offset " + str(pos_) + " reading " + std::string(what));
    if (pos_ > lim_.max_header_bytes || n > lim_.max_header_bytes - pos_) {
      return fail("header exceeds limit of " + str(lim_.max_header_bytes) + " bytes at offset " + str(pos_) +
                  " reading " + std::string(what));
    }
    return {};
  }

  result<void> skip(std::uint64_t n, std::string_view what) {
    if (auto r = check(n, what); !r) return r.error();
    pos_ += n;
    return {};
  }

  result<void> read_bytes(std::span<std::byte> out, std::string_view what) {
    if (auto r = check(out.size(), what); !r) return r.error();
    std::size_t done = 0;
    while (done < out.size()) {
      std::uint64_t const at = pos_ + done;
      if (at >= window_off_ && at - window_off_ < window_len_) {
        std::size_t const n = std::min<std::uint64_t>(window_len_ - (at - window_off_), out.size() - done);
        std::memcpy(out.data() + done, window_.data() + (at - window_off_), n);
        done += n;
        continue;
      }
      std::size_t const want = out.size() - done;
      if (want >= window_bytes) {  // large strings go straight to their destination
        auto got = source_.read(at, out.subspan(done));
        if (!got) return got.error();
        if (*got != want)
          return fail("truncated at offset " + str(at + *got) + " reading " + std::string(what));
        done += want;
        continue;
      }
      // check() guarantees at < size_ and at < max_header_bytes.
      window_.resize(window_bytes);
      std::uint64_t const len =
          std::min<std::uint64_t>({window_bytes, size_ - at, lim_.max_header_bytes - at});
      auto got = source_.read(at, std::span(window_.data(), static_cast<std::size_t>(len)));
      if (!got) return got.error();
      window_off_ = at;
      window_len_ = *got;
      // The source shrank under us (a file being rewritten).
      if (*got == 0) return fail("truncated at offset " + str(at) + " reading " + std::string(what));
    }
    pos_ += out.size();
    return {};
  }

  template <class T>
  result<T> read_le(std::string_view what) {
    static_assert(std::is_unsigned_v<T>);
    std::byte b[sizeof(T)];
    if (auto r = read_bytes(b, what); !r) return r.error();
    T v = 0;
    for (std::size_t i = 0; i < sizeof(T); ++i)
      v |= static_cast<T>(static_cast<T>(b[i]) << (8 * i));
    return v;
  }

  // A GGUF string: uint64 length then bytes (no terminator). Checked against max_string_bytes before
  // allocating.
  result<std::uint64_t> read_string_length(std::string_view what_length) {
    std::uint64_t const at = pos_;
    auto len = read_le<std::uint64_t>(what_length);
    if (!len) return len.error();
    if (*len > lim_.max_string_bytes) {
      return fail("string length " + str(*len) + " at offset " + str(at) + " exceeds limit " +
                  str(lim_.max_string_bytes));
    }
    return *len;
  }

  result<std::string> read_string(std::string_view what_length, std::string_view what) {
    auto len = read_string_length(what_length);
    if (!len) return len.error();
    if (auto r = check(*len, what); !r) return r.error();
    std::string s(static_cast<std::size_t>(*len), '\0');
    if (auto r = read_bytes(std::as_writable_bytes(std::span(s)), what); !r) return r.error();
    return s;
  }

  result<void> skip_string(std::string_view what_length, std::string_view what) {
    auto len = read_string_length(what_length);
    if (!len) return len.error();
    return skip(*len, what);
  }

 private:
  byte_source& source_;
  limits const& lim_;
  std::uint64_t size_;
  std::uint64_t pos_{0};
  std::vector<std::byte> window_;
  std::uint64_t window_off_{0};
  std::size_t window_len_{0};
};

#define RAY_GGUF_CAT2(a, b) a##b
#define RAY_GGUF_CAT(a, b) RAY_GGUF_CAT2(a, b)
// lhs = value of a result<T>, or return its error.
#define RAY_GGUF_ASSIGN(lhs, expr)                                                              \
  auto RAY_GGUF_CAT(ray_gguf_r_, __LINE__) = (expr);                                            \
  if (!RAY_GGUF_CAT(ray_gguf_r_, __LINE__)) return RAY_GGUF_CAT(ray_gguf_r_, __LINE__).error(); \
  lhs = std::move(*RAY_GGUF_CAT(ray_gguf_r_, __LINE__))
#define RAY_GGUF_CHECK(expr)                                              \
  do {                                                                    \
    if (auto ray_gguf_r = (expr); !ray_gguf_r) return ray_gguf_r.error(); \
  } while (false)

std::uint64_t fixed_size(value_type t) noexcept {
  switch (t) {
    case value_type::uint8:
    case value_type::int8:
    case value_type::boolean:
      return 1;
    case value_type::uint16:
    case value_type::int16:
      return 2;
    case value_type::uint32:
    case value_type::int32:
    case value_type::float32:
      return 4;
    case value_type::uint64:
    case value_type::int64:
    case value_type::float64:
      return 8;
    case value_type::string:
    case value_type::array:
      return 0;
  }
  return 0;
}

// A scalar of type t (t is a valid, non-array type).
result<scalar> read_scalar(cursor& c, value_type t, std::string_view what) {
  switch (t) {
    case value_type::uint8: {
      RAY_GGUF_ASSIGN(auto v, c.read_le<std::uint8_t>(what));
      return scalar{std::uint64_t{v}};
    }
    case value_type::int8: {
      RAY_GGUF_ASSIGN(auto v, c.read_le<std::uint8_t>(what));
      return scalar{std::int64_t{static_cast<std::int8_t>(v)}};
    }
    case value_type::uint16: {
      RAY_GGUF_ASSIGN(auto v, c.read_le<std::uint16_t>(what));
      return scalar{std::uint64_t{v}};
    }
    case value_type::int16: {
      RAY_GGUF_ASSIGN(auto v, c.read_le<std::uint16_t>(what));
      return scalar{std::int64_t{static_cast<std::int16_t>(v)}};
    }
    case value_type::uint32: {
      RAY_GGUF_ASSIGN(auto v, c.read_le<std::uint32_t>(what));
      return scalar{std::uint64_t{v}};
    }
    case value_type::int32: {
      RAY_GGUF_ASSIGN(auto v, c.read_le<std::uint32_t>(what));
      return scalar{std::int64_t{static_cast<std::int32_t>(v)}};
    }
    case value_type::float32: {
      RAY_GGUF_ASSIGN(auto v, c.read_le<std::uint32_t>(what));
      return scalar{static_cast<double>(std::bit_cast<float>(v))};
    }
    case value_type::boolean: {  // llama.cpp reads any non-zero byte as true
      RAY_GGUF_ASSIGN(auto v, c.read_le<std::uint8_t>(what));
      return scalar{v != 0};
    }
    case value_type::string: {
      RAY_GGUF_ASSIGN(auto v, c.read_string("string length", "string"));
      return scalar{std::move(v)};
    }
    case value_type::uint64: {
      RAY_GGUF_ASSIGN(auto v, c.read_le<std::uint64_t>(what));
      return scalar{v};
    }
    case value_type::int64: {
      RAY_GGUF_ASSIGN(auto v, c.read_le<std::uint64_t>(what));
      return scalar{static_cast<std::int64_t>(v)};
    }
    case value_type::float64: {
      RAY_GGUF_ASSIGN(auto v, c.read_le<std::uint64_t>(what));
      return scalar{std::bit_cast<double>(v)};
    }
    case value_type::array:
      break;
  }
  return c.fail("internal: read_scalar on an array");
}

result<value_type> read_type(cursor& c, std::string_view what, std::string_view kind) {
  std::uint64_t const at = c.pos();
  RAY_GGUF_ASSIGN(auto id, c.read_le<std::uint32_t>(what));
  if (id > max_value_type) {
    return c.fail("invalid " + std::string(kind) + " " + str(id) + " at offset " + str(at) +
                  " (valid: 0 to 12)");
  }
  return static_cast<value_type>(id);
}

result<array_summary> read_array(cursor& c, limits const& lim) {
  std::uint64_t const at = c.pos();
  RAY_GGUF_ASSIGN(auto element, read_type(c, "array element type", "array element type"));
  if (element == value_type::array) {
    return c.fail("nested array at offset " + str(at) + ": arrays of arrays are not supported");
  }
  std::uint64_t const length_at = c.pos();
  RAY_GGUF_ASSIGN(auto length, c.read_le<std::uint64_t>("array length"));
  if (length > lim.max_array_length) {
    return c.fail("array length " + str(length) + " at offset " + str(length_at) + " exceeds limit " +
                  str(lim.max_array_length));
  }
  array_summary a;
  a.element_type = element;
  a.length = length;
  std::uint64_t const keep =
      length <= lim.keep_array_whole ? length : std::min<std::uint64_t>(length, lim.array_preview);
  std::uint64_t const size = fixed_size(element);
  if (size != 0) {
    // Checks the whole array before reading any of it: length <= max_array_length keeps the product small.
    RAY_GGUF_CHECK(c.check(length * size, "array elements"));
  }
  a.head.reserve(static_cast<std::size_t>(keep));
  for (std::uint64_t i = 0; i < keep; ++i) {
    RAY_GGUF_ASSIGN(auto v, read_scalar(c, element, "array element"));
    a.head.push_back(std::move(v));
  }
  if (size != 0) {
    RAY_GGUF_CHECK(c.skip((length - keep) * size, "array elements"));
  } else {
    for (std::uint64_t i = keep; i < length; ++i)
      RAY_GGUF_CHECK(c.skip_string("string length", "string"));
  }
  return a;
}

result<metadata_value> read_value(cursor& c, value_type t, limits const& lim) {
  metadata_value v;
  v.type = t;
  if (t == value_type::array) {
    RAY_GGUF_ASSIGN(auto a, read_array(c, lim));
    v.data = std::move(a);
    return v;
  }
  RAY_GGUF_ASSIGN(auto s, read_scalar(c, t, "value"));
  std::visit([&](auto&& x) { v.data = std::move(x); }, std::move(s));
  return v;
}

// Index of an element whose name repeats an earlier one (in file order), found by sorting indices rather than
// by copying every name into a set.
template <class T, class Name>
std::optional<std::size_t> find_duplicate(std::vector<T> const& items, Name name) {
  std::vector<std::size_t> order(items.size());
  for (std::size_t i = 0; i < order.size(); ++i)
    order[i] = i;
  std::stable_sort(order.begin(), order.end(),
                   [&](std::size_t a, std::size_t b) { return name(items[a]) < name(items[b]); });
  std::optional<std::size_t> first;
  for (std::size_t i = 1; i < order.size(); ++i) {
    if (name(items[order[i]]) == name(items[order[i - 1]]) && (!first || order[i] < *first)) first = order[i];
  }
  return first;
}

bool is_power_of_two(std::uint64_t v) noexcept {
  return v != 0 && (v & (v - 1)) == 0;
}

std::uint64_t sat_add(std::uint64_t a, std::uint64_t b) noexcept {
  std::uint64_t r;
  return __builtin_add_overflow(a, b, &r) ? std::numeric_limits<std::uint64_t>::max() : r;
}

// Integer fact that may be given per layer: the scalar, or the maximum of a complete integer array (then
// `per_layer` receives every value).
std::optional<std::uint64_t> uint_or_max(metadata_value const* v, std::vector<std::uint64_t>* per_layer) {
  if (v == nullptr) return std::nullopt;
  if (auto u = v->as_uint()) return u;
  auto const* a = v->as_array();
  if (a == nullptr || !a->complete() || a->length == 0) return std::nullopt;
  std::vector<std::uint64_t> values;
  for (auto const& e : a->head) {
    if (auto const* u = std::get_if<std::uint64_t>(&e)) {
      values.push_back(*u);
    } else if (auto const* i = std::get_if<std::int64_t>(&e); i != nullptr && *i >= 0) {
      values.push_back(static_cast<std::uint64_t>(*i));
    } else {
      return std::nullopt;
    }
  }
  auto const m = *std::max_element(values.begin(), values.end());
  if (per_layer != nullptr) *per_layer = std::move(values);
  return m;
}

void derive_facts(gguf_info& info) {
  model_facts& m = info.model;
  if (auto const* v = info.find("general.architecture"); v != nullptr && v->as_string() != nullptr) {
    m.architecture = *v->as_string();
  } else {
    info.warnings.emplace_back(
        "general.architecture is missing: architecture-specific facts are unavailable");
  }
  if (auto const* v = info.find("general.name"); v != nullptr && v->as_string() != nullptr)
    m.name = *v->as_string();

  auto arch_key = [&](std::string_view suffix) { return m.architecture + "." + std::string(suffix); };
  auto arch_uint = [&](std::string_view suffix) -> std::optional<std::uint64_t> {
    if (m.architecture.empty()) return std::nullopt;
    auto const* v = info.find(arch_key(suffix));
    return v != nullptr ? v->as_uint() : std::nullopt;
  };

  m.context_length = arch_uint("context_length");
  m.embedding_length = arch_uint("embedding_length");
  m.block_count = arch_uint("block_count");
  m.feed_forward_length = arch_uint("feed_forward_length");
  m.expert_count = arch_uint("expert_count");
  m.expert_used_count = arch_uint("expert_used_count");
  if (!m.architecture.empty()) {
    std::vector<std::uint64_t> heads_per_layer;
    m.head_count = uint_or_max(info.find(arch_key("attention.head_count")), &heads_per_layer);
    if (auto const* kv = info.find(arch_key("attention.head_count_kv"))) {
      m.head_count_kv = uint_or_max(kv, &m.head_count_kv_per_layer);
    } else {
      m.head_count_kv = m.head_count;  // no GQA: one KV head per query head
      m.head_count_kv_per_layer = heads_per_layer;
    }
    m.key_length = arch_uint("attention.key_length");
    m.value_length = arch_uint("attention.value_length");
    if (m.embedding_length && m.head_count && *m.head_count != 0) {
      if (!m.key_length) m.key_length = *m.embedding_length / *m.head_count;
      if (!m.value_length) m.value_length = *m.embedding_length / *m.head_count;
    }
  }
  if (auto const* v = info.find("tokenizer.ggml.tokens"); v != nullptr && v->as_array() != nullptr) {
    m.vocab_size = v->as_array()->length;
  } else {
    m.vocab_size = arch_uint("vocab_size");
  }
  if (auto const* v = info.find("general.file_type")) {
    if (auto u = v->as_uint(); u && *u <= std::numeric_limits<std::uint32_t>::max()) {
      m.file_type = static_cast<std::uint32_t>(*u);
      m.file_type_name = file_type_name(*m.file_type);
    }
  }
  for (auto const& e : info.metadata) {
    if (e.key == "tokenizer.chat_template" || e.key.starts_with("tokenizer.chat_template.")) {
      m.chat_template = true;
      break;
    }
  }
}

}  // namespace

// ---------------------------------------------------------------------------------------------------------------
// Sources

result<file_source> file_source::open(std::string const& path) {
  int const fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return invalid("cannot open " + path + ": " + std::strerror(errno));
  struct stat st {};
  if (::fstat(fd, &st) != 0) {
    int const e = errno;
    ::close(fd);
    return invalid("cannot stat " + path + ": " + std::strerror(e));
  }
  if (!S_ISREG(st.st_mode)) {
    ::close(fd);
    return invalid(path + " is not a regular file");
  }
  return file_source(fd, static_cast<std::uint64_t>(st.st_size), path);
}

file_source::file_source(file_source&& other) noexcept
    : fd_(std::exchange(other.fd_, -1)), size_(other.size_), path_(std::move(other.path_)) {}

file_source& file_source::operator=(file_source&& other) noexcept {
  if (this != &other) {
    if (fd_ >= 0) ::close(fd_);
    fd_ = std::exchange(other.fd_, -1);
    size_ = other.size_;
    path_ = std::move(other.path_);
  }
  return *this;
}

file_source::~file_source() {
  if (fd_ >= 0) ::close(fd_);
}

result<std::size_t> file_source::read(std::uint64_t offset, std::span<std::byte> out) {
  std::size_t done = 0;
  while (done < out.size()) {
    ssize_t const n = ::pread(fd_, out.data() + done, out.size() - done, static_cast<off_t>(offset + done));
    if (n < 0) {
      if (errno == EINTR) continue;
      return invalid("cannot read " + path_ + " at offset " + str(offset + done) + ": " +
                     std::strerror(errno));
    }
    if (n == 0) break;
    done += static_cast<std::size_t>(n);
  }
  return done;
}

result<std::size_t> memory_source::read(std::uint64_t offset, std::span<std::byte> out) {
  if (offset >= bytes_.size()) return std::size_t{0};
  std::size_t const n = std::min<std::uint64_t>(out.size(), bytes_.size() - offset);
  std::memcpy(out.data(), bytes_.data() + offset, n);
  return n;
}

// ---------------------------------------------------------------------------------------------------------------
// Values

std::optional<std::uint64_t> metadata_value::as_uint() const noexcept {
  if (auto const* u = std::get_if<std::uint64_t>(&data)) return *u;
  if (auto const* i = std::get_if<std::int64_t>(&data); i != nullptr && *i >= 0) {
    return static_cast<std::uint64_t>(*i);
  }
  return std::nullopt;
}

std::optional<double> metadata_value::as_double() const noexcept {
  if (auto const* u = std::get_if<std::uint64_t>(&data)) return static_cast<double>(*u);
  if (auto const* i = std::get_if<std::int64_t>(&data)) return static_cast<double>(*i);
  if (auto const* d = std::get_if<double>(&data)) return *d;
  return std::nullopt;
}

std::string const* metadata_value::as_string() const noexcept {
  return std::get_if<std::string>(&data);
}

array_summary const* metadata_value::as_array() const noexcept {
  return std::get_if<array_summary>(&data);
}

metadata_value const* gguf_info::find(std::string_view key) const noexcept {
  for (auto const& e : metadata) {
    if (e.key == key) return &e.value;
  }
  return nullptr;
}

// ---------------------------------------------------------------------------------------------------------------
// Reader

result<gguf_info> read_header(byte_source& source, limits const& lim) {
  cursor c(source, lim);
  gguf_info info;
  info.file_size = source.size();

  std::byte magic[4];
  RAY_GGUF_CHECK(c.read_bytes(magic, "magic"));
  if (std::memcmp(magic, "GGUF", 4) != 0) {
    return invalid("bad magic (expected GGUF): file starts with \"" +
                   printable({reinterpret_cast<char const*>(magic), 4}) + "\"");
  }

  RAY_GGUF_ASSIGN(info.version, c.read_le<std::uint32_t>("version"));
  if (info.version != 2 && info.version != 3) {
    std::string message = "unsupported version " + str(info.version) + " (supported: 2, 3)";
    if (auto swapped = __builtin_bswap32(info.version); swapped == 2 || swapped == 3) {
      message += "; this looks like a big-endian GGUF file, which is not supported";
    }
    return invalid(std::move(message));
  }

  RAY_GGUF_ASSIGN(info.tensor_count, c.read_le<std::uint64_t>("tensor count"));
  RAY_GGUF_ASSIGN(info.metadata_count, c.read_le<std::uint64_t>("metadata key count"));
  if (info.tensor_count > lim.max_tensor_count) {
    return invalid("tensor count " + str(info.tensor_count) + " exceeds limit " + str(lim.max_tensor_count));
  }
  if (info.metadata_count > lim.max_metadata_count) {
    return invalid("metadata key count " + str(info.metadata_count) + " exceeds limit " +
                   str(lim.max_metadata_count));
  }

  // Counts are bounded above, but a small file claiming many entries must not make us reserve for all of
  // them.
  constexpr std::uint64_t reserve_cap = 1024;
  info.metadata.reserve(static_cast<std::size_t>(std::min(info.metadata_count, reserve_cap)));
  for (std::uint64_t i = 0; i < info.metadata_count; ++i) {
    metadata_entry e;
    e.offset = c.pos();
    c.context = "metadata key " + str(i);
    RAY_GGUF_ASSIGN(e.key, c.read_string("key length", "key"));
    c.context = "metadata key " + str(i) + " '" + printable(e.key) + "'";
    RAY_GGUF_ASSIGN(auto type, read_type(c, "value type", "value type"));
    RAY_GGUF_ASSIGN(e.value, read_value(c, type, lim));
    info.metadata.push_back(std::move(e));
  }
  if (auto dup =
          find_duplicate(info.metadata, [](metadata_entry const& e) -> std::string_view { return e.key; })) {
    auto const& e = info.metadata[*dup];
    return invalid("duplicate metadata key '" + printable(e.key) + "' at offset " + str(e.offset));
  }

  info.tensors.reserve(static_cast<std::size_t>(std::min(info.tensor_count, reserve_cap)));
  std::vector<std::uint64_t> tensor_info_offsets;
  tensor_info_offsets.reserve(info.tensors.capacity());
  for (std::uint64_t i = 0; i < info.tensor_count; ++i) {
    tensor_info t;
    std::uint64_t const at = c.pos();
    c.context = "tensor " + str(i);
    RAY_GGUF_ASSIGN(t.name, c.read_string("tensor name length", "tensor name"));
    c.context = "tensor " + str(i) + " '" + printable(t.name) + "'";
    std::uint64_t const dims_at = c.pos();
    RAY_GGUF_ASSIGN(auto n_dims, c.read_le<std::uint32_t>("tensor dimension count"));
    if (n_dims == 0 || n_dims > 4) {
      return c.fail("tensor has " + str(n_dims) + " dimensions at offset " + str(dims_at) +
                    " (expected 1 to 4)");
    }
    t.elements = 1;
    for (std::uint32_t d = 0; d < n_dims; ++d) {
      RAY_GGUF_ASSIGN(auto dim, c.read_le<std::uint64_t>("tensor dimension"));
      if (dim > max_i64) return c.fail("tensor dimension " + str(d) + " is " + str(dim) + ", above 2^63-1");
      t.dims.push_back(dim);
      std::uint64_t product;
      if (__builtin_mul_overflow(t.elements, dim, &product) || product > max_i64) {
        std::string shape;
        for (auto x : t.dims)
          shape += (shape.empty() ? "" : " x ") + str(x);
        return c.fail("tensor dims overflow: " + shape + " elements exceed 2^63-1");
      }
      t.elements = product;
    }
    RAY_GGUF_ASSIGN(t.type, c.read_le<std::uint32_t>("tensor type"));
    RAY_GGUF_ASSIGN(t.offset, c.read_le<std::uint64_t>("tensor offset"));
    tensor_info_offsets.push_back(at);
    info.tensors.push_back(std::move(t));
  }
  if (auto dup =
          find_duplicate(info.tensors, [](tensor_info const& t) -> std::string_view { return t.name; })) {
    return invalid("duplicate tensor name '" + printable(info.tensors[*dup].name) + "' at offset " +
                   str(tensor_info_offsets[*dup]));
  }
  c.context.clear();
  info.header_bytes = c.pos();

  if (auto const* v = info.find("general.alignment")) {
    auto a = v->as_uint();
    if (!a) {
      return invalid("general.alignment has type " + std::string(type_name(v->type)) + " (expected uint32)");
    }
    if (!is_power_of_two(*a) || *a > std::numeric_limits<std::uint32_t>::max()) {
      return invalid("general.alignment " + str(*a) + " is not a power of two below 2^32");
    }
    info.alignment = *a;
  }
  info.data_offset = (info.header_bytes + info.alignment - 1) / info.alignment * info.alignment;

  std::map<std::uint32_t, type_totals> totals;
  for (auto& t : info.tensors) {
    std::string const who = "tensor '" + printable(t.name) + "'";
    if (t.offset % info.alignment != 0) {
      return invalid(who + " offset " + str(t.offset) + " is not a multiple of the alignment " +
                     str(info.alignment));
    }
    auto& tot = totals[t.type];
    tot.type = t.type;
    tot.tensors += 1;
    tot.elements = sat_add(tot.elements, t.elements);
    info.parameter_count = sat_add(info.parameter_count, t.elements);
    auto const* traits = find_ggml_type(t.type);
    if (traits == nullptr) {
      info.unknown_tensor_types = true;
      continue;
    }
    if (t.dims[0] % traits->block_size != 0) {
      return invalid(who + " row length " + str(t.dims[0]) + " is not a multiple of the block size " +
                     str(traits->block_size) + " of type " + std::string(traits->name));
    }
    std::uint64_t bytes;
    if (__builtin_mul_overflow(t.elements / traits->block_size, std::uint64_t{traits->type_size}, &bytes)) {
      return invalid(who + " byte size overflows");
    }
    t.bytes = bytes;
    std::uint64_t end;
    if (__builtin_add_overflow(info.data_offset, t.offset, &end) ||
        __builtin_add_overflow(end, bytes, &end) || end > info.file_size) {
      return invalid(who + " data (offset " + str(t.offset) + ", " + str(bytes) +
                     " bytes) extends past the end of the file (" + str(info.file_size) +
                     " bytes): the file is truncated or partially downloaded");
    }
    tot.bytes = sat_add(tot.bytes.value_or(0), bytes);
    info.tensor_bytes = sat_add(info.tensor_bytes, bytes);
  }
  for (auto& [id, tot] : totals) {
    tot.name = ggml_type_name(id);
    if (find_ggml_type(id) == nullptr) {
      tot.bytes.reset();
      info.warnings.push_back(str(tot.tensors) + " tensor(s) have unknown ggml type " + str(id) +
                              ": their bytes are not counted");
    }
    info.by_type.push_back(std::move(tot));
  }
  std::stable_sort(info.by_type.begin(), info.by_type.end(), [](type_totals const& a, type_totals const& b) {
    return a.bytes.value_or(0) > b.bytes.value_or(0);
  });

  derive_facts(info);
  return info;
}

result<gguf_info> read_header_file(std::string const& path, limits const& lim) {
  auto source = file_source::open(path);
  if (!source) return source.error();
  return read_header(*source, lim);
}

}  // namespace ray::gguf
