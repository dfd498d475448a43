#!/usr/bin/env bash
# Foundation macro benchmark (quality.md, Benchmarks): Ray against the bare reference server, in one run, on
# loopback. Writes bench/results/foundation.md. See bench/README.md for what each number means.
#
# Usage: bench/foundation.sh            (or `make bench`)
# Env:   RAY_BENCH_DURATION=5s          wrk duration per target
#        RAY_BENCH_STARTUP_RUNS=20      startup_probe runs (the median is reported)
#        RAY_BENCH_BUILD_DIR=build/release  Release build tree (relative to the repo root, or absolute)
#        RAY_BENCH_STRICT=1             exit 1 when a target FAILs (default: report only; absolute numbers are noisy)
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

build="${RAY_BENCH_BUILD_DIR:-build/release}"
duration="${RAY_BENCH_DURATION:-5s}"
startup_runs="${RAY_BENCH_STARTUP_RUNS:-20}"
out=bench/results/foundation.md

die() {
  echo "foundation.sh: $*" >&2
  exit 1
}
for tool in wrk curl cmake; do command -v "$tool" >/dev/null || die "needs $tool (run make bootstrap)"; done

case "$build" in /*) build_abs="$build" ;; *) build_abs="$root/$build" ;; esac
ray="$build_abs/ray"
reference="$build_abs/bench/reference_server"
probe="$build_abs/bench/startup_probe"

# --- processes we start; all killed on exit ------------------------------------------------------------------
tmp="$(mktemp -d /tmp/ray-bench.XXXXXX)"
pids=()
cleanup() {
  local pid
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# --- build ---------------------------------------------------------------------------------------------------
if [ ! -f "$build/build.ninja" ]; then
  cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DRAY_BUILD_TESTS=OFF >"$tmp/build.log" 2>&1 ||
    { tail -n 40 "$tmp/build.log" >&2; die "configure failed"; }
fi
cmake --build "$build" --target ray reference_server startup_probe >"$tmp/build.log" 2>&1 ||
  { grep -E -A3 'error|FAILED' "$tmp/build.log" | head -n 40 >&2; die "build failed"; }

cat >"$tmp/ray.json" <<'EOF'
{"profile":"tiny","model":{"adapter":{"kind":"mock","latencyMs":0}}}
EOF
cat >"$tmp/infer.lua" <<'EOF'
wrk.method = "POST"
wrk.body = '{"input":"hi"}'
wrk.headers["Content-Type"] = "application/json"
EOF

# wait_port FILE PATTERN: prints the port once a stdout line matches (bounded: 10 s).
wait_port() {
  local file="$1" kind="$2" port="" _
  for _ in $(seq 1 1000); do
    if [ "$kind" = reference ]; then
      port="$(sed -n 's/^listening \([0-9][0-9]*\)$/\1/p' "$file" | head -n1)"
    else
      port="$(grep -m1 '"message":"gateway listening"' "$file" | sed -n 's/.*"port":\([0-9][0-9]*\).*/\1/p' || true)"
    fi
    [ -n "$port" ] && { echo "$port"; return 0; }
    sleep 0.01
  done
  return 1
}

# wait_http URL: until it answers 200 (bounded: 10 s).
wait_http() {
  local _
  for _ in $(seq 1 200); do
    [ "$(curl -s -o /dev/null -w '%{http_code}' --max-time 1 "$1" || true)" = 200 ] && return 0
    sleep 0.05
  done
  return 1
}

rss_kb() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status"; }
rss_anon_kb() { awk '/^RssAnon:/ {print $2}' "/proc/$1/status"; }
threads() { awk '/^Threads:/ {print $2}' "/proc/$1/status"; }

# --- start both servers --------------------------------------------------------------------------------------
"$reference" --port 0 >"$tmp/reference.out" 2>"$tmp/reference.err" &
ref_pid=$!
pids+=("$ref_pid")
# Each Ray instance runs in its own scratch directory: relative storage paths (asyncQueue.storageDir) land there.
mkdir -p "$tmp/serve" "$tmp/probe"
(cd "$tmp/serve" && exec "$ray" serve --config "$tmp/ray.json" --port 0) >"$tmp/ray.out" 2>"$tmp/ray.err" &
ray_pid=$!
pids+=("$ray_pid")

ref_port="$(wait_port "$tmp/reference.out" reference)" || die "reference_server did not print its port"
ray_port="$(wait_port "$tmp/ray.out" ray)" || {
  cat "$tmp/ray.out" "$tmp/ray.err" >&2
  die "ray did not log \"gateway listening\" with a \"port\""
}
ref_url="http://127.0.0.1:$ref_port"
ray_url="http://127.0.0.1:$ray_port"
wait_http "$ref_url/livez" || die "reference /livez not 200"
wait_http "$ray_url/livez" || die "ray /livez not 200"

# Idle RSS: started, answered one /livez, nothing else yet (settle first: warm-up and the first log flush).
sleep 0.2
ray_idle_rss=$(rss_kb "$ray_pid")
ray_idle_anon=$(rss_anon_kb "$ray_pid")
ray_idle_threads=$(threads "$ray_pid")
ref_idle_rss=$(rss_kb "$ref_pid")

