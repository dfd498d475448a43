// The event loop of `ray bench`: one io_context on the calling thread, one coroutine per virtual client, each
// with one keep-alive connection; a ticker enforces request deadlines and prints the progress line. Requests
// are serialized once before the run; a client reuses its parser buffer and body buffer from request to
// request. Asio and Beast are compiled in ray_http (asio_impl.cpp).
#include "ray/bench/bench.hpp"
#include "ray/http/client.hpp"  // sse_parser

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/connect.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/signal_set.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/asio/write.hpp>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/http/buffer_body.hpp>
#include <boost/beast/http/error.hpp>
#include <boost/beast/http/parser.hpp>

#include <sys/resource.h>
#include <unistd.h>

#include <array>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <exception>
#include <memory>
#include <ostream>

namespace ray::bench {

namespace {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace bhttp = beast::http;
using tcp = asio::ip::tcp;
using steady = std::chrono::steady_clock;
constexpr auto use_tuple = asio::as_tuple(asio::use_awaitable);

struct vclient {
  // The read buffer keeps its capacity from request to request: Beast reads at most max(512, free capacity)
  // bytes per call, so a reserved buffer takes a whole streamed answer in a few reads instead of one per 512
  // bytes.
  explicit vclient(asio::any_io_executor const& ex) : sock(ex), pacer(ex) { buf.reserve(16 * 1024); }
  tcp::socket sock;
  asio::steady_timer pacer;  // open loop: waits for the scheduled arrival
  beast::flat_buffer buf;
  std::optional<bhttp::response_parser<bhttp::buffer_body>> parser;
  std::string body;
  std::array<char, 16 * 1024> chunk;
  bool busy{false};
  bool timed_out{false};
  steady::time_point deadline{};

