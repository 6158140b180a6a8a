#!/usr/bin/env bash
# `make test`: everything the tests need, then all of them.
#  1. build the workspace (services, CLI, tests) in the one dev profile, with the services' fault
#     hooks (`platform/fault-injection`: the ci-heal scenario's panic fault arms them);
#  2. install (if missing) and start private PostgreSQL and NATS instances (`loadtest infra-up`);
#  3. run every test against them, then promtool's checks and unit tests of the Prometheus
#     alert rules (scripts/alert-rules.sh), then schemathesis against the services' OpenAPI
#     documents (scripts/contract.sh);
#  4. run the short load-test scenario end to end (same code path and checks as the seed run),
#     then the short chaos scenario (faults during the load, same checks), then the short
#     self-healing scenario (deleted consumer and stream, a panicking handler, poison), the
#     short cluster scenario, and the short boundaries scenario (forged events, a read-only
#     database, cut COMMITs, slow clients, an altered consumer);
#  5. stop what this script started, by PID.
set -euo pipefail
cd "$(dirname "$0")/.."

# One feature set for the build and the tests, so cargo builds everything once.
features=(--features platform/fault-injection)
cargo build --workspace --bins --tests "${features[@]}"

loadtest=target/debug/loadtest
already_up=$("$loadtest" status --infra-running 2>/dev/null || true)
exports=$("$loadtest" infra-up)
eval "$exports"
if [ "$already_up" != "yes" ]; then
    trap '"$loadtest" down >/dev/null 2>&1 || true' EXIT
fi

# The URLs carry the private instances' passwords: print them without.
echo "== tests (PostgreSQL: ${ORDERSYS_DATABASE_URL//:[0-9a-f]*@/:***@}, NATS: ${ORDERSYS_NATS_URL//:[0-9a-f]*@/:***@})"
test_log=$(mktemp)
cargo test --workspace "${features[@]}" 2>&1 | tee "$test_log"
# Totals over every test binary (cargo prints one `test result:` line each).
totals=$(awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($i ~ /^passed;?$/) p += $(i-1); if ($i ~ /^failed;?$/) f += $(i-1) } }
              END { printf "%d passed, %d failed", p, f }' "$test_log")
rm -f "$test_log"

if [ "${SKIP_ALERT_RULES:-0}" != "1" ]; then
    # The Prometheus alert rules: promtool's checks and the rules' unit tests (ops/prometheus).
    scripts/alert-rules.sh
fi

if [ "${SKIP_CONTRACT:-0}" != "1" ]; then
    # The OpenAPI documents against the running services: schemathesis, every check, 0 findings.
    scripts/contract.sh
fi

if [ "${SKIP_LOADTEST:-0}" != "1" ]; then
    echo "== short load-test scenario"
    "$loadtest" run --scenario scenarios/ci-short.toml
    echo "== short chaos scenario (service kill, replica kill, NATS crash)"
    "$loadtest" run --scenario scenarios/ci-chaos.toml
    echo "== short self-healing scenario (deleted consumer and stream, panicking handler, poison)"
    "$loadtest" run --scenario scenarios/ci-heal.toml
    echo "== short cluster scenario (hosts in network namespaces, 3-node NATS cluster: partitions, delay, loss, leader kill and pause)"
    "$loadtest" run --scenario scenarios/cluster-chaos-short.toml
    echo "== short boundaries scenario (forged events, read-only database, cut COMMITs, slow clients, altered consumer)"
    "$loadtest" run --scenario scenarios/ci-boundaries.toml
fi
echo "tests: $totals"
