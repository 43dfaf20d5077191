# Two commands do all the set-up on a fresh machine with Python 3.11, git and make:
#   make demo   the main job on the offline default (synthetic) data
#   make test   the test suite
PYTHON ?= python3.11
TOOLS := .tools
UV := $(TOOLS)/bin/uv
VENV := .venv
PY := $(VENV)/bin/python
# Quiet TensorFlow's C++ start-up chatter; errors still show.
export TF_CPP_MIN_LOG_LEVEL ?= 2
export TF_USE_LEGACY_KERAS := 1

.PHONY: setup demo test test-fast benchmark clean

$(UV):
	$(PYTHON) -m venv $(TOOLS)
	$(TOOLS)/bin/pip install --quiet --disable-pip-version-check uv==0.13.9

# Bytecode compiled once at install: where PYTHONDONTWRITEBYTECODE is set, every fresh process
# (the tests start many) would otherwise recompile TensorFlow on import (about 30 s vs 7 s here).
$(VENV)/.synced: $(UV) pyproject.toml uv.lock
	$(UV) sync --frozen --all-extras --compile-bytecode --python $(PYTHON)
	touch $@

setup: $(VENV)/.synced

demo: setup
	$(PY) -m pipelines.demo

# Two pytest workers, each taking whole test files (--dist loadfile), so a module's fixtures (a
# fitted cascade, its exports) are built once; many tests wait on fresh processes and servers.
test: setup
	$(PY) -m pytest -q -n 2 --dist loadfile tests

test-fast: setup
	$(PY) -m pytest -q -n 2 --dist loadfile -m "not slow" tests

benchmark: setup
	$(PY) -m pipelines.benchmark --dataset ml-100k --protocol P1
	$(PY) -m pipelines.benchmark --dataset ml-100k --protocol P2

clean:
	rm -rf $(TOOLS) $(VENV) runs
