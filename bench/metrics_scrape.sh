#!/usr/bin/env bash
# Scrape latency of Ray's /metrics while the backend's own /metrics hangs (issue 12: the timing half of
# observability_test's AHangingBackendMetricsFetchNeverDelaysRaysOwnMetrics lives here, not in a unit test).
#
# One Release `ray` attached to the llama-server double (`--metrics --slots-block-on-prefill`: the double's
# /metrics and /slots wait while a prompt is prefilled, like llama-server's task loop). In one run:
#   1. baseline — wrk scrapes Ray's /metrics while the backend is idle (its /metrics answers at once);
#   2. hanging  — a long prompt keeps the double prefilling, so every fetch of its /metrics by Ray hangs until
#                 model.adapter.healthTimeoutMs; wrk scrapes Ray's /metrics for the same duration.
# A scrape never waits for the backend (Ray serves its last copy of the backend series), so both rows should
# match. Appends nothing: rewrites bench/results/metrics-scrape.md.
#
# Usage: bench/metrics_scrape.sh    Env: RAY_BENCH_BUILD_DIR (default build/release), RAY_BENCH_SCRAPE_S (5)
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
build="${RAY_BENCH_BUILD_DIR:-build/release}"
secs="${RAY_BENCH_SCRAPE_S:-5}"
out=bench/results/metrics-scrape.md
die() {
  echo "metrics_scrape.sh: $*" >&2
  exit 1
}
for tool in wrk curl cmake; do command -v "$tool" >/dev/null || die "needs $tool (run make bootstrap)"; done
case "$build" in /*) build_abs="$build" ;; *) build_abs="$root/$build" ;; esac

tmp="$(mktemp -d /tmp/ray-scrape.XXXXXX)"
pids=()
cleanup() {
  local pid
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

lock=()
command -v flock >/dev/null && lock=(flock /tmp/ray-build.lock)
if [ ! -f "$build_abs/build.ninja" ]; then
  "${lock[@]}" cmake -S . -B "$build_abs" -G Ninja -DCMAKE_BUILD_TYPE=Release -DRAY_BUILD_TESTS=OFF \
    >"$tmp/build.log" 2>&1 || { tail -n 40 "$tmp/build.log" >&2; die "configure failed"; }
fi
"${lock[@]}" cmake --build "$build_abs" --target ray fake_llama_server >"$tmp/build.log" 2>&1 ||
  { grep -E -A3 'error|FAILED' "$tmp/build.log" | head -n 40 >&2; die "build failed"; }
ray="$build_abs/ray"
fake=""
for f in "$build_abs/bench/fake_llama_server/fake_llama_server" \
  "$build_abs/tests/support/fake_llama_server/fake_llama_server"; do
  [ -x "$f" ] && { fake="$f"; break; }
done
[ -n "$fake" ] || die "no fake_llama_server in $build"

# wait_line FILE SED_EXPR: the first match, bounded (10 s).
wait_line() {
  local v _
  for _ in $(seq 1 1000); do
    v="$(sed -n "$2" "$1" | head -n1)"
    [ -n "$v" ] && { echo "$v"; return 0; }
    sleep 0.01
  done
  return 1
}

"$fake" --port 0 -c 2048 -np 2 --metrics --slots-block-on-prefill >"$tmp/fake.out" 2>"$tmp/fake.err" &
pids+=($!)
fake_port="$(wait_line "$tmp/fake.out" 's/^listening \([0-9][0-9]*\)$/\1/p')" ||
  die "the double did not print its port: $(cat "$tmp/fake.out" "$tmp/fake.err")"
fake_url="http://127.0.0.1:$fake_port"

# healthIntervalMs 100: Ray fetches the backend's /metrics often, so a hanging fetch is always in progress.
cat >"$tmp/ray.json" <<'EOF'
{"profile":"sub1b","model":{"id":"tiny-llama","adapter":{"kind":"llama.cpp","healthIntervalMs":100,"healthTimeoutMs":500}},"rateLimit":{"enabled":false},
 "scheduler":{"maxInflightTokens":2048},"telemetry":{"logLevel":"warn"}}
EOF
"$ray" serve --config "$tmp/ray.json" --backend-url "$fake_url" --port 0 >"$tmp/ray.out" 2>"$tmp/ray.err" &
pids+=($!)
# logLevel warn hides the listening line: find the port from /proc instead.
ray_pid=$!
ray_port=""
for _ in $(seq 1 1000); do
  ray_port="$(ss -ltnpH 2>/dev/null | awk -v p="pid=$ray_pid," '$0 ~ p {n=split($4,a,":"); print a[n]; exit}')"
  [ -n "$ray_port" ] && break
  sleep 0.01
done
[ -n "$ray_port" ] || die "ray did not listen: $(tail -n 20 "$tmp/ray.out" "$tmp/ray.err")"
ray_url="http://127.0.0.1:$ray_port"
for _ in $(seq 1 200); do
  curl -s --max-time 1 "$ray_url/readyz" | grep -q '"providerStatus":"ready"' && break
  sleep 0.05
done
curl -s --max-time 1 "$ray_url/metrics" | grep -q '^ray_backend_llamacpp_' ||
  { sleep 1; curl -s --max-time 1 "$ray_url/metrics" | grep -q '^ray_backend_llamacpp_'; } ||
  die "Ray's /metrics never carried the backend's series"

# wrk --latency → "p50 p90 p99 max req/s" in ms.
scrape() {
  wrk -t1 -c1 -d"${secs}s" --latency "$ray_url/metrics" >"$tmp/wrk.txt" 2>&1 || die "wrk failed: $(cat "$tmp/wrk.txt")"
  awk '
    function ms(v) { if (v ~ /us$/) return v / 1000; if (v ~ /ms$/) return v + 0; if (v ~ /s$/) return v * 1000; return v }
    /^ +50%/ {p50 = ms($2)} /^ +90%/ {p90 = ms($2)} /^ +99%/ {p99 = ms($2)}
    /^ +Latency +[0-9]/ {mx = ms($4)} /^Requests\/sec/ {rps = $2}
    END {printf "%.3f %.3f %.3f %.3f %.0f\n", p50, p90, p99, mx, rps}' "$tmp/wrk.txt"
}

read -r b50 b90 b99 bmax brps <<<"$(scrape)"

# Keep the double prefilling for longer than the scrape window: 1600 characters at 20 prompt tokens/s.
curl -s -o /dev/null -X POST "$fake_url/__control" -d '{"prompt_tps":20}' || die "the double's /__control failed"
prompt="$(head -c 1600 /dev/zero | tr '\0' p)"
curl -s -o /dev/null --max-time 60 -H 'content-type: application/json' \
  -d "{\"input\":\"$prompt\",\"maxTokens\":4,\"cache\":false}" "$ray_url/v1/infer" &
pids+=($!)
hung=0
for _ in $(seq 1 100); do
  if ! curl -s -o /dev/null --max-time 0.3 "$fake_url/metrics"; then hung=1; break; fi
  sleep 0.05
done
[ "$hung" = 1 ] || die "the double's /metrics never hung (no prefill in progress)"
read -r h50 h90 h99 hmax hrps <<<"$(scrape)"
# Still hanging at the end of the window: the measurement covered what it says.
if curl -s -o /dev/null --max-time 0.3 "$fake_url/metrics"; then still=no; else still=yes; fi

commit="$(git rev-parse --short HEAD)$(git diff --quiet HEAD -- src || echo '+dirty')"
{
  echo "# Ray's /metrics while the backend's /metrics hangs"
  echo
  echo "Generated by \`bench/metrics_scrape.sh\` (issue 12) — $(date -u '+%Y-%m-%d %H:%M UTC'), commit $commit,"
  echo "$(nproc) cores, load average at the end $(cut -d' ' -f1-3 /proc/loadavg). Release \`ray\` attached to the"
  echo "llama-server double (\`--metrics --slots-block-on-prefill\`), \`healthIntervalMs\` 100, \`healthTimeoutMs\` 500;"
  echo "\`wrk -t1 -c1 -d${secs}s --latency $ray_url/metrics\` in each phase, one after the other in this run."
  echo
  echo "| phase | p50 ms | p90 ms | p99 ms | max ms | scrapes/s |"
  echo "|---|---:|---:|---:|---:|---:|"
  echo "| backend idle (its /metrics answers) | $b50 | $b90 | $b99 | $bmax | $brps |"
  echo "| backend prefilling (its /metrics hangs) | $h50 | $h90 | $h99 | $hmax | $hrps |"
  echo
  echo "The double's /metrics still hung when the second window ended: **$still**."
  echo
  echo "A scrape of Ray never waits for the backend: the background fetch runs on its own schedule and a scrape"
  echo "serves the last copy it got, so the two rows differ by noise only. (The same behaviour, without a timing"
  echo "bound, is asserted by \`Observability.AHangingBackendMetricsFetchNeverDelaysRaysOwnMetrics\`.)"
} >"$out"
cat "$out"
