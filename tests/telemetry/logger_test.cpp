#include "ray/telemetry/telemetry.hpp"
#include "support/require.hpp"

#include <boost/json/parse.hpp>
#include <boost/json/serialize.hpp>

#include <gtest/gtest.h>

#include <array>
#include <chrono>
#include <cstdio>
#include <thread>
#include <vector>

#include <fcntl.h>
#include <poll.h>
#include <unistd.h>

namespace tele = ray::telemetry;
using namespace std::chrono_literals;

namespace {

// A pipe the logger writes into and the test reads from.
class pipe_capture {
 public:
  pipe_capture() {
    EXPECT_EQ(::pipe2(fds_, O_CLOEXEC), 0);
    ::fcntl(fds_[0], F_SETFL, O_NONBLOCK);
  }
  ~pipe_capture() {
    close_write();
    ::close(fds_[0]);
  }
  int write_fd() const { return fds_[1]; }
  int read_fd() const { return fds_[0]; }
  void close_write() {
    if (fds_[1] >= 0) ::close(fds_[1]);
    fds_[1] = -1;
  }
  // Everything written so far (non-blocking).
  std::string take() {
    std::string s;
    std::array<char, 4096> buf{};
    for (;;) {
      ssize_t n = ::read(fds_[0], buf.data(), buf.size());
      if (n <= 0) break;
      s.append(buf.data(), static_cast<std::size_t>(n));
    }
    return s;
  }

 private:
  int fds_[2]{-1, -1};
};

std::vector<std::string> split_lines(std::string const& s) {
  std::vector<std::string> lines;
  std::size_t start = 0;
  while (start < s.size()) {
    auto nl = s.find('\n', start);
    if (nl == std::string::npos) nl = s.size();
    lines.push_back(s.substr(start, nl - start));
    start = nl + 1;
  }
  return lines;
}

struct captured_logger {
  pipe_capture out, err;
  ray::manual_clock clock;
  tele::logger log;

  explicit captured_logger(tele::level min = tele::level::debug, bool synchronous = false)
      : log(tele::logger_options{.service = "ray-test",
                                 .min_level = min,
                                 .out_fd = out.write_fd(),
                                 .err_fd = err.write_fd(),
                                 .synchronous = synchronous,
                                 .time_source = &clock}) {}
  std::vector<std::string> out_lines() {
    log.flush();
    return split_lines(out.take());
  }
  std::vector<std::string> err_lines() {
    log.flush();
    return split_lines(err.take());
  }
};

boost::json::object parse_object(std::string const& line) {
  return boost::json::parse(line).as_object();
}

}  // namespace

TEST(Logger, LevelNamesRoundTrip) {
  for (auto l : {tele::level::debug, tele::level::info, tele::level::warn, tele::level::error}) {
    EXPECT_EQ(tele::parse_level(tele::level_name(l)), l);
  }
  EXPECT_FALSE(tele::parse_level("WARN"));
  EXPECT_FALSE(tele::parse_level("warning"));
}

TEST(Logger, WritesOneCompactJsonObjectPerLineWithKeysInOrder) {
  captured_logger c;
  c.log.info("gateway listening", {{"address", "127.0.0.1:3000"}, {"port", 3000}, {"ready", false}});
  auto lines = c.out_lines();
  ASSERT_EQ(lines.size(), 1u);
  EXPECT_EQ(lines[0], "{\"ts\":\"" + ray::format_timestamp(c.clock.wall()) +
                          R"(","level":"info","service":"ray-test","message":"gateway listening",)"
                          R"("address":"127.0.0.1:3000","port":3000,"ready":false})");
  EXPECT_EQ(ray::format_timestamp(c.clock.wall()), "2027-01-15T08:00:00.000Z");
}

TEST(Logger, TimestampsComeFromTheInjectedClockWithMilliseconds) {
  captured_logger c;
  c.clock.advance(1234ms);
  c.log.info("x");
  auto lines = c.out_lines();
  ASSERT_EQ(lines.size(), 1u);
  EXPECT_EQ(parse_object(lines[0]).at("ts").as_string(), "2027-01-15T08:00:01.234Z");
}

