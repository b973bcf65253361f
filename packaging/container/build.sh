#!/usr/bin/env bash
# Builds the weir container image from scratch: a statically linked release binary
# (glibc, +crt-static; no musl toolchain needed), then `podman build` (or docker)
# of packaging/container/Containerfile.
#
#   packaging/container/build.sh [--tag weir:latest] [--profile release] [--binary-only]
#
# --binary-only stops after the binary and prints its path. The binary is
# target/<host triple>/<profile>/weir; the image's context is a temp dir holding it
# and this directory's files.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
tag="weir:latest"
profile="release"
binary_only=0
while [ $# -gt 0 ]; do
    case "$1" in
        --tag) tag="$2"; shift 2 ;;
        --profile) profile="$2"; shift 2 ;;
        --binary-only) binary_only=1; shift ;;
        *) echo "build.sh: unknown argument: $1" >&2; exit 2 ;;
    esac
done

triple="$(rustc -vV | sed -n 's/^host: //p')"
# An explicit --target keeps +crt-static off build scripts and proc macros, which must
# stay dynamic to load into cargo's process.
(
    cd "$root"
    RUSTFLAGS="${RUSTFLAGS:-} -C target-feature=+crt-static" \
        cargo build --locked --profile "$profile" --target "$triple" -p weir-collector --bin weir
)
binary="$root/target/$triple/$profile/weir"
if [ "$profile" = "dev" ]; then
    binary="$root/target/$triple/debug/weir"
fi
if ! file "$binary" 2>/dev/null | grep -q 'static'; then
    if ldd "$binary" >/dev/null 2>&1; then
        echo "build.sh: $binary is dynamically linked" >&2
        exit 1
    fi
fi
if [ "$binary_only" -eq 1 ]; then
    echo "$binary"
    exit 0
fi

engine="$(command -v podman || command -v docker || true)"
if [ -z "$engine" ]; then
    echo "build.sh: neither podman nor docker is installed" >&2
    exit 1
fi
context="$(mktemp -d "${TMPDIR:-/tmp}/weir-image.XXXXXX")"
trap 'rm -rf "$context"' EXIT
cp "$binary" "$context/weir"
cp "$here/weir.toml" "$here/passwd" "$here/group" "$context/"
mkdir "$context/data"
format=()
if [ "$(basename "$engine")" = "podman" ]; then
    format=(--format docker)
fi
"$engine" build "${format[@]}" -t "$tag" -f "$here/Containerfile" "$context"
