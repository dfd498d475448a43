// fake_llama_server — a llama-server test double (see README.md next to this file). Single-threaded Beast
// coroutine server; the only translation unit of the double that includes Asio/Beast (their implementation
// is compiled once, in ray_http's asio_impl.cpp).
#include "knobs.hpp"
#include "shapes.hpp"
#include "tools.hpp"

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/signal_set.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/asio/write.hpp>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/core/tcp_stream.hpp>
#include <boost/beast/http/chunk_encode.hpp>
#include <boost/beast/http/empty_body.hpp>
#include <boost/beast/http/parser.hpp>
#include <boost/beast/http/read.hpp>
#include <boost/beast/http/serializer.hpp>
#include <boost/beast/http/string_body.hpp>
#include <boost/beast/http/write.hpp>
#include <boost/json/parse.hpp>

#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <deque>
#include <functional>
#include <list>
#include <map>
#include <memory>
#include <thread>

namespace fake_llama {
namespace {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
using tcp = asio::ip::tcp;
using steady = std::chrono::steady_clock;
constexpr auto use_tuple = asio::as_tuple(asio::use_awaitable);
constexpr std::string_view json_type = "application/json; charset=utf-8";

struct slot {
  int id{0};
  bool busy{false};
  bool prefilling{false};
  bool used{false};
  int id_task{0};
  std::string cache_text;  // evaluated text of the last task (what the KV cache holds)
  int n_prompt{0};
  int n_prompt_processed{0};
  int n_cache{0};
  int n_decoded{0};
  int n_remain{-1};
  int reserved{0};  // prompt + max generation while busy
  json::object params;
  std::uint64_t tasks{0};
};

struct server {
  asio::io_context io{1};
  knobs k;
  std::vector<slot> slots;
  std::list<asio::steady_timer*> waiters;  // parked in wait_event
  std::deque<std::uint64_t> queue;         // inference requests waiting for a slot, FIFO
  steady::time_point loading_until{};
  asio::steady_timer crash_timer{io};
  std::int64_t start_unix{0};
  metrics_view m;
  // /__stats
  std::map<std::string, std::uint64_t, std::less<>> requests;
  std::uint64_t inference_requests{0}, active{0}, max_concurrent{0}, max_processing{0}, completed{0},
      accepted_connections{0}, open_connections{0}, closed_connections{0}, cancelled_streams{0};
  // Open connections no request has arrived on yet, by accept time (Ray's backend watch never sends one).
  std::map<std::uint64_t, steady::time_point> silent;
  std::uint64_t next_connection{0};
  // Embeddings / rerank (counted in inference_requests too): requests, and the inputs / documents they
  // carried.
  std::uint64_t embedding_requests{0}, embedding_inputs{0}, rerank_requests{0}, rerank_documents{0},
      cancelled_embeddings{0};
  std::uint64_t hold_epoch{0}, next_request_id{1};
  std::int64_t inflight_tokens{0}, max_inflight_tokens{0};
  int next_task{0};
  std::deque<json::object> recent;
};

server* g = nullptr;

[[noreturn]] void crash(char const* why) {
  std::fprintf(stderr, "fake_llama_server: GGML_ASSERT(%s) failed — crashing on purpose\n", why);
  std::fflush(stderr);
  std::fflush(stdout);
  if (g->k.crash_exit_code >= 0) ::_exit(g->k.crash_exit_code);
  rlimit no_core{0, 0};
  ::setrlimit(RLIMIT_CORE, &no_core);
  std::signal(SIGABRT, SIG_DFL);
  std::abort();
}

void arm_crash_timer() {
  g->crash_timer.cancel();
  if (g->k.crash_after_ms < 0) return;
  g->crash_timer.expires_after(std::chrono::milliseconds(g->k.crash_after_ms));
  g->crash_timer.async_wait([](boost::system::error_code ec) {
    if (!ec) crash("crash-after-ms");
  });
}

void build_slots() {
  g->slots.clear();
  for (int i = 0; i < g->k.parallel; ++i)
    g->slots.push_back(slot{.id = i});
}

int busy_slots() {
  int n = 0;
  for (auto const& s : g->slots)
    n += s.busy ? 1 : 0;
  return n;
}

bool loading() {
  return steady::now() < g->loading_until;
}

// ---- events: every state change wakes all parked waiters, which re-check their condition.
void notify_all() {
  for (auto* t : g->waiters)
    t->cancel();
}

asio::awaitable<void> wait_event(asio::steady_timer& t) {
  t.expires_at(steady::time_point::max());
  auto it = g->waiters.insert(g->waiters.end(), &t);
  co_await t.async_wait(use_tuple);
  g->waiters.erase(it);
}

asio::awaitable<void> sleep_for(std::int64_t ms) {
  if (ms <= 0) co_return;
  asio::steady_timer t(co_await asio::this_coro::executor);
  t.expires_after(std::chrono::milliseconds(ms));
  co_await t.async_wait(use_tuple);
}

// ---- connections
struct conn {
  explicit conn(tcp::socket s) : stream(std::move(s)) {}
  beast::tcp_stream stream;
};

// One inference request: `wake` is its only timer (paces it, parks it in wait_event); the peer watcher
// cancels it when the client leaves.
struct infer_ctx {
  explicit infer_ctx(asio::any_io_executor ex) : wake(std::move(ex)) {}
  asio::steady_timer wake;
  bool cancelled{false};
  bool finished{false};
};

asio::awaitable<void> sleep_until(infer_ctx& ctx, steady::time_point until) {
  while (!ctx.cancelled && steady::now() < until) {
    ctx.wake.expires_at(until);
    co_await ctx.wake.async_wait(use_tuple);
  }
}

// Watches a streaming request's socket while the request has nothing to write (queued, prefill, held):
// EOF or an error means the client left. Bytes of a pipelined request end the watch (left for the next read).
asio::awaitable<void> watch_peer(std::shared_ptr<conn> c, std::shared_ptr<infer_ctx> ctx) {
  auto& sock = c->stream.socket();
  for (;;) {
    auto [ec] = co_await sock.async_wait(tcp::socket::wait_read, use_tuple);
    if (ctx->finished || ec == asio::error::operation_aborted) co_return;
    if (!ec) {
      char byte;
      ssize_t n = ::recv(sock.native_handle(), &byte, 1, MSG_PEEK | MSG_DONTWAIT);
      if (n > 0) co_return;
      if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)) continue;
    }
    ctx->cancelled = true;
    ctx->wake.cancel();
    co_return;
  }
}

