# The two commands a newcomer needs: `make serve` and `make test`.
# Both create (or reuse) the virtual environment at .venv and install what is missing.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: serve test test-slow default-model apt venv clean-venv help

help:
	@echo "make serve      serve the default model on http://127.0.0.1:8000"
	@echo "make test       run the test suite (the one CI runs)"
	@echo "make test-slow  run the slow tests (second CI stage)"
	@echo "make default-model  remake the shipped model from nothing (~4 h on 2 CPU cores; resumable)"

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -e '.[dev]'
	@touch $(STAMP)

venv: $(STAMP)

apt:
	@scripts/apt-deps.sh

test: apt $(STAMP)
	$(PY) -m pytest -q

# pytest exits 5 when nothing is marked slow; for this stage that is not a failure.
test-slow: apt $(STAMP)
	$(PY) -m pytest -q -m slow || { rc=$$?; [ $$rc -eq 5 ] && echo "no slow tests" || exit $$rc; }

# Run it again after a kill: finished stages are skipped, training resumes (configs/recipes/default.yaml).
default-model: apt $(STAMP)
	$(VENV)/bin/speechssl recipe configs/recipes/default.yaml

serve: $(STAMP)
	@if $(VENV)/bin/speechssl serve --help >/dev/null 2>&1; then $(VENV)/bin/speechssl serve; \
	else echo "speechssl serve: the HTTP server and the default model are not built yet (issues 7 and 8)." >&2; exit 1; fi

clean-venv:
	rm -rf $(VENV)