TEST(Logger, LinesBelowTheMinimumLevelAreDroppedAndNotCounted) {
  captured_logger c(tele::level::warn);
  c.log.debug("d");
  c.log.info("i");
  c.log.log(tele::level::info, "i2");
  c.log.warn("w");
  EXPECT_FALSE(c.log.enabled(tele::level::info));
  EXPECT_TRUE(c.log.enabled(tele::level::error));
  auto lines = c.out_lines();
  ASSERT_EQ(lines.size(), 1u);
  EXPECT_EQ(parse_object(lines[0]).at("message").as_string(), "w");
  EXPECT_EQ(c.log.dropped_lines(), 0u);
}

TEST(Logger, SetLevelTakesEffectForTheNextLine) {
  captured_logger c(tele::level::info);
  c.log.debug("before");
  c.log.set_level(tele::level::debug);
  EXPECT_EQ(c.log.min_level(), tele::level::debug);
  c.log.debug("after");
  auto lines = c.out_lines();
  ASSERT_EQ(lines.size(), 1u);
  EXPECT_EQ(parse_object(lines[0]).at("message").as_string(), "after");
  EXPECT_EQ(parse_object(lines[0]).at("level").as_string(), "debug");
}

TEST(Logger, ErrorLinesGoToStderrAndTheRestToStdout) {
  captured_logger c;
  c.log.debug("d");
  c.log.info("i");
  c.log.warn("w");
  c.log.error("request failed", {{"code", "provider_timeout"}});
  auto out = c.out_lines();
  auto err = c.err_lines();
  ASSERT_EQ(out.size(), 3u);
  ASSERT_EQ(err.size(), 1u);
  EXPECT_EQ(parse_object(out[0]).at("level").as_string(), "debug");
  EXPECT_EQ(parse_object(out[1]).at("level").as_string(), "info");
  EXPECT_EQ(parse_object(out[2]).at("level").as_string(), "warn");
  auto e = parse_object(err[0]);
  EXPECT_EQ(e.at("level").as_string(), "error");
  EXPECT_EQ(e.at("code").as_string(), "provider_timeout");
}

TEST(Logger, MessagesAndFieldsAreEscapedSoEveryLineParses) {
  captured_logger c;
  c.log.info("quote \" backslash \\ newline \n ctrl \x01 bad \xFF",
             {{"nested", {{"a", boost::json::array{1, "two\n"}}}}, {"ratio", 0.25}});
  auto lines = c.out_lines();
  ASSERT_EQ(lines.size(), 1u);  // the newline was escaped
  auto o = parse_object(lines[0]);
  EXPECT_EQ(o.at("message").as_string(), "quote \" backslash \\ newline \n ctrl \x01 bad \xEF\xBF\xBD");
  EXPECT_EQ(boost::json::serialize(o.at("nested")), R"({"a":[1,"two\n"]})");
  EXPECT_EQ(o.at("ratio").as_double(), 0.25);
}

TEST(Logger, FieldsNamedLikeFixedKeysAreSkipped) {
  captured_logger c;
  c.log.info("real", {{"message", "fake"}, {"level", "error"}, {"ts", 0}, {"service", "x"}, {"ok", true}});
  auto lines = c.out_lines();
  ASSERT_EQ(lines.size(), 1u);
  EXPECT_NE(lines[0].find(R"("service":"ray-test","message":"real","ok":true})"), std::string::npos)
      << lines[0];
}

TEST(Logger, SynchronousModeWritesBeforeLogReturns) {
  captured_logger c(tele::level::info, /*synchronous=*/true);
  c.log.info("now");
  auto lines = split_lines(c.out.take());  // no flush
  ASSERT_EQ(lines.size(), 1u);
  EXPECT_EQ(parse_object(lines[0]).at("message").as_string(), "now");
}