std::string keep_alive_value() {
  return "timeout=" + std::to_string(std::max<std::int64_t>(g->k.keep_alive_ms / 1000, 1)) + ", max=100";
}

// Writes a whole response. Errors (status >= 400) close the connection, like the recorded server. Returns
// whether the connection stays open.
asio::awaitable<bool> send(conn& c, int status, std::string body, bool keep,
                           std::string_view type = json_type,
                           std::pair<std::string_view, std::string> const* extra = nullptr) {
  if (status >= 400) keep = false;
  http::response<http::string_body> res{static_cast<http::status>(status), 11};
  res.set(http::field::server, "llama.cpp");
  res.set(http::field::access_control_allow_origin, "");
  if (extra) res.set(extra->first, extra->second);
  res.set(http::field::content_type, type);
  res.content_length(body.size());
  if (keep)
    res.set(http::field::keep_alive, keep_alive_value());
  else
    res.set(http::field::connection, "close");
  res.body() = std::move(body);
  auto [ec, n] = co_await http::async_write(c.stream, res, use_tuple);
  co_return !ec && keep;
}

asio::awaitable<bool> write_stream_head(conn& c, bool keep) {
  http::response<http::empty_body> res{http::status::ok, 11};
  res.set(http::field::server, "llama.cpp");
  res.set(http::field::access_control_allow_origin, "");
  res.set("X-Accel-Buffering", "no");
  res.set(http::field::content_type, "text/event-stream");
  res.set(http::field::transfer_encoding, "chunked");
  if (keep)
    res.set(http::field::keep_alive, keep_alive_value());
  else
    res.set(http::field::connection, "close");
  http::response_serializer<http::empty_body> sr{res};
  auto [ec, n] = co_await http::async_write_header(c.stream, sr, use_tuple);
  co_return !ec;
}

asio::awaitable<bool> write_chunk(conn& c, std::string const& data) {
  auto [ec, n] = co_await asio::async_write(c.stream, http::make_chunk(asio::buffer(data)), use_tuple);
  co_return !ec;
}

asio::awaitable<bool> write_last_chunk(conn& c) {
  auto [ec, n] = co_await asio::async_write(c.stream, http::make_chunk_last(), use_tuple);
  co_return !ec;
}

std::string maybe_break_event(std::string ev) {
  if (!g->k.malformed_json || !ev.starts_with("data: {")) return ev;
  return "data: " + break_json(ev.substr(6, ev.size() - 8)) + "\n\n";
}

slot* pick_slot(int wanted) {
  if (wanted >= 0 && wanted < static_cast<int>(g->slots.size()) && !g->slots[wanted].busy)
    return &g->slots[wanted];
  for (auto& s : g->slots)
    if (!s.busy) return &s;
  return nullptr;
}

