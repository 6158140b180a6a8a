#!/usr/bin/env bash
# `make test`: everything the tests need, then all of them.
#  1. build the workspace (services, CLI, tests) in the one dev profile;
#  2. install (if missing) and start private PostgreSQL and NATS instances (`loadtest infra-up`);
#  3. run every test against them;
#  4. run the short load-test scenario end to end (same code path and checks as the seed run),
#     then the short chaos scenario (faults during the load, same checks);
#  5. stop what this script started, by PID.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build --workspace --bins --tests

loadtest=target/debug/loadtest
already_up=$("$loadtest" status --infra-running 2>/dev/null || true)
exports=$("$loadtest" infra-up)
eval "$exports"
if [ "$already_up" != "yes" ]; then
    trap '"$loadtest" down >/dev/null 2>&1 || true' EXIT
fi

echo "== tests (PostgreSQL: $ORDERSYS_DATABASE_URL, NATS: $ORDERSYS_NATS_URL)"
test_log=$(mktemp)
cargo test --workspace 2>&1 | tee "$test_log"
# Totals over every test binary (cargo prints one `test result:` line each).
totals=$(awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($i ~ /^passed;?$/) p += $(i-1); if ($i ~ /^failed;?$/) f += $(i-1) } }
              END { printf "%d passed, %d failed", p, f }' "$test_log")
rm -f "$test_log"

if [ "${SKIP_LOADTEST:-0}" != "1" ]; then
    echo "== short load-test scenario"
    "$loadtest" run --scenario scenarios/ci-short.toml
    echo "== short chaos scenario (service kill, replica kill, NATS crash)"
    "$loadtest" run --scenario scenarios/ci-chaos.toml
fi
echo "tests: $totals"
