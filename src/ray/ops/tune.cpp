// `ray tune`: the memory model of spec/operations.md. The arithmetic is gguf::estimate_memory (weights + KV +
// cache RAM + compute + headroom, the same sum the supervisor checks before it spawns llama-server); this
// file chooses the numbers that go into it and says why, one line each.
#include "ray/backend/flags.hpp"
#include "ray/ops/ops.hpp"

#include <boost/json/serialize.hpp>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <ostream>
#include <sstream>

namespace ray::ops {

namespace {

constexpr std::uint64_t mib = gguf::mib;

std::string mib_text(std::uint64_t bytes) {
  return std::to_string((bytes + mib - 1) / mib) + " MiB";
}

error invalid(std::string msg) {
  return error{errc::invalid_request, std::move(msg)};
}

std::string kv_type_of(config::launch_profile const& l) {
  for (std::size_t i = 0; i + 1 < l.extra_args.size(); ++i)
    if (l.extra_args[i] == "--cache-type-k" || l.extra_args[i] == "-ctk") return l.extra_args[i + 1];
  return "f16";
}

struct attempt {
  unsigned parallel;
  std::uint64_t per_slot;
  std::string kv_type;
};

}  // namespace

// What the kernel, sshd, journald and the page cache of everything else keep: a 1 GiB VPS still boots with
// 256 MiB; past 1 GiB the rest scales with the model, not the OS.
std::uint64_t os_reserve_bytes(std::uint64_t ram) noexcept {
  return std::clamp<std::uint64_t>(ram / 100 * 8, 256 * mib, 1024 * mib);
}

// Ray is one thread; what grows is bounded by the config: the result cache, each connection's read buffer
// (header + body limit + 8 KiB) and one stream buffer per request it admits or queues.
std::uint64_t ray_footprint_bytes(config::config const& c) noexcept {
  std::uint64_t const per_conn =
      std::uint64_t{c.server.max_header_bytes} + c.server.request_body_limit_bytes + 8192;
  std::uint64_t const streams = std::uint64_t{c.scheduler.concurrency} + c.scheduler.max_queue;
  std::uint64_t const sum = 64 * mib + c.cache.max_bytes + c.server.max_connections * per_conn +
                            streams * c.server.stream_buffer_bytes;
  std::uint64_t const step = 16 * mib;
  return std::max<std::uint64_t>(128 * mib, (sum + step - 1) / step * step);
}

result<gguf::memory_estimate> launch_estimate(gguf::gguf_info const& info, config::launch_profile const& l) {
  auto const kv = kv_type_of(l);
  auto kv_bytes = gguf::kv_type_bytes(kv);
  if (!kv_bytes) return invalid("launchProfile.extraArgs: unknown KV cache type " + kv);
  std::uint64_t const cells = l.enable_unified_kv || l.parallel == 0 ? l.ctx_size : l.ctx_size / l.parallel;
  gguf::memory_request req;
  req.ctx_size = l.ctx_size;
  req.kv_type_bytes = *kv_bytes;
  req.cache_ram_mib = l.cache_ram_mib > 0 ? static_cast<std::uint64_t>(l.cache_ram_mib) : 0;
  req.compute_bytes = gguf::compute_buffer_bytes(info.model, l.ubatch_size, cells, kv != "f16");
  return gguf::estimate_memory(info, req);
}

result<box> read_box(std::string const& system_root, std::optional<std::uint64_t> ram_mib,
                     std::optional<unsigned> cores) {
  auto const host = system::read_host_resources(system_root);
  box b;
  if (ram_mib) {
    b.ram_bytes = *ram_mib * mib;
    b.ram_source = "--ram-mib";
  } else if (auto ram = host.ram_bytes()) {
    b.ram_bytes = *ram;
    b.ram_source = host.ram_source();
  } else {
    return invalid("cannot read the box's memory (no " + system_root +
                   "proc/meminfo, no cgroup limit): give --ram-mib");
  }
  if (cores) {
    b.cores = *cores;
    b.cores_source = "--cores";
  } else {
    b.cores = std::max(1u, host.cores());
    b.cores_source = host.cgroup_cpus && static_cast<double>(host.online_cpus) > *host.cgroup_cpus
                         ? "cgroup cpu.max"
                         : (host.online_cpus > 0 ? "CPU affinity" : "unknown (assumed 1)");
  }
  b.swap = host.swap_total.value_or(0) > 0;
  return b;
}

result<tune_plan> plan(std::string const& model_path, gguf::gguf_info const& info, box const& machine,
                       tune_inputs const& in) {
  auto base = config::profile_defaults(in.profile);
  if (!base) return invalid("--profile: " + base.error().message);
  if (machine.ram_bytes == 0) return invalid("--ram-mib: the box has no memory");
  if (machine.cores == 0) return invalid("--cores: must be at least 1");
  if (in.parallel && (*in.parallel < 1 || *in.parallel > 8))
    return invalid("--parallel: " + std::to_string(*in.parallel) + " is outside 1–8 (scheduler.concurrency)");
  if (in.ctx && (*in.ctx < 64 || *in.ctx > 131'072))
    return invalid("--ctx: " + std::to_string(*in.ctx) + " is outside 64–131072 tokens per slot");

  tune_plan p;
  p.model_path = model_path;
  p.model = info.model;
  p.machine = machine;
  auto& m = p.memory;
  m.ram = machine.ram_bytes;
  m.os_reserve = os_reserve_bytes(m.ram);
  m.ray = ray_footprint_bytes(*base);
  if (m.ram <= m.os_reserve + m.ray)
    return invalid("the model cannot fit: the box has " + mib_text(m.ram) + " (" + machine.ram_source +
                   "), less than the OS reserve " + mib_text(m.os_reserve) + " + Ray " + mib_text(m.ray));
  m.backend_budget = m.ram - m.os_reserve - m.ray;

  std::uint64_t const trained = info.model.context_length.value_or(4096);
  std::uint64_t const wanted = in.ctx ? *in.ctx : std::clamp<std::uint64_t>(trained, 256, 4096);
  unsigned const parallel0 = in.parallel ? *in.parallel : std::clamp(machine.cores, 1u, 4u);
  std::uint32_t const ubatch = machine.cores <= 2 ? 128 : 256;

  // Candidates, best first: f16 KV at the wanted context (halving down to 2048 per slot), then q8_0 KV (half
  // the bytes, a small quality cost), then shorter contexts, then one slot. An explicit --ctx or --parallel
  // is never changed: the plan fails instead.
  std::vector<attempt> tries;
  auto halvings = [&](unsigned par, std::string const& kv, std::uint64_t floor) {
    for (std::uint64_t c = wanted; c >= std::min(wanted, floor); c /= 2) {
      tries.push_back({par, c, kv});
      if (in.ctx || c / 2 < 64) break;
    }
  };
  halvings(parallel0, "f16", 2048);
  halvings(parallel0, "q8_0", 2048);
  halvings(parallel0, "q8_0", 256);
  if (!in.parallel && parallel0 > 1) halvings(1, "q8_0", 256);

  std::optional<gguf::memory_estimate> chosen;
  attempt pick{};
  std::string last_refusal;
  for (auto const& t : tries) {
    auto const kv_bytes = *gguf::kv_type_bytes(t.kv_type);
    gguf::memory_request req;
    req.ctx_size = t.per_slot * t.parallel;
    req.kv_type_bytes = kv_bytes;
    req.cache_ram_mib = 0;
    req.compute_bytes = gguf::compute_buffer_bytes(info.model, std::min<std::uint64_t>(ubatch, t.per_slot),
                                                   t.per_slot, t.kv_type != "f16");
    auto e = gguf::estimate_memory(info, req);
    if (!e) return invalid("cannot plan for " + model_path + ": " + e.error().message);
    if (gguf::fits(*e, m.backend_budget)) {
      chosen = *e;
      pick = t;
      break;
    }
    if (last_refusal.empty()) last_refusal = gguf::refusal_message(*e, m.backend_budget);
  }
  if (!chosen)
    return invalid("the model cannot fit: with " + std::to_string(parallel0) + " slot(s) of " +
                   std::to_string(wanted) + " tokens it " + last_refusal + "; this box gives llama-server " +
                   mib_text(m.backend_budget) + " (" + mib_text(m.ram) + " from " + machine.ram_source +
                   " − OS reserve " + mib_text(m.os_reserve) + " − Ray " + mib_text(m.ray) +
                   "). Use a smaller quantization or model, a shorter --ctx, or a bigger box");

  // Prompt cache (llama-server --cache-ram): a quarter of what is left, in 64 MiB steps, at most 1 GiB —
  // always explicit, never llama-server's 8 GiB default.
  std::uint64_t const spare = m.backend_budget - chosen->total;
  std::uint64_t cache_mib = std::min<std::uint64_t>(1024, spare / 4 / mib * 10 / 11 / 64 * 64);
  gguf::memory_request req;
  req.ctx_size = pick.per_slot * pick.parallel;
  req.kv_type_bytes = *gguf::kv_type_bytes(pick.kv_type);
  req.cache_ram_mib = cache_mib;
  req.compute_bytes = chosen->compute_bytes;
  m.backend = *gguf::estimate_memory(info, req);
  while (!gguf::fits(m.backend, m.backend_budget) && req.cache_ram_mib >= 64) {
    req.cache_ram_mib -= 64;
    m.backend = *gguf::estimate_memory(info, req);
  }
  cache_mib = req.cache_ram_mib;

  p.kv_type = pick.kv_type;
  p.kv_bytes_per_token = *gguf::kv_cache_bytes_per_token(info.model, req.kv_type_bytes);
  p.ctx_per_slot = pick.per_slot;
  // mlock pins the weights so a burst elsewhere cannot page them out (a multi-second stall on the next
  // token); only when a quarter of the budget stays free, because locked pages cannot be reclaimed.
  p.mlock = m.headroom() >= m.backend_budget / 4;

  auto& l = p.launch;
  l = base->model.adapter.launch.value_or(config::launch_profile{});
  l.model_path = std::filesystem::absolute(model_path).lexically_normal().string();
  std::string alias = std::filesystem::path(model_path).stem().string();
  if (alias.empty()) alias = "model";
  l.alias = alias;
  l.ctx_size = static_cast<std::uint32_t>(pick.per_slot * pick.parallel);
  l.parallel = pick.parallel;
  l.threads = machine.cores <= 2 ? machine.cores : machine.cores - 1;
  l.threads_batch = machine.cores;
  l.ubatch_size = static_cast<std::uint32_t>(std::min<std::uint64_t>(ubatch, pick.per_slot));
  l.batch_size = static_cast<std::uint32_t>(std::min<std::uint64_t>(2 * l.ubatch_size, l.ctx_size));
  l.cache_ram_mib = static_cast<std::int64_t>(cache_mib);
  l.enable_unified_kv = false;
  l.extra_args.clear();
  if (p.kv_type != "f16")
    l.extra_args.insert(l.extra_args.end(), {"--cache-type-k", p.kv_type, "--cache-type-v", p.kv_type});
  if (p.mlock) l.extra_args.push_back("--mlock");
  // The same sum `deploy render` and `doctor` compute from the config this plan writes.
  if (auto e = launch_estimate(info, l)) m.backend = *e;

  auto& s = p.scheduler;
  s = base->scheduler;
  s.concurrency = std::min(pick.parallel, 8u);
  s.max_inflight_tokens = l.ctx_size;
  s.max_queue = std::clamp(4 * pick.parallel, std::max(8u, s.affinity_lookahead), 512u);
  s.max_queue = std::max(s.max_queue, base->graceful_degradation.queue_depth_threshold + 1);
  std::uint64_t const queued = std::min<std::uint64_t>(4ull * l.ctx_size, 4'000'000'000ull);
  s.max_queued_tokens = static_cast<std::uint32_t>(queued);
  p.context_window = static_cast<std::uint32_t>(
      std::clamp<std::uint64_t>(std::max<std::uint64_t>(trained, l.ctx_size), 1, 131'072));
  p.max_output_tokens = static_cast<std::uint32_t>(std::clamp<std::uint64_t>(
      std::min<std::uint64_t>(base->model.max_output_tokens, pick.per_slot / 2), 1, p.context_window));

  // --- reasons, in output order
  auto add = [&](std::string key, std::string value, std::string why) {
    p.reasons.push_back({std::move(key), std::move(value), std::move(why)});
  };
  add("box.ram", mib_text(m.ram), "from " + machine.ram_source);
  add("memory.osReserve", mib_text(m.os_reserve),
      "8 % of the box (at least 256 MiB, at most 1 GiB) for the kernel, sshd, journald and page cache");
  add("memory.ray", mib_text(m.ray),
      "Ray: 64 MiB + result cache + connection buffers + one stream buffer per admitted or queued request");
  add("memory.llamaServer", mib_text(m.backend_budget), "what is left for llama-server: RAM − reserve − Ray");
  add("memory.weights", mib_text(m.backend.weights_bytes),
      "the tensor bytes of the GGUF (mmapped, resident)");
  add("kvBytesPerToken", std::to_string(p.kv_bytes_per_token),
      "n_layer " + std::to_string(info.model.block_count.value_or(0)) + " × n_head_kv " +
          std::to_string(info.model.head_count_kv.value_or(0)) + " × (K " +
          std::to_string(info.model.key_length.value_or(0)) + " + V " +
          std::to_string(info.model.value_length.value_or(0)) + ") × " +
          (p.kv_type == "f16" ? std::string("2 bytes (f16)") : std::string("34/32 bytes (q8_0)")));
  add("memory.kv", mib_text(m.backend.kv_bytes),
      std::to_string(p.kv_bytes_per_token) + " bytes × " + std::to_string(l.ctx_size) + " cells");
  add("memory.compute", mib_text(m.backend.compute_bytes),
      "logits, attention scores and activations of one " + std::to_string(l.ubatch_size) +
          "-token micro-batch");
  add("memory.cacheRam", mib_text(m.backend.cache_ram_bytes),
      "the prompt cache (--cache-ram), bounded so it cannot grow into an OOM kill");
  add("memory.headroom", mib_text(m.backend.headroom_bytes),
      "allocator slack: 10 % of the above, at least 256 MiB");
  add("memory.free", mib_text(m.headroom()), "left unused in llama-server's share");
  add("launchProfile.parallel", std::to_string(l.parallel),
      in.parallel ? "--parallel"
                  : (pick.parallel == parallel0
                         ? "one slot per core (at most 4): more slots than cores add latency, not throughput"
                         : "one slot: two did not fit at any context"));
  add("launchProfile.ctxSize", std::to_string(l.ctx_size),
      std::to_string(pick.per_slot) + " tokens per slot × " + std::to_string(l.parallel) + " slots" +
          (in.ctx                    ? " (--ctx)"
           : pick.per_slot == wanted ? " (the model's training context, at most 4096)"
                                     : " (shortened until the KV cache fit)"));
  add("kvType", p.kv_type,
      p.kv_type == "f16"
          ? "f16 KV fits: no quantization loss"
          : "q8_0 KV: f16 did not fit at 2048 tokens per slot; half the bytes, small quality cost");
  add("launchProfile.threads", std::to_string(l.threads),
      machine.cores <= 2 ? "every core (" + machine.cores_source + "): Ray needs a fraction of one"
                         : "cores − 1 (" + machine.cores_source + "), one left for Ray and the system");
  add("launchProfile.threadsBatch", std::to_string(*l.threads_batch), "prompt processing uses every core");
  add("launchProfile.ubatchSize", std::to_string(l.ubatch_size),
      machine.cores <= 2 ? "128 on ≤ 2 cores: smaller compute buffers, prefill interleaves with generation"
                         : "256: prefill throughput on more cores");
  add("launchProfile.batchSize", std::to_string(l.batch_size), "2 × ubatch");
  add("launchProfile.cacheRamMiB", std::to_string(l.cache_ram_mib),
      "a quarter of the spare memory in 64 MiB steps, at most 1024 (llama-server's default is 8 GiB)");
  add("mlock", p.mlock ? "on" : "off",
      p.mlock ? "a quarter of the budget stays free: pin the weights (the unit sets LimitMEMLOCK=infinity)"
              : "too little slack to lock the weights; they stay mmapped and reclaimable");
  add("scheduler.concurrency", std::to_string(s.concurrency), "one request per llama-server slot");
  add("scheduler.maxInflightTokens", std::to_string(s.max_inflight_tokens),
      "the whole KV pool (ctxSize): admitted prompts + outputs never overcommit it");
  add("scheduler.maxQueue", std::to_string(s.max_queue), "4 waiting per slot (at least 8)");
  add("scheduler.maxQueuedTokens", std::to_string(s.max_queued_tokens), "4 × the KV pool waiting at most");
  add("model.maxOutputTokens", std::to_string(p.max_output_tokens),
      "the profile's default, at most half a slot's context");

  // --- command line and config fragment
  std::vector<std::string> cmd{base->model.adapter.launch ? base->model.adapter.launch->binary_path
                                                          : std::string("/usr/local/bin/llama-server")};
  for (auto& a : backend::llama_server_args(l))
    cmd.push_back(std::move(a));
  p.command_line = std::move(cmd);

  namespace json = boost::json;
  json::array extra;
  for (auto const& a : l.extra_args)
    extra.push_back(json::value(a));
  json::object launch{{"modelPath", l.model_path},      {"alias", l.alias},
                      {"ctxSize", l.ctx_size},          {"parallel", l.parallel},
                      {"threads", l.threads},           {"threadsBatch", *l.threads_batch},
                      {"batchSize", l.batch_size},      {"ubatchSize", l.ubatch_size},
                      {"cacheRamMiB", l.cache_ram_mib}, {"enableUnifiedKv", false},
                      {"extraArgs", std::move(extra)}};
  p.config_fragment = json::object{
      {"profile", in.profile},
      {"model",
       json::object{{"id", alias},
                    {"contextWindow", p.context_window},
                    {"maxOutputTokens", p.max_output_tokens},
                    {"adapter", json::object{{"kind", "llama.cpp"},
                                             {"modelRef", alias},
                                             {"baseUrl", "http://" + l.host + ":" + std::to_string(l.port)},
                                             {"launchProfile", std::move(launch)}}}}},
      {"scheduler", json::object{{"concurrency", s.concurrency},
                                 {"maxQueue", s.max_queue},
                                 {"maxInflightTokens", s.max_inflight_tokens},
                                 {"maxQueuedTokens", s.max_queued_tokens}}}};

  // The fragment must load as a config file: a plan that `ray config validate` refuses is a bug here.
  auto check = config::load_from_text(json::serialize(p.config_fragment), {}, {});
  if (!check)
    return error{errc::invalid_request, "the planned config does not validate: " + check.error().message};
  return p;
}

std::string describe(tune_plan const& p) {
  std::ostringstream o;
  auto const& m = p.memory;
  o << "ray tune: " << p.model_path << " (" << (p.model.architecture.empty() ? "?" : p.model.architecture)
    << ", " << (p.model.file_type_name.empty() ? "?" : p.model.file_type_name) << ") on " << mib_text(m.ram)
    << ", " << p.machine.cores << " core(s)\n\n";
  o << "memory: llama-server needs " << mib_text(m.backend.total) << " of its " << mib_text(m.backend_budget)
    << " (box " << mib_text(m.ram) << " − OS " << mib_text(m.os_reserve) << " − Ray " << mib_text(m.ray)
    << "); " << mib_text(m.headroom()) << " to spare\n\n";
  std::size_t key_w = 0, val_w = 0;
  for (auto const& r : p.reasons) {
    key_w = std::max(key_w, r.key.size());
    val_w = std::max(val_w, r.value.size());
  }
  for (auto const& r : p.reasons)
    o << "  " << r.key << std::string(key_w - r.key.size() + 2, ' ') << r.value
      << std::string(val_w - r.value.size() + 2, ' ') << r.why << "\n";
  o << "\nllama-server command line (launchProfile, the flags the supervisor passes):\n  "
    << backend::shell_command(p.command_line) << "\n";
  o << "\nconfig fragment (save as ray.json; `ray config validate ray.json` accepts it):\n"
    << boost::json::serialize(p.config_fragment) << "\n";
  return o.str();
}

boost::json::object to_json(tune_plan const& p) {
  namespace json = boost::json;
  auto const& m = p.memory;
  json::array reasons;
  for (auto const& r : p.reasons)
    reasons.push_back(json::object{{"key", r.key}, {"value", r.value}, {"why", r.why}});
  json::array cmd;
  for (auto const& a : p.command_line)
    cmd.push_back(json::value(a));
  return json::object{{"model", p.model_path},
                      {"box", json::object{{"ramBytes", p.machine.ram_bytes},
                                           {"ramSource", p.machine.ram_source},
                                           {"cores", p.machine.cores},
                                           {"coresSource", p.machine.cores_source}}},
                      {"memory", json::object{{"ramBytes", m.ram},
                                              {"osReserveBytes", m.os_reserve},
                                              {"rayBytes", m.ray},
                                              {"llamaServerBudgetBytes", m.backend_budget},
                                              {"weightsBytes", m.backend.weights_bytes},
                                              {"kvBytes", m.backend.kv_bytes},
                                              {"computeBytes", m.backend.compute_bytes},
                                              {"cacheRamBytes", m.backend.cache_ram_bytes},
                                              {"headroomBytes", m.backend.headroom_bytes},
                                              {"llamaServerTotalBytes", m.backend.total},
                                              {"freeBytes", m.headroom()}}},
                      {"kvBytesPerToken", p.kv_bytes_per_token},
                      {"kvType", p.kv_type},
                      {"ctxPerSlot", p.ctx_per_slot},
                      {"mlock", p.mlock},
                      {"reasons", std::move(reasons)},
                      {"commandLine", std::move(cmd)},
                      {"commandLineText", backend::shell_command(p.command_line)},
                      {"config", p.config_fragment}};
}

int tune_command(tune_options const& o, std::ostream& out, std::ostream& err) {
  auto info = gguf::read_header_file(o.model);
  if (!info) {
    err << "ray tune: --model " << o.model << ": " << info.error().message << "\n";
    return 2;
  }
  auto machine = read_box(o.system_root, o.ram_mib, o.cores);
  if (!machine) {
    err << "ray tune: " << machine.error().message << "\n";
    return 2;
  }
  auto p = plan(o.model, *info, *machine, o.inputs);
  if (!p) {
    err << "ray tune: " << p.error().message << "\n";
    return p.error().message.starts_with("the model cannot fit") ? 1 : 2;
  }
  if (!o.binary.empty()) p->command_line.front() = o.binary;
  if (o.json)
    out << boost::json::serialize(to_json(*p)) << "\n";
  else
    out << describe(*p);
  return 0;
}

}  // namespace ray::ops
