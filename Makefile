# Tillflow. `make` alone lists the targets.
SHELL := /bin/bash
.DEFAULT_GOAL := help
PY := .venv/bin/python
COMPOSE ?= docker compose
# Docker Swarm (README, "Growing past one VPS"): DEPLOY_MODE=swarm in .env or the environment.
SWARM ?= python3 deploy/swarm.py
DEPLOY_MODE ?= $(shell grep -s '^DEPLOY_MODE=' .env | cut -d= -f2)
PYTEST_ARGS ?=

.PHONY: help
help: ## List the targets
	@grep -hE '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  \033[1m%-19s\033[0m %s\n", $$1, $$2}'

# -- Docker (production path) -------------------------------------------------
.PHONY: secrets up down destroy logs
secrets: ## Create random secret files under ./secrets (never overwrites)
	@bash scripts/make-secrets

up: secrets ## Start the whole stack with docker compose
	$(COMPOSE) up -d --build
	@bind=$$(grep -s '^TILLFLOW_BIND=' .env | cut -d= -f2); bind=$${bind:-127.0.0.1}; \
	 echo "Tillflow is up:"; \
	 echo "  API      http://$$bind:$$(grep -s '^TILLFLOW_API_PORT=' .env | cut -d= -f2 || true)$$( [ -z "$$(grep -s '^TILLFLOW_API_PORT=' .env)" ] && echo 8000)/docs"; \
	 echo "  Grafana  http://$$bind:$$(grep -s '^GRAFANA_PORT=' .env | cut -d= -f2 || true)$$( [ -z "$$(grep -s '^GRAFANA_PORT=' .env)" ] && echo 3000)"; \
	 echo "  Inbox    ./inbox (CSV files named retail_DD_MM_YYYY.csv)"

down: ## Stop the compose stack (keeps data)
	$(COMPOSE) down

destroy: ## Stop the compose stack and DELETE its volumes
	$(COMPOSE) down --volumes

logs: ## Follow the compose stack's logs
	$(COMPOSE) logs -f --tail=100

.PHONY: migrate
migrate: ## Apply the SQL migrations: compose one-shot, or the native stack if .local/env exists
	@if [ -f .local/env ]; then \
	  source .local/env && DATABASE_URL="$$POSTGRES_SUPERUSER_URL" $(PY) -m tillflow migrate; \
	else $(COMPOSE) run --rm migrate; fi

# Backups: in the compose stack's backup service, or on the native stack if
# .local/env exists (in BACKUP_DIR, default .local/backups). A restore runs as
# the superuser, like migrate: in the migrate service's container, which sees
# the backups read-only. REPLACE=1 stops the writers around it, and the consumer
# then replays from Kafka what came after the backup (RESTORE_ARGS=--accept-loss
# goes ahead although Kafka lost some of it; --no-replay skips the replay).
.PHONY: backup restore
backup: ## Take a backup now, check it, apply retention (`tillflow backup list` lists them)
	@if [ -f .local/env ]; then \
	  source .local/env && DATABASE_URL="$$TILLFLOW_BACKUP_URL" BACKUP_DIR="$${BACKUP_DIR:-.local/backups}" \
	    $(PY) -m tillflow backup run; \
	else $(COMPOSE) exec backup tillflow backup run; fi

restore: ## Restore FILE=<backup> into a new database; REPLACE=1 over the live one, then replay Kafka (RESTORE_ARGS=--accept-loss)
	@test -n "$(FILE)" || { echo "usage: make restore FILE=<backup name or .dump> [REPLACE=1]" >&2; exit 2; }
	@if [ -f .local/env ]; then \
	  $(if $(REPLACE),$(PY) -m devstack.local stop consumer watcher api;) rc=0; \
	  ( source .local/env && DATABASE_URL="$$POSTGRES_SUPERUSER_URL" BACKUP_DIR="$${BACKUP_DIR:-.local/backups}" \
	    $(PY) -m tillflow backup restore "$(FILE)" $(if $(REPLACE),--replace --yes $(RESTORE_ARGS)) ) || rc=$$?; \
	  $(if $(REPLACE),$(PY) -m devstack.local start consumer watcher api;) exit $$rc; \
	else \
	  $(if $(REPLACE),$(COMPOSE) stop consumer watcher api;) rc=0; \
	  $(COMPOSE) run --rm --no-deps migrate backup restore "$(FILE)" $(if $(REPLACE),--replace --yes $(RESTORE_ARGS)) || rc=$$?; \
	  $(if $(REPLACE),$(COMPOSE) start consumer watcher api;) exit $$rc; \
	fi

# The smoke check: in the compose stack's smoke service, or on the native stack
# if .local/env exists. deploy/redeploy runs it after every deploy.
.PHONY: smoke
smoke: ## Check the running stack end to end: services ready, a backup, a canary through the API into PostgreSQL
	@if [ -f .local/env ]; then \
	  source .local/env && BACKUP_DIR="$${BACKUP_DIR:-.local/backups}" $(PY) -m tillflow smoke; \
	elif [ "$(DEPLOY_MODE)" = swarm ]; then $(SWARM) run smoke; \
	else $(COMPOSE) run --rm -T smoke; fi

