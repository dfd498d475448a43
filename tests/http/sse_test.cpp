#include "ray/http/client.hpp"

#include <gtest/gtest.h>
#include <boost/json/parse.hpp>

#include <fstream>
#include <sstream>

namespace {

std::string fixture_body(std::string const& name) {
  std::ifstream in(std::string(RAY_TEST_FIXTURES) + "/llama-server/" + name, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  std::string all = ss.str();
  auto resp = all.find("### response");
  auto body = all.find("\r\n\r\n", resp);
  return all.substr(body + 4);
}

std::vector<ray::http::sse_event> parse_in_pieces(std::string const& bytes, std::size_t piece) {
  ray::http::sse_parser p;
  std::vector<ray::http::sse_event> out;
  for (std::size_t i = 0; i < bytes.size(); i += piece) {
    EXPECT_TRUE(p.feed(std::string_view(bytes).substr(i, piece)));
    while (auto ev = p.next())
      out.push_back(std::move(*ev));
  }
  return out;
}

TEST(SseParser, RecordedChatStreamYieldsEveryChunkThenDone) {
  auto body = fixture_body("chat-stream.http");
  auto events = parse_in_pieces(body, body.size());
  ASSERT_GE(events.size(), 3u);
  EXPECT_EQ(events.back().data, "[DONE]");
  // Every other event is a JSON chunk; the one before [DONE] carries usage and timings.
  for (std::size_t i = 0; i + 1 < events.size(); ++i) {
    auto v = boost::json::parse(events[i].data);
    EXPECT_EQ(v.at("object").as_string(), "chat.completion.chunk");
  }
  auto last = boost::json::parse(events[events.size() - 2].data).as_object();
  EXPECT_TRUE(last.contains("usage"));
  EXPECT_TRUE(last.contains("timings"));
}

TEST(SseParser, AnySplitOfTheBytesGivesTheSameEvents) {
  auto body = fixture_body("completion-stream.http");
  auto whole = parse_in_pieces(body, body.size());
  for (std::size_t piece : {1u, 2u, 3u, 7u, 64u}) {
    auto split = parse_in_pieces(body, piece);
    ASSERT_EQ(split.size(), whole.size()) << piece;
    for (std::size_t i = 0; i < whole.size(); ++i)
      EXPECT_EQ(split[i].data, whole[i].data);
  }
}

TEST(SseParser, CrLfLineEndsCommentsAndMultiLineData) {
  ray::http::sse_parser p;
  ASSERT_TRUE(p.feed(": ping\r\n\r\nevent: x\r\ndata: a\r\ndata:b\r"));
  EXPECT_FALSE(p.next().has_value());
  ASSERT_TRUE(p.feed("\n\r\n"));
  auto ev = p.next();
  ASSERT_TRUE(ev.has_value());
  EXPECT_EQ(ev->event, "x");
  EXPECT_EQ(ev->data, "a\nb");
  EXPECT_EQ(p.comments_seen(), 1u);
}

TEST(SseParser, AnEventOverTheBoundIsAnError) {
  ray::http::sse_parser p(16);
  EXPECT_FALSE(p.feed("data: " + std::string(64, 'x')));
}

// Found by tests/fuzz/backend_fuzz: a whole event over the bound that arrived inside one read (its blank line
// included) was delivered and the feed reported success; the bound was only checked on what was left over.
TEST(SseParser, AWholeEventOverTheBoundInOneReadIsNeverDelivered) {
  ray::http::sse_parser p(16);
  EXPECT_FALSE(p.feed("data: " + std::string(40, 'x') + "\n\ndata: ok\n\n"));
  EXPECT_FALSE(p.next().has_value());
  EXPECT_FALSE(p.feed("data: more\n\n")) << "the stream stays failed";
  ray::http::sse_parser lines(16);  // the bound counts the joined data lines of one event
  EXPECT_FALSE(lines.feed("data: 12345678\ndata: 12345678\n\n"));
  EXPECT_FALSE(lines.next().has_value());
}

}  // namespace
