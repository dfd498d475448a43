#!/usr/bin/env bash
# Durable jobs, measured (issue 13): writes bench/results/jobs.md.
#   1. jobs_bench: the SQLite store alone, group commit on vs off (alternating rounds, medians of 3).
#   2. POST /v1/jobs through the Release `ray` with wrk: accepted jobs/s and the 202 latency (p50/p99).
#   3. Interactive /v1/infer p99 with no jobs vs while 1000 jobs drain (alternating rounds, medians of 3).
# Knobs: RAY_BENCH_BUILD_DIR (build/release), RAY_BENCH_DOUBLE_DIR (the test tree holding the llama-server
# double: build/asan, else build/debug), JOBS_BENCH_SECONDS (5), JOBS_BENCH_ROUNDS (3).
set -euo pipefail
cd "$(dirname "$0")/.."
build=${RAY_BENCH_BUILD_DIR:-build/release}
secs=${JOBS_BENCH_SECONDS:-5}
rounds=${JOBS_BENCH_ROUNDS:-3}
out=bench/results/jobs.md
work=$(mktemp -d /var/tmp/ray-jobs-bench.XXXXXX)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT

[ -f "$build/build.ninja" ] || cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DRAY_BUILD_TESTS=OFF >/dev/null
cmake --build "$build" --target ray jobs_bench >/dev/null
ray="$build/ray"
double_dir=${RAY_BENCH_DOUBLE_DIR:-$([ -f build/asan/build.ninja ] && echo build/asan || echo build/debug)}
[ -f "$double_dir/build.ninja" ] || cmake -S . -B "$double_dir" -G Ninja -DCMAKE_BUILD_TYPE=Debug -DRAY_BUILD_BENCH=OFF >/dev/null
cmake --build "$double_dir" --target fake_llama_server >/dev/null
fake_bin=$(find "$double_dir" -name fake_llama_server -type f -perm -u+x | head -1)

# start_ray NAME CONFIG_JSON -> sets $port
start_ray() {
  local name=$1 cfg=$2
  mkdir -p "$work/$name"
  echo "$cfg" >"$work/$name/ray.json"
  (cd "$work/$name" && exec "$OLDPWD/$ray" serve --config ray.json --port 0 >log 2>&1) &
  pids+=($!)
  for _ in $(seq 1 200); do
    port=$(grep -o '"port":[0-9]*' "$work/$name/log" 2>/dev/null | head -1 | cut -d: -f2 || true)
    [ -n "${port:-}" ] && return 0
    sleep 0.05
  done
  echo "ray did not start: $(cat "$work/$name/log")" >&2
  exit 1
}
stop_ray() {
  local p=${pids[-1]}
  kill "$p" && wait "$p" 2>/dev/null || true
  unset 'pids[-1]'
}
lua="$work/post.lua"

# wrk's latency percentiles in ms (--latency): prints "p50 p99 rps".
wrk_stats() {
  awk '
    function ms(v) { if (v ~ /us$/) return v / 1000; if (v ~ /ms$/) return v + 0; if (v ~ /s$/) return v * 1000; return v }
    $1 == "50%" { p50 = ms($2) } $1 == "99%" { p99 = ms($2) } $1 == "Requests/sec:" { rps = $2 }
    END { printf "%.3f %.3f %.0f\n", p50, p99, rps }'
}
median() { sort -g | awk '{ a[NR] = $1 } END { print a[int((NR + 1) / 2)] }'; }

echo "jobs bench: store alone (group commit on/off)" >&2
store_table=$("$build/bench/jobs_bench" --seconds 2 --rounds "$rounds" --dir "$work/store" --concurrency 1 --concurrency 16 --concurrency 64)

echo "jobs bench: POST /v1/jobs through ray" >&2
cat >"$lua" <<'EOF'
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
counter = 0
request = function()
  counter = counter + 1
  return wrk.format(nil, "/v1/jobs", nil, '{"input":"job number ' .. counter .. ' ' .. math.random(1e9) .. '","maxTokens":8}')
end
EOF
submit_rows=""
for c in 1 16; do
  p50s=() p99s=() rpss=()
  for r in $(seq 1 "$rounds"); do
    start_ray "submit-$c-$r" '{"profile":"tiny","model":{"adapter":{"kind":"mock","latencyMs":0}},"cache":{"enabled":false},
      "asyncQueue":{"enabled":true,"storageDir":"store","maxJobs":100000,"minFreeStorageMiB":0,"pollIntervalMs":50},
      "telemetry":{"logLevel":"warn"}}'
    read -r p50 p99 rps < <(wrk -t1 -c"$c" -d"${secs}s" --latency -s "$lua" "http://127.0.0.1:$port" | wrk_stats)
    p50s+=("$p50") p99s+=("$p99") rpss+=("$rps")
    stop_ray
  done
  submit_rows+="| $c | $(printf '%s\n' "${rpss[@]}" | median) | $(printf '%s\n' "${p50s[@]}" | median) | $(printf '%s\n' "${p99s[@]}" | median) |"$'\n'
done

echo "jobs bench: interactive p99 with and without 1000 draining jobs" >&2
cat >"$lua" <<'EOF'
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
counter = 0
request = function()
  counter = counter + 1
  return wrk.format(nil, "/v1/infer", nil, '{"input":"interactive ' .. counter .. ' ' .. math.random(1e9) .. '","maxTokens":8}')
