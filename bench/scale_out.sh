#!/usr/bin/env bash
# Past one box, measured (issue 17): writes bench/results/scale-out.md.
#   1. POST /v1/jobs through the Release `ray` with wrk: accepted jobs/s and the 202 latency, asyncQueue.store
#      sqlite vs postgres (a throw-away local cluster: initdb + pg_ctl, fsync on, synchronous_commit on).
#   2. Interactive /v1/infer through HAProxy (leastconn, /readyz checks) with one node vs two nodes, each node
#      with its own llama-server double at a fixed per-token delay; `ray bench` as the client; plus one node
#      without HAProxy (what the balancer itself costs).
# Knobs: RAY_BENCH_BUILD_DIR (build/release), RAY_BENCH_DOUBLE_DIR (a tree holding the llama-server double:
# build/asan, else build/debug), SCALE_BENCH_SECONDS (5), SCALE_BENCH_ROUNDS (3), SCALE_BENCH_GEN_TPS (100),
# SCALE_BENCH_CLIENTS (8).
set -euo pipefail
cd "$(dirname "$0")/.."
build=${RAY_BENCH_BUILD_DIR:-build/release}
secs=${SCALE_BENCH_SECONDS:-5}
rounds=${SCALE_BENCH_ROUNDS:-3}
tps=${SCALE_BENCH_GEN_TPS:-100}
clients=${SCALE_BENCH_CLIENTS:-8}
out=bench/results/scale-out.md
work=$(mktemp -d /var/tmp/ray-scale-bench.XXXXXX)
chmod 755 "$work"
pids=()
pg_bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)
pg_data="$work/pg/data"
as_pg() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  [ -d "$pg_data" ] && as_pg "$pg_bin/pg_ctl" -D "$pg_data" -m immediate stop >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT
for tool in wrk haproxy python3 curl; do
  command -v "$tool" >/dev/null || { echo "scale_out.sh needs $tool" >&2; exit 2; }
done
[ -x "$pg_bin/initdb" ] || { echo "scale_out.sh needs the PostgreSQL server binaries (package postgresql)" >&2; exit 2; }

[ -f "$build/build.ninja" ] || cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DRAY_BUILD_TESTS=OFF >/dev/null
lock() { if command -v flock >/dev/null; then flock /tmp/ray-build.lock "$@"; else "$@"; fi; }
lock cmake --build "$build" --target ray >/dev/null
ray="$PWD/$build/ray"
double_dir=${RAY_BENCH_DOUBLE_DIR:-$([ -f build/asan/build.ninja ] && echo build/asan || echo build/debug)}
[ -f "$double_dir/build.ninja" ] || cmake -S . -B "$double_dir" -G Ninja -DCMAKE_BUILD_TYPE=Debug -DRAY_BUILD_BENCH=OFF >/dev/null
lock cmake --build "$double_dir" --target fake_llama_server >/dev/null
fake_bin=$(find "$double_dir" -name fake_llama_server -type f -perm -u+x | head -1)
load_before=$(cut -d' ' -f1-3 /proc/loadavg)
uptime_before=$(uptime)

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
# start_ray NAME CONFIG_JSON [PORT] [ENV=VAL...] -> sets $port
start_ray() {
  local name=$1 cfg=$2 p=${3:-0}
  shift 3 || shift $#
  mkdir -p "$work/$name"
  echo "$cfg" >"$work/$name/ray.json"
  (cd "$work/$name" && exec env "$@" "$ray" serve --config ray.json --port "$p" >log 2>&1) &
  pids+=($!)
  for _ in $(seq 1 400); do
    port=$(grep -o '"port":[0-9]*' "$work/$name/log" 2>/dev/null | head -1 | cut -d: -f2 || true)
    [ -n "${port:-}" ] && return 0
    sleep 0.05
  done
  echo "ray did not start: $(cat "$work/$name/log")" >&2
  exit 1
}
wait_ready() { for _ in $(seq 1 400); do curl -sf "http://127.0.0.1:$1/readyz" >/dev/null && return 0; sleep 0.05; done; return 1; }
stop_all() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  pids=()
}
wrk_stats() {
  awk '
    function ms(v) { if (v ~ /us$/) return v / 1000; if (v ~ /ms$/) return v + 0; if (v ~ /s$/) return v * 1000; return v }
    $1 == "50%" { p50 = ms($2) } $1 == "99%" { p99 = ms($2) } $1 == "Requests/sec:" { rps = $2 }
    END { printf "%.3f %.3f %.0f\n", p50, p99, rps }'
}
median() { sort -g | awk '{ a[NR] = $1 } END { print a[int((NR + 1) / 2)] }'; }