template <class F>
struct scope_exit {
  F f;
  ~scope_exit() { f(); }
};
template <class F>
scope_exit(F) -> scope_exit<F>;

void remember(std::string_view path, json::object const& body) {
  g->recent.push_back(json::object{{"path", path}, {"body", body}});
  while (g->recent.size() > 32)
    g->recent.pop_front();
}

// ---- inference: queue for a slot, prefill, (hold), generate, answer. Returns whether the connection stays.
asio::awaitable<bool> handle_inference(std::shared_ptr<conn> c, api kind, std::string_view path,
                                       std::string const& body, bool keep) {
  if (g->k.fail_status != 0)
    co_return co_await send(*c, g->k.fail_status, error_for_status(g->k.fail_status), keep);
  auto parsed = parse_request(kind, body, g->k);
  if (auto* r = std::get_if<reply>(&parsed)) co_return co_await send(*c, r->status, std::move(r->body), keep);
  gen_request rq = std::move(std::get<gen_request>(parsed));
  remember(path, rq.body);

  ++g->inference_requests;
  ++g->active;
  g->max_concurrent = std::max(g->max_concurrent, g->active);
  std::uint64_t my_epoch = g->hold_epoch;
  if (g->k.hold_until_clients > 0 && g->active >= static_cast<std::uint64_t>(g->k.hold_until_clients)) {
    ++g->hold_epoch;
    notify_all();
  }
  auto ex = c->stream.get_executor();
  auto ctx = std::make_shared<infer_ctx>(ex);
  if (rq.stream) asio::co_spawn(ex, watch_peer(c, ctx), asio::detached);
  std::uint64_t my_id = g->next_request_id++;
  slot* s = nullptr;
  scope_exit cleanup{[&] {
    --g->active;
    if (auto it = std::find(g->queue.begin(), g->queue.end(), my_id); it != g->queue.end())
      g->queue.erase(it);
    if (s) {
      s->busy = false;
      s->prefilling = false;
      g->inflight_tokens -= s->reserved;
      s->reserved = 0;
    }
    ctx->finished = true;
    if (rq.stream) {
      boost::system::error_code ignored;
      c->stream.socket().cancel(ignored);  // ends the watcher's wait
    }
    notify_all();
  }};

  // Queue (FIFO) until a slot is free.
  g->queue.push_back(my_id);
  while (!ctx->cancelled) {
    if (g->queue.front() == my_id && (s = pick_slot(rq.id_slot)) != nullptr) break;
    co_await wait_event(ctx->wake);
  }
  g->queue.erase(std::find(g->queue.begin(), g->queue.end(), my_id));
  notify_all();  // the next in line may take another free slot
  if (ctx->cancelled) {
    ++g->cancelled_streams;
    co_return false;
  }

  gen_result res;
  res.id = new_completion_id();
  res.created = static_cast<std::int64_t>(std::time(nullptr));
  res.id_slot = s->id;
  res.n_prompt = rq.n_prompt;
  int cached = rq.cache_prompt ? common_prefix_tokens(s->cache_text, rq.prompt) : 0;
  res.n_cached = std::min(cached, rq.n_prompt - 1);  // llama-server always evaluates the last prompt token
  s->busy = true;
  s->used = true;
  s->id_task = g->next_task++;
  ++s->tasks;
  s->cache_text = rq.prompt;
  s->n_prompt = rq.n_prompt;
  s->n_cache = res.n_cached;
  s->n_prompt_processed = 0;
  s->n_decoded = 0;
  s->n_remain = rq.n_gen_max;
  s->params = slot_params(rq);
  s->reserved = rq.n_prompt + rq.n_gen_max;
  g->inflight_tokens += s->reserved;
  g->max_inflight_tokens = std::max(g->max_inflight_tokens, g->inflight_tokens);
  g->max_processing = std::max<std::uint64_t>(g->max_processing, busy_slots());

  // Prefill.
  auto t0 = steady::now();
  int to_process = rq.n_prompt - res.n_cached;
  if (g->k.prompt_tps > 0) {
    s->prefilling = true;
    co_await sleep_until(*ctx, t0 + std::chrono::duration_cast<steady::duration>(
                                        std::chrono::duration<double>(to_process / g->k.prompt_tps)));
    s->prefilling = false;
    notify_all();
  }
  if (ctx->cancelled && rq.stream) {
    ++g->cancelled_streams;
    co_return false;
  }
  res.prompt_ms = std::chrono::duration<double, std::milli>(steady::now() - t0).count();
  s->n_prompt_processed = to_process;
  g->m.prompt_tokens_total += to_process;
  g->m.prompt_tokens_cached_total += res.n_cached;
  g->m.prompt_seconds_total += res.prompt_ms / 1e3;
  g->m.n_decode_total += 1;
  g->m.busy_slot_decodes += busy_slots();

  // Hold before the first token.
  while (!ctx->cancelled &&
         (g->k.hang_before_first_token || (g->k.hold_until_clients > 0 && g->hold_epoch == my_epoch)))
    co_await wait_event(ctx->wake);

  // Generate.
  bool head_sent = false;
  bool failed = false;
  auto emit = [&](std::string ev) -> asio::awaitable<bool> {
    if (!head_sent) {
      head_sent = true;
      if (!co_await write_stream_head(*c, keep)) co_return false;
      for (auto& e : stream_start(rq, res, g->k))
        if (!co_await write_chunk(*c, maybe_break_event(std::move(e)))) co_return false;
    }
    if (ev.empty()) co_return true;
    co_return co_await write_chunk(*c, maybe_break_event(std::move(ev)));
  };
  auto t1 = steady::now();
  auto next_at = t1;
  auto per_token =
      g->k.gen_tps > 0
          ? std::chrono::duration_cast<steady::duration>(std::chrono::duration<double>(1.0 / g->k.gen_tps))
          : steady::duration::zero();
  auto const tool_plan = plan_tool_calls(rq);
  while (!ctx->cancelled && res.n_predicted < rq.n_gen_max) {
    if (per_token > steady::duration::zero()) {
      next_at += per_token;
      co_await sleep_until(*ctx, next_at);
      if (ctx->cancelled) break;
    }
    if (rq.stream && g->k.fail_after_tokens >= 0 && res.n_predicted >= g->k.fail_after_tokens) {
      failed = true;
      break;
    }
    if (!tool_plan.empty()) {
      // A tool call: its pieces are the tokens (tools.hpp); done when the last piece went out.
      auto const& piece = tool_plan[static_cast<std::size_t>(res.n_predicted)];
      ++res.n_predicted;
      ++s->n_decoded;
      --s->n_remain;
      g->m.tokens_predicted_total += 1;
      g->m.n_decode_total += 1;
      if (rq.stream) {
        if (!co_await emit(stream_tool_piece(rq, res, piece, g->k))) ctx->cancelled = true;
      } else {
        add_tool_piece(res, piece);
      }
      if (static_cast<std::size_t>(res.n_predicted) == tool_plan.size()) {
        res.finish_reason = "tool_calls";
        res.stop_type = "eos";
        break;
      }
      continue;
    }
    token t = rq.planned_text.empty() ? generated_token(rq.prompt, res.n_predicted, rq.ignore_eos, g->k)
                                      : planned_token(rq, res.n_predicted);
    ++res.n_predicted;
    ++s->n_decoded;
    --s->n_remain;
    g->m.tokens_predicted_total += 1;
    g->m.n_decode_total += 1;
    g->m.busy_slot_decodes += busy_slots();
    g->m.n_tokens_max = std::max<double>(g->m.n_tokens_max, rq.n_prompt + res.n_predicted);
    if (t.eos) {
      res.finish_reason = "stop";
      res.stop_type = "eos";
      break;
    }
    std::string piece = t.piece;
    bool stop_hit = false;
    for (auto const& sw : rq.stop) {
      std::string joined = res.content + piece;
      auto pos = joined.find(sw);
      if (pos == std::string::npos) continue;
      piece = pos > res.content.size() ? joined.substr(res.content.size(), pos - res.content.size()) : "";
      if (pos < res.content.size()) res.content.resize(pos);
      stop_hit = true;
      res.stopping_word = sw;
      break;
    }
    res.content += piece;
    if (rq.logprobs && !rq.stream && !piece.empty())
      res.logprobs.push_back(logprob_entry(t, rq.top_logprobs));
    if (rq.stream && !piece.empty()) {
      t.piece = piece;
      if (!co_await emit(stream_token(rq, res, t, g->k))) ctx->cancelled = true;
    }
    if (stop_hit) {
      res.finish_reason = "stop";
      res.stop_type = "word";
      break;
    }
  }
  res.predicted_ms = std::chrono::duration<double, std::milli>(steady::now() - t1).count();
  g->m.tokens_predicted_seconds_total += res.predicted_ms / 1e3;

  if (rq.stream) {
    if (ctx->cancelled) {
      ++g->cancelled_streams;
      co_return false;
    }
    bool ok = co_await emit("");
    if (failed) {
      ok =
          ok && co_await write_chunk(*c, sse(stream_error_json("fake_llama_server: injected failure after " +
                                                               std::to_string(res.n_predicted) + " tokens")));
    } else {
      for (auto& e : stream_end(rq, res, g->k))
        ok = ok && co_await write_chunk(*c, maybe_break_event(std::move(e)));
    }
    ok = ok && co_await write_last_chunk(*c);
    if (!ok) {
      ++g->cancelled_streams;
      co_return false;
    }
    ++g->completed;
    co_return keep && !failed;
  }
  ++g->completed;
  std::string out = render_result(rq, res, g->k);
  if (g->k.malformed_json) out = break_json(out);
  co_return co_await send(*c, 200, std::move(out), keep);
}

