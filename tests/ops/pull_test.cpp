// ray model pull: the pure parts — hf:// expansion, names, the default models dir, redirect resolution,
// Content-Range parsing, and the incremental SHA-256 it hashes with.
#include "ray/ops/ops.hpp"

#include <gtest/gtest.h>

namespace {

using namespace ray::ops;

TEST(ModelSource, HfExpandsToTheResolveUrl) {
  EXPECT_EQ(*expand_source("hf://Qwen/Qwen2.5-0.5B-Instruct-GGUF/qwen2.5-0.5b-instruct-q4_k_m.gguf"),
            "https://huggingface.co/Qwen/Qwen2.5-0.5B-Instruct-GGUF/resolve/main/"
            "qwen2.5-0.5b-instruct-q4_k_m.gguf");
  // A file in a folder of the repo keeps its folder.
  EXPECT_EQ(*expand_source("hf://o/r/sub/dir/f.gguf"),
            "https://huggingface.co/o/r/resolve/main/sub/dir/f.gguf");
  EXPECT_EQ(*expand_source("https://example.com/a.gguf"), "https://example.com/a.gguf");
  for (auto const* bad : {"hf://", "hf://owner", "hf://owner/repo", "hf://owner/repo/", "hf:///repo/f.gguf",
                          "hf://owner//f.gguf"})
    EXPECT_FALSE(expand_source(bad)) << bad;
}

TEST(ModelName, RulesRefuseSeparatorsDotsAndControls) {
  EXPECT_TRUE(check_model_name("qwen2.5-0.5b-q4_k_m"));
  for (auto const* bad : {"", ".hidden", "..", "a/b", "../x", "a\\b", "tab\there"})
    EXPECT_FALSE(check_model_name(bad)) << bad;
  EXPECT_FALSE(check_model_name(std::string(129, 'a')));
  EXPECT_TRUE(check_model_name(std::string(128, 'a')));
}

TEST(ModelName, DefaultIsTheLastSegmentWithoutGguf) {
  EXPECT_EQ(default_model_name("https://h/x/resolve/main/Tiny%20Model.gguf?download=1"), "Tiny Model");
  EXPECT_EQ(default_model_name("/srv/models/tiny-llama-64x2.gguf"), "tiny-llama-64x2");
  EXPECT_EQ(default_model_name("model.bin"), "model.bin");
  EXPECT_EQ(default_model_name("https://h/"), "");
}

TEST(ModelsDir, RootXdgAndHome) {
  EXPECT_EQ(*default_models_dir(0, "/x", "/root"), "/var/lib/ray/models");
  EXPECT_EQ(*default_models_dir(1000, "/data", "/home/u"), "/data/ray/models");
  EXPECT_EQ(*default_models_dir(1000, "relative", "/home/u"), "/home/u/.local/share/ray/models");
  EXPECT_EQ(*default_models_dir(1000, nullptr, "/home/u"), "/home/u/.local/share/ray/models");
  EXPECT_FALSE(default_models_dir(1000, nullptr, nullptr));
}

TEST(Redirects, RelativeAbsoluteAndDowngrade) {
  EXPECT_EQ(*resolve_redirect("http://a:1/x/y.gguf", "/b/c.gguf"), "http://a:1/b/c.gguf");
  EXPECT_EQ(*resolve_redirect("http://a:1/x/y.gguf", "z.gguf?sig=1"), "http://a:1/x/z.gguf?sig=1");
  // Dot segments above the root are dropped (RFC 3986 §5.2.4).
  EXPECT_EQ(*resolve_redirect("http://a:1/start", "../hop/one"), "http://a:1/hop/one");
  EXPECT_EQ(*resolve_redirect("http://a:1/x/y/z", "../../w"), "http://a:1/w");
  EXPECT_EQ(*resolve_redirect("https://a/x", "https://cdn.example/f#frag"), "https://cdn.example/f");
  EXPECT_EQ(*resolve_redirect("http://a/x", "https://b/y"), "https://b/y");  // upgrade is fine
  auto down = resolve_redirect("https://a/x", "http://b/y");
  ASSERT_FALSE(down);
  EXPECT_NE(down.error().message.find("https to plain http"), std::string::npos);
  EXPECT_FALSE(resolve_redirect("https://a/x", "ftp://b/y"));
  EXPECT_FALSE(resolve_redirect("http://a/x", "http://b/ y"));
}

TEST(ContentRange, Parses) {
  auto r = parse_content_range("bytes 100-199/200");
  ASSERT_TRUE(r);
  EXPECT_EQ(*r->first, 100u);
  EXPECT_EQ(*r->last, 199u);
  EXPECT_EQ(*r->total, 200u);
  auto unknown_total = parse_content_range("bytes 0-9/*");
  ASSERT_TRUE(unknown_total);
  EXPECT_FALSE(unknown_total->total);
  auto unsatisfied = parse_content_range("bytes */200");
  ASSERT_TRUE(unsatisfied);
  EXPECT_FALSE(unsatisfied->first);
  EXPECT_EQ(*unsatisfied->total, 200u);
  for (auto const* bad :
       {"", "bytes 5-4/10", "bytes 0-10/10", "items 0-1/2", "bytes 0-1", "bytes */*", "bytes a-1/2"})
    EXPECT_FALSE(parse_content_range(bad)) << bad;
}

TEST(Sha256Hasher, PiecesEqualTheWhole) {
  std::string data;
  for (int i = 0; i < 10000; ++i)
    data += static_cast<char>(i * 31);
  ray::sha256_hasher h;
  h.update(std::string_view(data).substr(0, 1));
  h.update(std::string_view(data).substr(1, 4095));
  h.update(std::string_view(data).substr(4096));
  EXPECT_EQ(ray::to_hex(h.finish()), ray::to_hex(ray::sha256(data)));
  // finish() starts over: the empty string's digest.
  EXPECT_EQ(ray::to_hex(h.finish()), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
}

}  // namespace
