#!/usr/bin/env bash
# llmux load benchmark: llmux vs a bare Pingora hop ("floor") vs nginx, same run, same mock.
#
#   benches/load/run.sh                    # build release, install wrk/nginx-light if missing, run
#   benches/load/run.sh --duration 3       # any driver.py option (see driver.py run --help)
#   SKIP_BUILD=1 benches/load/run.sh       # reuse target/release binaries
#   benches/load/run.sh --pgo              # llmux and the floor as profile-guided builds laid
#                                          # out by BOLT (benches/load/pgo.sh, ~25 min more);
#                                          # the plain builds run beside them as variants
#
# Needs Linux with 2+ CPUs, Python 3, taskset (util-linux), Rust; on Debian/Ubuntu it installs
# `wrk` and `nginx-light` itself (root or sudo). Loopback only. Takes about 5 minutes after
# the build. The table is printed and saved to target/bench-load/latest.md (+ .json).
# Every process started is stopped on exit, Ctrl-C or SIGTERM.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
cd "$root"

pidfile="$(mktemp -t llmux-load-pids.XXXXXX)"
driver_pid=""
cleanup() {
    local rc=$?
    trap - EXIT INT TERM HUP
    if [[ -n "$driver_pid" ]] && kill -0 "$driver_pid" 2>/dev/null; then
        kill -TERM "$driver_pid" 2>/dev/null || true
        for _ in $(seq 50); do kill -0 "$driver_pid" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$driver_pid" 2>/dev/null || true
    fi
    # Anything the driver started and could not stop itself (it records their pids).
    if [[ -s "$pidfile" ]]; then
        while read -r pid; do
            [[ -n "$pid" ]] && kill -KILL "$pid" 2>/dev/null || true
        done <"$pidfile"
    fi
    rm -f "$pidfile"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM HUP

# --- prerequisites -----------------------------------------------------------------------
extra=()
one_cpu=""
pgo=""
args=()
for arg in "$@"; do
    if [[ "$arg" == "--pgo" ]]; then pgo=1; else args+=("$arg"); fi
done
set -- "${args[@]}"
if [[ "$(nproc)" -lt 2 ]]; then
    echo "warning: one CPU only; proxy and load generator will share it" >&2
    extra=(--proxy-cpu 0 --load-cpu 0)
    one_cpu=1
fi
for tool in python3 taskset cargo; do
    command -v "$tool" >/dev/null || { echo "missing $tool" >&2; exit 1; }
done
missing=()
command -v wrk >/dev/null || missing+=(wrk)
command -v nginx >/dev/null || [[ -x /usr/sbin/nginx ]] || missing+=(nginx-light)
if ((${#missing[@]})); then
    command -v apt-get >/dev/null || { echo "install: ${missing[*]}" >&2; exit 1; }
    sudo=""
    [[ "$(id -u)" -eq 0 ]] || sudo="sudo"
    echo "installing ${missing[*]} (Debian packages)" >&2
    # policy-rc.d stops the package from starting a system nginx on port 80.
    policy_added=""
    if [[ ! -e /usr/sbin/policy-rc.d ]]; then
        printf '#!/bin/sh\nexit 101\n' | $sudo tee /usr/sbin/policy-rc.d >/dev/null
        $sudo chmod +x /usr/sbin/policy-rc.d
        policy_added=1
    fi
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    [[ -n "$policy_added" ]] && $sudo rm -f /usr/sbin/policy-rc.d
fi
export PATH="$PATH:/usr/sbin"

# --- build -------------------------------------------------------------------------------
if [[ -z "${SKIP_BUILD:-}" ]]; then
    if [[ -n "$pgo" ]]; then
        "$here/pgo.sh"
    else
        cargo build --release --bin llmux --example pingora_floor
    fi
fi
if [[ -n "$pgo" ]]; then
    extra+=(--llmux-bin target/release/llmux-pgo --floor-bin target/release/examples/pingora_floor-pgo
        --plain-llmux-bin target/release/llmux --plain-floor-bin target/release/examples/pingora_floor)
fi

# --- run ---------------------------------------------------------------------------------
echo "load average: $(cut -d' ' -f1-3 /proc/loadavg) (numbers are cleanest below 0.7)" >&2
# The driver (and the wrk / stream client it starts) stays off the proxy's CPU.
# (Only on one CPU does it share the proxy's: --pgo's binary options are no reason to.)
load_cpu=1
[[ -n "$one_cpu" ]] && load_cpu=0
for ((i = 1; i <= $#; i++)); do
    [[ "${!i}" == "--load-cpu" ]] && { j=$((i + 1)); load_cpu="${!j}"; }
done
taskset -c "$load_cpu" python3 "$here/driver.py" run --pidfile "$pidfile" "${extra[@]}" "$@" &
driver_pid=$!
wait "$driver_pid"