// ---- embeddings and rerank: no slot is taken (llama-server batches them through its slots too, but no test
// needs that); the same load delay, API key, --fail-status and --malformed-json as inference, and held like
// inference by --hang-before-first-token / --hold-until-clients and paced by --prompt-tps, seeing the client
// leave meanwhile (`cancelled_embeddings`). Returns whether the connection stays.
asio::awaitable<bool> handle_pooled(std::shared_ptr<conn> c, bool rerank, bool oai, std::string_view path,
                                    std::string const& body, bool keep) {
  if (g->k.fail_status != 0)
    co_return co_await send(*c, g->k.fail_status, error_for_status(g->k.fail_status), keep);
  if (rerank ? !g->k.reranking() : !g->k.embedding) {
    std::string msg = rerank ? "This server does not support reranking. Start it with `--reranking`"
                             : "This server does not support embeddings. Start it with `--embeddings`";
    co_return co_await send(*c, 501, error_generic(501, msg, "not_supported_error"), keep);
  }
  std::string out;
  int n_tokens = 0;
  if (rerank) {
    auto parsed = parse_rerank(body, g->k);
    if (auto* r = std::get_if<reply>(&parsed))
      co_return co_await send(*c, r->status, std::move(r->body), keep);
    auto& rq = std::get<rerank_request>(parsed);
    remember(path, rq.body);
    ++g->rerank_requests;
    g->rerank_documents += rq.documents.size();
    n_tokens = rq.n_tokens;
    out = render_rerank(rq, g->k);
  } else {
    auto parsed = parse_embeddings(oai, body, g->k);
    if (auto* r = std::get_if<reply>(&parsed))
      co_return co_await send(*c, r->status, std::move(r->body), keep);
    auto& rq = std::get<embd_request>(parsed);
    remember(path, rq.body);
    ++g->embedding_requests;
    g->embedding_inputs += rq.inputs.size();
    n_tokens = rq.n_tokens;
    out = render_embeddings(rq, g->k);
  }

  ++g->inference_requests;
  ++g->active;
  g->max_concurrent = std::max(g->max_concurrent, g->active);
  std::uint64_t my_epoch = g->hold_epoch;
  if (g->k.hold_until_clients > 0 && g->active >= static_cast<std::uint64_t>(g->k.hold_until_clients)) {
    ++g->hold_epoch;
    notify_all();
  }
  auto ex = c->stream.get_executor();
  auto ctx = std::make_shared<infer_ctx>(ex);
  // Watch the client only while the answer waits (a watcher left on an answered request would linger).
  bool watching = g->k.prompt_tps > 0 || g->k.hang_before_first_token || g->k.hold_until_clients > 0;
  if (watching) asio::co_spawn(ex, watch_peer(c, ctx), asio::detached);
  auto stop_watching = [&] {
    if (!watching) return;
    watching = false;
    ctx->finished = true;
    boost::system::error_code ignored;
    c->stream.socket().cancel(ignored);  // ends the watcher's wait
  };
  scope_exit cleanup{[&] {
    --g->active;
    stop_watching();
    notify_all();
  }};
  if (g->k.prompt_tps > 0)
    co_await sleep_until(*ctx,
                         steady::now() + std::chrono::duration_cast<steady::duration>(
                                             std::chrono::duration<double>(n_tokens / g->k.prompt_tps)));
  while (!ctx->cancelled &&
         (g->k.hang_before_first_token || (g->k.hold_until_clients > 0 && g->hold_epoch == my_epoch)))
    co_await wait_event(ctx->wake);
  if (ctx->cancelled) {
    ++g->cancelled_embeddings;
    co_return false;
  }
  stop_watching();
  ++g->completed;
  if (g->k.malformed_json) out = break_json(out);
  co_return co_await send(*c, 200, std::move(out), keep);
}

