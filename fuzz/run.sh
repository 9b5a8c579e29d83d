#!/usr/bin/env bash
# Fuzzes the wscap C ABI for a bounded time with cargo-fuzz (libFuzzer + AddressSanitizer).
#
#   fuzz/run.sh [SECONDS] [TARGET] [-- extra libFuzzer flags]      (defaults: 60, api)
#
# Installs cargo-fuzz if missing. cargo-fuzz needs nightly-only rustc flags (-Zsanitizer=address,
# and -Z options of its own); on a stable toolchain RUSTC_BOOTSTRAP=1 lets rustc accept them.
# The corpus lives in fuzz/corpus/TARGET and crashes in fuzz/artifacts/TARGET (both gitignored);
# a crash makes this script exit non-zero and prints the reproduce command.
set -euo pipefail

secs="${1:-60}"
target="${2:-api}"
shift $(( $# > 2 ? 2 : $# ))
[ "${1:-}" = "--" ] && shift

cd "$(dirname "$0")"
if ! command -v cargo-fuzz >/dev/null 2>&1; then
    cargo install cargo-fuzz --version =0.13.2 --locked
fi

export RUSTC_BOOTSTRAP=1
# Build into fuzz/target: sanitizer flags would otherwise invalidate the main build cache.
unset CARGO_TARGET_DIR
mkdir -p "corpus/$target" "artifacts/$target"

exec cargo fuzz run "$target" --sanitizer address -- \
    -max_total_time="$secs" -print_final_stats=1 -timeout=10 -rss_limit_mb=2048 \
    -max_len=4096 "$@"
