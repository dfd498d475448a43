// Durable jobs through the real binary (spec/jobs.md): the routes, their refusals, callbacks signed and
// verified by a loopback receiver, key scoping, the TypeScript gateway import, restarts, metrics and health.
#include "callback_receiver.hpp"
#include "http_test_util.hpp"

#include <fstream>

namespace ray::itest {
namespace {

namespace json = boost::json;

constexpr char const* kSecret = "jobs-test-callback-secret-0123456789";

json::object jobs_config(json::object queue = {}, int latency_ms = 0, json::object extra = {}) {
  json::object q{{"enabled", true},
                 {"storageDir", "storage"},
                 {"maxJobs", 100},
                 {"minFreeStorageMiB", 0},
                 {"pollIntervalMs", 20},
                 {"callbackAllowPrivateNetwork", true},
                 {"callbackSecretEnv", "JOBS_TEST_SECRET"}};
  for (auto const& [k, v] : queue)
    q[k] = v;
  auto cfg = test_config({}, {{"latencyMs", latency_ms}});
  cfg["asyncQueue"] = q;
  cfg["telemetry"] = json::object{{"logLevel", "info"}};
  return with(cfg, extra);
}

std::vector<std::pair<std::string, std::string>> secret_env() {
  return {{"JOBS_TEST_SECRET", kSecret}};
}

struct client {
  std::uint16_t port;
  std::string auth{};
  rt::http_response call(std::string const& raw) {
    auto c = rt::raw_client(port);
    EXPECT_TRUE(c.send(raw));
    auto r = c.read_response(rt::in(kIo));
    EXPECT_TRUE(r) << c.last_error();
    return r ? *r : rt::http_response{};
  }
  rt::http_response submit(std::string const& body) { return call(post_json("/v1/jobs", body, auth)); }
  rt::http_response fetch(std::string const& target) { return call(get(target, auth)); }
  rt::http_response remove(std::string const& id) {
    return call(req("DELETE", "/v1/jobs/" + id, std::string(kHost) + auth));
  }
};

std::string id_of(rt::http_response const& r) {
  auto b = json_body(r);
  return b ? rt::string_field(*b, "id") : "";
}

// Waits for the server's log line saying a job's attempt finished with `outcome`.
bool wait_job(ray_server& s, std::string const& id, std::string const& outcome = "succeeded") {
  return s.process()
      .wait_for_json(
          [&](json::object const& o) {
            return rt::string_field(o, "message") == "job attempt finished" &&
                   rt::string_field(o, "jobId") == id && rt::string_field(o, "outcome") == outcome;
          },
          rt::in(20s))
      .has_value();
}

TEST(Jobs, DisabledQueueAnswers503OnEveryJobsRoute) {
  ray_server s(test_config());
  ASSERT_TRUE(s.wait_listening());
  client c{s.port()};
  EXPECT_TRUE(is_error(c.submit(R"({"input":"x"})"), 503, "async_queue_disabled"));
  EXPECT_TRUE(is_error(c.fetch("/v1/jobs"), 503, "async_queue_disabled"));
  EXPECT_TRUE(is_error(c.fetch("/v1/jobs/job_0123456789abcdef"), 503, "async_queue_disabled"));
  EXPECT_TRUE(is_error(c.remove("job_0123456789abcdef"), 503, "async_queue_disabled"));
}

TEST(Jobs, SubmitPollListAndCallBackWithAVerifiedSignature) {
  callback_receiver hook(kSecret);
  ray_server s(jobs_config(), {}, secret_env());
  ASSERT_TRUE(s.wait_listening());
  client c{s.port()};
  auto r = c.submit(R"({"input":"summarise this","maxTokens":16,"callbackUrl":")" + hook.url() + R"("})");
  ASSERT_EQ(r.status, 202) << r.describe();
  auto body = json_body(r);
  ASSERT_TRUE(body);
  auto const id = rt::string_field(*body, "id");
  EXPECT_TRUE(std::regex_match(id, std::regex("^job_[0-9a-f]{16}$"))) << id;
  EXPECT_EQ(rt::string_field(*body, "status"), "queued");
  EXPECT_FALSE(rt::string_field(*body, "createdAt").empty());
  EXPECT_EQ(rt::string_field(*body, "location"), "/v1/jobs/" + id);
  EXPECT_EQ(r.header("location"), "/v1/jobs/" + id);

  ASSERT_TRUE(wait_job(s, id)) << s.output_tail();
  auto got = c.fetch("/v1/jobs/" + id);
  ASSERT_EQ(got.status, 200) << got.describe();
  auto rec = json_body(got);
  ASSERT_TRUE(rec);
  EXPECT_EQ(rt::string_field(*rec, "status"), "succeeded");
  EXPECT_EQ(rec->at("attempts").as_int64(), 1);
  EXPECT_EQ(rec->at("request").at("input"), "summarise this");
  EXPECT_FALSE(rec->at("request").as_object().contains("callbackUrl"));
  EXPECT_NE(rt::string_field(rec->at("result").as_object(), "output").find("summarise this"),
            std::string::npos);
  EXPECT_FALSE(rt::string_field(*rec, "completedAt").empty());

  // The callback arrives, signed; the receiver recomputed the HMAC.
  ASSERT_TRUE(hook.wait_until([](auto const& v) { return !v.empty(); }, rt::in(20s))) << s.output_tail();
  auto cb = hook.received().front();
  EXPECT_EQ(cb.job_id, id);
  EXPECT_EQ(cb.status, "succeeded");
  EXPECT_TRUE(cb.signature_ok) << cb.headers["x-ray-signature"];
  EXPECT_EQ(cb.headers["content-type"], "application/json");
  // A tampered body does not verify against the same signature.
  auto tampered = cb.body;
  tampered[tampered.find("summarise")] = 'S';
  EXPECT_FALSE(
      signature_matches(kSecret, cb.headers["x-ray-timestamp"], tampered, cb.headers["x-ray-signature"]));

  auto listed = c.fetch("/v1/jobs?status=succeeded&limit=5");
  ASSERT_EQ(listed.status, 200) << listed.describe();
  auto list = json_body(listed);
  ASSERT_TRUE(list);
  ASSERT_EQ(list->at("data").as_array().size(), 1u);
  EXPECT_EQ(rt::string_field(list->at("data").as_array()[0].as_object(), "id"), id);
  EXPECT_EQ(c.fetch("/v1/jobs?status=queued").status, 200);
  EXPECT_EQ(metric(s.port(), "ray_jobs{status=\"succeeded\"}"), 1);
  EXPECT_EQ(metric(s.port(), "ray_job_attempts_total{outcome=\"succeeded\"}"), 1);
}

TEST(Jobs, BadInputIsRefusedBeforeAnythingIsStored) {
  ray_server s(jobs_config({{"callbackAllowPrivateNetwork", false}}), {}, secret_env());
  ASSERT_TRUE(s.wait_listening());
  client c{s.port()};
  EXPECT_TRUE(is_error(c.submit("{not json"), 400, "invalid_json"));
  EXPECT_TRUE(is_error(c.submit(R"({"input":42})"), 400, "invalid_request"));
  EXPECT_TRUE(
      is_error(c.submit(R"({"input":"x","callbackUrl":"http://127.0.0.1:9/hook"})"), 400, "invalid_request"));
  EXPECT_TRUE(
      is_error(c.submit(R"({"input":"x","callbackUrl":"ftp://example.com/"})"), 400, "invalid_request"));
  EXPECT_TRUE(is_error(c.submit(R"({"input":"x","idempotencyKey":""})"), 400, "invalid_request"));
  EXPECT_TRUE(is_error(c.fetch("/v1/jobs/bad%20id"), 400, "invalid_request"));
  EXPECT_TRUE(is_error(c.fetch("/v1/jobs/job_ffffffffffffffff"), 404, "job_not_found"));
  EXPECT_TRUE(is_error(c.fetch("/v1/jobs?status=done"), 400, "invalid_request"));
  EXPECT_TRUE(is_error(c.fetch("/v1/jobs?limit=0"), 400, "invalid_request"));
  EXPECT_TRUE(is_error(c.fetch("/v1/jobs?limit=100000"), 400, "invalid_request"));
  EXPECT_TRUE(is_error(c.remove("job_ffffffffffffffff"), 404, "job_not_found"));
  auto listed = json_body(c.fetch("/v1/jobs"));
  ASSERT_TRUE(listed);
  EXPECT_TRUE(listed->at("data").as_array().empty());
}

TEST(Jobs, IdempotencyKeyReturnsTheExistingJobAndCancelFollowsTheStates) {
  // One slow job holds the only dispatch slot, so the second stays queued.
  ray_server s(jobs_config({}, 3000, {{"telemetry", json::object{{"logLevel", "debug"}}}}), {}, secret_env());
  ASSERT_TRUE(s.wait_listening());
  client c{s.port()};
  auto first = c.submit(R"({"input":"slow one","idempotencyKey":"order-17"})");
  ASSERT_EQ(first.status, 202) << first.describe();
  auto again = c.submit(R"({"input":"slow one","idempotencyKey":"order-17"})");
  ASSERT_EQ(again.status, 200) << again.describe();
  EXPECT_EQ(id_of(again), id_of(first));
  EXPECT_EQ(rt::string_field(*json_body(again), "idempotencyKey"), "order-17");

  auto queued = c.submit(R"({"input":"waiting"})");
  ASSERT_EQ(queued.status, 202);
  auto del = c.remove(id_of(queued));
  ASSERT_EQ(del.status, 200) << del.describe();
  EXPECT_EQ(rt::string_field(*json_body(del), "status"), "cancelled");
  EXPECT_TRUE(is_error(c.remove(id_of(queued)), 409, "job_not_cancellable"));

  // The running one is aborted at once.
  ASSERT_TRUE(s.process().wait_for_json(
      [&](json::object const& o) {
        return rt::string_field(o, "message") == "job started" &&
               rt::string_field(o, "jobId") == id_of(first);
      },
      rt::in(kIo)))
      << s.output_tail();
  auto running = c.remove(id_of(first));
  ASSERT_EQ(running.status, 200) << running.describe();
  ASSERT_TRUE(wait_job(s, id_of(first), "cancelled")) << s.output_tail();
  auto rec = json_body(c.fetch("/v1/jobs/" + id_of(first)));
  EXPECT_EQ(rt::string_field(*rec, "status"), "cancelled");
  EXPECT_FALSE(rec->contains("result"));
}

TEST(Jobs, FullStoreAndLowDiskAre503WithRetryAfterAndReadinessSaysWhy) {
  {
    ray_server s(jobs_config({{"maxJobs", 2}}, 5000), {}, secret_env());
    ASSERT_TRUE(s.wait_listening());
    client c{s.port()};
    ASSERT_EQ(c.submit(R"({"input":"a"})").status, 202);
    ASSERT_EQ(c.submit(R"({"input":"b"})").status, 202);
    auto full = c.submit(R"({"input":"c"})");
    EXPECT_TRUE(is_error(full, 503, "async_queue_full"));
    EXPECT_TRUE(full.header("retry-after"));
    auto ready = c.fetch("/readyz");
    auto rb = json_body(ready);
    ASSERT_TRUE(rb);
    EXPECT_NE(json::serialize(rb->at("reasons")).find("async_queue_pressure"), std::string::npos)
        << ready.describe();
    EXPECT_TRUE(rb->at("pressure").at("asyncQueue").as_bool());
    auto health = json_body(c.fetch("/health"));
    ASSERT_TRUE(health);
    auto const& aq = health->at("asyncQueue").as_object();
    EXPECT_TRUE(aq.at("enabled").as_bool());
    EXPECT_EQ(aq.at("totalJobs").as_int64(), 2);
    EXPECT_EQ(aq.at("maxJobs").as_int64(), 2);
    EXPECT_TRUE(aq.at("availableStorageMiB").is_number());
  }
  {
    ray_server s(jobs_config({{"minFreeStorageMiB", 1048576}}), {}, secret_env());  // 1 TiB free needed
    ASSERT_TRUE(s.wait_listening());
    client c{s.port()};
    auto low = c.submit(R"({"input":"a"})");
    EXPECT_TRUE(is_error(low, 503, "async_queue_storage_low"));
    EXPECT_EQ(low.header("retry-after"), "30");
  }
}

TEST(Jobs, WithAuthAKeySeesOnlyItsOwnJobs) {
  auto cfg = jobs_config({}, 0, {{"auth", json::object{{"enabled", true}, {"apiKeyEnv", "JOBS_TEST_KEYS"}}}});
  auto env = secret_env();
  env.emplace_back("JOBS_TEST_KEYS", "key-alpha-0123456789,key-beta-0123456789");
  ray_server s(cfg, {}, env);
  ASSERT_TRUE(s.wait_listening());
  client a{s.port(), "Authorization: Bearer key-alpha-0123456789\r\n"};
  client b{s.port(), "Authorization: Bearer key-beta-0123456789\r\n"};
  client none{s.port()};
  EXPECT_TRUE(is_error(none.submit(R"({"input":"x"})"), 401, "unauthorized"));
  auto mine = a.submit(R"({"input":"alpha's"})");
  ASSERT_EQ(mine.status, 202);
  EXPECT_EQ(a.fetch("/v1/jobs/" + id_of(mine)).status, 200);
  EXPECT_TRUE(is_error(b.fetch("/v1/jobs/" + id_of(mine)), 404, "job_not_found"));
  EXPECT_TRUE(is_error(b.remove(id_of(mine)), 404, "job_not_found"));
  EXPECT_TRUE(json_body(b.fetch("/v1/jobs"))->at("data").as_array().empty());
  EXPECT_EQ(json_body(a.fetch("/v1/jobs"))->at("data").as_array().size(), 1u);
}

TEST(Jobs, JobsSurviveARestartAndTheTypeScriptGatewaysRecordsAreImported) {
  rt::temp_dir storage_parent;
  auto const storage = storage_parent.path() / "storage";
  std::filesystem::create_directories(storage);
  std::filesystem::copy(std::filesystem::path(RAY_TEST_FIXTURES) / "ts-jobs" / "jobs", storage / "jobs");
  // The fixture's finished jobs completed on 2026-12-06: keep them for a year so the default 24 h TTL does
  // not prune them before they are read (the test failed from 2026-12-07 on).
  auto cfg = jobs_config({{"storageDir", storage.string()}, {"completedTtlMs", 31'536'000'000}});
  std::string kept;
  {
    ray_server s(cfg, {}, secret_env());
    ASSERT_TRUE(s.wait_listening());
    auto imported = s.process().wait_for_json(
        [](json::object const& o) {
          return rt::string_field(o, "message") == "imported the TypeScript gateway's job records";
        },
        rt::in(kIo));
    ASSERT_TRUE(imported) << s.output_tail();
    EXPECT_EQ(imported->at("imported").as_int64(), 7);
    EXPECT_FALSE(std::filesystem::exists(storage / "jobs"));
    // The queued and running ones run.
    for (auto id : {"job_6b442c9e4d0d4604", "job_cce48881fb574d07", "job_341eda254e474b47"})
      ASSERT_TRUE(wait_job(s, id)) << id << "\n" << s.output_tail();
    client c{s.port()};
    auto old = json_body(c.fetch("/v1/jobs/job_5c5108e4c8c24dea"));
    ASSERT_TRUE(old);
    EXPECT_EQ(rt::string_field(*old, "status"), "succeeded");
    EXPECT_EQ(rt::string_field(*old, "completedAt"), "2026-12-06T12:50:53.141Z");
    EXPECT_EQ(rt::string_field(old->at("callback").as_object(), "status"), "failed");
    auto r = c.submit(R"({"input":"kept across restarts"})");
    ASSERT_EQ(r.status, 202);
    kept = id_of(r);
    ASSERT_TRUE(wait_job(s, kept));
    s.process().signal(SIGTERM);
    ASSERT_EQ(s.process().wait_exit(rt::in(kIo)), 0);
  }
  ray_server again(cfg, {}, secret_env());
  ASSERT_TRUE(again.wait_listening());
  client c{again.port()};
  auto rec = json_body(c.fetch("/v1/jobs/" + kept));
  ASSERT_TRUE(rec);
  EXPECT_EQ(rt::string_field(*rec, "status"), "succeeded");
  EXPECT_EQ(json_body(c.fetch("/v1/jobs?limit=500"))->at("data").as_array().size(), 8u);

  // The operator's view of the same store, while the server runs.
  auto cli = [&](std::vector<std::string> args) {
    args.insert(args.begin(), "jobs");
    rt::ray_process p(rt::spawn_options{.binary = ray_binary(), .args = std::move(args)});
    auto code = p.wait_exit(rt::in(kIo));
    return std::pair{code.value_or(-1), p.stdout_text() + p.stderr_text()};
  };
  auto [list_code, list_out] = cli({"list", "--storage-dir", storage.string(), "--json"});
  ASSERT_EQ(list_code, 0) << list_out;
  auto listed = json::parse(list_out);
  EXPECT_EQ(listed.as_array().size(), 8u);
  auto [show_code, show_out] = cli({"show", kept, "--storage-dir", storage.string()});
  EXPECT_EQ(show_code, 0) << show_out;
  EXPECT_NE(show_out.find("kept across restarts"), std::string::npos) << show_out;
  auto [cancel_code, cancel_out] = cli({"cancel", kept, "--storage-dir", storage.string()});
  EXPECT_EQ(cancel_code, 1) << cancel_out;  // already succeeded
  EXPECT_NE(cancel_out.find("already succeeded"), std::string::npos) << cancel_out;
  auto [missing_code, missing_out] = cli({"show", "job_ffffffffffffffff", "--storage-dir", storage.string()});
  EXPECT_EQ(missing_code, 1) << missing_out;
}

TEST(Jobs, AMissingCallbackSecretRefusesToStart) {
  ray_server s(jobs_config());  // JOBS_TEST_SECRET not set
  EXPECT_EQ(s.process().wait_exit(rt::in(kIo)), 2);
  EXPECT_NE(s.process().stderr_text().find("JOBS_TEST_SECRET"), std::string::npos) << s.output_tail();
}

}  // namespace
}  // namespace ray::itest
