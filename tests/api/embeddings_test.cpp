// Decoding and rendering of /v1/embeddings, /v1/embed and /v1/rerank (src/ray/api/embeddings.cpp).
#include "ray/api/embeddings.hpp"
#include "ray/api/api.hpp"

#include <gtest/gtest.h>
#include <boost/json/parse.hpp>

#include <bit>
#include <cstring>

namespace {

namespace emb = ray::api::embeddings;
using ray::errc;

// The decode error of an OpenAI embeddings body (fails the test when it decodes).
ray::error openai_error(std::string_view body) {
  auto r = emb::decode_openai(body);
  EXPECT_FALSE(r) << body;
  return r ? ray::error{errc::invalid_request, "<decoded>"} : r.error();
}

// Base64 decoding, written here independently of the encoder under test.
std::vector<std::uint8_t> unbase64(std::string_view s) {
  auto value = [](char c) -> int {
    if (c >= 'A' && c <= 'Z') return c - 'A';
    if (c >= 'a' && c <= 'z') return c - 'a' + 26;
    if (c >= '0' && c <= '9') return c - '0' + 52;
    if (c == '+') return 62;
    if (c == '/') return 63;
    return -1;
  };
  std::vector<std::uint8_t> out;
  std::uint32_t acc = 0;
  int bits = 0;
  for (char c : s) {
    if (c == '=') break;
    int v = value(c);
    EXPECT_GE(v, 0) << "not base64: " << c;
    acc = (acc << 6) | static_cast<std::uint32_t>(v);
    bits += 6;
    if (bits >= 8) {
      bits -= 8;
      out.push_back(static_cast<std::uint8_t>((acc >> bits) & 0xff));
    }
  }
  return out;
}

std::vector<float> floats_le(std::vector<std::uint8_t> const& bytes) {
  std::vector<float> out;
  for (std::size_t i = 0; i + 4 <= bytes.size(); i += 4) {
    std::uint32_t u = std::uint32_t{bytes[i]} | std::uint32_t{bytes[i + 1]} << 8 |
                      std::uint32_t{bytes[i + 2]} << 16 | std::uint32_t{bytes[i + 3]} << 24;
    out.push_back(std::bit_cast<float>(u));
  }
  return out;
}

ray::runtime::embed_result two_vectors() {
  ray::runtime::embed_result r;
  r.model = "bge-small";
  r.vectors = {{0.1f, -0.25f, 1.0f}, {3.0e-8f, 0.0f, -1.0f}};
  r.cached = {false, true};
  r.prompt_tokens = 7;
  return r;
}

// ---- decode: /v1/embeddings
// --------------------------------------------------------------------------------

TEST(Embeddings, AStringAndAnArrayOfStringsDecode) {
  auto one = emb::decode_openai(R"({"model":"text-embedding-3-small","input":"hello"})");
  ASSERT_TRUE(one) << one.error().message;
  EXPECT_EQ(one->model, "text-embedding-3-small");
  EXPECT_EQ(one->inputs, (std::vector<std::string>{"hello"}));
  EXPECT_EQ(one->format, emb::encoding::float32);
  EXPECT_FALSE(one->dimensions);

  auto many = emb::decode_openai(
      R"({"input":["a","b"],"encoding_format":"base64","dimensions":64,"user":"u-1","extra":1})");
  ASSERT_TRUE(many) << many.error().message;
  EXPECT_EQ(many->inputs, (std::vector<std::string>{"a", "b"}));
  EXPECT_EQ(many->format, emb::encoding::base64);
  EXPECT_EQ(many->dimensions, 64u);
  EXPECT_EQ(many->ignored_fields, (std::vector<std::string>{"user"}));
  EXPECT_EQ(many->unknown_fields, (std::vector<std::string>{"extra"}));
}

TEST(Embeddings, EmptyAndMissingInputsAre400NamingTheField) {
  for (std::string_view body : {R"({"input":""})", R"({"input":[]})", R"({})", R"({"input":null})"}) {
    auto e = openai_error(body);
    EXPECT_EQ(e.code, errc::invalid_request) << body;
    EXPECT_EQ(e.param, "input") << body;
    EXPECT_EQ(ray::api::status_of(e.code), ray::http::status::bad_request);
  }
  auto e = openai_error(R"({"input":["fine",""]})");
  EXPECT_EQ(e.code, errc::invalid_request);
  EXPECT_EQ(e.param, "input[1]");
  EXPECT_EQ(openai_error(R"({"input":["fine",3.5]})").param, "input[1]");
  EXPECT_EQ(openai_error(R"({"input":{"text":"x"}})").param, "input");
}

TEST(Embeddings, TokenArraysAreRefusedAsUnsupported) {
  for (std::string_view body : {R"({"input":[1,2,3]})", R"({"input":[[1,2],[3]]})"}) {
    auto e = openai_error(body);
    EXPECT_EQ(e.code, errc::unsupported_parameter) << body;
    EXPECT_EQ(e.param, "input") << body;
    EXPECT_EQ(ray::api::status_of(e.code), ray::http::status::bad_request);
  }
}

TEST(Embeddings, BoundsAndFieldTypes) {
  std::string body = R"({"input":[)";
  for (std::size_t i = 0; i <= emb::max_inputs; ++i)
    body += (i ? ",\"x\"" : "\"x\"");
  body += "]}";
  EXPECT_EQ(openai_error(body).param, "input");  // 2049 inputs
  EXPECT_EQ(openai_error(R"({"input":"x","encoding_format":"int8"})").param, "encoding_format");
  EXPECT_EQ(openai_error(R"({"input":"x","dimensions":0})").param, "dimensions");
  EXPECT_EQ(openai_error(R"({"input":"x","dimensions":"64"})").param, "dimensions");
  EXPECT_EQ(openai_error(R"({"input":"x","model":5})").param, "model");
  EXPECT_EQ(openai_error(R"({"input":"x")").code, errc::invalid_json);
  EXPECT_EQ(openai_error(R"(["x"])").code, errc::invalid_request);
}

TEST(Embeddings, DimensionsMustBeTheNativeSize) {
  EXPECT_FALSE(emb::check_dimensions(std::nullopt, 64u));
  EXPECT_FALSE(emb::check_dimensions(64u, 64u));
  EXPECT_FALSE(emb::check_dimensions(32u, std::nullopt));  // unknown yet: the runtime checks the answer
  auto e = emb::check_dimensions(32u, 64u);
  ASSERT_TRUE(e);
  EXPECT_EQ(e->code, errc::unsupported_parameter);
  EXPECT_EQ(e->param, "dimensions");
  EXPECT_EQ(ray::api::status_of(e->code), ray::http::status::bad_request);
  auto res = ray::api::error_response(*e, ray::api::envelope::openai);
  auto v = boost::json::parse(res.body());
  EXPECT_EQ(v.at("error").at("param").as_string(), "dimensions");
  EXPECT_EQ(v.at("error").at("code").as_string(), "unsupported_parameter");
}

// ---- decode: /v1/embed and /v1/rerank
// ----------------------------------------------------------------------

TEST(Embeddings, NativeTakesInputOrInputsButNotBoth) {
  auto a = emb::decode_native(R"({"input":"one"})");
  ASSERT_TRUE(a);
  EXPECT_EQ(a->inputs, (std::vector<std::string>{"one"}));
  auto b = emb::decode_native(R"({"inputs":["one","two"],"model":"m"})");
  ASSERT_TRUE(b);
  EXPECT_EQ(b->inputs.size(), 2u);
  EXPECT_EQ(b->model, "m");
  auto both = emb::decode_native(R"({"input":"one","inputs":["two"]})");
  ASSERT_FALSE(both);
  EXPECT_EQ(both.error().param, "inputs");
  auto none = emb::decode_native(R"({"model":"m"})");
  ASSERT_FALSE(none);
  EXPECT_EQ(none.error().param, "input");
  auto empty = emb::decode_native(R"({"inputs":["ok",""]})");
  ASSERT_FALSE(empty);
  EXPECT_EQ(empty.error().param, "inputs[1]");
}

TEST(Embeddings, RerankDecodes) {
  auto r = emb::decode_rerank(R"({"model":"bge-reranker","query":"q","documents":["a","b"],"top_n":1,
                                   "return_documents":true})");
  ASSERT_TRUE(r) << r.error().message;
  EXPECT_EQ(r->query, "q");
  EXPECT_EQ(r->documents, (std::vector<std::string>{"a", "b"}));
  EXPECT_EQ(r->top_n, 1u);
  EXPECT_TRUE(r->return_documents);
  EXPECT_EQ(emb::decode_rerank(R"({"documents":["a"]})").error().param, "query");
  EXPECT_EQ(emb::decode_rerank(R"({"query":"q","documents":[]})").error().param, "documents");
  EXPECT_EQ(emb::decode_rerank(R"({"query":"q","documents":["a",7]})").error().param, "documents[1]");
  EXPECT_EQ(emb::decode_rerank(R"({"query":"q","documents":["a"],"top_n":0})").error().param, "top_n");
}