// ---- other routes
std::string stats_json() {
  json::object o;
  json::object req;
  for (auto const& [p, n] : g->requests)
    req[p] = n;
  o["requests"] = std::move(req);
  o["inference_requests"] = g->inference_requests;
  o["active"] = g->active;
  o["queued"] = g->queue.size();
  o["processing"] = busy_slots();
  o["completed"] = g->completed;
  o["cancelled_streams"] = g->cancelled_streams;
  o["embedding_requests"] = g->embedding_requests;
  o["embedding_inputs"] = g->embedding_inputs;
  o["rerank_requests"] = g->rerank_requests;
  o["rerank_documents"] = g->rerank_documents;
  o["cancelled_embeddings"] = g->cancelled_embeddings;
  o["accepted_connections"] = g->accepted_connections;
  o["open_connections"] = g->open_connections;
  o["closed_connections"] = g->closed_connections;
  // Silent for 100 ms at least: not a client between its connect and its first request.
  o["silent_connections"] = std::count_if(
      g->silent.begin(), g->silent.end(),
      [now = steady::now()](auto const& e) { return now - e.second >= std::chrono::milliseconds(100); });
  o["max_concurrent"] = g->max_concurrent;
  o["max_processing"] = g->max_processing;
  o["inflight_tokens"] = g->inflight_tokens;
  o["max_inflight_tokens"] = g->max_inflight_tokens;
  o["loading"] = loading();
  o["hold_epoch"] = g->hold_epoch;
  json::array slots;
  for (auto const& s : g->slots) {
    json::object so;
    so["id"] = s.id;
    so["is_processing"] = s.busy;
    so["tasks"] = s.tasks;
    so["last_prompt"] = s.cache_text;
    so["last_prompt_tokens"] = s.n_prompt;
    so["last_cached_tokens"] = s.n_cache;
    so["n_decoded"] = s.n_decoded;
    slots.push_back(std::move(so));
  }
  o["slots"] = std::move(slots);
  json::array recent;
  for (auto const& r : g->recent)
    recent.push_back(r);
  o["recent"] = std::move(recent);
  o["knobs"] = knobs_json(g->k);
  return dump(o);
}

