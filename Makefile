# Mailroom: every target installs what it needs first, so `make run` and `make test` work on
# a fresh machine (Debian, root or sudo, Python 3.11). Nothing is fetched from anywhere but
# PyPI, Maven Central and Debian's package archive.

PYTHON ?= python3.11
VENV   := .venv
PY     := $(VENV)/bin/python
SUDO   := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
# install a Debian package when a command is missing: $(call need,command,package)
need = command -v $(1) >/dev/null 2>&1 || { $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq $(2) >/dev/null; }

.PHONY: setup system venv jars run test test-unit bench lock stack-down clean

setup: system venv jars

system:
	@$(call need,java,openjdk-17-jre-headless)
	@$(call need,javac,openjdk-17-jdk-headless)
	@$(call need,mvn,maven)
	@$(call need,redis-server,redis-server)
	@$(call need,prometheus,prometheus)
	@$(call need,chromium,chromium chromium-driver)
	@$(call need,tesseract,tesseract-ocr tesseract-ocr-eng tesseract-ocr-deu tesseract-ocr-fra)
	@test -f /usr/share/tesseract-ocr/5/tessdata/deu.traineddata -a -f /usr/share/tesseract-ocr/5/tessdata/fra.traineddata || \
		{ $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq tesseract-ocr-eng tesseract-ocr-deu tesseract-ocr-fra >/dev/null; }

venv: $(VENV)/.installed

$(VENV)/.installed: requirements.lock pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -r requirements.lock
	$(PY) -m pip install -q --disable-pip-version-check --no-deps -e .
	@touch $@

jars: venv
	@$(PY) -m mailroom.jars >/dev/null

## the main job end to end on the embedded default (local Kafka, Redis, Flink MiniCluster)
run: setup
	$(VENV)/bin/mailroom run

## everything: unit tests, Flink MiniCluster tests, integration tests on the real stack
test: setup
	$(PY) -m pytest

## only the fast tests that need no JVM
test-unit: venv
	$(PY) -m pytest tests/unit config schemas models udfs jobs mailroom

bench: setup
	$(VENV)/bin/mailroom bench

## resolve every Python package in ONE pip command and lock the result. Constrained by the current
## lock, so a package added to requirements.in resolves around the existing pins and none of them
## moves; to move a pin, delete its line from requirements.lock first.
lock:
	rm -rf /tmp/mailroom-lock && $(PYTHON) -m venv /tmp/mailroom-lock
	/tmp/mailroom-lock/bin/pip install -q -r requirements.in -c requirements.lock
	/tmp/mailroom-lock/bin/pip check
	/tmp/mailroom-lock/bin/pip freeze > requirements.lock

stack-down:
	-$(VENV)/bin/mailroom stack down

clean: stack-down
	rm -rf .run .cache $(VENV)
