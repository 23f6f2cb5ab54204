# README command 1: make setup   README command 2: make test   README command 3: make demo
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
SEEDS ?= 1

.PHONY: setup test demo clean-demo bench

setup:
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -c constraints.txt torch torchvision
	$(PY) -m pip install -q -c constraints.txt -e ".[dev]"
	$(PY) scripts/install_detectron2.py
	@$(PY) -c "import als_det, detectron2, torch, torchvision; print('als_det ready: torch', torch.__version__, 'torchvision', torchvision.__version__, 'detectron2', detectron2.__version__)"

test:
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m pytest -q tests

demo:
	$(PY) tools/run_experiment.py --plan configs/experiments/demo.yaml --seeds $(SEEDS)

bench:
	$(PY) benchmarks/run_cpu.py