void reset_stats() {
  g->requests.clear();
  g->inference_requests = g->completed = g->cancelled_streams = g->accepted_connections = 0;
  g->closed_connections = 0;
  g->embedding_requests = g->embedding_inputs = g->rerank_requests = g->rerank_documents = 0;
  g->cancelled_embeddings = 0;
  g->max_concurrent = g->active;
  g->max_processing = static_cast<std::uint64_t>(busy_slots());
  g->max_inflight_tokens = g->inflight_tokens;
  g->recent.clear();
}

asio::awaitable<bool> handle_control(conn& c, std::string const& body, bool keep) {
  boost::system::error_code ec;
  json::value v = json::parse(body, ec);
  if (ec || !v.is_object())
    co_return co_await send(
        c, 400, error_generic(400, "control body must be a JSON object", "invalid_request_error"), keep);
  knobs next = g->k;
  control_actions acts;
  std::string err;
  if (!apply_control(v.get_object(), next, acts, err))
    co_return co_await send(c, 400, error_generic(400, err, "invalid_request_error"), keep);
  if (acts.slots_changed && busy_slots() > 0)
    co_return co_await send(
        c, 409, error_generic(409, "slots are busy; change ctx/parallel when idle", "conflict"), keep);
  g->k = std::move(next);
  if (acts.slots_changed) build_slots();
  if (acts.reset_slots)
    for (auto& s : g->slots)
      if (!s.busy) s = slot{.id = s.id};
  if (acts.reset_stats) reset_stats();
  if (acts.load_delay_changed)
    g->loading_until = steady::now() + std::chrono::milliseconds(g->k.load_delay_ms);
  if (acts.crash_timer_changed) arm_crash_timer();
  if (g->k.hold_until_clients > 0 && g->active >= static_cast<std::uint64_t>(g->k.hold_until_clients))
    ++g->hold_epoch;
  notify_all();
  bool stays = co_await send(c, 200, dump(knobs_json(g->k)), keep && !acts.crash_now);
  if (acts.crash_now) crash("crash_now");
  co_return stays;
}

bool authorized(http::request<http::string_body> const& req) {
  auto auth = req[http::field::authorization];
  if (auth.starts_with("Bearer ") && auth.substr(7) == g->k.api_key) return true;
  return req["X-Api-Key"] == g->k.api_key;
}