TEST(Logger, DestructorWritesQueuedLines) {
  pipe_capture out, err;
  {
    tele::logger log(tele::logger_options{.out_fd = out.write_fd(), .err_fd = err.write_fd()});
    for (int i = 0; i < 100; ++i)
      log.info("line", {{"i", i}});
  }
  auto lines = split_lines(out.take());
  ASSERT_EQ(lines.size(), 100u);
  EXPECT_EQ(parse_object(lines[99]).at("i").as_int64(), 99);
  EXPECT_EQ(parse_object(lines[0]).at("service").as_string(), "ray-gateway");
}

TEST(Logger, FullQueueDropsAndCountsLinesWithoutBlocking) {
  pipe_capture out, err;
  // Fill the pipe so the writer thread blocks on its first write.
  ::fcntl(out.write_fd(), F_SETPIPE_SZ, 4096);
  ::fcntl(out.write_fd(), F_SETFL, O_NONBLOCK);
  std::string filler(4096, 'f');
  std::size_t filled = 0;
  for (;;) {
    ssize_t n = ::write(out.write_fd(), filler.data(), filler.size());
    if (n <= 0) break;
    filled += static_cast<std::size_t>(n);
  }
  ::fcntl(out.write_fd(), F_SETFL, 0);  // blocking again: the writer thread will sit in write()
  ASSERT_GT(filled, 0u);

  constexpr std::size_t queue = 4;
  constexpr int total = 200;
  std::uint64_t dropped = 0;
  std::string received;
  {
    tele::logger log(
        tele::logger_options{.max_queued_lines = queue, .out_fd = out.write_fd(), .err_fd = err.write_fd()});
    auto start = std::chrono::steady_clock::now();
    for (int i = 0; i < total; ++i)
      log.info("x", {{"i", i}});
    auto elapsed = std::chrono::steady_clock::now() - start;
    EXPECT_LT(elapsed, 2s);  // log() never waited for the stuck pipe
    dropped = log.dropped_lines();
    // At most one batch (<= queue lines) is in the writer's hands and `queue` lines wait behind it.
    EXPECT_GE(dropped, std::uint64_t{total - 2 * queue});
    EXPECT_LE(dropped, std::uint64_t{total - 1});

    // Now drain the pipe concurrently so flush() (and the destructor) can finish.
    std::thread reader([&] {
      std::array<char, 4096> buf{};
      for (;;) {
        pollfd p{out.read_fd(), POLLIN, 0};
        ::poll(&p, 1, 100);
        ssize_t n = ::read(out.read_fd(), buf.data(), buf.size());
        if (n > 0) {
          received.append(buf.data(), static_cast<std::size_t>(n));
        } else if (n == 0) {
          return;  // EOF: the write end was closed
        }
      }
    });
    log.flush();
    EXPECT_EQ(log.dropped_lines(), dropped);
    out.close_write();
    reader.join();
  }
  ASSERT_GE(received.size(), filled);
  auto lines = split_lines(received.substr(filled));
  EXPECT_EQ(lines.size(), total - dropped);
  for (auto const& l : lines)
    EXPECT_NO_THROW(boost::json::parse(l)) << l;
}

TEST(Logger, ByteBoundAlsoLimitsTheQueue) {
  pipe_capture out, err;
  ::fcntl(out.write_fd(), F_SETPIPE_SZ, 4096);
  ::fcntl(out.write_fd(), F_SETFL, O_NONBLOCK);
  std::string filler(4096, 'f');
  std::size_t filled = 0;
  while (::write(out.write_fd(), filler.data(), filler.size()) > 0)
    filled += filler.size();
  // Leave the descriptor non-blocking: the writer polls for space.
  std::string received;
  {
    tele::logger log(
        tele::logger_options{.max_queued_bytes = 1000, .out_fd = out.write_fd(), .err_fd = err.write_fd()});
    std::string big(600, 'b');
    for (int i = 0; i < 10; ++i)
      log.info(big);
    // Each line is > 600 bytes: at most one is queued (plus one batch being written).
    EXPECT_GE(log.dropped_lines(), 8u);
    std::thread reader([&] {
      std::array<char, 4096> buf{};
      for (;;) {
        pollfd p{out.read_fd(), POLLIN, 0};
        ::poll(&p, 1, 100);
        ssize_t n = ::read(out.read_fd(), buf.data(), buf.size());
        if (n > 0) received.append(buf.data(), static_cast<std::size_t>(n));
        if (n == 0) return;
      }
    });
    log.flush();
    out.close_write();
    reader.join();
    EXPECT_EQ(split_lines(received.substr(filled)).size(), 10 - log.dropped_lines());
  }
}

