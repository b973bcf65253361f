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
# and links threads.c once more through the pkg-config file (ffi/pkgconfig/weir.pc).
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
trap 'rm -rf "$out"' EXIT

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

printf 'C suite: %s passed, 0 failed\n' "$passed"