asio::awaitable<bool> handle(std::shared_ptr<conn> c, http::request<http::string_body>& req, bool keep) {
  std::string path(req.target().substr(0, req.target().find('?')));
  ++g->requests[path];
  bool get = req.method() == http::verb::get;
  bool post = req.method() == http::verb::post;
  if (g->k.verbose)
    std::fprintf(stderr, "request: %s %s\n", std::string(req.method_string()).c_str(), path.c_str());

  if (path == "/__stats" && get) co_return co_await send(*c, 200, stats_json(), keep);
  if (path == "/__control" && post) co_return co_await handle_control(*c, req.body(), keep);

  bool is_public = path == "/health" || path == "/v1/health" || path == "/models" || path == "/v1/models";
  if (!g->k.api_key.empty() && !is_public && !authorized(req))
    co_return co_await send(*c, 401, error_unauthorized(), keep);
  if ((path == "/health" || path == "/v1/health") && get) co_await sleep_for(g->k.slow_health_ms);
  if (loading()) co_return co_await send(*c, 503, error_loading(), keep);

  if ((path == "/health" || path == "/v1/health") && get)
    co_return co_await send(*c, 200, std::string(R"({"status":"ok"})"), keep);
  if (path == "/props" && get) co_return co_await send(*c, 200, render_props(g->k), keep);
  if ((path == "/models" || path == "/v1/models") && get)
    co_return co_await send(*c, 200, render_models(g->k), keep);
  if ((path == "/slots" || path == "/metrics") && get) {
    bool is_slots = path == "/slots";
    if (is_slots ? !g->k.slots_endpoint : !g->k.metrics) {
      std::string what = is_slots ? "slots" : "metrics";
      std::string msg = "This server does not support " + what + " endpoint. Start it with `--" + what + "`";
      co_return co_await send(*c, 501, error_generic(501, msg, "not_supported_error"), keep);
    }
    if (is_slots) co_await sleep_for(g->k.slow_slots_ms);
    if (g->k.slots_block_on_prefill) {
      // Like llama-server's task loop: these answers wait while a prompt is being processed.
      asio::steady_timer t(c->stream.get_executor());
      auto prefilling = [] {
        for (auto const& s : g->slots)
          if (s.prefilling) return true;
        return false;
      };
      while (prefilling())
        co_await wait_event(t);
    }
    if (is_slots) {
      std::vector<slot_view> views;
      int n_ctx = g->k.n_ctx_per_request();
      for (auto const& s : g->slots)
        views.push_back(slot_view{.id = s.id,
                                  .n_ctx = n_ctx,
                                  .is_processing = s.busy,
                                  .used = s.used,
                                  .id_task = s.id_task,
                                  .n_prompt = s.n_prompt,
                                  .n_prompt_processed = s.n_prompt_processed,
                                  .n_cache = s.n_cache,
                                  .n_decoded = s.n_decoded,
                                  .n_remain = s.n_remain,
                                  .params = s.params});
      co_return co_await send(*c, 200, render_slots(views), keep);
    }
    metrics_view m = g->m;
    m.requests_processing = busy_slots();
    m.requests_deferred = static_cast<double>(g->queue.size());
    std::pair<std::string_view, std::string> start{"Process-Start-Time-Unix", std::to_string(g->start_unix)};
    co_return co_await send(*c, 200, render_metrics(m), keep, "text/plain; version=0.0.4", &start);
  }
  if (post && (path == "/tokenize" || path == "/apply-template")) {
    reply r = path == "/tokenize" ? tokenize_reply(req.body()) : apply_template_reply(req.body());
    co_return co_await send(*c, r.status, std::move(r.body), keep);
  }
  if (post && (path == "/completion" || path == "/completions"))
    co_return co_await handle_inference(c, api::completion, path, req.body(), keep);
  if (post && path == "/v1/completions")
    co_return co_await handle_inference(c, api::text, path, req.body(), keep);
  if (post && (path == "/v1/chat/completions" || path == "/chat/completions"))
    co_return co_await handle_inference(c, api::chat, path, req.body(), keep);
  if (post && (path == "/v1/embeddings" || path == "/embeddings" || path == "/embedding"))
    co_return co_await handle_pooled(c, false, path == "/v1/embeddings", path, req.body(), keep);
  if (post && (path == "/v1/rerank" || path == "/rerank" || path == "/v1/reranking" || path == "/reranking"))
    co_return co_await handle_pooled(c, true, true, path, req.body(), keep);
  co_return co_await send(*c, 404, error_not_found(), keep);
}