TEST(Logger, WriteFailuresCountAsDropped) {
  pipe_capture err;
  int devfull = ::open("/dev/full", O_WRONLY | O_CLOEXEC);
  if (devfull < 0) RAY_SKIP_OR_FAIL("/dev/full not available");
  {
    tele::logger log(tele::logger_options{.out_fd = devfull, .err_fd = err.write_fd()});
    log.info("lost");
    log.info("lost too");
    log.flush();
    EXPECT_EQ(log.dropped_lines(), 2u);
  }
  ::close(devfull);
}

TEST(Logger, LinesFromManyThreadsStayWhole) {
  std::FILE* tmp = std::tmpfile();
  ASSERT_NE(tmp, nullptr);
  pipe_capture err;
  constexpr int threads = 4, per_thread = 500;
  {
    tele::logger log(tele::logger_options{
        .max_queued_lines = threads * per_thread, .out_fd = ::fileno(tmp), .err_fd = err.write_fd()});
    std::vector<std::thread> workers;
    for (int t = 0; t < threads; ++t) {
      workers.emplace_back([&, t] {
        for (int i = 0; i < per_thread; ++i)
          log.info("concurrent", {{"t", t}, {"i", i}});
      });
    }
    for (auto& w : workers)
      w.join();
    log.flush();
    EXPECT_EQ(log.dropped_lines(), 0u);
  }
  std::string content;
  std::rewind(tmp);
  std::array<char, 8192> buf{};
  while (auto n = std::fread(buf.data(), 1, buf.size(), tmp))
    content.append(buf.data(), n);
  std::fclose(tmp);
  auto lines = split_lines(content);
  ASSERT_EQ(lines.size(), std::size_t{threads * per_thread});
  std::vector<int> next(threads, 0);
  for (auto const& l : lines) {
    auto o = parse_object(l);
    auto t = static_cast<int>(o.at("t").as_int64());
    EXPECT_EQ(o.at("i").as_int64(), next[t]++);  // each thread's lines keep their order
  }
}

// --- rejection_summarizer ---

namespace {

struct summarizer_fixture {
  captured_logger c{tele::level::info};
  tele::rejection_summarizer summary{c.log, c.clock};
};

}  // namespace

TEST(RejectionSummarizer, FirstRejectionOfAReasonLogsAtOnce) {
  summarizer_fixture f;
  f.summary.record("queue_full", {{"route", "/v1/infer"}});
  auto lines = f.c.out_lines();
  ASSERT_EQ(lines.size(), 1u);
  EXPECT_NE(lines[0].find(R"("level":"warn","service":"ray-test","message":"request rejected",)"
                          R"("reason":"queue_full","count":1,"windowMs":1000,"route":"/v1/infer"})"),
            std::string::npos)
      << lines[0];
}

TEST(RejectionSummarizer, LaterRejectionsInTheWindowAreFoldedIntoTheNextLine) {
  summarizer_fixture f;
  for (int i = 0; i < 5; ++i)
    f.summary.record("queue_full");
  f.c.clock.advance(500ms);
  for (int i = 0; i < 3; ++i)
    f.summary.record("queue_full");
  EXPECT_EQ(f.c.out_lines().size(), 1u);  // only the first
  f.c.clock.advance(600ms);
  f.summary.record("queue_full");
  auto lines = f.c.out_lines();
  ASSERT_EQ(lines.size(), 1u);
  EXPECT_EQ(parse_object(lines[0]).at("count").to_number<std::uint64_t>(), 8u);  // 7 held back + this one
}

