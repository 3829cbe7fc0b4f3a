#!/usr/bin/env bash
# Short fuzzing run of every cargo-fuzz target in fuzz/, for CI.
#
#   scripts/fuzz-smoke.sh              # each target for 20 s
#   FUZZ_SECONDS=120 scripts/fuzz-smoke.sh
#   FUZZ_TARGETS="decode_frames" scripts/fuzz-smoke.sh
#
# Installs cargo-fuzz if it is missing. cargo-fuzz needs nightly features:
# RUSTC_BOOTSTRAP=1 lets the stable toolchain use them. The sanitizer is
# AddressSanitizer unless FUZZ_SANITIZER says otherwise (e.g. "none", if a
# toolchain lacks the ASan runtime).
#
# Each target runs on the corpus kept in fuzz/corpus/<target>/, read-only:
# new inputs go to a temporary directory (the first corpus directory given to
# libFuzzer is the one it writes to), so the run leaves the repository as it
# was. A crash (panic, overflow, sanitizer report, out-of-memory, timeout)
# fails the script; the crashing input is left in fuzz/artifacts/<target>/
# (ignored by git) and the libFuzzer output says how to reproduce it.
#
# A cold run (cargo-fuzz install and instrumented build of stompgate and its
# dependencies) takes minutes on a 2-core machine; later runs reuse
# fuzz/target/.
set -euo pipefail

cd "$(dirname "$0")/.."

seconds="${FUZZ_SECONDS:-20}"
sanitizer="${FUZZ_SANITIZER:-address}"
targets="${FUZZ_TARGETS:-decode_frames session_sequences ws_frames}"
export RUSTC_BOOTSTRAP=1

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "fuzz-smoke: installing cargo-fuzz"
    cargo install cargo-fuzz --locked
fi

echo "fuzz-smoke: building ($(cargo fuzz --version), sanitizer ${sanitizer})"
cargo fuzz build --sanitizer "${sanitizer}"

scratch="$(mktemp -d)"
trap 'rm -rf "${scratch}"' EXIT

failed=()
for target in ${targets}; do
    corpus="fuzz/corpus/${target}"
    mkdir -p "${scratch}/${target}"
    echo "fuzz-smoke: ${target} for ${seconds} s on ${corpus} ($(find "${corpus}" -type f | wc -l) inputs)"
    if cargo fuzz run --sanitizer "${sanitizer}" "${target}" \
        "${scratch}/${target}" "${corpus}" -- \
        -max_total_time="${seconds}" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
        >"${scratch}/${target}.log" 2>&1; then
        grep -E '^#[0-9]+[[:space:]]+DONE|^stat::number_of_executed_units|^stat::average_exec_per_sec' \
            "${scratch}/${target}.log" || true
        echo "fuzz-smoke: ${target}: ok"
    else
        tail -n 60 "${scratch}/${target}.log"
        echo "fuzz-smoke: ${target}: FAILED (input in fuzz/artifacts/${target}/)"
        failed+=("${target}")
    fi
done

if ((${#failed[@]} > 0)); then
    echo "fuzz-smoke: crashes in: ${failed[*]}"
    exit 1
fi
echo "fuzz-smoke: no crash"