// ---- render -----------------------------------------------------------------------------------------------

TEST(Embeddings, Base64IsTheLittleEndianFloat32ArrayAndRoundTrips) {
  std::vector<float> const v{0.1f, -0.25f, 1.0f, 3.0e-8f, -0.0f};
  auto text = emb::base64_floats(v);
  EXPECT_EQ(text.size() % 4, 0u);
  auto bytes = unbase64(text);
  ASSERT_EQ(bytes.size(), v.size() * 4);
  EXPECT_EQ(floats_le(bytes), v);
  // 1.0f is 0x3f800000: little-endian bytes 00 00 80 3f.
  EXPECT_EQ(emb::base64_floats(std::vector<float>{1.0f}), "AACAPw==");
  EXPECT_EQ(emb::base64_floats(std::vector<float>{1.0f, 1.0f, 1.0f}), "AACAPwAAgD8AAIA/");
}

TEST(Embeddings, TheOpenAiListInFloatAndBase64) {
  auto r = two_vectors();
  auto v = boost::json::parse(emb::render_openai(r, emb::encoding::float32));
  EXPECT_EQ(v.at("object").as_string(), "list");
  EXPECT_EQ(v.at("model").as_string(), "bge-small");
  EXPECT_EQ(v.at("usage").at("prompt_tokens").as_int64(), 7);
  EXPECT_EQ(v.at("usage").at("total_tokens").as_int64(), 7);
  auto const& data = v.at("data").as_array();
  ASSERT_EQ(data.size(), 2u);
  for (std::size_t i = 0; i < data.size(); ++i) {
    EXPECT_EQ(data[i].at("object").as_string(), "embedding");
    EXPECT_EQ(data[i].at("index").as_int64(), static_cast<std::int64_t>(i));
    auto const& e = data[i].at("embedding").as_array();
    ASSERT_EQ(e.size(), 3u);
    for (std::size_t d = 0; d < 3; ++d)  // the shortest form reads back as the same float
      EXPECT_EQ(static_cast<float>(e[d].to_number<double>()), r.vectors[i][d]);
  }

  auto b = boost::json::parse(emb::render_openai(r, emb::encoding::base64));
  auto const& first = b.at("data").as_array()[0].at("embedding");
  ASSERT_TRUE(first.is_string());
  EXPECT_EQ(floats_le(unbase64(first.as_string())), r.vectors[0]);
}

