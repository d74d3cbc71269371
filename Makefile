PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test lint install clean bench scaling profile floors gallery

# The venv's tools are run as `$(BIN)/python -m <tool>`, not through their scripts in $(BIN): pip
# writes each script's interpreter path inside double quotes for /bin/sh where the checkout's path has
# a space, so a `$` in that path (`~/it's $5 & more/taskd`) was expanded and the script found no
# interpreter (docs/development.md#build-and-test). ruff is a binary of its own, not a script.
# The lowest Python taskd runs on, read from pyproject.toml's requires-python (">=3.11").
MIN_PYTHON := $(shell sed -n 's/^requires-python = ">=\([0-9.]*\)"$$/\1/p' pyproject.toml)
# A .venv is kept while its python is new enough and has pip. Else it is made again, with --clear: a
# Ctrl-C while `python -m venv` ran left a .venv without pip, and one made by an older python3 stayed
# ("requires a different Python") even after `make install PYTHON=python3.12`, until `make clean`.
NEW_ENOUGH := sys.version_info[:2] >= tuple(map(int, "$(MIN_PYTHON)".split(".")))
VENV_USABLE := import sys, pip; sys.exit(not $(NEW_ENOUGH))
PYTHON_NEW_ENOUGH := import sys; sys.exit(None if $(NEW_ENOUGH) else "make: taskd needs Python $(MIN_PYTHON) \
	or newer, and $(PYTHON) is %d.%d; name another: make PYTHON=python3.12" % sys.version_info[:2])
# A .venv that links to a venv elsewhere (~/.virtualenvs/taskd) is not made again: `python -m venv
# --clear` empties the venv the link names, then refuses the link, and every later make failed.
VENV_NOT_A_LINK := test ! -L $(VENV) || { echo "make: $(VENV) links to $$(readlink $(VENV)), whose python \
	is older than $(MIN_PYTHON) or has no pip; fix that venv, or remove the link and make makes its own" >&2; false; }

$(STAMP): pyproject.toml
	@$(BIN)/python -c '$(VENV_USABLE)' 2>/dev/null || { $(VENV_NOT_A_LINK) && \
		$(PYTHON) -c '$(PYTHON_NEW_ENOUGH)' && echo "$(PYTHON) -m venv --clear $(VENV)" && $(PYTHON) -m venv --clear $(VENV); }
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(BIN)/python -m taskd serve --print-key

# Two passes (docs/development.md#build-and-test): the suite in parallel (pytest-xdist, work stealing:
# the minutes-long soak starts first and the others take its share), then the tests marked `serial`
# (timing-sensitive under CPU load) alone. Bytecode is cached even where PYTHONDONTWRITEBYTECODE is set:
# else every pytest process rewrites and compiles the test modules and the plugins' packages again.
# Four workers on two cores: each test waits part of its time (servers starting, subprocesses,
# sleeps), and a fourth keeps the cores busy meanwhile (3: ~260 s, 4: ~200 s, 5: no faster).
TEST_WORKERS ?= 4
# Collecting the schemathesis run builds its cases (about 11 s of CPU); the serial pass, which runs
# none of its tests, leaves it out (tests/test_openapi.py checks that it holds no serial test).
SCHEMATHESIS_RUN := tests/test_openapi_conformance.py

test: $(STAMP)
	PYTHONDONTWRITEBYTECODE= $(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist worksteal -m "not serial"
	PYTHONDONTWRITEBYTECODE= $(BIN)/python -m pytest -q -m serial --ignore=$(SCHEMATHESIS_RUN)

# The bench tools (py-spy, pyinstrument) in taskd's own .venv: the `bench` extra, not a dependency.
BENCH_STAMP := $(VENV)/.installed-bench
$(BENCH_STAMP): $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[dev,bench]'
	touch $(BENCH_STAMP)

# taskd beside the FastAPI + Celery stack it replaces and the task libraries a user would pick instead
# (bench/compare.py, docs/performance.md). Each of them runs from its own virtualenv in .bench-venvs/,
# built from its pinned bench/requirements/*.txt on the first run (that needs the network) and reused
# while the file is unchanged. Then the plots: the scaling curve (`make scaling`) and the flame
# graphs (`make profile`). py-spy needs ptrace; where the kernel refuses it, the profile says so
# and `make bench` still ends with the table and the curve written.
bench: $(BENCH_STAMP)
	$(BIN)/python bench/compare.py
	$(BIN)/python bench/scaling.py
	-$(BIN)/python bench/profile.py

# The scaling curve (bench/scaling.py): tasks/s with 1, 2, 4 workers and 1, 2 API nodes on one Valkey,
# with the cores each process used; bench/results/scaling.json and docs/images/scaling.png (~3 min).
scaling: $(STAMP)
	$(BIN)/python bench/scaling.py

# Where the time goes (bench/profile.py): py-spy flame graphs of the API and the worker,
# docs/images/profile-*.svg (py-spy comes with the `bench` extra, installed here).
profile: $(BENCH_STAMP)
	$(BIN)/python bench/profile.py

# The README's "What comes out": one request per media task type against a taskd the script starts,
# each request and a picture of its output in docs/images/gallery/ (docs/media.md#the-gallery; ~5 s).
gallery: $(STAMP)
	$(BIN)/python scripts/media_gallery.py

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python -m mypy

# The lowest version pyproject.toml allows of each runtime dependency, installed in a throwaway venv
# and run against a smoke subset (docs/development.md#packaging). Needs the network; not in `make test`.
floors:
	PYTHON=$(PYTHON) bash scripts/check_floors.sh

clean:
	rm -rf $(VENV) .bench-venvs build *.egg-info
