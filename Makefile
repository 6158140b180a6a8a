# Thin wrappers around cargo and the `loadtest` CLI (crates/loadtest). `loadtest --help` lists more.
#
# Load runs measure, so they use the optimised `release` profile (`PROFILE=dev make loadtest` for
# the test profile); `make test` builds and tests in the dev profile. The CLI starts the service
# binaries that sit next to its own executable, so one profile builds everything a run starts.

SCENARIO ?= scenarios/seed.toml
PLAN ?= scenarios/capacity/capacity.toml
PROFILE ?= release
LOADTEST := target/$(if $(filter dev test,$(PROFILE)),debug,$(PROFILE))/loadtest
# A scenario with a `panic` fault needs the services' fault hooks, which a normal build leaves out.
FEATURES ?= $(if $(shell grep -qs 'kind *= *"panic"' $(SCENARIO) && echo yes),--features platform/fault-injection)

.PHONY: build up down loadtest capacity verify infra-up infra-down status test alert-rules

build:
	cargo build --profile $(PROFILE) --workspace --bins $(FEATURES)

# PostgreSQL, NATS and the three services on 127.0.0.1:18080-18082 (prefix `shop`, dev credentials).
up: build
	$(LOADTEST) up

# Stop the services, PostgreSQL and NATS that `loadtest` started.
down:
	@if [ -x $(LOADTEST) ]; then $(LOADTEST) down; else cargo run -q -p loadtest -- down; fi

# Everything: infra, fresh databases, services, seed, load, drain, verify, report, stop.
loadtest: build
	$(LOADTEST) run --scenario $(SCENARIO)

# How many orders per second the whole pipeline completes on this machine (steps the rate up).
capacity: build
	$(LOADTEST) capacity --plan $(PLAN)

# Audit the databases of the `up` stack (e.g. after a k6 run); non-zero exit on a failed check.
verify: build
	$(LOADTEST) verify

infra-up: build
	$(LOADTEST) infra-up

infra-down:
	@if [ -x $(LOADTEST) ]; then $(LOADTEST) infra-down; else cargo run -q -p loadtest -- infra-down; fi

status: build
	$(LOADTEST) status

# All tests against private PostgreSQL + NATS (installed if missing), then the short load-test scenarios.
test:
	scripts/test.sh

# promtool's checks and unit tests of the Prometheus alert rules (ops/prometheus; part of `make test`).
alert-rules:
	scripts/alert-rules.sh