# ---- 1. jobs accepted per second: SQLite vs PostgreSQL -----------------------------------------------------
echo "scale-out bench: a throw-away PostgreSQL cluster" >&2
mkdir -p "$work/pg"
[ "$(id -u)" = 0 ] && chown postgres "$work/pg"
as_pg "$pg_bin/initdb" -D "$pg_data" -A trust -U ray -E UTF8 --locale=C >"$work/pg/initdb.log" 2>&1
pg_port=$(free_port)
as_pg "$pg_bin/pg_ctl" -D "$pg_data" -l "$work/pg/server.log" -w -t 60 \
  -o "-p $pg_port -k $work/pg -c listen_addresses=127.0.0.1 -c max_connections=60" start >/dev/null
pg_version=$("$pg_bin/postgres" --version | awk '{ print $3 }')
# A fresh database per run (called in $(…), a subshell: the name comes from a counter file, not a variable).
echo 0 >"$work/pg/count"
new_db() {
  local n=$(($(cat "$work/pg/count") + 1))
  echo "$n" >"$work/pg/count"
  "$pg_bin/psql" -q -h 127.0.0.1 -p "$pg_port" -U ray -d postgres -c "CREATE DATABASE bench$n" >/dev/null
  echo "host=127.0.0.1 port=$pg_port user=ray dbname=bench$n"
}

lua="$work/post.lua"
cat >"$lua" <<'EOF'
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
counter = 0
request = function()
  counter = counter + 1
  return wrk.format(nil, "/v1/jobs", nil, '{"input":"job number ' .. counter .. ' ' .. math.random(1e9) .. '","maxTokens":8}')
end
EOF
jobs_rows=""
for c in 1 16; do
  for store in sqlite postgres; do
    p50s=() p99s=() rpss=()
    for r in $(seq 1 "$rounds"); do
      q='"asyncQueue":{"enabled":true,"storageDir":"store","maxJobs":100000,"minFreeStorageMiB":0,"pollIntervalMs":50'
      env_args=()
      if [ "$store" = postgres ]; then
        q+=',"store":"postgres","postgresUrlEnv":"RAY_BENCH_PG_URL"'
        env_args=("RAY_BENCH_PG_URL=$(new_db)")
      fi
      start_ray "jobs-$store-$c-$r" '{"profile":"tiny","model":{"adapter":{"kind":"mock","latencyMs":0}},"cache":{"enabled":false},
        '"$q"'},"telemetry":{"logLevel":"warn"}}' 0 "${env_args[@]}"
      wait_ready "$port"
      read -r p50 p99 rps < <(wrk -t1 -c"$c" -d"${secs}s" --latency -s "$lua" "http://127.0.0.1:$port" | wrk_stats)
      p50s+=("$p50") p99s+=("$p99") rpss+=("$rps")
      stop_all
    done
    jobs_rows+="| $store | $c | $(printf '%s\n' "${rpss[@]}" | median) | $(printf '%s\n' "${p50s[@]}" | median) | $(printf '%s\n' "${p99s[@]}" | median) |"$'\n'
  done
done

