# Two commands for a newcomer: `make demo` and `make test`. Each creates .venv with the pinned stack
# when it is missing. GPU=cu112 selects MXNet's CUDA 11.2 build instead of the CPU one.
PYTHON ?= python3
GPU ?=
VENV := .venv
BIN := $(VENV)/bin
MXNET_EXTRA := $(if $(GPU),$(GPU),cpu)
STAMP := $(VENV)/.installed-$(MXNET_EXTRA)
# The demo's recipe: d2lseg.reference.PRESETS['demo'] (tests/test_regression.py keeps the two equal).
DEMO_RECIPE := --no-pretrained --ctx cpu --crop 128x192 --batch-size 8 --epochs 9 --lr 0.05 --warmup-epochs 1 --momentum 0.9 --lr-schedule poly

.PHONY: demo test venv kernels flags figure lab notebooks book clean

venv: $(STAMP)

# Compile the native CPU kernels once per machine (d2lseg/native/); without a compiler the
# package warns and keeps MXNet's operators.
kernels: $(STAMP)
	$(BIN)/python -c "from d2lseg import native; print('native kernels:', native.load() and native.library_path())"

# Regenerate the flag table of docs/chapter.md from the Recipe fields (tests/test_config.py checks it).
flags: $(STAMP)
	$(BIN)/python -c "from d2lseg import config; config.write_flag_table('docs/chapter.md')"

$(STAMP): setup.py
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip setuptools wheel
	$(BIN)/python -m pip install --quiet -e ".[$(MXNET_EXTRA),test]"
	rm -f $(VENV)/.installed-*
	touch $@

# Train and evaluate the chapter's FCN on the synthetic VOC-format set, offline, on CPU.
demo: kernels
	$(BIN)/d2lseg train --synthetic --data-dir data/synthetic $(DEMO_RECIPE) --seed 0 --out runs/demo --overwrite
	$(BIN)/d2lseg evaluate --params runs/demo/model.params --data-dir data/synthetic --plot runs/demo/confusion.png

# The README's picture from the demo model (after make demo).
figure: $(STAMP)
	$(BIN)/python docs/make_figure.py

# JupyterLab on the notebooks (installed into .venv on first use). --allow-root: containers run as root,
# where Jupyter otherwise refuses to start.
lab: $(STAMP)
	$(BIN)/python -c "import jupyterlab" 2>/dev/null || $(BIN)/python -m pip install --quiet -e ".[$(MXNET_EXTRA),test,lab]"
	cd notebooks && ../$(BIN)/jupyter lab --allow-root --no-browser

# Re-execute every notebook in full mode and store it with its outputs (about 10-11 min on 2 cores;
# NB=04 runs one). tests/test_notebooks.py fails when a code cell changed since its stored run.
notebooks: kernels
	$(BIN)/python tools/notebooks.py run $(NB)

# The stored notebooks as a static HTML site under build/book (nothing is executed): open build/book/index.html.
book: $(STAMP)
	$(BIN)/python tools/notebooks.py book --out build/book

test: kernels
	$(BIN)/python -m pytest

clean:
	rm -rf $(VENV) runs build
