#!/usr/bin/env bash
# Profile-guided build of llmux (and of the bare Pingora hop, so the benchmark can compare
# like with like): an instrumented build, a short training run of the load benchmark's own
# traffic, `llvm-profdata merge`, and a build that uses the profile. Then BOLT lays the
# linked binary out again from a second training run of that build: hot blocks and
# functions together, cold ones split off.
#
#   benches/load/pgo.sh                # -> target/release/llmux-pgo, target/release/examples/pingora_floor-pgo
#   benches/load/pgo.sh --static       # llmux only, static glibc for the container image
#                                      #    -> target/x86_64-unknown-linux-gnu/release/llmux (PGO)
#   benches/load/pgo.sh --no-bolt      # PGO only
#
# The static build (--static) stays PGO only: BOLT's instrumentation of a static-pie binary
# has not been verified here.
#
# What PGO buys here and why it is worth a second build: docs/performance.md ("Fifth pass");
# what BOLT adds on top: "Seventh pass". BOLT needs `llvm-bolt` and `merge-fdata` of the same
# LLVM major version (Debian's `bolt-<major>`, installed when missing); where there is none
# the PGO build is kept and a warning says so.
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
bolt=1
for arg in "$@"; do
    case "$arg" in
        --static) static=1 ;;
        --no-bolt) bolt="" ;;
        *)
            echo "usage: benches/load/pgo.sh [--static] [--no-bolt]" >&2
            exit 2
            ;;
    esac
done
[[ -n "$static" ]] && bolt=""

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
apt_install() { # <package>: install a Debian package (root or sudo); fails without apt
    command -v apt-get >/dev/null || return 1
    local sudo=""
    [[ "$(id -u)" -eq 0 ]] || sudo="sudo"
    echo "installing $1 (Debian package)" >&2
    $sudo apt-get update -qq &&
        DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "$1" >/dev/null
}
profdata="$(find_profdata || true)"
if [[ -z "$profdata" ]]; then
    apt_install "llvm-$llvm_major" || {
        echo "need llvm-profdata for LLVM $llvm_major (rustup component add llvm-tools)" >&2
        exit 1
    }
    profdata="$(find_profdata)" || { echo "llvm-$llvm_major has no llvm-profdata" >&2; exit 1; }
fi
echo "llvm-profdata: $profdata (rustc's LLVM $llvm_major)" >&2

# --- llvm-bolt and merge-fdata of the same LLVM --------------------------------------------
bolt_bin=""
merge_fdata=""
find_bolt() {
    local dir
    for dir in "/usr/lib/llvm-$llvm_major/bin" "$(dirname "$profdata")"; do
        if [[ -x "$dir/llvm-bolt" && -x "$dir/merge-fdata" ]]; then
            bolt_bin="$dir/llvm-bolt"
            merge_fdata="$dir/merge-fdata"
            return 0
        fi
    done
    return 1
}
if [[ -n "$bolt" ]] && ! find_bolt; then
    apt_install "bolt-$llvm_major" >&2 || true
    find_bolt || {
        echo "warning: no llvm-bolt for LLVM $llvm_major (Debian: bolt-$llvm_major); building PGO only" >&2
        bolt=""
    }
fi
[[ -n "$bolt" ]] && echo "llvm-bolt: $bolt_bin" >&2

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
train() { # <run name> <targets> <llmux-bin> <floor-bin>
    taskset -c 1 python3 "$here/driver.py" run \
        --llmux-bin "$3" --floor-bin "$4" --mock-bin target/release/llmux \
        --targets "$2" --duration 2 --repeats 1 --skip-variants --stream-seconds 2 \
        --ready-repeats 2 --sustain-seconds 0 --out-dir "$pgo/train-$1" >"$pgo/train-$1.log" 2>&1 ||
        { echo "training $1 failed: $pgo/train-$1.log" >&2; exit 1; }
}
mkdir -p "$pgo/raw/llmux" "$pgo/raw/floor"
LLVM_PROFILE_FILE="$pgo/raw/llmux/%p-%m.profraw" \
    train llmux llmux "$pgo/gen/$out_sub/llmux" target/release/examples/pingora_floor
