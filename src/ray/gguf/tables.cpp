// Facts copied by hand from ggml (ggml_type: block size and bytes per block) and llama.cpp (llama_ftype).
#include "ray/gguf/gguf.hpp"

namespace ray::gguf {
namespace {

constexpr std::uint32_t qk_k = 256;  // K-quant super-block

// Ids that ggml removed (4, 5: Q4_2/Q4_3; 31–33: Q4_0_x_y repacks; 36–38: IQ4_NL_x_y) are left out on
// purpose: no loader accepts them in a file any more.
constexpr ggml_type_traits ggml_types[] = {
    {0, "F32", 1, 4},
    {1, "F16", 1, 2},
    {2, "Q4_0", 32, 2 + 16},
    {3, "Q4_1", 32, 2 + 2 + 16},
    {6, "Q5_0", 32, 2 + 4 + 16},
    {7, "Q5_1", 32, 2 + 2 + 4 + 16},
    {8, "Q8_0", 32, 2 + 32},
    {9, "Q8_1", 32, 2 + 2 + 32},  // ggml_half d, s (gguf-py's table still says 40: stale)
    {10, "Q2_K", qk_k, 2 + 2 + qk_k / 16 + qk_k / 4},              // 84
    {11, "Q3_K", qk_k, 2 + qk_k / 4 + qk_k / 8 + 12},              // 110
    {12, "Q4_K", qk_k, 2 + 2 + qk_k / 2 + 12},                     // 144
    {13, "Q5_K", qk_k, 2 + 2 + qk_k / 2 + qk_k / 8 + 12},          // 176
    {14, "Q6_K", qk_k, 2 + qk_k / 2 + qk_k / 4 + qk_k / 16},       // 210
    {15, "Q8_K", qk_k, 4 + qk_k + qk_k / 8},                       // 292
    {16, "IQ2_XXS", qk_k, 2 + qk_k / 4},                           // 66
    {17, "IQ2_XS", qk_k, 2 + qk_k / 4 + qk_k / 32},                // 74
    {18, "IQ3_XXS", qk_k, 2 + qk_k / 4 + qk_k / 8},                // 98
    {19, "IQ1_S", qk_k, 2 + qk_k / 8 + qk_k / 16},                 // 50
    {20, "IQ4_NL", 32, 2 + 16},                                    // 18
    {21, "IQ3_S", qk_k, 2 + qk_k / 4 + qk_k / 8 + qk_k / 32 + 4},  // 110
    {22, "IQ2_S", qk_k, 2 + qk_k / 4 + qk_k / 16},                 // 82
    {23, "IQ4_XS", qk_k, 2 + 2 + qk_k / 2 + qk_k / 64},            // 136
    {24, "I8", 1, 1},
    {25, "I16", 1, 2},
    {26, "I32", 1, 4},
    {27, "I64", 1, 8},
    {28, "F64", 1, 8},
    {29, "IQ1_M", qk_k, qk_k / 8 + qk_k / 16 + qk_k / 32},  // 56
    {30, "BF16", 1, 2},
    {34, "TQ1_0", qk_k, 2 + 4 * 13},  // 54
    {35, "TQ2_0", qk_k, 2 + 64},      // 66
    {39, "MXFP4", 32, 1 + 16},
    {40, "NVFP4", 64, 4 + 32},
    {41, "Q1_0", 128, 2 + 16},
};

struct ftype_name {
  std::uint32_t id;
  std::string_view name;
};

// llama_ftype; 5 and 6 (Q4_2, Q4_3) and 33–35 (Q4_0_x_y) were removed upstream but old files may still carry
// them.
constexpr ftype_name ftypes[] = {
    {0, "F32"},       {1, "F16"},        {2, "Q4_0"},    {3, "Q4_1"},       {4, "Q4_1_SOME_F16"},
    {5, "Q4_2"},      {6, "Q4_3"},       {7, "Q8_0"},    {8, "Q5_0"},       {9, "Q5_1"},
    {10, "Q2_K"},     {11, "Q3_K_S"},    {12, "Q3_K_M"}, {13, "Q3_K_L"},    {14, "Q4_K_S"},
    {15, "Q4_K_M"},   {16, "Q5_K_S"},    {17, "Q5_K_M"}, {18, "Q6_K"},      {19, "IQ2_XXS"},
    {20, "IQ2_XS"},   {21, "Q2_K_S"},    {22, "IQ3_XS"}, {23, "IQ3_XXS"},   {24, "IQ1_S"},
    {25, "IQ4_NL"},   {26, "IQ3_S"},     {27, "IQ3_M"},  {28, "IQ2_S"},     {29, "IQ2_M"},
    {30, "IQ4_XS"},   {31, "IQ1_M"},     {32, "BF16"},   {33, "Q4_0_4_4"},  {34, "Q4_0_4_8"},
    {35, "Q4_0_8_8"}, {36, "TQ1_0"},     {37, "TQ2_0"},  {38, "MXFP4_MOE"}, {39, "NVFP4"},
    {40, "Q1_0"},     {1024, "GUESSED"},
};

}  // namespace

ggml_type_traits const* find_ggml_type(std::uint32_t id) noexcept {
  for (auto const& t : ggml_types) {
    if (t.id == id) return &t;
  }
  return nullptr;
}

std::string ggml_type_name(std::uint32_t id) {
  if (auto const* t = find_ggml_type(id)) return std::string(t->name);
  return "unknown(" + std::to_string(id) + ")";
}

std::string file_type_name(std::uint32_t ftype) {
  for (auto const& f : ftypes) {
    if (f.id == ftype) return std::string(f.name);
  }
  return "unknown(" + std::to_string(ftype) + ")";
}

std::optional<double> kv_type_bytes(std::string_view cache_type) noexcept {
  struct entry {
    std::string_view name;
    std::uint32_t ggml_id;
  };
  // The cache types llama-server accepts for --cache-type-k / --cache-type-v.
  static constexpr entry cache_types[] = {
      {"f32", 0},  {"f16", 1},     {"bf16", 30}, {"q8_0", 8}, {"q4_0", 2},
      {"q4_1", 3}, {"iq4_nl", 20}, {"q5_0", 6},  {"q5_1", 7},
  };
  for (auto const& e : cache_types) {
    if (iequals(e.name, cache_type)) {
      auto const* t = find_ggml_type(e.ggml_id);
      return static_cast<double>(t->type_size) / static_cast<double>(t->block_size);
    }
  }
  return std::nullopt;
}

std::string_view type_name(value_type t) noexcept {
  switch (t) {
    case value_type::uint8:
      return "uint8";
    case value_type::int8:
      return "int8";
    case value_type::uint16:
      return "uint16";
    case value_type::int16:
      return "int16";
    case value_type::uint32:
      return "uint32";
    case value_type::int32:
      return "int32";
    case value_type::float32:
      return "float32";
    case value_type::boolean:
      return "bool";
    case value_type::string:
      return "string";
    case value_type::array:
      return "array";
    case value_type::uint64:
      return "uint64";
    case value_type::int64:
      return "int64";
    case value_type::float64:
      return "float64";
  }
  return "invalid";
}

}  // namespace ray::gguf
