# The README's two commands: `make demo` and `make test`; `make setup` alone sets up .venv.
# `make test` and `make demo` set up .venv first when it is missing or older than
# pyproject.toml / constraints.txt (the stamp file records the last completed set-up).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.als_det-setup
SEEDS ?= 1
# pytest-xdist workers for `make test` (each runs one test file at a time on its own share of the
# CPUs: tests/conftest.py)
TEST_WORKERS ?= 2

.PHONY: setup test demo clean-demo bench

setup:
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -c constraints.txt torch torchvision
	$(PY) -m pip install -q -c constraints.txt -e ".[dev]"
	$(PY) scripts/install_detectron2.py
	@$(PY) -c "import als_det, detectron2, torch, torchvision; print('als_det ready: torch', torch.__version__, 'torchvision', torchvision.__version__, 'detectron2', detectron2.__version__)"
	@touch $(STAMP)

$(STAMP): pyproject.toml constraints.txt scripts/install_detectron2.py
	@echo "setting up $(VENV) first (missing or older than pyproject.toml/constraints.txt)"
	$(MAKE) setup

test: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile tests

demo: $(STAMP)
	$(PY) tools/run_experiment.py --plan configs/experiments/demo.yaml --seeds $(SEEDS)

bench: $(STAMP)
	$(PY) benchmarks/run_cpu.py
