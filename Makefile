# The two commands of the course (see README.md):
#   make run    set up .venv, get CIFAR-10, execute every notebook in order (default preset)
#   make test   set up .venv, run the unit tests and every notebook under nbval (smoke preset)
# Both create .venv themselves; they need only python3 (>= 3.10) and make.

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
NOTEBOOKS := $(sort $(wildcard notebooks/[0-9][0-9]_*.ipynb))

.PHONY: run test venv benchmark clean site publish

# One stamp per set of extras: `make run` needs the helpers + Jupyter, `make test` adds pytest/nbval.
$(VENV)/.installed-notebooks: pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -e ".[notebooks]"
	@touch $@

$(VENV)/.installed-dev: pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -e ".[dev]"
	@touch $@ $(VENV)/.installed-notebooks

$(VENV)/.installed-site: pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -e ".[site]"
	@touch $@

venv: $(VENV)/.installed-dev

# HELPERS_PRESET picks the budget (smoke | workshop | cpu | long | gpu); default: gpu with CUDA, else cpu.
# coursetools.runner executes the notebooks in order (build/<preset>/) and writes results/<preset>/timings.json.
run: $(VENV)/.installed-notebooks
	$(PY) -m helpers.presets
	$(PY) -m coursetools.runner

# Hermetic: synthetic data, no network, fresh checkpoints; CIFAR10_DIR is ignored here.
test: $(VENV)/.installed-dev
	env -u CIFAR10_DIR HELPERS_PRESET=smoke HELPERS_DOWNLOAD=0 $(PY) -m pytest tests -q -m "not site"
	rm -rf build/smoke-checkpoints results/smoke
	env -u CIFAR10_DIR HELPERS_PRESET=smoke HELPERS_DOWNLOAD=0 HELPERS_CHECKPOINT_DIR=build/smoke-checkpoints \
	  $(PY) -m pytest --nbval-lax -q $(NOTEBOOKS)
	@missing=""; for nb in $(NOTEBOOKS); do stem=$$(basename $$nb .ipynb); \
	  test -f results/smoke/$$stem.json || missing="$$missing $$stem"; done; \
	  if [ -n "$$missing" ]; then echo "notebooks that wrote no results/smoke/*.json:$$missing"; exit 1; fi; \
	  echo "every notebook wrote its results file (smoke)"

# After `make run`: copy the executed notebooks to docs/executed/<preset>/ (cleaned, checked, committed);
# for workshop and cpu also rewrite the guide's and README's generated parts from results/<preset>/.
publish: $(VENV)/.installed-notebooks
	@preset=$$($(PY) -c "from helpers.presets import get_preset; print(get_preset().name)"); \
	$(PY) -m coursetools.publish executed $$preset && \
	if [ "$$preset" = workshop ] || [ "$$preset" = cpu ]; then $(PY) -m coursetools.publish guide; fi && \
	if [ "$$preset" = cpu ]; then $(PY) -m coursetools.publish readme; fi

# The static course in build/site/, from the committed executed notebooks (nothing is re-executed).
site: $(VENV)/.installed-site
	$(PY) -m coursetools.publish site-src
	$(VENV)/bin/mkdocs build --quiet
	@echo "site in build/site/ (open build/site/index.html); browser test: .venv/bin/python -m pytest -m site tests/test_site.py"

benchmark: $(VENV)/.installed-notebooks
	$(PY) benchmarks/train_speed.py

clean:
	rm -rf build checkpoints results/smoke
