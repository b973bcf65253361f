#!/usr/bin/env bash
# The C and C++ suite of weir's C ABI (run by scripts/test; runnable alone from anywhere).
#
# Builds libweir_ffi.a (debug profile, as `cargo build --workspace` leaves it), then
# compiles every program in examples/c and examples/cpp with the README's command (the
# library path pointing at target/debug) and runs it:
#   - plain, as the README builds it;
#   - under AddressSanitizer (with LeakSanitizer) and UndefinedBehaviorSanitizer, any
#     report fatal;
#   - the multi-threaded ones (threads.c, threads.cpp) under ThreadSanitizer, with
#     ffi/tsan.supp (why: see that file);
# links threads.c once more through the pkg-config file (ffi/pkgconfig/weir.pc), and
# runs examples/cpp/remote_write.cpp end to end: against a real Prometheus (remote
# write, with a replay after kill -9) and against the weir daemon (otlp_http; the
# binary at $WEIR_BIN or target/debug/weir).
# Ends with "C suite: N passed, 0 failed", N counting the program runs; exits non-zero on the first failure.
set -euo pipefail

cd "$(dirname "$0")/.."
root="$PWD"
# scripts/test has just built the workspace (libweir_ffi.a included) and sets
# WEIR_FFI_SKIP_BUILD=1: a `-p` build after a `--workspace` one could re-resolve features.
if [ -z "${WEIR_FFI_SKIP_BUILD:-}" ]; then
    cargo build -p weir-ffi --locked
fi
lib="$root/target/debug/libweir_ffi.a"
out="$(mktemp -d "${TMPDIR:-/tmp}/weir-c-suite.XXXXXX")"
# Backends this script starts (by their process id), stopped on any exit.
prom_pid=""
daemon_pid=""
stop_backends() {
    local pid
    for pid in "$prom_pid" "$daemon_pid"; do
        if [ -n "$pid" ]; then
            kill "$pid" 2>/dev/null || true
            wait "$pid" 2>/dev/null || true
        fi
    done
}
trap 'stop_backends; rm -rf "$out"' EXIT

passed=0
# run LABEL COMMAND...: a build step; check LABEL COMMAND...: a program run, counted.
run() {
    local label="$1"
    shift
    counted=0
    exec_step "$label" "$@"
}
check() {
    local label="$1"
    shift
    counted=1
    exec_step "$label" "$@"
}
exec_step() {
    local label="$1"
    shift
    printf '%-58s ' "$label"
    if ! "$@" >"$out/run.log" 2>&1; then
        echo "FAILED"
        head -c 20000 "$out/run.log"
        printf '\nC suite: %s passed, 1 failed\n' "$passed"
        exit 1
    fi
    echo "ok"
    passed=$((passed + counted))
}

export ASAN_OPTIONS="detect_leaks=1:abort_on_error=0"
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1"
export TSAN_OPTIONS="suppressions=$root/ffi/tsan.supp:halt_on_error=1"
asan=(-g -fno-omit-frame-pointer -fsanitize=address,undefined -fno-sanitize-recover=all)
tsan=(-g -fsanitize=thread)