TEST(Embeddings, TheNativeAnswerCarriesCachedFlags) {
  auto v = boost::json::parse(emb::render_native(two_vectors(), "req_1"));
  EXPECT_EQ(v.at("id").as_string(), "req_1");
  EXPECT_EQ(v.at("model").as_string(), "bge-small");
  EXPECT_EQ(v.at("embeddings").as_array().size(), 2u);
  EXPECT_EQ(v.at("embeddings").as_array()[1].as_array().size(), 3u);
  EXPECT_EQ(v.at("cached").as_array()[0].as_bool(), false);
  EXPECT_EQ(v.at("cached").as_array()[1].as_bool(), true);
  EXPECT_EQ(v.at("usage").at("tokens").at("prompt").as_int64(), 7);
}

TEST(Embeddings, TheRerankAnswerIsLlamaServersShape) {
  ray::runtime::rerank_result r;
  r.model = "bge-reranker";
  r.results = {{2, 0.9}, {0, 0.25}};
  r.prompt_tokens = 12;
  std::vector<std::string> const docs{"zero", "one", "two"};
  auto v = boost::json::parse(emb::render_rerank(r, docs, true));
  EXPECT_EQ(v.at("object").as_string(), "list");
  EXPECT_EQ(v.at("model").as_string(), "bge-reranker");
  EXPECT_EQ(v.at("usage").at("prompt_tokens").as_int64(), 12);
  auto const& res = v.at("results").as_array();
  ASSERT_EQ(res.size(), 2u);
  EXPECT_EQ(res[0].at("index").as_int64(), 2);
  EXPECT_DOUBLE_EQ(res[0].at("relevance_score").to_number<double>(), 0.9);
  EXPECT_EQ(res[0].at("document").at("text").as_string(), "two");
  auto plain = boost::json::parse(emb::render_rerank(r, docs, false));
  EXPECT_FALSE(plain.at("results").as_array()[0].as_object().contains("document"));
}

}  // namespace