TEST(RejectionSummarizer, TickWritesHeldCountsOnceTheWindowHasEnded) {
  summarizer_fixture f;
  for (int i = 0; i < 3; ++i)
    f.summary.record("rate_limited", {{"route", "/v1/infer"}});
  EXPECT_EQ(f.c.out_lines().size(), 1u);
  f.c.clock.advance(999ms);
  f.summary.tick();
  EXPECT_TRUE(f.c.out_lines().empty());
  f.c.clock.advance(1ms);
  f.summary.tick();
  auto lines = f.c.out_lines();
  ASSERT_EQ(lines.size(), 1u);
  auto o = parse_object(lines[0]);
  EXPECT_EQ(o.at("reason").as_string(), "rate_limited");
  EXPECT_EQ(o.at("count").to_number<std::uint64_t>(), 2u);
  EXPECT_EQ(o.at("windowMs").as_int64(), 1000);
  EXPECT_FALSE(o.contains("route"));
  // The tick opened a new window: a rejection right after it is held, not logged.
  f.c.clock.advance(300ms);
  f.summary.record("rate_limited");
  f.summary.tick();
  EXPECT_TRUE(f.c.out_lines().empty());
  f.c.clock.advance(700ms);
  f.summary.tick(f.c.clock.now());
  lines = f.c.out_lines();
  ASSERT_EQ(lines.size(), 1u);
  EXPECT_EQ(parse_object(lines[0]).at("count").to_number<std::uint64_t>(), 1u);
  // Nothing held: ticks stay quiet.
  f.c.clock.advance(5s);
  f.summary.tick();
  EXPECT_TRUE(f.c.out_lines().empty());
}

TEST(RejectionSummarizer, AtMostOneLinePerReasonPerWindow) {
  summarizer_fixture f;
  for (int ms = 0; ms < 3000; ms += 10) {  // 100 rejections per second for 3 s, ticking every 10 ms
    f.summary.record("queue_full");
    f.summary.record("overloaded");
    f.summary.tick();
    f.c.clock.advance(10ms);
  }
  f.c.clock.advance(1s);
  f.summary.tick();
  std::uint64_t queue_full = 0, overloaded = 0;
  std::size_t lines = 0;
  for (auto const& l : f.c.out_lines()) {
    auto o = parse_object(l);
    ++lines;
    (o.at("reason").as_string() == "queue_full" ? queue_full : overloaded) +=
        o.at("count").to_number<std::uint64_t>();
  }
  EXPECT_EQ(queue_full, 300u);
  EXPECT_EQ(overloaded, 300u);
  EXPECT_LE(lines, 2u * 4u);  // 3 s of traffic + the final tail, per reason
}

TEST(RejectionSummarizer, HeldCountsAreWrittenWhenTheSummarizerIsDestroyed) {
  captured_logger c;
  {
    tele::rejection_summarizer summary(c.log, c.clock);
    for (int i = 0; i < 17; ++i)
      summary.record("queue_full");
    c.clock.advance(100ms);  // window still open
  }
  auto lines = c.out_lines();
  ASSERT_EQ(lines.size(), 2u);
  EXPECT_EQ(parse_object(lines[0]).at("count").to_number<std::uint64_t>(), 1u);
  EXPECT_EQ(parse_object(lines[1]).at("count").to_number<std::uint64_t>(), 16u);
}

TEST(RejectionSummarizer, ReasonsBeyondTheLimitAreSummarisedAsOther) {
  captured_logger c;
  tele::rejection_summarizer summary(c.log, c.clock, 1s, /*max_reasons=*/2);
  summary.record("a");
  summary.record("b");
  summary.record("c");
  auto lines = c.out_lines();
  ASSERT_EQ(lines.size(), 2u);
  EXPECT_EQ(parse_object(lines[0]).at("reason").as_string(), "a");
  EXPECT_EQ(parse_object(lines[1]).at("reason").as_string(), "other");
}

TEST(RejectionSummarizer, NothingIsWrittenWhenWarnIsFilteredOut) {
  captured_logger c(tele::level::error);
  tele::rejection_summarizer summary(c.log, c.clock);
  summary.record("queue_full");
  c.clock.advance(2s);
  summary.tick();
  EXPECT_TRUE(c.out_lines().empty());
  EXPECT_TRUE(c.err_lines().empty());
}
