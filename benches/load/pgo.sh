#!/usr/bin/env bash
# Profile-guided build of llmux (and of the bare Pingora hop, so the benchmark can compare
# like with like): an instrumented build, a short training run of the load benchmark's own
# traffic, `llvm-profdata merge`, and a build that uses the profile.
#
#   benches/load/pgo.sh                # -> target/release/llmux-pgo, target/release/examples/pingora_floor-pgo
#   benches/load/pgo.sh --static       # llmux only, static glibc for the container image
#                                      #    -> target/x86_64-unknown-linux-gnu/release/llmux (PGO)
#
# What PGO buys here and why it is worth a second build: docs/performance.md ("Fifth pass").
# Needs `llvm-profdata` of rustc's own LLVM major version: rustup's `llvm-tools` component,
# or Debian's `llvm-<major>` package (installed when missing, root or sudo). The training
# traffic is the load driver's (non-stream and stream on all three paths, loopback only,
# about a minute for the two binaries); the mock it talks to is the ordinary release
# build, so mock code stays out of the profile. Builds go to their own target directories
# under target/pgo (RUSTFLAGS differ, so sharing one would rebuild everything each time);
# each is a full fat-LTO build.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
cd "$root"

static=""
case "${1:-}" in
    "") ;;
    --static) static=1 ;;
    *)
        echo "usage: benches/load/pgo.sh [--static]" >&2
        exit 2
        ;;
esac

pgo="$root/target/pgo"
host="$(rustc -vV | sed -n 's/^host: //p')"
llvm_major="$(rustc -vV | sed -n 's/^LLVM version: \([0-9]*\).*/\1/p')"

# --- llvm-profdata matching rustc's LLVM -------------------------------------------------
find_profdata() {
    local sysroot
    sysroot="$(rustc --print sysroot)"
    for c in "$sysroot/lib/rustlib/$host/bin/llvm-profdata" "llvm-profdata-$llvm_major" \
        "/usr/lib/llvm-$llvm_major/bin/llvm-profdata"; do
        if command -v "$c" >/dev/null 2>&1; then
            command -v "$c"
            return 0
        fi
    done
    # An unversioned llvm-profdata only if it is the same major version.
    if command -v llvm-profdata >/dev/null 2>&1 &&
        llvm-profdata merge --version 2>/dev/null | grep -q "LLVM version $llvm_major\."; then
        command -v llvm-profdata
        return 0
    fi
    return 1
}
profdata="$(find_profdata || true)"
if [[ -z "$profdata" ]]; then
    command -v apt-get >/dev/null || {
        echo "need llvm-profdata for LLVM $llvm_major (rustup component add llvm-tools)" >&2
        exit 1
    }
    sudo=""
    [[ "$(id -u)" -eq 0 ]] || sudo="sudo"
    echo "installing llvm-$llvm_major (Debian package) for llvm-profdata" >&2
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "llvm-$llvm_major" >/dev/null
    profdata="$(find_profdata)" || { echo "llvm-$llvm_major has no llvm-profdata" >&2; exit 1; }
fi
echo "llvm-profdata: $profdata (rustc's LLVM $llvm_major)" >&2

# --- the mock for training: an ordinary release build --------------------------------------
cargo build --release --bin llmux --example pingora_floor

# --- 1. instrumented build ---------------------------------------------------------------
flags="${RUSTFLAGS:-}"
target_args=()
out_sub="release"
if [[ -n "$static" ]]; then
    flags="$flags -C target-feature=+crt-static"
    target_args=(--target "$host")
    out_sub="$host/release"
fi
what=(--bin llmux)
[[ -z "$static" ]] && what+=(--example pingora_floor)
rm -rf "$pgo/raw"
mkdir -p "$pgo/raw"
RUSTFLAGS="$flags -Cprofile-generate=$pgo/raw" CARGO_TARGET_DIR="$pgo/gen" \
    cargo build --release "${target_args[@]}" "${what[@]}"

# --- 2. training: the benchmark's own traffic, one pass, short points ----------------------
export PATH="$PATH:/usr/sbin"
command -v wrk >/dev/null || {
    echo "training needs wrk (benches/load/run.sh installs it)" >&2
    exit 1
}
train() { # <name> <targets> <floor-bin>
    mkdir -p "$pgo/raw/$1"
    LLVM_PROFILE_FILE="$pgo/raw/$1/%p-%m.profraw" taskset -c 1 python3 "$here/driver.py" run \
        --llmux-bin "$pgo/gen/$out_sub/llmux" --floor-bin "$3" --mock-bin target/release/llmux \
        --targets "$2" --duration 2 --repeats 1 --skip-variants --stream-seconds 2 \
        --ready-repeats 2 --out-dir "$pgo/train-$1" >"$pgo/train-$1.log" 2>&1 ||
        { echo "training $1 failed: $pgo/train-$1.log" >&2; exit 1; }
}
train llmux llmux target/release/examples/pingora_floor
[[ -z "$static" ]] && train floor floor "$pgo/gen/release/examples/pingora_floor"
# One profile for both binaries: the code they share (Pingora, tokio, serde_json) gets the
# counts of both runs, each binary's own code only its own; one build then makes both.
"$profdata" merge -o "$pgo/merged.profdata" "$pgo/raw"/*/*.profraw

# --- 3. the build that uses the profile ----------------------------------------------------
RUSTFLAGS="$flags -Cprofile-use=$pgo/merged.profdata" \
    CARGO_TARGET_DIR="$pgo/use" cargo build --release "${target_args[@]}" "${what[@]}"
if [[ -n "$static" ]]; then
    install -D -m 0755 "$pgo/use/$out_sub/llmux" "target/$out_sub/llmux"
    echo "PGO build: target/$out_sub/llmux" >&2
else
    install -m 0755 "$pgo/use/release/llmux" target/release/llmux-pgo
    install -m 0755 "$pgo/use/release/examples/pingora_floor" target/release/examples/pingora_floor-pgo
    echo "PGO builds: target/release/llmux-pgo, target/release/examples/pingora_floor-pgo" >&2
fi