wait_http "$ray_url/readyz" || echo "foundation.sh: warning: ray /readyz not 200 after 10 s" >&2
infer_status="$(curl -s -o "$tmp/infer.body" -w '%{http_code}' --max-time 5 -H 'content-type: application/json' \
  -d '{"input":"hi"}' "$ray_url/v1/infer" || true)"
[ "$infer_status" = 200 ] || echo "foundation.sh: warning: ray POST /v1/infer answered $infer_status" >&2
# Warm idle RSS: after one request on each benchmarked route, still before load.
ray_warm_rss=$(rss_kb "$ray_pid")

# --- load ----------------------------------------------------------------------------------------------------
wrk_cmd=(wrk -t1 -c16 -d"$duration" --latency)
run_wrk() { # name url [extra wrk args...]
  local name="$1" url="$2"
  shift 2
  "${wrk_cmd[@]}" "$@" "$url" >"$tmp/wrk.$name" 2>&1 || die "wrk failed for $name: $(cat "$tmp/wrk.$name")"
}
run_wrk reference "$ref_url/livez"
run_wrk ray_livez "$ray_url/livez"
run_wrk ray_infer "$ray_url/v1/infer" -s "$tmp/infer.lua"
ray_loaded_rss=$(rss_kb "$ray_pid")
ref_loaded_rss=$(rss_kb "$ref_pid")

# RSS under 256 connections (quality.md): sampled in the middle of a short 256-connection run on /livez.
wrk -t1 -c256 -d2s "$ray_url/livez" >"$tmp/wrk.ray_256" 2>&1 &
wrk256_pid=$!
pids+=("$wrk256_pid")
sleep 1.5
ray_256_rss=$(rss_kb "$ray_pid")
wait "$wrk256_pid" || true
ray_256_rps="$(awk '/^Requests\/sec:/ {printf "%.0f", $2}' "$tmp/wrk.ray_256")"

# --- startup (Ray restarted 20 times; the running instance is left alone, it uses another port) -------------
probe_cmd=("$probe" --runs "$startup_runs" - -- "$ray" serve --config "$tmp/ray.json" --port 0)
(cd "$tmp/probe" && exec "${probe_cmd[@]}") >"$tmp/probe.out" 2>"$tmp/probe.err" || true
startup_ms="$(sed -n 's/^median_exec_to_livez_ms=\([0-9.]*\).*/\1/p' "$tmp/probe.out")"
startup_detail="$(sed -n 's/^median_exec_to_livez_ms=[0-9.]* //p' "$tmp/probe.out")"
if [ -z "$startup_ms" ]; then # one run only, or all failed
  startup_ms="$(sed -n 's/^exec_to_livez_ms=\([0-9.]*\)$/\1/p' "$tmp/probe.out" | head -n1)"
fi

# --- parse ---------------------------------------------------------------------------------------------------
# to_ms VALUE-WITH-UNIT (wrk prints us, ms or s)
to_ms() {
  awk -v v="$1" 'BEGIN {
    if (v ~ /us$/) { sub(/us$/, "", v); printf "%.3f", v / 1000 }
    else if (v ~ /ms$/) { sub(/ms$/, "", v); printf "%.3f", v }
    else if (v ~ /s$/) { sub(/s$/, "", v); printf "%.3f", v * 1000 }
    else printf "nan" }'
}
rps() { awk '/^Requests\/sec:/ {printf "%.0f", $2}' "$tmp/wrk.$1"; }
pct() { to_ms "$(awk -v p="$2%" '$1 == p {print $2; exit}' "$tmp/wrk.$1")"; }
non2xx() { awk '/Non-2xx or 3xx responses:/ {print $NF}' "$tmp/wrk.$1"; }
errors() { awk '/Socket errors:/ {sub(/^ *Socket errors: */, ""); print}' "$tmp/wrk.$1"; }

ref_rps=$(rps reference)
[[ "$ref_rps" =~ ^[1-9][0-9]*$ ]] || die "no reference throughput: $(cat "$tmp/wrk.reference")"
ratio() { awk -v a="$1" -v b="$ref_rps" 'BEGIN { if (a == "") print "n/a"; else printf "%.2f", a / b }'; }
verdict() { [ "$1" = 1 ] && echo PASS || echo FAIL; }

livez_ratio=$(ratio "$(rps ray_livez)")
pass_livez=$(awk -v r="$livez_ratio" 'BEGIN { print (r != "n/a" && r >= 0.8) ? 1 : 0 }')
pass_rss=$(awk -v k="$ray_idle_rss" 'BEGIN { print (k != "" && k <= 8192) ? 1 : 0 }')
pass_start=$(awk -v m="$startup_ms" 'BEGIN { print (m != "" && m <= 50) ? 1 : 0 }')
mib() { awk -v k="$1" 'BEGIN { if (k == "") print "n/a"; else printf "%.1f MiB", k / 1024 }'; }

