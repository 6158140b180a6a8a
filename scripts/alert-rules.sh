#!/usr/bin/env bash
# The Prometheus alerting rules (ops/prometheus): `promtool check config` (the scrape
# configuration, and the rule files it loads), `promtool check rules`, and
# `promtool test rules` (alerts.test.yml: every rule fires in its test and stays quiet on a
# healthy sample). Part of `make test` (`SKIP_ALERT_RULES=1` skips it); alone: `make alert-rules`.
#
# promtool: the one on PATH, else the one in Debian's `prometheus` package, downloaded and
# unpacked under the state directory (`$ORDERSYS_STATE_DIR/tools`, default .run/tools) but not
# installed — installing the package would start a Prometheus server on this machine.
set -euo pipefail
cd "$(dirname "$0")/.."

rules_dir=ops/prometheus

promtool=$(command -v promtool || true)
if [ -z "$promtool" ]; then
    tools="${ORDERSYS_STATE_DIR:-.run}/tools/prometheus"
    promtool="$tools/usr/bin/promtool"
    if [ ! -x "$promtool" ]; then
        echo "== promtool: downloading Debian's prometheus package into $tools"
        mkdir -p "$tools/deb"
        download() {
            (cd "$tools/deb" && apt-get download -q -o APT::Sandbox::User=root prometheus)
        }
        # A stale package list names a version the mirror no longer has: update, then retry.
        download || { apt-get update -q && download; }
        dpkg-deb -x "$(ls "$tools"/deb/prometheus_*.deb | tail -n 1)" "$tools"
    fi
fi
echo "== alert rules ($("$promtool" --version 2>&1 | head -n 1))"

"$promtool" check config "$rules_dir/prometheus.yml"
"$promtool" check rules "$rules_dir/alerts.yml"
"$promtool" test rules "$rules_dir/alerts.test.yml"

# promtool checks what the tests assert; that every rule has a test in which it fires and an
# evaluation at which it must stay quiet is checked here.
untested=$(awk '
    FNR == NR { if ($1 == "-" && $2 == "alert:") rules[$3] = 1; next }
    $1 == "alertname:" { name = $2 }
    $1 == "exp_alerts:" { if ($2 == "[]") quiet[name] = 1; else fires[name] = 1 }
    END {
        for (rule in rules) {
            if (!(rule in fires)) print rule ": no test in which it fires"
            if (!(rule in quiet)) print rule ": no evaluation at which it stays quiet"
        }
    }' "$rules_dir/alerts.yml" "$rules_dir/alerts.test.yml")
if [ -n "$untested" ]; then
    echo "alert rules: not every rule is tested both ways:" >&2
    echo "$untested" >&2
    exit 1
fi

rules=$(grep -c '^ *- alert:' "$rules_dir/alerts.yml")
tests=$(grep -c '^  - name:' "$rules_dir/alerts.test.yml")
evaluations=$(grep -c '^ *alertname:' "$rules_dir/alerts.test.yml")
echo "alert rules: $rules rules checked; $tests promtool tests ($evaluations evaluations) passed"
