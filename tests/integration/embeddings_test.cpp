// /v1/embeddings, /v1/embed and /v1/rerank through the real binary with the mock adapter serving an embedding
// (or rerank) model: shapes, float and base64, the per-input cache seen in /metrics, rerank order, and the
// kind checks (a chat request to an embedding model and the reverse are 400 model_kind_mismatch).
#include "http_test_util.hpp"

#include <bit>
#include <cmath>

namespace ray::itest {
namespace {

boost::json::object model_of_kind(std::string_view kind) {
  return with(test_config(), {{"model", boost::json::object{{"id", "embedder"}, {"kind", kind}}}});
}

std::string quoted_list(std::vector<std::string> const& v) {
  boost::json::array a;
  for (auto const& s : v)
    a.emplace_back(s);
  return boost::json::serialize(a);
}

std::vector<float> floats_of(boost::json::value const& v) {
  std::vector<float> out;
  for (auto const& x : v.as_array())
    out.push_back(static_cast<float>(x.to_number<double>()));
  return out;
}

// Independent of the server's encoder: RFC 4648 decoding, then little-endian float32.
std::vector<float> floats_of_base64(std::string_view s) {
  std::vector<std::uint8_t> bytes;
  std::uint32_t acc = 0;
  int bits = 0;
  for (char c : s) {
    int v = c >= 'A' && c <= 'Z'   ? c - 'A'
            : c >= 'a' && c <= 'z' ? c - 'a' + 26
            : c >= '0' && c <= '9' ? c - '0' + 52
            : c == '+'             ? 62
            : c == '/'             ? 63
                                   : -1;
    if (v < 0) break;
    acc = (acc << 6) | static_cast<std::uint32_t>(v);
    bits += 6;
    if (bits >= 8) {
      bits -= 8;
      bytes.push_back(static_cast<std::uint8_t>((acc >> bits) & 0xff));
    }
  }
  std::vector<float> out;
  for (std::size_t i = 0; i + 4 <= bytes.size(); i += 4)
    out.push_back(std::bit_cast<float>(std::uint32_t{bytes[i]} | std::uint32_t{bytes[i + 1]} << 8 |
                                       std::uint32_t{bytes[i + 2]} << 16 |
                                       std::uint32_t{bytes[i + 3]} << 24));
  return out;
}

double norm(std::vector<float> const& v) {
  double s = 0;
  for (float x : v)
    s += static_cast<double>(x) * x;
  return std::sqrt(s);
}

TEST(Embeddings, AStringAndA32ItemBatchInFloatAndBase64) {
  ray_server s(model_of_kind("embedding"), no_host_pressure());
  ASSERT_TRUE(s.wait_listening());

  auto one = roundtrip(s.port(), post_json("/v1/embeddings", R"({"model":"embedder","input":"hello"})"));
  ASSERT_TRUE(one);
  ASSERT_EQ(one->status, 200) << one->describe();
  auto body = json_body(*one);
  ASSERT_TRUE(body);
  EXPECT_EQ(rt::string_field(*body, "object"), "list");
  EXPECT_EQ(rt::string_field(*body, "model"), "embedder");
  auto const& data = body->at("data").as_array();
  ASSERT_EQ(data.size(), 1u);
  EXPECT_EQ(rt::string_field(data[0].as_object(), "object"), "embedding");
  EXPECT_EQ(data[0].at("index").as_int64(), 0);
  auto const hello = floats_of(data[0].at("embedding"));
  EXPECT_EQ(hello.size(), 64u);  // adapter.dimensions' default
  EXPECT_NEAR(norm(hello), 1.0, 1e-5);
  EXPECT_GT(body->at("usage").at("prompt_tokens").as_int64(), 0);
  EXPECT_EQ(body->at("usage").at("total_tokens"), body->at("usage").at("prompt_tokens"));

  std::vector<std::string> batch;
  for (int i = 0; i < 32; ++i)
    batch.push_back("document number " + std::to_string(i));
  auto as_float = roundtrip(s.port(), post_json("/v1/embeddings", "{\"input\":" + quoted_list(batch) + "}"));
  auto as_b64 = roundtrip(s.port(), post_json("/v1/embeddings", "{\"input\":" + quoted_list(batch) +
                                                                    ",\"encoding_format\":\"base64\"}"));
  ASSERT_TRUE(as_float && as_b64);
  ASSERT_EQ(as_float->status, 200) << as_float->describe();
  ASSERT_EQ(as_b64->status, 200) << as_b64->describe();
  auto const fbody = json_body(*as_float);
  auto const bbody = json_body(*as_b64);
  ASSERT_TRUE(fbody && bbody);
  auto const& fdata = fbody->at("data").as_array();
  auto const& bdata = bbody->at("data").as_array();
  ASSERT_EQ(fdata.size(), 32u);
  ASSERT_EQ(bdata.size(), 32u);
  for (std::size_t i = 0; i < 32; ++i) {
    EXPECT_EQ(fdata[i].at("index").as_int64(), static_cast<std::int64_t>(i));
    ASSERT_TRUE(bdata[i].at("embedding").is_string());
    auto const f = floats_of(fdata[i].at("embedding"));
    EXPECT_EQ(floats_of_base64(bdata[i].at("embedding").as_string()), f) << "input " << i;
    if (i > 0) EXPECT_NE(f, floats_of(fdata[i - 1].at("embedding")));  // distinct inputs, distinct vectors
  }
  // The same text gives the same vector (deterministic), cached or not.
  auto again = roundtrip(s.port(), post_json("/v1/embeddings", R"({"input":["x","hello"]})"));
  ASSERT_TRUE(again);
  EXPECT_EQ(floats_of(json_body(*again)->at("data").as_array()[1].at("embedding")), hello);
  EXPECT_EQ(counter(s.port(), "ray_requests_total{route=\"/v1/embeddings\",code=\"200\"}"), 4);
}

TEST(Embeddings, ARepeatedInputIsServedFromTheCache) {
  ray_server s(model_of_kind("embedding"), no_host_pressure());
  ASSERT_TRUE(s.wait_listening());
  auto first = roundtrip(s.port(), post_json("/v1/embed", R"({"inputs":["north","south"]})"));
  ASSERT_TRUE(first);
  ASSERT_EQ(first->status, 200) << first->describe();
  EXPECT_EQ(counter(s.port(), "ray_cache_hits_total"), 0);
  EXPECT_EQ(counter(s.port(), "ray_backend_requests_total{outcome=\"ok\"}"), 1);

  auto second = roundtrip(s.port(), post_json("/v1/embed", R"({"inputs":["south","east"]})"));
  ASSERT_TRUE(second);
  ASSERT_EQ(second->status, 200) << second->describe();
  auto body = json_body(*second);
  ASSERT_TRUE(body);
  EXPECT_EQ(rt::string_field(*body, "model"), "embedder");
  auto const& cached = body->at("cached").as_array();
  ASSERT_EQ(cached.size(), 2u);
  EXPECT_TRUE(cached[0].as_bool());
  EXPECT_FALSE(cached[1].as_bool());
  EXPECT_EQ(body->at("embeddings").as_array().size(), 2u);
  EXPECT_EQ(body->at("embeddings").as_array()[0],
            json_body(*first)->at("embeddings").as_array()[1]);  // "south", from the cache
  EXPECT_EQ(counter(s.port(), "ray_cache_hits_total"), 1);
  EXPECT_EQ(counter(s.port(), "ray_backend_requests_total{outcome=\"ok\"}"), 2);  // "east" alone was sent

  auto all = roundtrip(s.port(), post_json("/v1/embeddings", R"({"input":["north","east"]})"));
  ASSERT_TRUE(all);
  EXPECT_EQ(all->header("x-ray-cache").value_or(""), "hit");
  EXPECT_EQ(counter(s.port(), "ray_cache_hits_total"), 3);
  EXPECT_EQ(counter(s.port(), "ray_backend_requests_total{outcome=\"ok\"}"), 2);
}

TEST(Embeddings, BadRequestsAre400NamingTheField) {
  ray_server s(model_of_kind("embedding"), no_host_pressure());
  ASSERT_TRUE(s.wait_listening());
  struct bad {
    std::string body;
    std::string_view code, param;
  };
  std::vector<bad> const cases{
      {R"({"input":""})", "invalid_request", "input"},
      {R"({"input":[1,2,3]})", "unsupported_parameter", "input"},
      {R"({"input":"x","dimensions":32})", "unsupported_parameter", "dimensions"},
      {R"({"input":"x","encoding_format":"int8"})", "invalid_request", "encoding_format"},
  };
  for (auto const& c : cases) {
    auto r = roundtrip(s.port(), post_json("/v1/embeddings", c.body));
    ASSERT_TRUE(r);
    EXPECT_TRUE(is_error(*r, 400, c.code)) << c.body;
    auto body = json_body(*r);
    ASSERT_TRUE(body);
    EXPECT_EQ(rt::string_field(body->at("error").as_object(), "param"), c.param) << c.body;
  }
  auto ok = roundtrip(s.port(), post_json("/v1/embeddings", R"({"input":"x","dimensions":64})"));
  ASSERT_TRUE(ok);
  EXPECT_EQ(ok->status, 200) << ok->describe();
}

// A request names a model of another kind (an unnamed one goes to the first model of the route's kind, and
// without one is the registry's 404 model_not_found).
TEST(Embeddings, ChatRequestsToAnEmbeddingModelAndEmbeddingsOfAChatModelAreKindMismatches) {
  ray_server emb(model_of_kind("embedding"), no_host_pressure());
  ASSERT_TRUE(emb.wait_listening());
  auto chat =
      roundtrip(emb.port(), post_json("/v1/chat/completions",
                                      R"({"model":"embedder","messages":[{"role":"user","content":"hi"}]})"));
  ASSERT_TRUE(chat);
  EXPECT_TRUE(is_error(*chat, 400, "model_kind_mismatch"));
  auto completion =
      roundtrip(emb.port(), post_json("/v1/completions", R"({"model":"embedder","prompt":"hi"})"));
  ASSERT_TRUE(completion);
  EXPECT_TRUE(is_error(*completion, 400, "model_kind_mismatch"));
  auto rerank =
      roundtrip(emb.port(), post_json("/v1/rerank", R"({"model":"embedder","query":"q","documents":["d"]})"));
  ASSERT_TRUE(rerank);
  EXPECT_TRUE(is_error(*rerank, 400, "model_kind_mismatch"));
  EXPECT_EQ(counter(emb.port(), "ray_backend_requests_total{outcome=\"ok\"}"), 0);

  ray_server chat_model(with(test_config(), {{"model", boost::json::object{{"id", "chatter"}}}}),
                        no_host_pressure());
  ASSERT_TRUE(chat_model.wait_listening());
  for (std::string_view route : {"/v1/embeddings", "/v1/embed"}) {
    auto e = roundtrip(chat_model.port(), post_json(route, R"({"model":"chatter","input":"hi"})"));
    ASSERT_TRUE(e);
    EXPECT_TRUE(is_error(*e, 400, "model_kind_mismatch")) << route;
  }
  EXPECT_EQ(counter(chat_model.port(), "ray_backend_requests_total{outcome=\"ok\"}"), 0);
}

TEST(Embeddings, RerankOrdersByRelevanceAndCutsToTopN) {
  ray_server s(model_of_kind("rerank"), no_host_pressure());
  ASSERT_TRUE(s.wait_listening());
  // The mock scores a document by the dot product of its unit vector with the query's: an exact match is 1.
  auto r = roundtrip(s.port(), post_json("/v1/rerank", R"({"model":"embedder","query":"apple",
      "documents":["banana","cherry","apple","plum"],"top_n":3,"return_documents":true})"));
  ASSERT_TRUE(r);
  ASSERT_EQ(r->status, 200) << r->describe();
  auto body = json_body(*r);
  ASSERT_TRUE(body);
  EXPECT_EQ(rt::string_field(*body, "object"), "list");
  EXPECT_EQ(rt::string_field(*body, "model"), "embedder");
  EXPECT_GT(body->at("usage").at("prompt_tokens").as_int64(), 0);
  auto const& results = body->at("results").as_array();
  ASSERT_EQ(results.size(), 3u);
  EXPECT_EQ(results[0].at("index").as_int64(), 2);
  EXPECT_NEAR(results[0].at("relevance_score").to_number<double>(), 1.0, 1e-5);
  EXPECT_EQ(rt::string_field(results[0].at("document").as_object(), "text"), "apple");
  for (std::size_t i = 1; i < results.size(); ++i)
    EXPECT_LE(results[i].at("relevance_score").to_number<double>(),
              results[i - 1].at("relevance_score").to_number<double>());
  auto alias = roundtrip(s.port(), post_json("/rerank", R"({"query":"apple","documents":["apple"]})"));
  ASSERT_TRUE(alias);
  EXPECT_EQ(alias->status, 200) << alias->describe();
  EXPECT_FALSE(json_body(*alias)->at("results").as_array()[0].as_object().contains("document"));
}

}  // namespace
}  // namespace ray::itest