notes=""
for name in ray_livez ray_infer; do
  n=$(non2xx "$name")
  [ -n "$n" ] && notes+="- **$name: $n non-2xx responses** — the numbers for it measure error answers."$'\n'
  e=$(errors "$name")
  [ -n "$e" ] && notes+="- $name socket errors: $e"$'\n'
done
[ "$infer_status" = 200 ] || notes+="- Ray POST /v1/infer answered $infer_status before the load run."$'\n'
if grep -q '"degraded":true' "$tmp/infer.body" 2>/dev/null; then
  notes+="- Ray answered /v1/infer degraded before the load run ($(grep -o '"reasons":\[[^]]*\]' "$tmp/infer.body" | head -n1)): the machine was under pressure."$'\n'
fi
if [ -z "$startup_ms" ] || grep -q '=fail' "$tmp/probe.out"; then
  notes+="- startup_probe: $(grep -c '=fail' "$tmp/probe.out" || true) failed run(s); $(head -n 3 "$tmp/probe.err" | tr '\n' ' ')"$'\n'
fi

commit="$(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
git diff --quiet HEAD 2>/dev/null || commit+=" (+ uncommitted changes)"
cpu="$(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo)"

row() { # label name
  local r
  r=$(rps "$2")
  echo "| $1 | $r | $(pct "$2" 50) ms | $(pct "$2" 99) ms | $(ratio "$r") |"
}

mkdir -p bench/results
{
  echo "# Foundation benchmark"
  echo
  echo "Generated by \`bench/foundation.sh\` (\`make bench\`). Loopback only; both servers measured in the same run."
  echo "Absolute numbers are noisy on shared machines — compare ratios, rerun before drawing conclusions."
  echo
  echo "- Machine: $(nproc) CPUs, ${cpu:-unknown CPU}; load average before the run: $(cut -d' ' -f1-3 /proc/loadavg)"
  echo "- Date: $(date -u '+%Y-%m-%d %H:%M:%S UTC')"
  echo "- Commit: $commit"
  echo "- Ray config: \`$(cat "$tmp/ray.json")\`"
  echo
  echo "## Commands"
  echo
  echo '```'
  echo "${reference#"$root/"} --port 0"
  echo "${ray#"$root/"} serve --config ray.json --port 0   # cwd: a scratch directory"
  echo "${wrk_cmd[*]} http://127.0.0.1:<reference>/livez"
  echo "${wrk_cmd[*]} http://127.0.0.1:<ray>/livez"
  echo "${wrk_cmd[*]} -s infer.lua http://127.0.0.1:<ray>/v1/infer   # POST {\"input\":\"hi\"}, application/json"
  echo "wrk -t1 -c256 -d2s http://127.0.0.1:<ray>/livez   # VmRSS sampled after 1.5 s"
  echo "${probe#"$root/"} --runs $startup_runs - -- ${ray#"$root/"} serve --config ray.json --port 0"
  echo '```'
  echo
  echo "## Throughput and latency (wrk -t1 -c16, $duration each)"
  echo
  echo "| target | req/s | p50 | p99 | ratio to reference |"
  echo "|---|---:|---:|---:|---:|"
  row "reference \`GET /livez\`" reference
  row "Ray \`GET /livez\`" ray_livez
  row "Ray \`POST /v1/infer\` (mock, 0 ms)" ray_infer
  echo
  [ -n "$notes" ] && printf '%s\n' "$notes"
  echo "## Targets"
  echo
  echo "| target | measured | goal | verdict |"
  echo "|---|---:|---:|---|"
  echo "| Ray \`/livez\` throughput | ${livez_ratio}× reference | ≥ 0.80× | $(verdict "$pass_livez") |"
  echo "| Ray idle RSS | $(mib "$ray_idle_rss") | ≤ 8 MiB | $(verdict "$pass_rss") |"
  echo "| exec → \`/livez\` 200 (median of $startup_runs) | ${startup_ms:-n/a} ms | ≤ 50 ms | $(verdict "$pass_start") |"
  echo
  echo "## Memory and start-up detail"
  echo
  echo "- Ray RSS: idle $(mib "$ray_idle_rss") (of which anonymous $(mib "$ray_idle_anon"); threads: $ray_idle_threads);" \
    "warm idle (after one /readyz and one /v1/infer) $(mib "$ray_warm_rss"); after the 16-connection runs" \
    "$(mib "$ray_loaded_rss"); during 256 connections $(mib "$ray_256_rss") (${ray_256_rps:-?} req/s)"
  echo "- Reference RSS: idle $(mib "$ref_idle_rss"), after load $(mib "$ref_loaded_rss")"
  echo "- Start-up: median ${startup_ms:-n/a} ms${startup_detail:+ ($startup_detail)}"
} >"$out"

cat "$out"
if [ "${RAY_BENCH_STRICT:-0}" = 1 ] && [ "$pass_livez$pass_rss$pass_start" != 111 ]; then exit 1; fi