end
EOF
submit_jobs() {  # 1000 jobs over one keep-alive connection
  python3 - "$1" <<'EOF'
import http.client, json, sys
c = http.client.HTTPConnection("127.0.0.1", int(sys.argv[1]))
for i in range(1000):
    c.request("POST", "/v1/jobs", body=json.dumps({"input": "background job %d" % i, "maxTokens": 8}),
              headers={"content-type": "application/json"})
    r = c.getresponse(); r.read()
    assert r.status == 202, r.status
EOF
}
# The llama-server double with two slots, 400 tokens/s: an 8-token answer takes ~20 ms.
"$fake_bin" --port 0 -c 4096 -np 2 --gen-tps 400 >"$work/fake.out" 2>&1 &
pids+=($!)
for _ in $(seq 1 200); do
  fake=$(grep -o 'listening [0-9]*' "$work/fake.out" 2>/dev/null | grep -o '[0-9]*$' || true)
  [ -n "${fake:-}" ] && break
  sleep 0.05
done
cfg='{"profile":"sub1b","model":{"id":"tiny-llama","warmOnBoot":false,"adapter":{"kind":"llama.cpp","launchProfile":null,
  "baseUrl":"http://127.0.0.1:'"$fake"'"}},"rateLimit":{"enabled":false},"cache":{"enabled":false},
  "scheduler":{"concurrency":2,"maxQueue":64,"dedupeInflight":false},
  "asyncQueue":{"enabled":true,"storageDir":"store","maxJobs":100000,"minFreeStorageMiB":0,"pollIntervalMs":50,"dispatchConcurrency":1},
  "telemetry":{"logLevel":"warn"}}'
idle_p99=() busy_p99=() idle_p50=() busy_p50=() left=()
for r in $(seq 1 "$rounds"); do
  start_ray "idle-$r" "$cfg"
  for _ in $(seq 1 200); do curl -sf "http://127.0.0.1:$port/readyz" >/dev/null && break; sleep 0.05; done
  read -r p50 p99 _ < <(wrk -t1 -c1 -d"${secs}s" --latency -s "$lua" "http://127.0.0.1:$port" | wrk_stats)
  idle_p50+=("$p50") idle_p99+=("$p99")
  stop_ray
  start_ray "busy-$r" "$cfg"
  for _ in $(seq 1 200); do curl -sf "http://127.0.0.1:$port/readyz" >/dev/null && break; sleep 0.05; done
  submit_jobs "$port"
  read -r p50 p99 _ < <(wrk -t1 -c1 -d"${secs}s" --latency -s "$lua" "http://127.0.0.1:$port" | wrk_stats)
  busy_p50+=("$p50") busy_p99+=("$p99")
  left+=("$(curl -s "http://127.0.0.1:$port/health" | python3 -c 'import json,sys; q=json.load(sys.stdin)["asyncQueue"]; print(q["queued"]+q["running"])')")
  stop_ray
done
ip99=$(printf '%s\n' "${idle_p99[@]}" | median)
bp99=$(printf '%s\n' "${busy_p99[@]}" | median)
ratio=$(awk -v a="$bp99" -v b="$ip99" 'BEGIN { printf "%.3f", a / b }')

{
  echo "# Durable jobs — measured"
  echo
  echo "Machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'); $(uname -sr);"
  echo "store on $(df -T "$work" | awk 'NR==2 { print $2 }') ($work). Load before the run: $(cut -d' ' -f1-3 /proc/loadavg)."
  echo "Command: \`bench/jobs.sh\` (Release build, $rounds rounds alternating, medians; wrk ${secs} s runs)."
  echo
  echo "## 1. The store alone: group commit on vs off"
  echo
  echo "\`$build/bench/jobs_bench --seconds 2 --rounds $rounds\` — N coroutines inserting into the real SQLite store"
  echo "(WAL, synchronous=FULL: each acknowledged commit is fsynced). With group commit, inserts that arrive while"
  echo "a commit is in progress share the next one."
  echo
  echo "$store_table"
  echo
  echo "## 2. POST /v1/jobs through Ray: accepted jobs/s and the 202 latency"
  echo
  echo "wrk, distinct bodies, mock backend at 0 ms (the accepted jobs also run meanwhile); the 202 is sent after the"
  echo "commit."
  echo
  echo "| connections | accepted jobs/s | 202 p50 ms | 202 p99 ms |"
  echo "|---:|---:|---:|---:|"
  printf '%s' "$submit_rows"
  echo
  echo "## 3. Interactive latency while 1000 jobs drain"
  echo
  echo 'The llama-server double attached (`-np 2 --gen-tps 400`: 2 slots, an 8-token answer in ~20 ms),'
  echo "scheduler.concurrency 2, cache and dedupe off. Jobs leave one slot free for interactive requests (and start"
  echo "none while interactive requests queue). wrk -c1 on /v1/infer (distinct bodies) for ${secs} s, alone vs right"
  echo "after 1000 jobs were submitted (they take ~20 s to drain on the one slot, so the whole run overlaps them)."
  echo
  echo "| | p50 ms | p99 ms |"
  echo "|---|---:|---:|"
  echo "| no jobs | $(printf '%s\n' "${idle_p50[@]}" | median) | $ip99 |"
  echo "| 1000 jobs draining | $(printf '%s\n' "${busy_p50[@]}" | median) | $bp99 |"
  echo
  echo "Ratio of the p99s: **$ratio** (target ≤ 1.10). Jobs still queued or running when each busy run ended: ${left[*]}."
} >"$out"
cat "$out"