  void close() {
    boost::system::error_code ec;
    if (sock.is_open()) {
      sock.shutdown(tcp::socket::shutdown_both, ec);
      sock.close(ec);
    }
    buf.clear();
  }
};

struct run_state {
  run_state(asio::io_context& io, options const& o) : io(io), o(o), ticker(io), signals(io) {}
  asio::io_context& io;
  options const& o;
  tcp::endpoint ep;
  std::vector<std::string> wire;
  std::vector<bool> openai;
  run_stats stats;
  std::uint64_t next{0};
  steady::time_point start{}, end{}, finished_at{};
  bool has_end{false};
  bool stopping{false};
  bool interrupted{false};
  std::vector<std::unique_ptr<vclient>> clients;
  unsigned live{0};
  asio::steady_timer ticker;
  asio::signal_set signals;
  std::exception_ptr failure;
  bool progress{false};
};

bool stale_connection(boost::system::error_code ec) {
  return ec == asio::error::eof || ec == asio::error::connection_reset || ec == asio::error::broken_pipe;
}

bool would_block(boost::system::error_code ec) {
  return ec == asio::error::would_block || ec == asio::error::try_again;
}

// The I/O of a request costs as few trips through the event loop as possible (on a small VM every trip is an
// epoll_wait system call): the socket is non-blocking, writes and reads are tried at once, and only an EAGAIN
// waits for readiness. A 2-core box shares its CPU between this tool and what it measures.
asio::awaitable<boost::system::error_code> write_all(vclient& c, std::string const& bytes) {
  std::size_t done = 0;
  while (done < bytes.size()) {
    boost::system::error_code ec;
    std::size_t n = c.sock.write_some(asio::buffer(bytes.data() + done, bytes.size() - done), ec);
    if (!ec) {
      done += n;
      continue;
    }
    if (!would_block(ec)) co_return ec;
    auto [wec] = co_await c.sock.async_wait(tcp::socket::wait_write, use_tuple);
    if (wec) co_return wec;
  }
  co_return boost::system::error_code{};
}

// Appends what the socket has to c.buf (at least one byte, or an error: eof when the peer closed).
asio::awaitable<boost::system::error_code> read_more(vclient& c) {
  for (;;) {
    boost::system::error_code ec;
    std::size_t n = c.sock.read_some(c.buf.prepare(16 * 1024), ec);
    if (!ec) {
      c.buf.commit(n);
      co_return ec;
    }
    if (!would_block(ec)) co_return ec;
    auto [wec] = co_await c.sock.async_wait(tcp::socket::wait_read, use_tuple);
    if (wec) co_return wec;
  }
}

asio::awaitable<void> one_request(run_state& rs, vclient& c, std::size_t idx, steady::time_point t0) {
  response_record rec;
  rec.openai = rs.openai[idx];
  c.timed_out = false;
  c.deadline = steady::now() + std::chrono::milliseconds(rs.o.timeout_ms);
  c.busy = true;
  auto fail = [&](std::string_view why) {
    c.close();
    c.busy = false;
    if (rs.interrupted) return;  // a request cut by Ctrl-C is not a result
    rec.status = 0;
    rec.transport_error = why;
    rs.stats.add(rec);
  };
  auto io_failure = [&]() -> std::string_view { return c.timed_out ? "timeout" : "connection_closed"; };

  stream_tracker tracker;
  std::optional<ray::http::sse_parser> events;
  bool sse = false;
  c.body.clear();
  for (int attempt = 0;; ++attempt) {
    bool const reused = c.sock.is_open();
    // A kept-alive connection the server closed meanwhile fails before any byte of the answer: one retry.
    bool const may_retry = reused && attempt == 0;
    if (!reused) {
      c.buf.clear();
      auto [cec] = co_await c.sock.async_connect(rs.ep, use_tuple);
      if (cec) {
        fail(c.timed_out ? "timeout" : "connect_failed");
        co_return;
      }
      boost::system::error_code ignored;
      c.sock.set_option(tcp::no_delay(true), ignored);
      c.sock.non_blocking(true, ignored);
      ++rs.stats.connections;
    }
    if (auto wec = co_await write_all(c, rs.wire[idx])) {
      if (may_retry && !c.timed_out && !rs.stopping) {
        c.close();
        continue;
      }
      fail(io_failure());
      co_return;
    }

    c.parser.emplace();
    auto& p = *c.parser;
    p.body_limit(boost::none);
    p.header_limit(64 * 1024);
    p.eager(true);
    bool header_seen = false;
    bool received = false;
    bool retry = false;
    for (;;) {
      // Parse what is buffered; body bytes land in c.chunk.
      boost::system::error_code pec;
      while (!p.is_done() && c.buf.size() > 0) {
        p.get().body().data = c.chunk.data();
        p.get().body().size = c.chunk.size();
        std::size_t const used = p.put(c.buf.data(), pec);
        c.buf.consume(used);
        std::size_t const got = c.chunk.size() - p.get().body().size;
        if (pec == bhttp::error::need_buffer) pec = {};
        if (!header_seen && p.is_header_done()) {
          header_seen = true;
          rec.status = p.get().result_int();
          sse = p.get()[bhttp::field::content_type].find("text/event-stream") != std::string_view::npos;
          rec.x_ray_cache_hit = iequals(p.get()["x-ray-cache"], "hit");
          if (sse) events.emplace(std::size_t{8} << 20);
        }
        if (got > 0) {
          if (sse) {
            auto const at = static_cast<std::uint64_t>(
                std::chrono::duration_cast<std::chrono::nanoseconds>(steady::now() - t0).count());
            if (!events->feed(std::string_view(c.chunk.data(), got))) {
              fail("bad_response");
              co_return;
            }
            while (auto ev = events->next())
              tracker.on_event(ev->data, at);
          } else {
            c.body.append(c.chunk.data(), got);
          }
        }
        if (pec == bhttp::error::need_more) {
          pec = {};
          break;
        }
        if (pec || (used == 0 && got == 0)) break;
      }
      if (pec) {
        fail("bad_response");
        co_return;
      }
      if (p.is_done()) break;
      auto rec_ec = co_await read_more(c);
      if (!rec_ec) {
        received = true;
        continue;
      }
      if (rec_ec == asio::error::eof && header_seen) {
        p.put_eof(pec);  // a body delimited by the end of the connection
        if (!pec && p.is_done()) break;
      }
      if (!received && may_retry && !c.timed_out && !rs.stopping && stale_connection(rec_ec)) {
        retry = true;
        break;
      }
      fail(io_failure());
      co_return;
    }
    if (retry) {
      c.close();
      continue;
    }
    break;
  }

  auto const done = steady::now();
  bool const keep = c.parser->keep_alive() && c.buf.size() == 0;
  c.busy = false;
  if (!keep) c.close();
  rec.latency_ns =
      static_cast<std::uint64_t>(std::chrono::duration_cast<std::chrono::nanoseconds>(done - t0).count());
  rec.body = c.body;
  if (sse) rec.stream = &tracker;
  rs.stats.add(rec);
}

void finish(run_state& rs) {
  rs.finished_at = steady::now();
  rs.stopping = true;
  rs.ticker.cancel();
  boost::system::error_code ignored;
  rs.signals.cancel(ignored);
}

asio::awaitable<void> client_loop(run_state& rs, vclient& c) {
  auto const n = rs.wire.size();
  while (!rs.stopping) {
    std::uint64_t const k = rs.next;
    if (rs.o.requests && k >= *rs.o.requests) break;
    auto intended = steady::now();
    if (rs.o.rate > 0)
      intended = rs.start + std::chrono::nanoseconds(static_cast<std::int64_t>(
                                std::llround(static_cast<double>(k) * 1e9 / rs.o.rate)));
    if (rs.has_end && intended >= rs.end) break;
    ++rs.next;
    if (rs.o.rate > 0) {
      if (intended > steady::now()) {
        c.pacer.expires_at(intended);
        co_await c.pacer.async_wait(use_tuple);
        if (rs.stopping) break;
      } else if (steady::now() - intended > std::chrono::milliseconds(1)) {
        ++rs.stats.late_starts;
      }
    }
    co_await one_request(rs, c, static_cast<std::size_t>(k % n), intended);
  }
  c.close();
  if (--rs.live == 0) finish(rs);
}

void print_progress(run_state& rs, steady::time_point now, std::uint64_t& last_requests,
                    steady::time_point& last_at) {
  double const t = std::chrono::duration<double>(now - rs.start).count();
  double const dt = std::chrono::duration<double>(now - last_at).count();
  double const rate = dt > 0 ? static_cast<double>(rs.stats.requests - last_requests) / dt : 0;
  last_requests = rs.stats.requests;
  last_at = now;
  std::fprintf(stderr, "\r\x1b[K  %6.1f s  %10llu requests  %9.1f req/s  %llu not ok", t,
               static_cast<unsigned long long>(rs.stats.requests), rate,
               static_cast<unsigned long long>(rs.stats.requests - rs.stats.ok));
  std::fflush(stderr);
}

// Deadlines (a request past --timeout-ms has its connection closed) and the progress line.
asio::awaitable<void> tick_loop(run_state& rs) {
  auto next_progress = rs.start + std::chrono::seconds(1);
  std::uint64_t last_requests = 0;
  auto last_at = rs.start;
  while (!rs.stopping) {
    rs.ticker.expires_after(std::chrono::milliseconds(20));
    co_await rs.ticker.async_wait(use_tuple);
    auto const now = steady::now();
    for (auto& c : rs.clients) {
      if (c->busy && !c->timed_out && now > c->deadline) {
        c->timed_out = true;
        c->close();  // the pending operation completes with an error: counted as "timeout"
      }
    }
    if (rs.progress && !rs.stopping && now >= next_progress) {
      print_progress(rs, now, last_requests, last_at);
      next_progress += std::chrono::seconds(1);
    }
  }
  if (rs.progress) {
    std::fprintf(stderr, "\r\x1b[K");
    std::fflush(stderr);
  }
}

void on_signal(run_state& rs) {
  rs.signals.async_wait([&rs](boost::system::error_code ec, int) {
    if (ec) return;
    rs.interrupted = true;
    rs.stopping = true;
    for (auto& c : rs.clients) {
      c->pacer.cancel();
      c->close();
    }
  });
}

std::string host_header(endpoint_url const& url) {
  bool const v6 = url.host.find(':') != std::string::npos;
  return (v6 ? "[" + url.host + "]" : url.host) + ":" + std::to_string(url.port);
}

void raise_fd_limit(unsigned needed) {
  rlimit rl{};
  if (::getrlimit(RLIMIT_NOFILE, &rl) != 0) return;
  rlim_t want = static_cast<rlim_t>(needed) + 64;
  if (rl.rlim_cur >= want) return;
  rl.rlim_cur = std::min(want, rl.rlim_max);
  ::setrlimit(RLIMIT_NOFILE, &rl);
}

}  // namespace

result<run_result> drive(options const& o, endpoint_url const& url, std::vector<workload_item> const& items,
                         std::ostream& err) {
  (void)err;
  asio::io_context io{1};
  run_state rs(io, o);
  {
    tcp::resolver resolver(io);
    boost::system::error_code ec;
    auto found = resolver.resolve(url.host, std::to_string(url.port), ec);
    if (ec || found.empty())
      return ray::error{errc::invalid_request, "--url " + o.url + ": cannot resolve " + url.host + ": " +
                                                   (ec ? ec.message() : std::string("no address"))};
    rs.ep = found.begin()->endpoint();
  }
  std::string const host = host_header(url);
  std::string extra;
  for (auto const& h : o.headers)
    extra += h + "\r\n";
  for (auto const& item : items) {
    std::string w;
    w.reserve(item.body.size() + 256);
    w += "POST " + url.base_path + item.target + " HTTP/1.1\r\nHost: " + host +
         "\r\nUser-Agent: ray-bench/" RAY_VERSION
         "\r\nAccept: application/json, text/event-stream\r\n"
         "Content-Type: application/json\r\nContent-Length: " +
         std::to_string(item.body.size()) + "\r\n" + extra + "\r\n";
    w += item.body;
    rs.wire.push_back(std::move(w));
    rs.openai.push_back(item.openai);
  }
  raise_fd_limit(o.concurrency);
  rs.progress = o.progress.value_or(::isatty(STDERR_FILENO) == 1);

  rs.signals.add(SIGINT);
  rs.signals.add(SIGTERM);
  on_signal(rs);
  rs.start = steady::now();
  double const duration = o.duration_s.value_or(o.requests ? 0.0 : 10.0);
  if (duration > 0) {
    rs.has_end = true;
    rs.end = rs.start + std::chrono::duration_cast<steady::duration>(std::chrono::duration<double>(duration));
  }
  auto on_done = [&rs](std::exception_ptr e) {
    if (e && !rs.failure) rs.failure = e;
  };
  for (unsigned i = 0; i < o.concurrency; ++i)
    rs.clients.push_back(std::make_unique<vclient>(io.get_executor()));
  rs.live = o.concurrency;
  asio::co_spawn(io, tick_loop(rs), on_done);
  for (auto& c : rs.clients)
    asio::co_spawn(io, client_loop(rs, *c), on_done);
  io.run();
  if (rs.failure) std::rethrow_exception(rs.failure);

  run_result out;
  out.elapsed_s = std::chrono::duration<double>(rs.finished_at - rs.start).count();
  out.interrupted = rs.interrupted;
  out.stats = std::move(rs.stats);
  return out;
}

}  // namespace ray::bench
