// ray::gguf — a bounded reader for GGUF v2/v3 model headers, the model facts derived from them, and the
// memory estimate (weights + KV cache + prompt-cache RAM + headroom) used by the backend supervisor, `ray
// tune`, `ray doctor` and `ray gguf inspect`.
//
// Contract:
// - Only the header is read (magic, version, counts, metadata, tensor infos); tensor data is never touched.
// - Input is untrusted. Every count, length and offset is checked against `limits` and against the source
// size
//   before anything is allocated or read; no allocation is ever sized from an unchecked value.
// - Failures are values: `ray::error{errc::invalid_request, reason}` with a precise reason, e.g.
//   "bad magic (expected GGUF)", "unsupported version 1", "truncated at offset 24 reading metadata key
//   count", "tensor count 4294967296 exceeds limit 65536", "string length 9223372036854775808 at offset 32
//   exceeds limit 4194304 (metadata key 0)". Errors from the operating system (open/pread) use the same code
//   with the path and strerror.
// - Everything here is synchronous, blocking file I/O; no Asio. Call it at startup or from a CLI command, not
// on
//   the event loop. Values are plain data: safe to share between threads once built.
#pragma once

#include "ray/core/core.hpp"

#include <boost/json/object.hpp>

#include <cstddef>
#include <cstdint>
#include <iosfwd>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <variant>
#include <vector>

namespace ray::gguf {

// ---------------------------------------------------------------------------------------------------------------
// Byte sources

// A random-access, bounded source of bytes. Implementations: file_source (pread) and memory_source (a span).
class byte_source {
 public:
  virtual ~byte_source() = default;
  // Total size in bytes.
  virtual std::uint64_t size() const noexcept = 0;
  // Reads up to out.size() bytes starting at `offset` into `out`; returns the number of bytes read, which is
  // smaller than requested only at the end of the source. An I/O failure is an error.
  virtual result<std::size_t> read(std::uint64_t offset, std::span<std::byte> out) = 0;
};

// A read-only file read with pread(2). Move-only; closes the descriptor on destruction.
class file_source final : public byte_source {
 public:
  // Opens `path` read-only; errors name the path and the OS reason ("cannot open X: No such file or
  // directory").
  static result<file_source> open(std::string const& path);

  file_source(file_source&& other) noexcept;
  file_source& operator=(file_source&& other) noexcept;
  file_source(file_source const&) = delete;
  file_source& operator=(file_source const&) = delete;
  ~file_source() override;

  std::uint64_t size() const noexcept override { return size_; }
  result<std::size_t> read(std::uint64_t offset, std::span<std::byte> out) override;

 private:
  file_source(int fd, std::uint64_t size, std::string path) : fd_(fd), size_(size), path_(std::move(path)) {}
  int fd_{-1};
  std::uint64_t size_{0};
  std::string path_;
};

// Bytes already in memory (not owned: the span must outlive the source).
class memory_source final : public byte_source {
 public:
  explicit memory_source(std::span<std::byte const> bytes) noexcept : bytes_(bytes) {}
  explicit memory_source(std::string_view bytes) noexcept
      : bytes_(reinterpret_cast<std::byte const*>(bytes.data()), bytes.size()) {}

  std::uint64_t size() const noexcept override { return bytes_.size(); }
  result<std::size_t> read(std::uint64_t offset, std::span<std::byte> out) override;

