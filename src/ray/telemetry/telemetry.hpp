// ray::telemetry — what Ray tells operators: the metrics registry (Prometheus text 0.0.4 and the JSON view of
// GET /metrics) and the JSON-lines logger with its bounded asynchronous sink. No Asio; safe from any thread.
//
//   ray::telemetry::registry metrics;
//   auto requests = metrics.add_counter("ray_requests_total", "Completed HTTP requests.", {"route", "code"},
//                                       {.json_name = "requests.total"});
//   auto ok = requests.with({"/v1/infer", "200"});  // lookup once, keep the handle
//   ok.inc();                                        // hot path: one relaxed atomic add
//
//   ray::telemetry::logger log("ray-gateway", ray::telemetry::level::info);
//   log.info("gateway listening", {{"address", "127.0.0.1:3000"}});
//
// See logger.hpp, metrics.hpp and reexport.hpp (llama-server's series under Ray's names) for the contracts.
#pragma once

#include "ray/telemetry/logger.hpp"
#include "ray/telemetry/metrics.hpp"
#include "ray/telemetry/reexport.hpp"

#include <boost/json/value.hpp>

#include <string>

namespace ray::telemetry {

// Compact JSON text of `v` as every response and log line writes it: integral doubles as integers, other
// doubles in the shortest round-trip form (never "1E2"-style exponents for ordinary values), NaN/±inf as
// null, ill-formed UTF-8 replaced by U+FFFD.
std::string to_json(boost::json::value const& v);

}  // namespace ray::telemetry
