# Entry points. `make run` and `make test` install whatever is missing first.
PY      ?= python3
VENV    := .venv
PYBIN   := $(VENV)/bin/python
STAMP   := $(VENV)/.installed-$(shell cksum pyproject.toml | cut -d' ' -f1)
KAFKACTL := $(PY) infra/kafka/kafkactl.py
JARS    := infra/kafka/.cache/libs/.fetched

.PHONY: install run test test-unit lint bench bench-publish bench-pipeline bench-sse bench-sse-10k reliability \
        kafka-up kafka-down kafka-status cluster-up cluster-down cluster-status cluster-kill worker edge browser redis \
        fuzz clean \
        promtool monitor

install: $(STAMP) $(JARS)

# Debian's Chromium for the browser test (Playwright drives it; no browser download works here).
browser:
	@command -v chromium >/dev/null || { echo "[install] Debian chromium for the browser test..."; \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) || \
	  echo "[install] chromium could not be installed: the browser test will be skipped and say why"; }

# Debian's prometheus package: promtool for the rule tests, the server for `make monitor` and its test.
promtool:
	@command -v promtool >/dev/null || { echo "[install] Debian prometheus (promtool) for the rule tests..."; \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
	   prometheus >/dev/null) || \
	  echo "[install] prometheus could not be installed: the rule and Prometheus tests will be skipped and say why"; }

# Prometheus on 127.0.0.1:9090 scraping the running edge (:8000) and worker (:9101), with the alert rules.
monitor: promtool
	@mkdir -p .run/prometheus
	@echo "Prometheus on http://127.0.0.1:9090 (rules: infra/prometheus/alerts.yml); Ctrl+C stops it."
	@prometheus --config.file=infra/prometheus/prometheus.yml --storage.tsdb.path=.run/prometheus \
	  --web.listen-address=127.0.0.1:9090

# Debian's redis-server for the shared rate-limit count test (tests/integration/test_rate_limits.py starts it).
redis:
	@command -v redis-server >/dev/null || { echo "[install] Debian redis-server for the rate-limit test..."; \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null) || \
	  echo "[install] redis-server could not be installed: the shared-count test will be skipped and say why"; }

$(STAMP): pyproject.toml
	@command -v $(PY) >/dev/null || { echo "python3 is required"; exit 1; }
	@test -x $(PYBIN) || $(PY) -m venv $(VENV)
	@echo "[install] Python packages into $(VENV) (first run takes a minute)..."
	@$(PYBIN) -m pip install -q --disable-pip-version-check --upgrade pip
	@$(PYBIN) -m pip install -q --disable-pip-version-check -e '.[dev]'
	@rm -f $(VENV)/.installed-*; touch $@

$(JARS): infra/kafka/pom.xml
	@command -v java >/dev/null && command -v mvn >/dev/null || { \
	  echo "[install] Java 17+ and Maven via apt-get..."; \
	  (apt-get update -qq && apt-get install -y -qq default-jre-headless maven >/dev/null) || \
	  { echo "Install Java 17+ and Maven (apt-get install default-jre-headless maven) and retry."; exit 1; }; }
	@$(KAFKACTL) fetch
	@touch $@

run: install
	@$(PYBIN) infra/run.py

test: install browser promtool redis
	@$(PYBIN) -m pytest

test-unit: install
	@$(PYBIN) -m pytest tests/unit

# ruff, the import contracts ([tool.importlinter]), mypy ([tool.mypy]) and the file paths that comments name;
# runs every check, fails if any fails.
lint: install
	@rc=0; \
	echo "[lint] ruff"; $(PYBIN) -m ruff check streams app tests bench infra || rc=1; \
	echo "[lint] import-linter"; $(VENV)/bin/lint-imports --no-logo || rc=1; \
	echo "[lint] mypy"; $(PYBIN) -m mypy || rc=1; \
	echo "[lint] paths named in comments and docstrings"; $(PYBIN) infra/check_doc_paths.py || rc=1; \
	exit $$rc

bench: install bench-publish bench-pipeline bench-sse

bench-publish: install
	@$(PYBIN) bench/codec_bench.py
	@$(PYBIN) bench/publish_bench.py

bench-pipeline: install
	@$(PYBIN) bench/pipeline_bench.py

# 1,000 SSE clients x 10 events/s, with a kill -9 of the edge mid-run; bench-sse-10k for 10,000 clients.
bench-sse: install
	@$(PYBIN) bench/sse_load.py

bench-sse-10k: install
	@$(PYBIN) bench/sse_load.py --clients 10000

# The fault suite (a-f, one table row each; --only a,b to pick) and the cluster/edge-kill tests.
reliability: install
	@$(PYBIN) tests/reliability/faults.py
	@$(PYBIN) -m pytest tests/reliability -v

# schemathesis over /openapi.json with an admin token against a real edge: no 5xx (also part of reliability).
fuzz: install
	@$(PYBIN) -m pytest tests/reliability/test_fuzz_api.py -v

kafka-up: $(JARS)
	@$(KAFKACTL) up
kafka-down:
	@$(KAFKACTL) down
kafka-status:
	@$(KAFKACTL) status
cluster-up: $(JARS)
	@$(KAFKACTL) cluster-up
cluster-down:
	@$(KAFKACTL) cluster-down
cluster-status:
	@$(KAFKACTL) cluster-status
# make cluster-kill NODE=2
cluster-kill:
	@$(KAFKACTL) kill $(NODE)

edge: install
	@$(PYBIN) -m app

worker: install
	@$(PYBIN) -m streams.worker

clean:
	rm -rf $(VENV) infra/kafka/.data .pytest_cache .ruff_cache .mypy_cache .import_linter_cache