asio::awaitable<void> session(tcp::socket sock) {
  auto c = std::make_shared<conn>(std::move(sock));
  ++g->accepted_connections;
  ++g->open_connections;
  auto const id = ++g->next_connection;
  g->silent.emplace(id, steady::now());
  beast::flat_buffer buf;
  int served = 0;
  for (;;) {
    http::request_parser<http::string_body> parser;
    parser.header_limit(64 * 1024);
    parser.body_limit(std::uint64_t{256} << 20);
    c->stream.expires_after(std::chrono::milliseconds(std::max<std::int64_t>(g->k.keep_alive_ms, 1)));
    auto [ec, n] = co_await http::async_read(c->stream, buf, parser, use_tuple);
    if (ec) break;
    c->stream.expires_never();
    if (served == 0) g->silent.erase(id);
    ++served;
    auto req = parser.release();
    bool keep = req.keep_alive() && served < 100;
    bool stays = co_await handle(c, req, keep);
    if (!stays) break;
  }
  boost::system::error_code ignored;
  c->stream.socket().shutdown(tcp::socket::shutdown_send, ignored);
  c->stream.socket().close(ignored);
  if (served == 0) g->silent.erase(id);
  --g->open_connections;
  ++g->closed_connections;
}

asio::awaitable<void> accept_loop(tcp::acceptor acceptor) {
  for (;;) {
    auto [ec, sock] = co_await acceptor.async_accept(use_tuple);
    if (ec) {
      if (ec == asio::error::operation_aborted) co_return;
      co_await sleep_for(10);  // e.g. EMFILE: do not spin
      continue;
    }
    boost::system::error_code ignored;
    sock.set_option(tcp::no_delay(true), ignored);
    asio::co_spawn(acceptor.get_executor(), session(std::move(sock)), asio::detached);
  }
}

}  // namespace
}  // namespace fake_llama

int main(int argc, char** argv) {
  using namespace fake_llama;
  std::signal(SIGPIPE, SIG_IGN);
  knobs k;
  std::string err;
  if (!parse_args(argc, argv, k, err)) {
    std::fprintf(stderr, "%s\n", err.c_str());
    return 1;
  }
  static server srv;
  g = &srv;
  srv.k = k;
  srv.start_unix = static_cast<std::int64_t>(std::time(nullptr));
  build_slots();

  // Signals first, so a SIGTERM during --start-delay-ms or right after "listening" is handled.
  asio::signal_set signals(srv.io, SIGINT, SIGTERM);
  std::function<void(boost::system::error_code, int)> on_signal = [&](boost::system::error_code e, int sig) {
    if (e) return;
    if (sig == SIGTERM && g->k.ignore_sigterm) {
      std::fprintf(stderr, "fake_llama_server: ignoring SIGTERM\n");
      signals.async_wait(on_signal);
      return;
    }
    std::fprintf(stderr, "fake_llama_server: received signal %d, shutting down\n", sig);
    std::fflush(stderr);
    ::_exit(0);
  };
  signals.async_wait(on_signal);

  if (k.start_delay_ms > 0) std::this_thread::sleep_for(std::chrono::milliseconds(k.start_delay_ms));

  boost::system::error_code ec;
  std::string host = k.host == "localhost" ? "127.0.0.1" : k.host;
  auto addr = asio::ip::make_address(host, ec);
  if (ec) {
    std::fprintf(stderr, "error: --host %s is not an IP address\n", k.host.c_str());
    return 1;
  }
  tcp::acceptor acceptor(srv.io);
  tcp::endpoint ep(addr, static_cast<unsigned short>(k.port));
  acceptor.open(ep.protocol(), ec);
  if (!ec) acceptor.set_option(tcp::acceptor::reuse_address(true), ec);
  if (!ec) acceptor.bind(ep, ec);
  if (!ec) acceptor.listen(asio::socket_base::max_listen_connections, ec);
  if (ec) {
    std::fprintf(stderr, "error: couldn't bind HTTP server socket, hostname: %s, port: %d: %s\n",
                 k.host.c_str(), k.port, ec.message().c_str());
    return 1;
  }
  srv.loading_until = steady::now() + std::chrono::milliseconds(k.load_delay_ms);
  arm_crash_timer();
  int port = acceptor.local_endpoint().port();
  asio::co_spawn(srv.io, accept_loop(std::move(acceptor)), asio::detached);

  std::printf("listening %d\n", port);
  std::fflush(stdout);
  std::fprintf(stderr, "main: server is listening on http://%s:%d - starting the main loop\n", k.host.c_str(),
               port);
  std::fprintf(stderr, "fake_llama_server: model %s alias %s n_ctx %d slots %d build %s\n",
               k.model_path.c_str(), k.alias.c_str(), k.n_ctx_per_request(), k.parallel,
               k.build_info.c_str());
  srv.io.run();
  return 0;
}
