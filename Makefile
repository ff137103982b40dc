# dml: `make demo` and `make test` each do their own set-up (make install) first.
SHELL := /bin/bash
VENV  := .venv
PY    := $(VENV)/bin/python
# The first Python that mxnet 1.9.1 can run on (3.8-3.11); override with `make PYTHON=... install`.
PYTHON ?= $(shell for p in python3.11 python3.10 python3.9 python3.8 python3; do \
	command -v $$p >/dev/null 2>&1 && { echo $$p; break; }; done)
# The GPU wheel when nvidia-smi lists GPUs that mxnet-cu112 has code for (compute capability
# 5.0-8.6: not Hopper), else the CPU wheel with the reason; `MXNET=mxnet-cu112 make install` overrides.
ifeq ($(origin MXNET),undefined)
MXNET := $(shell $(PYTHON) scripts/choose_mxnet.py)
endif
OTHER_MXNET := $(if $(filter mxnet-cu112,$(MXNET)),mxnet,mxnet-cu112)
STAMP := $(VENV)/.installed-$(MXNET)
# ONNX Runtime for `dml export`'s check and for users: without its dependencies (they are in
# requirements.txt), because its metadata asks numpy>=1.24.2 and mxnet 1.9.1 needs 1.23.5.
ONNXRUNTIME := onnxruntime==1.16.3

.PHONY: install demo demo-unseen test doc clean which-mxnet
install: $(STAMP)

# The wheel install would choose here (and why, on stderr), without installing anything.
which-mxnet:
	@echo $(MXNET)

$(STAMP): requirements.txt setup.py Makefile
	@$(PYTHON) scripts/check_python.py
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@echo "Installing into $(VENV) ($(MXNET)==1.9.1 and the pinned requirements)..."
	@$(PY) -m pip uninstall -q -y $(OTHER_MXNET) >/dev/null 2>&1 || true
	$(PY) -m pip install -q --disable-pip-version-check --no-compile $(MXNET)==1.9.1 -r requirements.txt
	$(PY) -m pip install -q --disable-pip-version-check --no-compile --no-deps $(ONNXRUNTIME) -e .
	@echo "Compiling the loss kernels once (numba, cached) and the packages' bytecode (about 1.5 minutes)..."
	@# Two lanes at once: the pair and triplet kernels (about 90 s); the similarity kernels (about
	@# 50 s), then the bytecode pip would have compiled one file at a time (about 35 s; a file that
	@# does not compile is left to import time, as pip leaves it).
	$(PY) -c "from dml.ops import batch; batch.warm_up()" & pid=$$!; \
	{ $(PY) -c "from dml.ops import simop; simop.warm_up()" && \
	  { $(PY) -m compileall -q dml $$($(PY) -c "import sysconfig; print(sysconfig.get_paths()['purelib'])") >/dev/null 2>&1 || true; }; \
	} || { wait $$pid; exit 1; }; wait $$pid
	@rm -f $(VENV)/.installed-*
	@touch $@

# Triplet network with online semi-hard mining on the embedded digits set (no download).
demo: install
	$(PY) -m dml train --method triplet_semihard --dataset digits

# Classes never seen: train on glyphs (matplotlib's fonts, no download; about 20 minutes on 2
# cores) and print the test classes' metrics beside the untrained network and raw pixels.
demo-unseen: install
	$(PY) -m dml train --dataset glyphs

# -rs: the summary names every skipped test and why (the projector screenshot without Chromium).
# -n auto: one pytest-xdist worker per core; --dist loadscope keeps a module's tests (and its
# module-scoped fixtures) on one worker. TEST_WORKERS=0 runs the suite in this one process.
TEST_WORKERS ?= auto
test: install
	$(PY) -m pytest -q -rs -n $(TEST_WORKERS) --dist loadscope --durations 15 tests

# The figures in doc/: the network diagrams, and from a fresh digits run its projector screenshot,
# embedding picture and loss curve. The screenshot needs Chromium (Debian: apt-get install chromium).
DOC_RUN := .doc-run
doc: install
	$(PY) scripts/network_diagrams.py --out-dir doc
	rm -rf $(DOC_RUN)
	$(PY) -m dml train --method triplet_semihard --dataset digits --eval-period 1 --select-on-test --output-root $(DOC_RUN)
	run=$$(ls -d $(DOC_RUN)/digits/triplet_semihard/*) && \
	  cp $$run/plots/embedding_test.png doc/embedding_digits.png && \
	  cp $$run/plots/loss.png doc/loss_digits.png && \
	  $(PY) scripts/projector_screenshot.py $$run --out doc/projector.png

clean:
	rm -rf $(VENV) *.egg-info
