#!/usr/bin/env bash
# The whole test suite, as CI runs it (README's test command; .ci/run calls this).
# Release builds throughout: the CPU conformance and boot tests need an optimised interpreter,
# and one profile means one compilation.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ ! -d ../shared/conformance ]; then
    echo "error: ../shared (the steering repository's reference data) must sit beside this checkout;" >&2
    echo "       the CPU conformance tests read ../shared/conformance." >&2
    exit 1
fi

cargo fmt --all -- --check
cargo clippy --workspace --all-targets --release -- -D warnings
cargo test --workspace --release