[[ -z "$static" ]] && LLVM_PROFILE_FILE="$pgo/raw/floor/%p-%m.profraw" \
    train floor floor target/release/llmux "$pgo/gen/release/examples/pingora_floor"
# One profile for both binaries: the code they share (Pingora, tokio, serde_json) gets the
# counts of both runs, each binary's own code only its own; one build then makes both.
"$profdata" merge -o "$pgo/merged.profdata" "$pgo/raw"/*/*.profraw

# --- 3. the build that uses the profile ----------------------------------------------------
# BOLT moves functions only in a binary that keeps its relocations (--emit-relocs: larger
# on disk, the same code). Its own target directory, so PGO-only builds stay incremental.
use_dir="$pgo/use"
use_flags="$flags -Cprofile-use=$pgo/merged.profdata"
if [[ -n "$bolt" ]]; then
    use_dir="$pgo/use-relocs"
    use_flags="$use_flags -Clink-arg=-Wl,--emit-relocs"
fi
RUSTFLAGS="$use_flags" CARGO_TARGET_DIR="$use_dir" cargo build --release "${target_args[@]}" "${what[@]}"
llmux_out="$use_dir/$out_sub/llmux"
floor_out="$use_dir/release/examples/pingora_floor"

# --- 4. BOLT: instrument the PGO build, train it again, lay it out ---------------------------
if [[ -n "$bolt" ]]; then
    rm -rf "$pgo/bolt"
    mkdir -p "$pgo/bolt"
    instrument() { # <name> <binary>: writes $pgo/bolt/<name>.inst; its runs write <name>.<pid>.fdata
        "$bolt_bin" "$2" -instrument -instrumentation-file="$pgo/bolt/$1" \
            -instrumentation-file-append-pid -o "$pgo/bolt/$1.inst" >"$pgo/bolt/$1.instrument.log" 2>&1 ||
            { echo "BOLT instrumentation of $1 failed: $pgo/bolt/$1.instrument.log" >&2; exit 1; }
    }
    optimize() { # <name> <binary>: merges the runs' profiles and writes $pgo/bolt/<name>
        local runs=("$pgo/bolt/$1".*.fdata)
        [[ -e "${runs[0]}" ]] || { echo "BOLT training of $1 wrote no profile" >&2; exit 1; }
        "$merge_fdata" "${runs[@]}" >"$pgo/bolt/$1.fdata" 2>/dev/null
        "$bolt_bin" "$2" -o "$pgo/bolt/$1" -data="$pgo/bolt/$1.fdata" \
            -reorder-blocks=ext-tsp -reorder-functions=cdsort -split-functions -split-all-cold \
            -split-eh -icf=1 -use-gnu-stack >"$pgo/bolt/$1.optimize.log" 2>&1 ||
            { echo "BOLT layout of $1 failed: $pgo/bolt/$1.optimize.log" >&2; exit 1; }
    }
    instrument llmux "$llmux_out"
    train bolt-llmux llmux "$pgo/bolt/llmux.inst" target/release/examples/pingora_floor
    optimize llmux "$llmux_out"
    llmux_out="$pgo/bolt/llmux"
    if [[ -z "$static" ]]; then
        instrument pingora_floor "$floor_out"
        train bolt-floor floor target/release/llmux "$pgo/bolt/pingora_floor.inst"
        optimize pingora_floor "$floor_out"
        floor_out="$pgo/bolt/pingora_floor"
    fi
fi

if [[ -n "$static" ]]; then
    install -D -m 0755 "$llmux_out" "target/$out_sub/llmux"
    echo "PGO${bolt:+ + BOLT} build: target/$out_sub/llmux" >&2
else
    install -m 0755 "$llmux_out" target/release/llmux-pgo
    install -m 0755 "$floor_out" target/release/examples/pingora_floor-pgo
    echo "PGO${bolt:+ + BOLT} builds: target/release/llmux-pgo, target/release/examples/pingora_floor-pgo" >&2
fi
