# Entry points. `make run` and `make test` install whatever is missing first.
PY      ?= python3
VENV    := .venv
PYBIN   := $(VENV)/bin/python
STAMP   := $(VENV)/.installed-$(shell cksum pyproject.toml | cut -d' ' -f1)
KAFKACTL := $(PY) infra/kafka/kafkactl.py
JARS    := infra/kafka/.cache/libs/.fetched

.PHONY: install run test test-unit lint bench bench-publish bench-pipeline bench-sse bench-sse-10k reliability \
        kafka-up kafka-down kafka-status cluster-up cluster-down cluster-status cluster-kill worker edge browser clean

install: $(STAMP) $(JARS)

# Debian's Chromium for the browser test (Playwright drives it; no browser download works here).
browser:
	@command -v chromium >/dev/null || { echo "[install] Debian chromium for the browser test..."; \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) || \
	  echo "[install] chromium could not be installed: the browser test will be skipped and say why"; }

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

test: install browser
	@$(PYBIN) -m pytest

test-unit: install
	@$(PYBIN) -m pytest tests/unit

lint: install
	@$(PYBIN) -m ruff check streams app tests bench infra

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

reliability: install
	@$(PYBIN) -m pytest tests/reliability -v

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
	rm -rf $(VENV) infra/kafka/.data .pytest_cache .ruff_cache