 private:
  std::span<std::byte const> bytes_;
};

// ---------------------------------------------------------------------------------------------------------------
// Limits

// Bounds applied while reading a header. The defaults accept every real model published so far (vocabularies
// of ~260k tokens, merges lists of ~500k entries, chat templates of tens of KiB, MoE models with thousands of
// tensors) while refusing hostile counts before allocating.
struct limits {
  std::uint64_t max_metadata_count{65'536};  // metadata key/value pairs
  std::uint64_t max_tensor_count{65'536};    // tensor infos
  std::uint64_t max_string_bytes{4 * 1024 *
                                 1024};  // any single string: key, value, array element, tensor name
  std::uint64_t max_array_length{16 * 1024 *
                                 1024};  // elements in one metadata array (walked, mostly not kept)
  std::uint64_t max_header_bytes{64 * 1024 * 1024};  // bytes from offset 0 to the end of the tensor infos
  std::size_t keep_array_whole{
      256};                      // arrays up to this length are kept entirely (per-layer values, small lists)
  std::size_t array_preview{8};  // longer arrays keep only their first few elements (e.g. token lists)
};

// ---------------------------------------------------------------------------------------------------------------
// Parsed header

// GGUF metadata value type ids, as on disk.
enum class value_type : std::uint32_t {
  uint8 = 0,
  int8 = 1,
  uint16 = 2,
  int16 = 3,
  uint32 = 4,
  int32 = 5,
  float32 = 6,
  boolean = 7,
  string = 8,
  array = 9,
  uint64 = 10,
  int64 = 11,
  float64 = 12,
};
// "uint8" … "float64", "bool", "string", "array".
std::string_view type_name(value_type t) noexcept;

// A scalar: unsigned types widen to uint64, signed to int64, floats to double.
using scalar = std::variant<std::uint64_t, std::int64_t, double, bool, std::string>;

// An array summarised: its element type and length, and the first elements (all of them when
// length <= limits::keep_array_whole). Arrays of arrays are rejected by the reader (llama.cpp rejects them
// too).
struct array_summary {
  value_type element_type{value_type::uint8};
  std::uint64_t length{0};
  std::vector<scalar> head;
  bool complete() const noexcept { return head.size() == length; }
};

struct metadata_value {
  value_type type{value_type::uint8};
  std::variant<std::uint64_t, std::int64_t, double, bool, std::string, array_summary> data;

  // Integer value of any integer type when it is >= 0; nullopt otherwise.
  std::optional<std::uint64_t> as_uint() const noexcept;
  // Numeric value of any integer or float type.
  std::optional<double> as_double() const noexcept;
  // The string, when this is a string.
  std::string const* as_string() const noexcept;
  // The summary, when this is an array.
  array_summary const* as_array() const noexcept;
};

struct metadata_entry {
  std::string key;
  metadata_value value;
  std::uint64_t offset{0};  // file offset of the entry (its key length)
};

struct tensor_info {
  std::string name;
  std::vector<std::uint64_t> dims;     // 1..4 dimensions, ggml order (dims[0] is the row length)
  std::uint32_t type{0};               // ggml_type id
  std::uint64_t offset{0};             // relative to gguf_info::data_offset
  std::uint64_t elements{0};           // product of dims (checked: < 2^63)
  std::optional<std::uint64_t> bytes;  // from the ggml type table; nullopt when the type is unknown
};

// Totals per ggml tensor type (bytes per tensor type).
struct type_totals {
  std::uint32_t type{0};
  std::string name;  // "F16", "Q4_K", "unknown(77)"
  std::uint64_t tensors{0};
  std::uint64_t elements{0};
  std::optional<std::uint64_t> bytes;  // nullopt for unknown types
};

// Facts about the model derived from well-known keys; a fact is nullopt when its key is absent.
// Architecture-specific keys are "<architecture>.<name>", e.g. "llama.context_length".
struct model_facts {
  std::string architecture;                       // general.architecture ("" when absent)
  std::string name;                               // general.name
  std::optional<std::uint64_t> context_length;    // training context, tokens
  std::optional<std::uint64_t> embedding_length;  // n_embd
  std::optional<std::uint64_t> block_count;       // n_layer
  std::optional<std::uint64_t> feed_forward_length;
  std::optional<std::uint64_t> head_count;     // n_head (the maximum when given per layer)
  std::optional<std::uint64_t> head_count_kv;  // n_head_kv; defaults to head_count (max when per layer)
  // Per-layer KV head counts when the file gives an array (hybrid/variable-attention models); else empty.
  std::vector<std::uint64_t> head_count_kv_per_layer;
  std::optional<std::uint64_t> key_length;  // K head dim: attention.key_length, else embedding / head_count
  std::optional<std::uint64_t>
      value_length;  // V head dim: attention.value_length, else embedding / head_count
  std::optional<std::uint64_t> expert_count;
  std::optional<std::uint64_t> expert_used_count;
  std::optional<std::uint64_t> vocab_size;  // length of tokenizer.ggml.tokens, else <arch>.vocab_size
  std::optional<std::uint32_t> file_type;   // general.file_type (llama_ftype)
  std::string file_type_name;               // "F16", "Q4_K_M", "unknown(99)"; "" when absent
  bool chat_template{false};                // tokenizer.chat_template (or a named tokenizer.chat_template.*)
};

struct gguf_info {
  std::uint32_t version{0};
  std::uint64_t tensor_count{0};
  std::uint64_t metadata_count{0};
  std::uint64_t alignment{32};    // general.alignment, default 32
  std::uint64_t header_bytes{0};  // end of the tensor infos
  std::uint64_t data_offset{0};   // header_bytes rounded up to alignment
  std::uint64_t file_size{0};
  std::vector<metadata_entry> metadata;  // file order
  std::vector<tensor_info> tensors;      // file order
  model_facts model;
  std::vector<type_totals> by_type;  // sorted by bytes, largest first
  std::uint64_t parameter_count{0};  // sum of tensor elements
  std::uint64_t tensor_bytes{0};     // sum of known tensor sizes (the weights)
  bool unknown_tensor_types{
      false};  // some tensor has a type missing from the table: tensor_bytes is a lower bound
  std::vector<std::string> warnings;  // non-fatal findings, one line each

  metadata_value const* find(std::string_view key) const noexcept;
};

// Reads and validates the header. Besides the limits above it rejects: a bad magic, versions other than 2 and
// 3 (with a hint for big-endian files), invalid value type ids, nested arrays, duplicate keys or tensor
// names, tensors with 0 or more than 4 dims, dims whose product exceeds 2^63-1, a row length that is not a
// multiple of the type's block size, a general.alignment that is not a power of two, tensor offsets that are
// not aligned and tensor data that extends past the end of the source (a partially downloaded file).
result<gguf_info> read_header(byte_source& source, limits const& lim = {});
// Opens `path` with file_source and reads its header.
result<gguf_info> read_header_file(std::string const& path, limits const& lim = {});

// ---------------------------------------------------------------------------------------------------------------
// Tables (facts from ggml / llama.cpp)

struct ggml_type_traits {
  std::uint32_t id;
  std::string_view name;     // "Q4_K"
  std::uint32_t block_size;  // elements per block
  std::uint32_t type_size;   // bytes per block
};
// The ggml tensor type `id`, or nullptr when unknown (ids of removed types, e.g. Q4_2 = 4, are unknown).
ggml_type_traits const* find_ggml_type(std::uint32_t id) noexcept;
// "Q4_K", or "unknown(N)".
std::string ggml_type_name(std::uint32_t id);
// llama.cpp's LLAMA_FTYPE numbering without the MOSTLY_ prefix: 1 → "F16", 15 → "Q4_K_M"; "unknown(N)".
std::string file_type_name(std::uint32_t ftype);

// Bytes per cached element for a llama-server --cache-type-k/-v name ("f16", "f32", "bf16", "q8_0", "q4_0",
// "q4_1", "iq4_nl", "q5_0", "q5_1"); block types count their scales (q8_0 = 34/32 = 1.0625). nullopt if
// unknown.
std::optional<double> kv_type_bytes(std::string_view cache_type) noexcept;

// ---------------------------------------------------------------------------------------------------------------
// Memory

// KV-cache bytes per token of context: n_layer × n_head_kv × (key_length + value_length) × kv_type_bytes,
// which is the usual 2 × n_layer × n_head_kv × head_dim × bytes when K and V heads have the same size;
// per-layer KV head counts are summed over layers. Rounded up to whole bytes. Errors when a needed fact is
// missing (names the key). Recurrent state (Mamba/RWKV layers) and sliding-window savings are not modelled:
// the figure is an upper bound for transformer models.
result<std::uint64_t> kv_cache_bytes_per_token(model_facts const& model, double kv_type_bytes = 2.0);

inline constexpr std::uint64_t mib = 1024 * 1024;

// llama.cpp's compute buffers for one micro-batch of `ubatch` tokens against `kv_cells` cached cells per
// sequence (an estimate of the graph allocator's peak, CPU backend): the logits (n_vocab × ubatch f32), the
// attention scores without flash attention (n_head × ubatch × kv_cells f32; with flash attention they are
// tiled away) and the layer activations (ubatch × (4 × n_embd + 2 × n_ff) f32). Missing facts count as 0,
// so the figure is never an error, only smaller.
std::uint64_t compute_buffer_bytes(model_facts const& model, std::uint64_t ubatch, std::uint64_t kv_cells,
                                   bool flash_attention = false);

struct memory_request {
  std::uint64_t ctx_size{0};       // llama-server --ctx-size: total tokens of KV across all slots
  std::uint64_t cache_ram_mib{0};  // llama-server --cache-ram (prompt cache), MiB
  double kv_type_bytes{2.0};       // f16 KV cache
  std::uint64_t compute_bytes{0};  // compute_buffer_bytes(...) when the caller estimated them (`ray tune`)
  // Headroom for compute buffers, the runtime and allocator slack: max(headroom_min_bytes, headroom_fraction
  // × (weights + KV + cache RAM)). Defaults: 256 MiB or 10 %, whichever is larger.
  std::uint64_t headroom_min_bytes{256 * mib};
  double headroom_fraction{0.10};
};

struct memory_estimate {
  std::uint64_t weights_bytes{0};    // all tensor bytes (mmapped weights end up resident)
  std::uint64_t kv_bytes{0};         // kv_cache_bytes_per_token × ctx_size
  std::uint64_t cache_ram_bytes{0};  // cache_ram_mib × MiB
  std::uint64_t compute_bytes{0};    // memory_request::compute_bytes (0: covered by the headroom alone)
  std::uint64_t headroom_bytes{0};
  std::uint64_t total{0};  // sum of the above (saturates at 2^64-1 rather than wrapping)
};

// The memory a llama-server needs for this model with these settings. Errors as kv_cache_bytes_per_token.
result<memory_estimate> estimate_memory(gguf_info const& info, memory_request const& req);
// "needs about X MiB, limit Y MiB (weights A MiB + KV cache B MiB + cache RAM C MiB [+ compute E MiB] +
// headroom D MiB)" (compute only when estimated): the
// need rounded up and the limit rounded down to whole MiB, so the message never understates the shortfall.
std::string refusal_message(memory_estimate const& estimate, std::uint64_t limit_bytes);
// True when estimate.total <= limit_bytes.
inline bool fits(memory_estimate const& estimate, std::uint64_t limit_bytes) noexcept {
  return estimate.total <= limit_bytes;
}

// ---------------------------------------------------------------------------------------------------------------
// Output

// {"version", "tensor_count", "metadata_count", "alignment", "header_bytes", "data_offset", "file_size",
//  "model": {...facts, "parameter_count", "tensor_bytes", "kv_bytes_per_token_f16"},
//  "tensor_types": [{"type","tensors","elements","bytes"}], "metadata": {key: value}, "tensors": [...],
//  "warnings": [...]}. Scalars map to JSON numbers/bools/strings (invalid UTF-8 replaced by U+FFFD;
//  non-finite
// floats as the strings "nan", "inf", "-inf"); arrays to {"type":"array","element_type","length","head"}.
boost::json::object to_json(gguf_info const& info);
// Multi-line human summary for `ray gguf inspect`: facts first, then every metadata key (long strings and
// arrays shortened).
std::string describe(gguf_info const& info);

// `ray gguf inspect FILE [--json]`: prints the summary (or one line of JSON) to `out` and returns 0; on a bad
// or unreadable file prints "ray gguf inspect: FILE: <reason>" to `err` and returns 1.
int inspect_command(std::string path, bool json, std::ostream& out, std::ostream& err);

}  // namespace ray::gguf
