# Two commands do everything on a fresh machine:
#   make demo   set up .venv, fetch Fashion-MNIST where possible, run the demo on the embedded digits data
#   make test   the same set-up (Chromium too, where apt can install it), then the whole test suite
#   make docs   execute copies of the notebooks, then build the documentation site (build/site) with --strict
#   make results  rerun the notebooks' runs at HEAD: every committed table and figure, and the README's tables
#   make bench-accuracy  every method x 3 seeds on digits and Fashion-MNIST (quick presets): figures/bench/, the README's table
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: setup demo test bench-accuracy data browser notebooks docs results clean

$(STAMP): pyproject.toml
	@echo "== set-up: creating $(VENV) and installing rdfcil with its dependencies"
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "torch==2.14.1" "torchvision==0.29.1" || $(PY) -m pip install -q torch torchvision
	$(PY) -m pip install -q -e ".[dev,docs]"
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

browser:
	@bash .ci/fetch-chromium

test: setup browser
	OMP_NUM_THREADS=1 $(PY) -m pytest --nbval-lax --durations=25 tests notebooks

# Executed copies of the notebooks (their runs reused from runs/notebooks when present).
RUN_NOTEBOOKS = mkdir -p build/notebooks && for nb in notebooks/reproduce.ipynb notebooks/0*.ipynb; do echo "== executing $$nb"; \
	  $(PY) -m papermill --no-progress-bar $$nb build/notebooks/$$(basename $$nb) || exit 1; done

notebooks: setup
	@$(RUN_NOTEBOOKS)

docs: notebooks
	NO_MKDOCS_2_WARNING=1 $(PY) -m mkdocs build --strict
	@echo "== site: build/site/index.html"

# Every committed table and figure from runs made at HEAD: the notebooks' runs are made anew,
# the notebooks rewrite figures/digits/, then the README's generated tables follow.
results: setup
	rm -rf runs/notebooks
	@$(RUN_NOTEBOOKS)
	$(PY) -m rdfcil.docgen readme
	@cat figures/digits/reproduction.md

bench-accuracy: setup
	@for ds in digits fashion-mnist; do \
	  $(PY) -m rdfcil bench-accuracy --dataset $$ds --preset quick --seeds 0 1 2 || exit 1; \
	  mkdir -p figures/bench/$$ds-quick && cp runs/bench-accuracy/$$ds-quick/accuracy.* figures/bench/$$ds-quick/; done
	$(PY) -m rdfcil.docgen readme

clean:
	rm -rf $(VENV) runs build .pytest_cache docs/notebooks docs/figures