for src in examples/c/*.c examples/cpp/*.cpp; do
    name="$(basename "${src%.*}")"
    if [ "$name" = remote_write ]; then
        continue # needs a backend: the end-to-end part below
    fi
    if [[ "$src" == *.cpp ]]; then
        cc=(g++ -std=c++17)
        name="${name}_cpp"
    else
        cc=(gcc -std=c11)
    fi
    build=("${cc[@]}" -Wall -Wextra -Werror -Iinclude "$src" "$lib" -lpthread -ldl -lm)
    run "$src: build" "${build[@]}" -o "$out/$name"
    check "$src: run" "$out/$name"
    run "$src: build with ASan+UBSan" "${build[@]}" "${asan[@]}" -o "$out/$name.asan"
    check "$src: run with ASan+UBSan" "$out/$name.asan"
    if [ "$(basename "$src" | cut -d. -f1)" = threads ]; then
        run "$src: build with TSan" "${build[@]}" "${tsan[@]}" -o "$out/$name.tsan"
        check "$src: run with TSan" "$out/$name.tsan"
    fi
done

# shellcheck disable=SC2046 # pkg-config's output is meant to be split into words.
run "examples/c/threads.c: build through pkg-config" \
    gcc -std=c11 examples/c/threads.c $(PKG_CONFIG_PATH="$root/ffi/pkgconfig" \
    pkg-config --define-variable=profile=debug --cflags --libs weir) -o "$out/threads.pc"
check "examples/c/threads.c: run (pkg-config build)" "$out/threads.pc"

# End to end: examples/cpp/remote_write.cpp forwards through an embedded
# prometheus_remote_write pipeline to a real Prometheus. First with Prometheus down:
# the program flushes into its WAL and kills itself with SIGKILL; then, with
# Prometheus up, a second start on the same data_dir replays the WAL; then a normal
# run. Each time the exact values are read back through PromQL.
if command -v prometheus >/dev/null; then
    port="$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
    mkdir -p "$out/prometheus" "$out/weir-data"
    printf 'scrape_configs: []\n' >"$out/prometheus/prometheus.yml"
    cat >"$out/weir.toml" <<TOML
data_dir = "$out/weir-data"

[[pipelines]]
name = "prometheus"
type = "prometheus_remote_write"
endpoint = "http://127.0.0.1:$port/api/v1/write"

[pipelines.retry]
initial_backoff = "100ms"
max_backoff = "500ms"
TOML
    rw=(g++ -std=c++17 -Wall -Wextra -Werror -Iinclude examples/cpp/remote_write.cpp "$lib" -lpthread -ldl -lm)
    run "examples/cpp/remote_write.cpp: build" "${rw[@]}" -o "$out/remote_write"
    check "remote_write: flush into the WAL, backend down, kill -9" \
        bash -c '"$1" "$2" crash crashed; test "$?" -eq 137' _ "$out/remote_write" "$out/weir.toml"
    prometheus --config.file="$out/prometheus/prometheus.yml" --storage.tsdb.path="$out/prometheus/data" \
        --web.listen-address="127.0.0.1:$port" --web.enable-remote-write-receiver \
        >"$out/prometheus.log" 2>&1 &
    prom_pid=$!
    ready() {
        for _ in $(seq 1 120); do
            curl -sf "http://127.0.0.1:$port/-/ready" >/dev/null && return 0
            sleep 0.5
        done
        cat "$out/prometheus.log"
        return 1
    }
    run "prometheus: ready on 127.0.0.1:$port" ready
    # Reads each PROMQL=VALUE pair back (an instant query; a missing series fails).
    values() {
        local pair promql want got
        for pair in "$@"; do
            promql="${pair%=*}"
            want="${pair##*=}"
            got="$(curl -sf --get --data-urlencode "query=$promql" "http://127.0.0.1:$port/api/v1/query" |
                python3 -c 'import json, sys; r = json.load(sys.stdin)["data"]["result"]; print(r[0]["value"][1] if len(r) == 1 else "missing")')"
            if [ "$got" != "$want" ]; then
                echo "$promql is $got, want $want"
                return 1
            fi
        done
    }
    check "remote_write: restart replays the WAL" "$out/remote_write" "$out/weir.toml" replay
    check "prometheus holds the replayed values" values \
        'e2e_jobs_total{run="crashed"}=42' 'e2e_queue_depth{run="crashed"}=5.5' \
        'e2e_job_seconds_count{run="crashed"}=3' 'e2e_job_seconds_bucket{run="crashed",le="0.25"}=3' \
        'e2e_job_seconds_bucket{run="crashed",le="0.1"}=0'
    check "remote_write: aggregate, flush, close with the backend up" \
        "$out/remote_write" "$out/weir.toml" send live
    check "prometheus holds the sent values" values \
        'e2e_jobs_total{run="live"}=42' 'e2e_queue_depth{run="live"}=5.5' 'e2e_job_seconds_count{run="live"}=3'
else
    echo "end-to-end part skipped: no prometheus binary (scripts/test installs it before this step)"
fi

# End to end through otlp_http (delta) to a weir daemon: exact values in its exposition.
weir_bin="${WEIR_BIN:-$root/target/debug/weir}"
if [ -x "$weir_bin" ] && [ -x "$out/remote_write" ]; then
    # Three distinct free ports, picked while all three sockets are open: separate
    # picks could be handed the same port twice (it happened: "Address already in use").
    read -r otlp_port expo_port grpc_port < <(python3 -c '
import socket
socks = [socket.socket() for _ in range(3)]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(*(s.getsockname()[1] for s in socks))')
    mkdir -p "$out/daemon-data" "$out/otlp-data"
    cat >"$out/daemon.toml" <<TOML
data_dir = "$out/daemon-data"
[aggregation]
flush_interval = "1s"
[receivers.statsd]
enabled = false
[receivers.otlp]
grpc_address = "127.0.0.1:$grpc_port"
http_address = "127.0.0.1:$otlp_port"
[exposition]
address = "127.0.0.1:$expo_port"
[admin]
enabled = false
TOML
    cat >"$out/otlp.toml" <<TOML
data_dir = "$out/otlp-data"
[[pipelines]]
name = "daemon"
type = "otlp_http"
endpoint = "http://127.0.0.1:$otlp_port"
temporality = "delta"
TOML
    "$weir_bin" --config "$out/daemon.toml" >"$out/daemon.log" 2>&1 &
    daemon_pid=$!
    listening() {
        for _ in $(seq 1 120); do
            curl -s -o /dev/null "http://127.0.0.1:$expo_port/metrics" && return 0
            sleep 0.5
        done
        cat "$out/daemon.log"
        return 1
    }
    run "weir daemon: listening (OTLP/HTTP on $otlp_port)" listening
    check "remote_write (otlp_http pipeline): aggregate, flush, close" \
        "$out/remote_write" "$out/otlp.toml" send otlp
    # The daemon's exposition shows the series after its next flush (every 1 s).
    exposed() {
        local body
        for _ in $(seq 1 60); do
            body="$(curl -sf "http://127.0.0.1:$expo_port/metrics" || true)"
            if grep -qE '^e2e_jobs_total\{.*run="otlp".*\} 42$' <<<"$body" &&
                grep -qE '^e2e_queue_depth\{.*run="otlp".*\} 5.5$' <<<"$body" &&
                grep -qE '^e2e_job_seconds_count\{.*run="otlp".*\} 3$' <<<"$body"; then
                return 0
            fi
            sleep 0.5
        done
        grep e2e_ <<<"$body" || echo "no e2e_ series exposed"
        cat "$out/daemon.log"
        return 1
    }
    check "weir daemon exposes the values sent over OTLP" exposed
    kill "$daemon_pid" 2>/dev/null || true
    wait "$daemon_pid" 2>/dev/null || true
    daemon_pid=""
else
    echo "OTLP end-to-end part skipped: no weir binary at $weir_bin (build the workspace first)"
fi

printf 'C suite: %s passed, 0 failed\n' "$passed"
