# Two commands for a fresh machine: `make demo` and `make test`. Both set up .venv first.
VENV ?= .venv
PY := $(VENV)/bin/python
export PYTHONDONTWRITEBYTECODE := 1

.PHONY: setup demo demo-seg demo-cls test test-fast benchmark format clean

setup:
	@VENV=$(VENV) dev/setup_env.sh

demo: setup
	$(PY) projects/quickstart/quickstart.py
	$(PY) projects/quickstart/shapes_detection.py

demo-seg: setup
	$(PY) projects/quickstart/shapes_segmentation.py

demo-cls: setup
	$(PY) projects/quickstart/shapes_classification.py

test: setup
	$(PY) -m pytest -q tests

# Everything but the tests marked slow (processes, training runs): a few minutes on 2 cores.
test-fast: setup
	$(PY) -m pytest -q -m "not slow" tests

benchmark: setup
	$(PY) tools/benchmark.py

format: setup
	$(PY) -m black -l 100 plainmamba tools tests configs projects setup.py

clean:
	rm -rf output build *.egg-info

# Every wheel the project needs, for an offline GPU host (torch excluded; see the script):
#   make wheelhouse WHEELHOUSE_ARGS="--python-version 3.12 --platform manylinux_2_28_x86_64"
.PHONY: wheelhouse
wheelhouse: setup
	$(PY) dev/make_wheelhouse.py $(WHEELHOUSE_ARGS)
