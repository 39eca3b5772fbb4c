# Two commands do everything on a fresh machine:
#   make demo   set up .venv, fetch Fashion-MNIST where possible, run the demo on the embedded digits data
#   make test   the same set-up, then the whole test suite
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: setup demo test bench-accuracy data clean

$(STAMP): pyproject.toml
	@echo "== set-up: creating $(VENV) and installing rdfcil with its dependencies"
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "torch==2.14.1" "torchvision==0.29.1" || $(PY) -m pip install -q torch torchvision
	$(PY) -m pip install -q -e ".[dev]"
	@touch $(STAMP)

setup: $(STAMP) data

data: $(STAMP)
	@bash .ci/fetch-fashion-mnist $(PY)

demo: setup
	@mkdir -p runs/demo
	$(PY) -m papermill notebooks/reproduce.ipynb runs/demo/reproduce.ipynb
	@echo "== executed notebook: runs/demo/reproduce.ipynb"
	@echo "== table:   figures/digits/reproduction.md, .tex, .csv"
	@echo "== figures: figures/digits/accuracy_curves.png, .pdf and figures/digits/accuracy_matrices.png, .pdf"
	@echo "== runs:    runs/notebooks/digits/"
	@cat figures/digits/reproduction.md

test: setup
	$(PY) -m pytest --nbval-lax --durations=25 tests notebooks

bench-accuracy: setup
	$(PY) -m rdfcil bench-accuracy --dataset digits --preset quick --seeds 0 1 2
	$(PY) -m rdfcil bench-accuracy --dataset fashion-mnist --preset quick --seeds 0 1 2

clean:
	rm -rf $(VENV) runs .pytest_cache
