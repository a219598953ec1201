# Two commands on a fresh machine: `make demo` (the main job) and `make test` (the tests).
# Each bootstraps .venv on its own; torch goes in first so pip never pulls a CUDA build
# (override with TORCH_SPEC='torch==2.13.0 --index-url ...' on a GPU machine).
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_SPEC ?= torch==2.13.0
OFFLINE := HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false

.PHONY: demo test bench validity bench-env install clean

# Re-installs only when pyproject.toml is newer than the stamp.
$(VENV)/.installed: pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH_SPEC)
	$(PY) -m pip install -q -e '.[dev,pretrained,distributed]'
	touch $@

install: $(VENV)/.installed

demo: $(VENV)/.installed
	$(OFFLINE) $(VENV)/bin/modprobe demo

test: $(VENV)/.installed
	$(OFFLINE) $(PY) -m pytest -q

bench: $(VENV)/.installed
	for b in benchmarks/bench_*.py; do $(OFFLINE) $(PY) $$b || exit 1; done

# The planted-model validity suite (about 40 minutes on 2 cores): verdicts against known answers.
validity: $(VENV)/.installed
	$(OFFLINE) $(PY) benchmarks/validity.py --jobs 2

# The pruning benchmark compares with NeuroSurgeon 0.1.0, installed only in this separate venv.
bench-env:
	test -x .bench-venv/bin/python || python3 -m venv .bench-venv
	.bench-venv/bin/pip install -q $(TORCH_SPEC)
	.bench-venv/bin/pip install -q -e '.[pretrained]' neurosurgeon==0.1.0

clean:
	rm -rf $(VENV) .bench-venv .pytest_cache runs