# -- Docker Swarm (several hosts) -------------------------------------------------
.PHONY: swarm-config swarm-deploy
swarm-config: ## Write the Swarm stack file generated from docker-compose.yml (.deploy/swarm/tillflow-stack.yml)
	$(SWARM) config

swarm-deploy: secrets ## docker stack deploy the generated stack on this swarm manager, wait until it converged and is healthy
	$(SWARM) deploy

# -- Native stack (no Docker) ---------------------------------------------------
.PHONY: deps local local-down local-destroy local-status
deps: ## Install PostgreSQL, Java, Maven, the virtualenv and Kafka's jars
	@bash scripts/bootstrap

local: deps ## Start PostgreSQL, 3 Kafka brokers and the services natively; writes .local/env
	@$(PY) -m devstack.local up

local-down: ## Stop the native stack (keeps data)
	@$(PY) -m devstack.local down

local-destroy: ## Stop the native stack and DELETE its data
	@$(PY) -m devstack.local destroy

local-status: ## Show what the native stack runs
	@$(PY) -m devstack.local status

# -- Development -----------------------------------------------------------------
.PHONY: test test-stack test-swarm test-unit bench bench-ingest bench-backup bench-api bench-compare bench-queries bench-partitioning bench-idle lock
# With Docker (the default): an engine made to answer (scripts/docker-engine),
# the images docker-compose.yml names (tests/images/build: the official ones
# where a registry answers, else the project's stand-ins), the suite, then the
# compose stack end to end (tests/stack) in a run of its own: it restarts the
# Docker daemon; then the Swarm stack on three engines of this machine
# (tests/swarm, make test-swarm). TILLFLOW_TEST_NATIVE=1: native PostgreSQL and
# Kafka, no Docker, and so neither the compose nor the swarm tests.
test: deps ## Install everything needed, start real services, run the whole test suite
	@if [ "$${TILLFLOW_TEST_NATIVE:-}" = 1 ]; then \
	  echo "make test: TILLFLOW_TEST_NATIVE=1: native services; the compose and swarm stack tests (tests/stack, tests/swarm) are left out"; \
	else bash scripts/docker-engine && $(PY) tests/images/build; fi
	$(PY) -m pytest $(PYTEST_ARGS)
	@if [ "$${TILLFLOW_TEST_NATIVE:-}" != 1 ]; then $(PY) -m pytest tests/stack $(PYTEST_ARGS); fi
	@if [ "$${TILLFLOW_TEST_NATIVE:-}" != 1 ]; then $(PY) -m pytest tests/swarm $(PYTEST_ARGS); fi

test-stack: deps ## Only the compose stack end to end (needs Docker; tests/stack)
	bash scripts/docker-engine && $(PY) tests/images/build
	$(PY) -m pytest tests/stack $(PYTEST_ARGS)

test-swarm: deps ## The Swarm stack on three Docker engines of this machine: a whole host lost, a rolling update (root; tests/swarm)
	bash scripts/docker-engine && $(PY) tests/images/build
	$(PY) -m pytest tests/swarm $(PYTEST_ARGS)

test-unit: deps ## Run the unit tests only (no services)
	$(PY) -m pytest tests/unit $(PYTEST_ARGS)

bench: deps ## All benchmarks on the native stack, each against a ceiling measured in the same run (bench/results/)
	$(PY) -m bench.ingest
	$(PY) -m bench.backup
	$(PY) -m bench.api
	$(PY) -m bench.queries

bench-ingest: deps ## Ingest: 1M rows through the pipeline vs a COPY ceiling
	$(PY) -m bench.ingest

bench-backup: deps ## Backup and restore of 1M rows vs bare pg_dump/pg_restore; recovery (restore --replace + Kafka replay of 100,000 rows) vs pg_restore
	$(PY) -m bench.backup

bench-api: deps ## API: HTTP and WebSocket vs a plain kafka-python producer loop
	$(PY) -m bench.api

bench-compare: deps ## bench-ingest and bench-api on BASE=<commit> and on the working tree, in one run
	@test -n "$(BASE)" || { echo "make bench-compare: give the commit to compare with, e.g. BASE=HEAD~1"; exit 2; }
	$(PY) -m bench.compare --base $(BASE) $(if $(BENCHES),--bench $(BENCHES))

bench-queries: deps ## Dashboard and report queries at 10M rows: rollups vs the raw table, 0009 upgrade time, sizes
	$(PY) -m bench.queries

bench-idle: deps ## The compose stack's idle CPU over 60 s: the former JVM broker healthcheck vs the raw probe
	$(PY) -m bench.idle

bench-partitioning: deps ## sales.transactions partitioned by month vs plain at 10M rows: ingest, dump, dropping a month
	$(PY) -m bench.partitioning

lock: ## Re-pin requirements.lock from a fresh resolve of pyproject.toml
	rm -rf .venv-lock && python3 -m venv .venv-lock
	.venv-lock/bin/pip install -q '.[test,bench]'
	{ echo "# Pinned dependency tree for Tillflow (runtime, test and bench extras). Regenerate with: make lock"; \
	  .venv-lock/bin/pip freeze --exclude tillflow; } > requirements.lock
	rm -rf .venv-lock
