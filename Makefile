# `make demo` and `make test` work on a fresh clone: the first call creates .venv and installs.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo test test-all lint format bench fuzz docs wheel-check clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -c constraints.txt -e '.[all,dev]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/vitrina demo

test: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/lint-imports
	$(BIN)/python -m pytest -n 2 --durations=15

test-all: $(STAMP)
	$(BIN)/python -m pytest -n 2 -m ''

# bandit: skips and their reasons are in [tool.bandit] of pyproject.toml. pip-audit: the exact
# pins of constraints.txt; one line and no failure when the vulnerability service is unreachable.
lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks tools fuzz
	$(BIN)/lint-imports
	$(BIN)/ruff format --check src tests benchmarks tools fuzz
	$(BIN)/bandit -c pyproject.toml -r src -q
	$(BIN)/python tools/audit_constraints.py constraints.txt

format: $(STAMP)
	$(BIN)/ruff format src tests benchmarks
	$(BIN)/ruff check --fix src tests benchmarks

bench: $(STAMP)
	$(BIN)/python benchmarks/sort_throughput.py
	$(BIN)/python benchmarks/transfer_accuracy.py

# The documentation site in site/: the README's sections as pages plus the API reference from
# the docstrings (mkdocs-material + mkdocstrings, the docs extra). --strict: a broken link or an
# unreadable docstring fails it; nothing is fetched (no web fonts, no external scripts).
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --quiet

# The wheel, installed with the core only into a fresh venv, runs `vitrina demo` there; a
# command of an extra says which to install. (install time and size: benchmarks/install_size.py)
wheel-check: $(STAMP)
	$(BIN)/python tools/wheel_check.py

# Coverage-guided fuzzing (atheris) of the image reader, the upload decoder, the name parsers and
# the annotation readers (COCO, YOLO, VOC), FUZZ_SECONDS each (default 60); findings: fuzz/findings/
FUZZ_SECONDS ?= 60
fuzz: $(STAMP)
	FUZZ_SECONDS=$(FUZZ_SECONDS) $(BIN)/python fuzz/run.py

clean:
	rm -rf $(VENV) build dist site *.egg-info src/*.egg-info .pytest_cache
