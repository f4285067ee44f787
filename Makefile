# rtrec: everything installs itself on first use and is skipped when present.
#   make demo   start a broker, replay MovieLens-100K, run the job, show results, stop
#   make test   install, start a test broker, run the tests, stop it
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
KAFKA_PORT ?= 9092
TEST_KAFKA_PORT ?= 19092
PYTEST_ARGS ?=
TASKMANAGERS ?= 1
JOB_ARGS ?=

.PHONY: help setup jars kafka-jars flink-jars kafka-up kafka-down demo test unit lint clean cluster-up cluster-down cluster-submit

help:
	@echo "make demo        run the whole pipeline on MovieLens-100K (sets itself up)"
	@echo "make test        run the test suite against a real broker and Flink (sets itself up)"
	@echo "make unit        only the tests that need neither Kafka nor Flink"
	@echo "make kafka-up    start a local broker on 127.0.0.1:$(KAFKA_PORT) (kafka-down stops it)"
	@echo "make cluster-up  start a standalone Flink cluster (JobManager + TaskManager) on loopback"
	@echo "make cluster-submit  flink run the job on it (cluster-down stops it)"
	@echo "make lint        ruff"

$(PY):
	$(PYTHON) -m venv $(VENV)

# The compiled loops (models/sequential.py, rtrec/features/compiled.py; numba) into numba's on-disk cache: about 20 s once,
# instead of in the job's first start.
COMPILED := $(VENV)/.compiled
$(COMPILED): $(STAMP) models/sequential.py rtrec/features/compiled.py
	$(PY) -c "from models import sequential; sequential.warm_up(); from rtrec.core.item import ItemCore; ItemCore().warm_up(); from rtrec.core.user import FEATURES; FEATURES.compiled.warm_up()"
	touch $@

$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[dev]"
	# MovieLens-100K ships inside this wheel; its dependencies are not needed.
	$(PY) -m pip install -q --no-deps recbole==1.2.1
	touch $@

kafka-jars:
	deploy/kafka/bin/kafka-fetch.sh

flink-jars:
	deploy/flink/fetch-jars.sh

jars: kafka-jars flink-jars

setup: $(STAMP) $(COMPILED) jars

kafka-up: kafka-jars
	KAFKA_PORT=$(KAFKA_PORT) deploy/kafka/bin/kafka-up.sh

kafka-down:
	KAFKA_PORT=$(KAFKA_PORT) deploy/kafka/bin/kafka-down.sh

demo: setup
	KAFKA_PORT=$(KAFKA_PORT) deploy/kafka/bin/with-kafka.sh $(VENV)/bin/rtrec demo

# The integration tests with the unit tests running beside them (tests/run_suite.sh says why).
test: setup
	KAFKA_PORT=$(TEST_KAFKA_PORT) deploy/kafka/bin/with-kafka.sh --clean tests/run_suite.sh $(PY) $(PYTEST_ARGS)

unit: $(STAMP)
	$(PY) -m pytest -m "not integration" $(PYTEST_ARGS)

cluster-up: setup
	deploy/flink/bin/cluster.sh up $(TASKMANAGERS)

cluster-submit: setup
	deploy/flink/bin/cluster.sh submit $(JOB_ARGS)

cluster-down:
	deploy/flink/bin/cluster.sh down

lint: $(STAMP)
	$(VENV)/bin/ruff check .

clean:
	deploy/kafka/bin/kafka-down.sh --clean || true
	rm -rf var .pytest_cache
