#include "ray/gguf/gguf.hpp"

#include <gtest/gtest.h>
#include <boost/json/parse.hpp>
#include <boost/json/serialize.hpp>

#include <atomic>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <new>
#include <sstream>

#include <unistd.h>

// The largest single allocation made while `tracking` is on: proves hostile counts never size an allocation.
// Sanitizer builds keep their own allocator (which also refuses absurd sizes), so the replacement is left
// out.
namespace {
std::atomic<bool> tracking{false};
std::atomic<std::size_t> largest_allocation{0};
}  // namespace

#ifndef RAY_SANITIZED
void* operator new(std::size_t n) {
  if (tracking.load(std::memory_order_relaxed)) {
    std::size_t prev = largest_allocation.load(std::memory_order_relaxed);
    while (n > prev && !largest_allocation.compare_exchange_weak(prev, n)) {
    }
  }
  if (void* p = std::malloc(n == 0 ? 1 : n)) return p;
  throw std::bad_alloc();
}
void operator delete(void* p) noexcept {
  std::free(p);
}
void operator delete(void* p, std::size_t) noexcept {
  std::free(p);
}
#endif

namespace {

namespace gguf = ray::gguf;

std::string const fixture_path = std::string(RAY_TEST_FIXTURES) + "/models/tiny-llama-64x2.gguf";

std::string read_all(std::string const& path) {
  std::ifstream in(path, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

// Builds GGUF bytes by hand, little-endian.
struct builder {
  std::string bytes;

  builder& raw(std::string_view s) {
    bytes += s;
    return *this;
  }
  builder& u8(std::uint8_t v) {
    bytes.push_back(static_cast<char>(v));
    return *this;
  }
  builder& u32(std::uint32_t v) {
    for (int i = 0; i < 4; ++i)
      bytes.push_back(static_cast<char>((v >> (8 * i)) & 0xff));
    return *this;
  }
  builder& u64(std::uint64_t v) {
    for (int i = 0; i < 8; ++i)
      bytes.push_back(static_cast<char>((v >> (8 * i)) & 0xff));
    return *this;
  }
  builder& str(std::string_view s) {
    u64(s.size());
    return raw(s);
  }
  builder& header(std::uint64_t tensors, std::uint64_t kvs, std::uint32_t version = 3) {
    raw("GGUF").u32(version).u64(tensors).u64(kvs);
    return *this;
  }
  builder& kv_u32(std::string_view key, std::uint32_t v) { return str(key).u32(4).u32(v); }
  builder& kv_str(std::string_view key, std::string_view v) { return str(key).u32(8).str(v); }
  builder& tensor(std::string_view name, std::vector<std::uint64_t> dims, std::uint32_t type,
                  std::uint64_t offset) {
    str(name).u32(static_cast<std::uint32_t>(dims.size()));
    for (auto d : dims)
      u64(d);
    return u32(type).u64(offset);
  }
  // Pads to the 32-byte alignment and appends `n` zero bytes of tensor data.
  builder& data(std::size_t n) {
    bytes.append((32 - bytes.size() % 32) % 32, '\0');
    bytes.append(n, '\0');
    return *this;
  }
};

ray::result<gguf::gguf_info> parse(std::string const& bytes, gguf::limits const& lim = {}) {
  gguf::memory_source src(bytes);
  return gguf::read_header(src, lim);
}

// Parses with allocation tracking and returns the error message (the parse must fail).
std::string error_of(std::string const& bytes, gguf::limits const& lim = {}) {
  largest_allocation = 0;
  tracking = true;
  auto r = parse(bytes, lim);
  tracking = false;
  EXPECT_LT(largest_allocation.load(), std::size_t{1} << 20) << "a hostile header sized an allocation";
  if (r) {
    ADD_FAILURE() << "expected an error";
    return {};
  }
  EXPECT_EQ(r.error().code, ray::errc::invalid_request);
  return r.error().message;
}

// A small valid llama-like model: 2 layers, 8 heads, 2 KV heads, 128 embedding, one F32 tensor of 128
// elements.
builder small_model() {
  builder b;
  b.header(1, 7)
      .kv_str("general.architecture", "llama")
      .kv_u32("llama.block_count", 2)
      .kv_u32("llama.embedding_length", 128)
      .kv_u32("llama.attention.head_count", 8)
      .kv_u32("llama.attention.head_count_kv", 2)
      .kv_u32("llama.context_length", 2048)
      .kv_u32("general.file_type", 15)
      .tensor("output_norm.weight", {128}, 0, 0)
      .data(128 * 4);
  return b;
}

// ----------------------------------------------------------------------------------------------------------------
// The fixture

TEST(GgufFixture, ParsesWithExactFacts) {
  auto r = gguf::read_header_file(fixture_path);
  ASSERT_TRUE(r) << r.error().message;
  auto const& info = *r;
  EXPECT_EQ(info.version, 3u);
  EXPECT_EQ(info.tensor_count, 21u);
  EXPECT_EQ(info.metadata_count, 19u);
  EXPECT_EQ(info.metadata.size(), 19u);
  EXPECT_EQ(info.alignment, 32u);
  EXPECT_EQ(info.header_bytes, 11699u);
  EXPECT_EQ(info.data_offset, 11712u);
  EXPECT_EQ(info.file_size, 292544u);
  EXPECT_TRUE(info.warnings.empty());

  auto const& m = info.model;
  EXPECT_EQ(m.architecture, "llama");
  EXPECT_EQ(m.name, "ray-test-tiny-llama");
  EXPECT_EQ(m.context_length, 4096u);
  EXPECT_EQ(m.embedding_length, 64u);
  EXPECT_EQ(m.block_count, 2u);
  EXPECT_EQ(m.feed_forward_length, 128u);
  EXPECT_EQ(m.head_count, 4u);
  EXPECT_EQ(m.head_count_kv, 4u);
  EXPECT_TRUE(m.head_count_kv_per_layer.empty());
  EXPECT_EQ(m.key_length, 16u);  // 64 / 4
  EXPECT_EQ(m.value_length, 16u);
  EXPECT_EQ(m.vocab_size, 452u);
  EXPECT_EQ(m.file_type, 1u);
  EXPECT_EQ(m.file_type_name, "F16");
  EXPECT_TRUE(m.chat_template);

  // Parameters: token_embd 64×452 = 28928, output 64×452 = 28928, output_norm 64, and per layer
  // attn_norm + ffn_norm 2×64 = 128, q/k/v/o 4×64×64 = 16384, gate/up/down 3×64×128 = 24576 → 41088 × 2
  // layers. 28928 + 28928 + 64 + 82176 = 140096.
  EXPECT_EQ(info.parameter_count, 140096u);
  // 5 F32 norm vectors of 64 = 320 elements × 4 = 1280 bytes; the other 139776 elements are F16 → 279552
  // bytes. 1280 + 279552 = 280832 = file size 292544 − data offset 11712: the tensors fill the data section
  // exactly.
  EXPECT_EQ(info.tensor_bytes, 280832u);
  EXPECT_FALSE(info.unknown_tensor_types);
  ASSERT_EQ(info.by_type.size(), 2u);
  EXPECT_EQ(info.by_type[0].name, "F16");
  EXPECT_EQ(info.by_type[0].tensors, 16u);
  EXPECT_EQ(info.by_type[0].elements, 139776u);
  EXPECT_EQ(info.by_type[0].bytes, 279552u);
  EXPECT_EQ(info.by_type[1].name, "F32");
  EXPECT_EQ(info.by_type[1].tensors, 5u);
  EXPECT_EQ(info.by_type[1].bytes, 1280u);

  ASSERT_EQ(info.tensors.size(), 21u);
  EXPECT_EQ(info.tensors[0].name, "token_embd.weight");
  EXPECT_EQ(info.tensors[0].dims, (std::vector<std::uint64_t>{64, 452}));
  EXPECT_EQ(info.tensors[0].type, 1u);
  EXPECT_EQ(info.tensors[0].bytes, 57856u);
  EXPECT_EQ(info.tensors[20].name, "blk.1.ffn_down.weight");
  EXPECT_EQ(info.tensors[20].offset, 264448u);

  // KV bytes per token = 2 (K and V) × 2 layers × 4 KV heads × 16 head dim × 2 bytes (f16) = 512.
  auto kv = gguf::kv_cache_bytes_per_token(m);
  ASSERT_TRUE(kv);
  EXPECT_EQ(*kv, 512u);
}

TEST(GgufFixture, MetadataValuesAreTypedAndArraysSummarised) {
  auto r = gguf::read_header_file(fixture_path);
  ASSERT_TRUE(r);
  auto const* ctx = r->find("llama.context_length");
  ASSERT_NE(ctx, nullptr);
  EXPECT_EQ(ctx->type, gguf::value_type::uint32);
  EXPECT_EQ(ctx->as_uint(), 4096u);

  auto const* eps = r->find("llama.attention.layer_norm_rms_epsilon");
  ASSERT_NE(eps, nullptr);
  EXPECT_EQ(eps->type, gguf::value_type::float32);
  EXPECT_NEAR(*eps->as_double(), 1e-5, 1e-9);

  auto const* tokens = r->find("tokenizer.ggml.tokens");
  ASSERT_NE(tokens, nullptr);
  auto const* a = tokens->as_array();
  ASSERT_NE(a, nullptr);
  EXPECT_EQ(a->element_type, gguf::value_type::string);
  EXPECT_EQ(a->length, 452u);
  ASSERT_EQ(a->head.size(), 8u);  // longer than keep_array_whole: only a preview is kept
  EXPECT_FALSE(a->complete());
  EXPECT_EQ(std::get<std::string>(a->head[0]), "<unk>");
  EXPECT_EQ(std::get<std::string>(a->head[1]), "<s>");

  auto const* types = r->find("tokenizer.ggml.token_type");
  ASSERT_NE(types, nullptr);
  EXPECT_EQ(types->as_array()->element_type, gguf::value_type::int32);
  EXPECT_EQ(std::get<std::int64_t>(types->as_array()->head[0]), 2);

  auto const* tmpl = r->find("tokenizer.chat_template");
  ASSERT_NE(tmpl, nullptr);
  ASSERT_NE(tmpl->as_string(), nullptr);
  EXPECT_TRUE(tmpl->as_string()->starts_with("{% for m in messages %}"));
  EXPECT_EQ(r->find("no.such.key"), nullptr);
}

TEST(GgufFixture, MemorySourceReadsTheSameAsTheFile) {
  std::string const bytes = read_all(fixture_path);
  ASSERT_EQ(bytes.size(), 292544u);
  auto from_memory = parse(bytes);
  auto from_file = gguf::read_header_file(fixture_path);
  ASSERT_TRUE(from_memory);
  ASSERT_TRUE(from_file);
  EXPECT_EQ(boost::json::serialize(gguf::to_json(*from_memory)),
            boost::json::serialize(gguf::to_json(*from_file)));
}

TEST(GgufFixture, EveryTruncationIsAnErrorNeverACrash) {
  std::string const bytes = read_all(fixture_path);
  std::uint64_t const header_end = 11699;
  for (std::size_t n = 0; n < bytes.size(); n += (n < header_end + 256 ? 1 : 509)) {
    auto r = parse(bytes.substr(0, n));
    ASSERT_FALSE(r) << "prefix of " << n << " bytes parsed";
    if (n < header_end) {
      ASSERT_NE(r.error().message.find("truncated at offset"), std::string::npos)
          << n << ": " << r.error().message;
    }
  }
  EXPECT_EQ(parse(bytes.substr(0, 0)).error().message, "truncated at offset 0 reading magic");
  EXPECT_EQ(parse(bytes.substr(0, 10)).error().message, "truncated at offset 8 reading tensor count");
  // Cut inside the data section: the header is complete but the last tensor's data is missing.
  auto cut = parse(bytes.substr(0, bytes.size() - 1));
  ASSERT_FALSE(cut);
  EXPECT_NE(
      cut.error().message.find("tensor 'blk.1.ffn_down.weight' data (offset 264448, 16384 bytes) extends "
                               "past the end of the file (292543 bytes)"),
      std::string::npos)
      << cut.error().message;
}

TEST(GgufFixture, TruncationMessagesNameTheItemAndOffset) {
  std::string const bytes = read_all(fixture_path);
  // general.architecture's key starts at 24: its 8-byte length, then 20 bytes of key, then the type id at 52.
  EXPECT_EQ(parse(bytes.substr(0, 30)).error().message,
            "truncated at offset 24 reading key length (metadata key 0)");
  EXPECT_EQ(parse(bytes.substr(0, 40)).error().message,
            "truncated at offset 32 reading key (metadata key 0)");
  EXPECT_EQ(parse(bytes.substr(0, 53)).error().message,
            "truncated at offset 52 reading value type (metadata key 0 'general.architecture')");
}

TEST(GgufReader, WalksLargeVocabulariesKeepingOnlyAPreview) {
  builder b;
  b.header(0, 2)
      .kv_str("general.architecture", "llama")
      .str("tokenizer.ggml.tokens")
      .u32(9)
      .u32(8)
      .u64(300'000);
  for (int i = 0; i < 300'000; ++i)
    b.str("tok" + std::to_string(i));
  auto r = parse(b.bytes);
  ASSERT_TRUE(r) << r.error().message;
  EXPECT_EQ(r->model.vocab_size, 300'000u);
  auto const* a = r->find("tokenizer.ggml.tokens")->as_array();
  ASSERT_EQ(a->head.size(), 8u);
  EXPECT_EQ(std::get<std::string>(a->head[7]), "tok7");
  EXPECT_EQ(r->header_bytes, b.bytes.size());
}

// ----------------------------------------------------------------------------------------------------------------
// Memory

TEST(GgufMemory, KvBytesPerTokenFollowTheCacheType) {
  auto r = gguf::read_header_file(fixture_path);
  ASSERT_TRUE(r);
  // 2 × 2 layers × 4 heads × 16 = 256 elements per token.
  EXPECT_EQ(*gguf::kv_cache_bytes_per_token(r->model, 4.0), 1024u);
  EXPECT_EQ(*gguf::kv_cache_bytes_per_token(r->model, *gguf::kv_type_bytes("q8_0")), 272u);  // × 34/32
  EXPECT_EQ(*gguf::kv_cache_bytes_per_token(r->model, *gguf::kv_type_bytes("q4_0")), 144u);  // × 18/32
  EXPECT_EQ(gguf::kv_type_bytes("F16"), 2.0);
  EXPECT_EQ(gguf::kv_type_bytes("q9_9"), std::nullopt);
  EXPECT_FALSE(gguf::kv_cache_bytes_per_token(r->model, 0.0));
}

TEST(GgufMemory, EstimateAddsWeightsKvCacheRamAndHeadroom) {
  auto r = gguf::read_header_file(fixture_path);
  ASSERT_TRUE(r);
  gguf::memory_request req;
  req.ctx_size = 4096;
  req.cache_ram_mib = 64;
  auto e = gguf::estimate_memory(*r, req);
  ASSERT_TRUE(e) << e.error().message;
  EXPECT_EQ(e->weights_bytes, 280832u);
  EXPECT_EQ(e->kv_bytes, 512u * 4096u);  // 2 MiB
  EXPECT_EQ(e->cache_ram_bytes, 64 * gguf::mib);
  EXPECT_EQ(e->headroom_bytes, 256 * gguf::mib);  // 10 % of ~66 MiB is below the 256 MiB floor
  EXPECT_EQ(e->total, 280832u + 2 * gguf::mib + 64 * gguf::mib + 256 * gguf::mib);
  EXPECT_TRUE(gguf::fits(*e, 512 * gguf::mib));
  EXPECT_FALSE(gguf::fits(*e, 256 * gguf::mib));
  EXPECT_TRUE(gguf::refusal_message(*e, 256 * gguf::mib).starts_with("needs about 323 MiB, limit 256 MiB"))
      << gguf::refusal_message(*e, 256 * gguf::mib);

  // A large cache makes the 10 % share exceed the floor.
  req.cache_ram_mib = 8192;
  auto big = gguf::estimate_memory(*r, req);
  ASSERT_TRUE(big);
  EXPECT_EQ(big->headroom_bytes, (280832u + 2 * gguf::mib + 8192 * gguf::mib + 9) / 10);

  // Absurd settings saturate instead of wrapping.
  req.ctx_size = std::uint64_t{1} << 62;
  auto huge = gguf::estimate_memory(*r, req);
  ASSERT_TRUE(huge);
  EXPECT_EQ(huge->total, std::numeric_limits<std::uint64_t>::max());
}

TEST(GgufMemory, GroupedQueryAttentionAndPerLayerKvHeads) {
  auto gqa = parse(small_model().bytes);
  ASSERT_TRUE(gqa) << gqa.error().message;
  EXPECT_EQ(gqa->model.head_count_kv, 2u);
  EXPECT_EQ(gqa->model.key_length, 16u);  // 128 / 8
  EXPECT_EQ(gqa->model.file_type_name, "Q4_K_M");
  EXPECT_FALSE(gqa->model.chat_template);
  EXPECT_EQ(*gguf::kv_cache_bytes_per_token(gqa->model), 2u * 2 * 2 * 16 * 2);

  // Per-layer KV heads (hybrid models): layer 0 has 4 KV heads, layer 1 none; explicit K/V head sizes.
  builder b;
  b.header(0, 6)
      .kv_str("general.architecture", "hybrid")
      .kv_u32("hybrid.block_count", 2)
      .kv_u32("hybrid.attention.head_count", 8)
      .kv_u32("hybrid.attention.key_length", 64)
      .kv_u32("hybrid.attention.value_length", 32)
      .str("hybrid.attention.head_count_kv")
      .u32(9)
      .u32(4)
      .u64(2)
      .u32(4)
      .u32(0);
  auto r = parse(b.bytes);
  ASSERT_TRUE(r) << r.error().message;
  EXPECT_EQ(r->model.head_count_kv, 4u);
  EXPECT_EQ(r->model.head_count_kv_per_layer, (std::vector<std::uint64_t>{4, 0}));
  EXPECT_EQ(*gguf::kv_cache_bytes_per_token(r->model), 4u * (64 + 32) * 2);

  builder missing;
  missing.header(0, 1).kv_str("general.architecture", "llama");
  auto m = parse(missing.bytes);
  ASSERT_TRUE(m);
  auto kv = gguf::kv_cache_bytes_per_token(m->model);
  ASSERT_FALSE(kv);
  EXPECT_EQ(kv.error().message,
            "cannot compute the KV cache size: the model metadata lacks llama.block_count");
}

// ----------------------------------------------------------------------------------------------------------------
// Hostile headers

TEST(GgufHostile, BadMagic) {
  EXPECT_EQ(error_of("GGML\x03\0\0\0"), "bad magic (expected GGUF): file starts with \"GGML\"");
  EXPECT_EQ(error_of(std::string("\x7f"
                                 "ELF",
                                 4) +
                     std::string(20, '\0')),
            "bad magic (expected GGUF): file starts with \"\\x7fELF\"");
}

TEST(GgufHostile, UnsupportedVersions) {
  EXPECT_EQ(error_of(builder{}.header(0, 0, 1).bytes), "unsupported version 1 (supported: 2, 3)");
  EXPECT_EQ(error_of(builder{}.header(0, 0, 99).bytes), "unsupported version 99 (supported: 2, 3)");
  EXPECT_NE(error_of(builder{}.header(0, 0, 0x03000000).bytes).find("big-endian"), std::string::npos);
  auto v2 = parse(builder{}.header(0, 0, 2).bytes);
  ASSERT_TRUE(v2) << v2.error().message;
  EXPECT_EQ(v2->version, 2u);
}

TEST(GgufHostile, AbsurdCountsAreRejectedBeforeAllocating) {
  std::uint64_t const huge = std::uint64_t{1} << 63;
  EXPECT_EQ(error_of(builder{}.header(huge, 0).bytes),
            "tensor count 9223372036854775808 exceeds limit 65536");
  EXPECT_EQ(error_of(builder{}.header(0, huge).bytes),
            "metadata key count 9223372036854775808 exceeds limit 65536");
  // Within the limit but far beyond what the bytes can hold: a truncation, with no reservation for 65536
  // entries.
  EXPECT_EQ(error_of(builder{}.header(0, 65536).bytes),
            "truncated at offset 24 reading key length (metadata key 0)");
  EXPECT_EQ(error_of(builder{}.header(65536, 0).bytes),
            "truncated at offset 24 reading tensor name length (tensor 0)");
}

TEST(GgufHostile, AbsurdStringLengths) {
  std::uint64_t const huge = std::uint64_t{1} << 63;
  EXPECT_EQ(error_of(builder{}.header(0, 1).u64(huge).bytes),
            "string length 9223372036854775808 at offset 24 exceeds limit 4194304 (metadata key 0)");
  EXPECT_EQ(error_of(builder{}.header(0, 1).str("k").u32(8).u64(huge).bytes),
            "string length 9223372036854775808 at offset 37 exceeds limit 4194304 (metadata key 0 'k')");
  EXPECT_EQ(error_of(builder{}.header(1, 0).u64(huge).bytes),
            "string length 9223372036854775808 at offset 24 exceeds limit 4194304 (tensor 0)");
  // Below the limit but past the end of the data.
  EXPECT_EQ(error_of(builder{}.header(0, 1).u64(4'000'000).raw("abc").bytes),
            "truncated at offset 32 reading key (metadata key 0)");
}

TEST(GgufHostile, HugeArrays) {
  std::uint64_t const n = std::uint64_t{1} << 40;
  EXPECT_EQ(error_of(builder{}.header(0, 1).str("a").u32(9).u32(0).u64(n).bytes),
            "array length 1099511627776 at offset 41 exceeds limit 16777216 (metadata key 0 'a')");
  EXPECT_EQ(error_of(builder{}.header(0, 1).str("a").u32(9).u32(8).u64(n).bytes),
            "array length 1099511627776 at offset 41 exceeds limit 16777216 (metadata key 0 'a')");
  // With the limit lifted, the size check against the data still refuses before reading or allocating.
  gguf::limits lifted;
  lifted.max_array_length = n;
  EXPECT_EQ(error_of(builder{}.header(0, 1).str("a").u32(9).u32(12).u64(n).bytes, lifted),
            "truncated at offset 49 reading array elements (metadata key 0 'a')");
  // A string array of 2^40 elements must be walked element by element: it stops at the first missing one.
  EXPECT_EQ(error_of(builder{}.header(0, 1).str("a").u32(9).u32(8).u64(n).str("x").bytes, lifted),
            "truncated at offset 58 reading string length (metadata key 0 'a')");
}

TEST(GgufHostile, NestedArraysAndInvalidTypeIds) {
  EXPECT_EQ(error_of(builder{}.header(0, 1).str("a").u32(9).u32(9).u32(0).u64(0).bytes),
            "nested array at offset 37: arrays of arrays are not supported (metadata key 0 'a')");
  EXPECT_EQ(error_of(builder{}.header(0, 1).str("a").u32(13).bytes),
            "invalid value type 13 at offset 33 (valid: 0 to 12) (metadata key 0 'a')");
  EXPECT_EQ(error_of(builder{}.header(0, 1).str("a").u32(0xffffffffu).bytes),
            "invalid value type 4294967295 at offset 33 (valid: 0 to 12) (metadata key 0 'a')");
  EXPECT_EQ(error_of(builder{}.header(0, 1).str("a").u32(9).u32(77).u64(1).bytes),
            "invalid array element type 77 at offset 37 (valid: 0 to 12) (metadata key 0 'a')");
}

TEST(GgufHostile, DuplicateKeysAndTensorNames) {
  EXPECT_EQ(error_of(builder{}.header(0, 2).kv_u32("a", 1).kv_u32("a", 2).bytes),
            "duplicate metadata key 'a' at offset 41");
  EXPECT_EQ(
      error_of(builder{}.header(2, 0).tensor("t", {32}, 0, 0).tensor("t", {32}, 0, 128).data(256).bytes),
      "duplicate tensor name 't' at offset 57");
}

TEST(GgufHostile, TensorDimensions) {
  EXPECT_EQ(error_of(builder{}.header(1, 0).tensor("t", {}, 0, 0).bytes),
            "tensor has 0 dimensions at offset 33 (expected 1 to 4) (tensor 0 't')");
  EXPECT_EQ(error_of(builder{}.header(1, 0).tensor("t", {1, 1, 1, 1, 1}, 0, 0).bytes),
            "tensor has 5 dimensions at offset 33 (expected 1 to 4) (tensor 0 't')");
  std::uint64_t const big = std::uint64_t{1} << 32;
  EXPECT_EQ(error_of(builder{}.header(1, 0).tensor("t", {big, big}, 0, 0).bytes),
            "tensor dims overflow: 4294967296 x 4294967296 elements exceed 2^63-1 (tensor 0 't')");
  EXPECT_EQ(error_of(builder{}.header(1, 0).tensor("t", {3, 3037000500, 1u << 30}, 0, 0).bytes),
            "tensor dims overflow: 3 x 3037000500 x 1073741824 elements exceed 2^63-1 (tensor 0 't')");
  EXPECT_EQ(error_of(builder{}.header(1, 0).tensor("t", {std::uint64_t{1} << 63}, 0, 0).bytes),
            "tensor dimension 0 is 9223372036854775808, above 2^63-1 (tensor 0 't')");
  // Exactly 2^62 F64 elements fit the element count but not the byte size.
  EXPECT_EQ(error_of(builder{}.header(1, 0).tensor("t", {std::uint64_t{1} << 62}, 28, 0).bytes),
            "tensor 't' byte size overflows");
}

TEST(GgufHostile, TensorLayoutAndTypes) {
  // Q4_K rows must be a multiple of 256 elements.
  EXPECT_EQ(error_of(builder{}.header(1, 0).tensor("t", {100}, 12, 0).data(4096).bytes),
            "tensor 't' row length 100 is not a multiple of the block size 256 of type Q4_K");
  EXPECT_EQ(error_of(builder{}.header(1, 0).tensor("t", {8}, 0, 7).data(64).bytes),
            "tensor 't' offset 7 is not a multiple of the alignment 32");
  EXPECT_EQ(error_of(builder{}.header(1, 0).tensor("t", {64}, 0, 0).data(255).bytes),
            "tensor 't' data (offset 0, 256 bytes) extends past the end of the file (319 bytes): the file is "
            "truncated or partially downloaded");
  EXPECT_EQ(error_of(builder{}.header(0, 1).kv_u32("general.alignment", 48).bytes),
            "general.alignment 48 is not a power of two below 2^32");
  EXPECT_EQ(error_of(builder{}.header(0, 1).kv_str("general.alignment", "x").bytes),
            "general.alignment has type string (expected uint32)");

  // An unknown tensor type (77) or a removed one (4 = Q4_2) is reported, not fatal.
  auto r = parse(builder{}.header(2, 0).tensor("a", {32}, 77, 0).tensor("b", {32}, 0, 0).data(128).bytes);
  ASSERT_TRUE(r) << r.error().message;
  EXPECT_TRUE(r->unknown_tensor_types);
  EXPECT_EQ(r->tensors[0].bytes, std::nullopt);
  EXPECT_EQ(r->tensors[1].bytes, 128u);
  EXPECT_EQ(r->tensor_bytes, 128u);
  EXPECT_EQ(r->parameter_count, 64u);
  ASSERT_EQ(r->by_type.size(), 2u);
  EXPECT_EQ(r->by_type[1].name, "unknown(77)");
  ASSERT_EQ(r->warnings.size(), 2u);  // the unknown type and the missing architecture
  EXPECT_EQ(r->warnings[0], "1 tensor(s) have unknown ggml type 77: their bytes are not counted");
  EXPECT_EQ(gguf::ggml_type_name(4), "unknown(4)");
}

TEST(GgufHostile, HeaderByteLimit) {
  gguf::limits small;
  small.max_header_bytes = 64;
  EXPECT_EQ(error_of(builder{}.header(0, 1).kv_str("key", std::string(100, 'x')).bytes, small),
            "header exceeds limit of 64 bytes at offset 47 reading string (metadata key 0 'key')");
}

TEST(GgufHostile, BytesInNamesAreEscapedInMessages) {
  EXPECT_EQ(error_of(builder{}.header(0, 2).kv_u32("a\n\xff", 1).kv_u32("a\n\xff", 2).bytes),
            "duplicate metadata key 'a\\x0a\\xff' at offset 43");
}

// ----------------------------------------------------------------------------------------------------------------
// Tables

TEST(GgufTables, BlockSizesAndFileTypes) {
  auto check = [](std::uint32_t id, std::string_view name, std::uint32_t block, std::uint32_t size) {
    auto const* t = gguf::find_ggml_type(id);
    ASSERT_NE(t, nullptr) << id;
    EXPECT_EQ(t->name, name);
    EXPECT_EQ(t->block_size, block) << name;
    EXPECT_EQ(t->type_size, size) << name;
  };
  check(0, "F32", 1, 4);
  check(1, "F16", 1, 2);
  check(30, "BF16", 1, 2);
  check(2, "Q4_0", 32, 18);
  check(3, "Q4_1", 32, 20);
  check(6, "Q5_0", 32, 22);
  check(7, "Q5_1", 32, 24);
  check(8, "Q8_0", 32, 34);
  check(9, "Q8_1", 32, 36);
  check(10, "Q2_K", 256, 84);
  check(11, "Q3_K", 256, 110);
  check(12, "Q4_K", 256, 144);
  check(13, "Q5_K", 256, 176);
  check(14, "Q6_K", 256, 210);
  check(15, "Q8_K", 256, 292);
  check(16, "IQ2_XXS", 256, 66);
  check(17, "IQ2_XS", 256, 74);
  check(18, "IQ3_XXS", 256, 98);
  check(19, "IQ1_S", 256, 50);
  check(20, "IQ4_NL", 32, 18);
  check(21, "IQ3_S", 256, 110);
  check(22, "IQ2_S", 256, 82);
  check(23, "IQ4_XS", 256, 136);
  check(29, "IQ1_M", 256, 56);
  check(34, "TQ1_0", 256, 54);
  check(35, "TQ2_0", 256, 66);
  check(39, "MXFP4", 32, 17);
  check(40, "NVFP4", 64, 36);
  check(41, "Q1_0", 128, 18);
  EXPECT_EQ(gguf::find_ggml_type(5), nullptr);

  EXPECT_EQ(gguf::file_type_name(0), "F32");
  EXPECT_EQ(gguf::file_type_name(1), "F16");
  EXPECT_EQ(gguf::file_type_name(7), "Q8_0");
  EXPECT_EQ(gguf::file_type_name(15), "Q4_K_M");
  EXPECT_EQ(gguf::file_type_name(18), "Q6_K");
  EXPECT_EQ(gguf::file_type_name(32), "BF16");
  EXPECT_EQ(gguf::file_type_name(38), "MXFP4_MOE");
  EXPECT_EQ(gguf::file_type_name(1024), "GUESSED");
  EXPECT_EQ(gguf::file_type_name(999), "unknown(999)");
}

// ----------------------------------------------------------------------------------------------------------------
// Output

TEST(GgufOutput, JsonCarriesFactsMetadataAndTensors) {
  auto r = gguf::read_header_file(fixture_path);
  ASSERT_TRUE(r);
  auto o = gguf::to_json(*r);
  // Round-trips through the serializer as valid JSON.
  auto v = boost::json::parse(boost::json::serialize(o));
  auto const& j = v.as_object();
  EXPECT_EQ(j.at("version").as_int64(), 3);
  EXPECT_EQ(j.at("data_offset").as_int64(), 11712);
  auto const& m = j.at("model").as_object();
  EXPECT_EQ(m.at("architecture").as_string(), "llama");
  EXPECT_EQ(m.at("file_type_name").as_string(), "F16");
  EXPECT_EQ(m.at("parameter_count").as_int64(), 140096);
  EXPECT_EQ(m.at("kv_bytes_per_token_f16").as_int64(), 512);
  EXPECT_EQ(m.at("vocab_size").as_int64(), 452);
  EXPECT_TRUE(m.at("chat_template").as_bool());
  EXPECT_TRUE(m.at("expert_count").is_null());
  auto const& md = j.at("metadata").as_array();
  ASSERT_EQ(md.size(), 19u);
  EXPECT_EQ(md[0].as_object().at("key").as_string(), "general.architecture");
  EXPECT_EQ(md[0].as_object().at("type").as_string(), "string");
  EXPECT_EQ(md[0].as_object().at("value").as_string(), "llama");
  EXPECT_EQ(md[9].as_object().at("value").as_double(), 1e-5);  // float32 shown as its shortest decimal
  auto const& tokens = md[12].as_object();
  EXPECT_EQ(tokens.at("key").as_string(), "tokenizer.ggml.tokens");
  EXPECT_EQ(tokens.at("element_type").as_string(), "string");
  EXPECT_EQ(tokens.at("length").as_int64(), 452);
  EXPECT_EQ(tokens.at("head").as_array().size(), 8u);
  EXPECT_EQ(j.at("tensors").as_array().size(), 21u);
  EXPECT_EQ(j.at("tensor_types").as_array()[0].as_object().at("bytes").as_int64(), 279552);
}

TEST(GgufOutput, JsonStaysValidForHostileStringsAndFloats) {
  builder b;
  b.header(0, 2).kv_str("bad\xff", "x\xc0\xafy").str("f").u32(6).u32(0x7fc00000);  // NaN
  auto r = parse(b.bytes);
  ASSERT_TRUE(r) << r.error().message;
  auto v = boost::json::parse(boost::json::serialize(gguf::to_json(*r)));
  auto const& md = v.at("metadata").as_array();
  EXPECT_EQ(md[0].at("key").as_string(), "bad\xef\xbf\xbd");
  EXPECT_EQ(md[0].at("value").as_string(), "x\xef\xbf\xbd\xef\xbf\xbdy");
  EXPECT_EQ(md[1].at("value").as_string(), "nan");
}

TEST(GgufOutput, DescribeListsFactsAndEveryKey) {
  auto r = gguf::read_header_file(fixture_path);
  ASSERT_TRUE(r);
  auto text = gguf::describe(*r);
  EXPECT_NE(text.find("architecture    llama\n"), std::string::npos) << text;
  EXPECT_NE(text.find("file type       F16 (general.file_type 1)\n"), std::string::npos) << text;
  EXPECT_NE(text.find("parameters      140096 (140.1 K)\n"), std::string::npos) << text;
  EXPECT_NE(text.find("heads           4, KV heads 4, head dim 16\n"), std::string::npos) << text;
  EXPECT_NE(text.find("vocab size      452\n"), std::string::npos) << text;
  EXPECT_NE(text.find("chat template   yes\n"), std::string::npos) << text;
  EXPECT_NE(text.find("KV cache (f16)  512 bytes/token, 2097152 bytes (2.0 MiB) at context 4096\n"),
            std::string::npos)
      << text;
  EXPECT_NE(text.find("tensor types    F16: 16 tensors"), std::string::npos) << text;
  EXPECT_NE(text.find("  tokenizer.ggml.tokens (array) = [string x 452] \"<unk>\", \"<s>\""),
            std::string::npos)
      << text;
  EXPECT_NE(text.find("  llama.attention.layer_norm_rms_epsilon (float32) = 1e-05\n"), std::string::npos)
      << text;
  EXPECT_NE(text.find("  tokenizer.ggml.scores (array) = [float32 x 452] 0, 0, 0, -0, -1, -2,"),
            std::string::npos)
      << text;
  EXPECT_NE(text.find("  tokenizer.chat_template (string) = \"{% for m in messages %}"), std::string::npos)
      << text;
  for (auto const& e : r->metadata)
    EXPECT_NE(text.find("  " + e.key + " ("), std::string::npos) << e.key;
}

TEST(GgufOutput, InspectCommandExitCodes) {
  std::ostringstream out, err;
  EXPECT_EQ(gguf::inspect_command(fixture_path, false, out, err), 0);
  EXPECT_TRUE(err.str().empty());
  EXPECT_NE(out.str().find("architecture    llama"), std::string::npos);

  std::ostringstream jout, jerr;
  EXPECT_EQ(gguf::inspect_command(fixture_path, true, jout, jerr), 0);
  auto v = boost::json::parse(jout.str());
  EXPECT_EQ(v.at("file").as_string(), fixture_path);

  std::ostringstream mout, merr;
  EXPECT_EQ(gguf::inspect_command("/nonexistent/model.gguf", false, mout, merr), 1);
  EXPECT_EQ(merr.str(), "ray gguf inspect: cannot open /nonexistent/model.gguf: No such file or directory\n");
  EXPECT_TRUE(mout.str().empty());

  auto bad =
      std::filesystem::temp_directory_path() / ("ray-gguf-test-" + std::to_string(::getpid()) + ".gguf");
  {
    std::ofstream f(bad, std::ios::binary);
    f << std::string("GGUF\x01\0\0\0", 8);
  }
  std::ostringstream bout, berr;
  EXPECT_EQ(gguf::inspect_command(bad.string(), false, bout, berr), 1);
  EXPECT_EQ(berr.str(), "ray gguf inspect: " + bad.string() + ": unsupported version 1 (supported: 2, 3)\n");
  std::filesystem::remove(bad);

  std::ostringstream dout, derr;
  EXPECT_EQ(gguf::inspect_command(std::string(RAY_TEST_FIXTURES), false, dout, derr), 1);
  EXPECT_NE(derr.str().find("is not a regular file"), std::string::npos) << derr.str();
}

}  // namespace