# ---- 2. interactive throughput through HAProxy: one node vs two ---------------------------------------------
echo "scale-out bench: interactive through HAProxy, one vs two nodes" >&2
workload="$work/distinct.jsonl"
python3 -c '
import json
for i in range(5000):
    print(json.dumps({"input": "question %d about the weather in town %d" % (i, i * 7919 % 1000), "maxTokens": 16}))
' >"$workload"
# start_node NAME -> sets $port (Ray) on its own double: 2 slots, $tps tokens/s per slot
start_node() {
  local name=$1
  mkdir -p "$work/$name"
  "$fake_bin" --port 0 -c 4096 -np 2 --gen-tps "$tps" >"$work/$name/fake.out" 2>"$work/$name/fake.err" &
  pids+=($!)
  local fake=""
  for _ in $(seq 1 200); do
    fake=$(grep -o 'listening [0-9]*' "$work/$name/fake.out" 2>/dev/null | grep -o '[0-9]*$' || true)
    [ -n "$fake" ] && break
    sleep 0.05
  done
  start_ray "$name" '{"profile":"sub1b","model":{"id":"tiny-llama","warmOnBoot":false,"adapter":{"kind":"llama.cpp",
    "launchProfile":null,"baseUrl":"http://127.0.0.1:'"$fake"'","healthIntervalMs":200}},"rateLimit":{"enabled":false},
    "cache":{"enabled":false},"scheduler":{"concurrency":2,"maxQueue":256,"dedupeInflight":false},
    "telemetry":{"logLevel":"warn"}}'
  wait_ready "$port"
}
start_haproxy() {  # ports of the nodes -> sets $front
  front=$(free_port)
  {
    printf 'global\n  maxconn 512\ndefaults\n  mode http\n  timeout connect 2s\n  timeout client 60s\n  timeout server 60s\n'
    printf '  retries 3\n  option redispatch\n  retry-on conn-failure empty-response\n'
    printf 'frontend fe\n  bind 127.0.0.1:%s\n  option http-no-delay\n  default_backend ray\n' "$front"
    printf 'backend ray\n  balance leastconn\n  option httpchk GET /readyz\n  http-check expect status 200\n'
    printf '  default-server check inter 500ms fall 2 rise 2\n'
    local i=0
    for p in "$@"; do i=$((i + 1)); printf '  server n%s 127.0.0.1:%s\n' "$i" "$p"; done
  } >"$work/haproxy.cfg"
  haproxy -db -f "$work/haproxy.cfg" >"$work/haproxy.log" 2>&1 &
  pids+=($!)
  for _ in $(seq 1 200); do
    [ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$front/readyz")" = 200 ] && break
    sleep 0.05
  done
  # every server checked UP before the run (a fresh HAProxy starts them UP, a failed check takes them out)
  sleep 1.1
}
bench_stats() {  # URL -> "rps p50 p99 errors"
  "$ray" bench --url "$1" --workload "$workload" -c "$clients" -d "${secs}s" --json - 2>/dev/null |
    python3 -c 'import json,sys; r=json.load(sys.stdin); l=r["latency_ms"]
print("%.1f %.1f %.1f %d" % (r["ok_rps"], l.get("p50", 0), l.get("p99", 0), r["requests"] - r["ok"]))'
}
declare -A rps p50 p99 errs
for setup in direct-1 haproxy-1 haproxy-2; do rps[$setup]="" p50[$setup]="" p99[$setup]="" errs[$setup]=0; done
for r in $(seq 1 "$rounds"); do
  for setup in direct-1 haproxy-1 haproxy-2; do
    start_node "n1-$setup-$r"
    ports=("$port")
    if [ "$setup" = haproxy-2 ]; then start_node "n2-$setup-$r"; ports+=("$port"); fi
    if [ "$setup" = direct-1 ]; then url="http://127.0.0.1:${ports[0]}"; else start_haproxy "${ports[@]}"; url="http://127.0.0.1:$front"; fi
    read -r a b c e < <(bench_stats "$url")
    rps[$setup]+="$a " p50[$setup]+="$b " p99[$setup]+="$c " errs[$setup]=$((errs[$setup] + e))
    stop_all
  done
