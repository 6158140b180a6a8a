# Thin wrappers around cargo and the `loadtest` CLI (crates/loadtest). `loadtest --help` lists more.

SCENARIO ?= scenarios/seed.toml
LOADTEST := target/debug/loadtest
# A scenario with a `panic` fault needs the services' fault hooks, which a normal build leaves out.
FEATURES ?= $(if $(shell grep -qs 'kind *= *"panic"' $(SCENARIO) && echo yes),--features platform/fault-injection)

.PHONY: build up down loadtest verify infra-up infra-down status test

build:
	cargo build --workspace --bins $(FEATURES)

# PostgreSQL, NATS and the three services on 127.0.0.1:18080-18082 (prefix `shop`, dev credentials).
up: build
	$(LOADTEST) up

# Stop the services, PostgreSQL and NATS that `loadtest` started.
down:
	@if [ -x $(LOADTEST) ]; then $(LOADTEST) down; else cargo run -q -p loadtest -- down; fi

# Everything: infra, fresh databases, services, seed, load, drain, verify, report, stop.
loadtest: build
	$(LOADTEST) run --scenario $(SCENARIO)

# Audit the databases of the `up` stack (e.g. after a k6 run); non-zero exit on a failed check.
verify: build
	$(LOADTEST) verify

infra-up: build
	$(LOADTEST) infra-up

infra-down:
	@if [ -x $(LOADTEST) ]; then $(LOADTEST) infra-down; else cargo run -q -p loadtest -- infra-down; fi

status: build
	$(LOADTEST) status

# All tests against private PostgreSQL + NATS (installed if missing), then the short load-test scenario.
test:
	scripts/test.sh