done
med() { printf '%s\n' $1 | median; }
one=$(med "${rps[haproxy-1]}")
two=$(med "${rps[haproxy-2]}")
direct=$(med "${rps[direct-1]}")
ratio=$(awk -v a="$two" -v b="$one" 'BEGIN { printf "%.2f", a / b }')
lb_cost=$(awk -v a="$one" -v b="$direct" 'BEGIN { printf "%.1f", (1 - a / b) * 100 }')
ideal=$(awk -v t="$tps" 'BEGIN { printf "%.1f", 4 * t / 16 }')  # two nodes × 2 slots at t tokens/s, 16 tokens each

{
  echo "# Past one box — measured"
  echo
  echo "Machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'); $(uname -sr);"
  echo "PostgreSQL $pg_version (local, same disk, fsync on) and HAProxy $(haproxy -v | head -1 | awk '{ print $3 }')."
  echo "Before the run: \`$uptime_before\`. After: \`$(uptime)\`."
  echo "Command: \`bench/scale_out.sh\` (Release \`ray\`, $rounds rounds, medians; ${secs} s per run)."
  echo
  echo "## 1. Jobs accepted per second: SQLite vs PostgreSQL"
  echo
  echo "wrk on POST /v1/jobs, distinct bodies, the mock backend at 0 ms (accepted jobs also run meanwhile). The 202"
  echo "is sent after the commit: SQLite WAL with synchronous=FULL (group commit), PostgreSQL with"
  echo "synchronous_commit on through the store's one connection on its own thread."
  echo
  echo "| store | connections | accepted jobs/s | 202 p50 ms | 202 p99 ms |"
  echo "|---|---:|---:|---:|---:|"
  printf '%s' "$jobs_rows"
  echo
  echo "## 2. Interactive throughput through HAProxy: one node vs two"
  echo
  echo "Each node: Ray attached to its own llama-server double (\`-np 2 --gen-tps $tps\`: 2 slots, a 16-token"
  echo "answer in ~$(awk -v t="$tps" 'BEGIN { printf "%d", 16000 / t }') ms), scheduler.concurrency 2, cache and dedupe off. HAProxy: \`balance leastconn\`, \`option httpchk"
  echo "GET /readyz\` every 500 ms. Client: \`ray bench -c $clients -d ${secs}s\` on /v1/infer with 5000 distinct prompts."
  echo
  echo "| setup | ok req/s | p50 ms | p99 ms | failed requests (all rounds) |"
  echo "|---|---:|---:|---:|---:|"
  for setup in direct-1 haproxy-1 haproxy-2; do
    case $setup in direct-1) label="1 node, no balancer" ;; haproxy-1) label="1 node behind HAProxy" ;; haproxy-2) label="2 nodes behind HAProxy" ;; esac
    echo "| $label | $(med "${rps[$setup]}") | $(med "${p50[$setup]}") | $(med "${p99[$setup]}") | ${errs[$setup]} |"
  done
  echo
  echo "Two nodes / one node through HAProxy: **${ratio}×** (the doubles' ceiling for two nodes is ~$ideal req/s:"
  echo "2 × 2 slots × $tps tokens/s ÷ 16 tokens). HAProxy's cost against the direct run: ${lb_cost} % of throughput."
  echo
  echo "**Read this as the balancer's cost, not as scaling.** All of it ran on one $(nproc)-core box: both nodes, both"
  echo "doubles, HAProxy and the load generator share the same CPUs, and the doubles' fixed per-token delay (not CPU)"
  echo "bounds each node. Two nodes get twice the slots, so the ratio shows that HAProxy spreads the load and what it"
  echo "costs to do so; two real boxes each with a real llama-server would add their own compute, which this box"
  echo "cannot show."
} >"$out"
cat "$out"
