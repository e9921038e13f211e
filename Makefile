# Two commands for a newcomer: `make demo` and `make test`. Each creates .venv with the stack for its Python
# when it is missing (tools/venv.sh: which Python, and when .venv is rebuilt). PYTHON=python3.12 picks the
# Python (3.9-3.13); GPU=cu112 selects MXNet's CUDA 11.2 build instead of the CPU one.
PYTHON ?=
GPU ?=
VENV ?= .venv
BIN := $(VENV)/bin
MXNET_EXTRA := $(if $(GPU),$(GPU),cpu)
# The demo's recipe: the preset demo (d2lseg.training.reference.RECIPES; PRESETS['demo'] spells it as flags for its band,
# tests/test_regression.py keeps the two equal). DEMO_FLAGS: train flags over it, e.g. DEMO_FLAGS="--epochs 1".
DEMO_RECIPE := --preset demo
DEMO_FLAGS ?=
# make figure writes build/demo.png; README=1 updates the README's docs/img/demo.png instead.
README ?=

.PHONY: demo test test-fast tier venv kernels flags figure lab notebooks book doctor clean

venv:
	@bash tools/venv.sh "$(VENV)" "$(PYTHON)" "$(MXNET_EXTRA)"

# Compile the native CPU kernels once per machine (d2lseg/native/); without a compiler the
# package warns and keeps MXNet's operators.
kernels: venv
	$(BIN)/python -c "from d2lseg import native; print('native kernels:', native.load() and native.library_path())"

# Regenerate the flag table of docs/chapter.md from the Recipe fields (tests/test_config.py checks it).
flags: venv
	$(BIN)/python -c "from d2lseg import config; config.write_flag_table('docs/chapter.md')"

# Train and evaluate the chapter's FCN on the synthetic VOC-format set, offline, on CPU.
# It replaces runs/demo (its own earlier run, --overwrite) and ends with the README's next commands.
demo: kernels
	$(BIN)/d2lseg train --synthetic --data-dir data/synthetic $(DEMO_RECIPE) --seed 0 $(DEMO_FLAGS) --out runs/demo --overwrite
	$(BIN)/d2lseg evaluate --params runs/demo/model.params --data-dir data/synthetic --plot runs/demo/confusion.png --overwrite
	@echo
	@echo "Next (README.md): make the d2lseg command available in this shell, then try it:"
	@echo "  source $(VENV)/bin/activate"
	@echo "  d2lseg compare runs/demo/history.json"
	@echo "  d2lseg predict data/synthetic/VOCdevkit/VOC2012/JPEGImages/synth_000000.jpg --params runs/demo/model.params --out predictions"
	@echo "(the figure to report is evaluate's mIoU above: whole images, the published protocol)"

# The README's picture from the demo model (after make demo): build/demo.png, or docs/img/demo.png with README=1.
figure: venv
	$(BIN)/python docs/make_figure.py runs/demo/model.params data/synthetic $(if $(README),docs/img/demo.png,build/demo.png)

# JupyterLab on the notebooks (installed into .venv on first use). --allow-root: containers run as root,
# where Jupyter otherwise refuses to start.
lab: venv
	$(BIN)/python -c "import jupyterlab" 2>/dev/null || $(BIN)/python -m pip install --quiet -e ".[$(MXNET_EXTRA),test,lab]"
	cd notebooks && ../$(BIN)/jupyter lab --allow-root --no-browser

# Re-execute every notebook in full mode and store it with its outputs (8 min 37 s on 2 cores, 2026-12-05;
# NB=04 runs one). tests/test_notebooks.py fails when a code cell changed since its stored run.
# NB reaches the tool as one single-quoted word of its raw text: never expanded by make ($(value); unexported,
# since make expands a variable it exports) nor by the shell; the tool accepts only notebook names (exit 2).
unexport NB
NB_WORD = '$(subst ','\'',$(value NB))'
notebooks: kernels
	$(BIN)/python tools/notebooks.py run $(NB_WORD)

# The stored notebooks as a static HTML site under build/book (nothing is executed): open build/book/index.html.
book: venv
	$(BIN)/python tools/notebooks.py book --out build/book

test: kernels
	$(BIN)/python -m pytest

# The inner loop while editing (docs/architecture.md): every test not marked slow, notebook, distributed or fault,
# on FAST_WORKERS pytest-xdist processes (each builds the session's fixtures itself).
FAST_WORKERS ?= 2
test-fast: kernels
	$(BIN)/python -m pytest -q -n $(FAST_WORKERS) -m "not slow and not notebook and not distributed and not fault"

# What CI runs on each other Python (.ci/run): the tests marked tier (chapter cells, a tiny train / resume /
# evaluate / predict, INT8, native kernels, notebook 01 quick, the data digests, the regression band), then doctor.
TIER ?= tier
tier: kernels
	$(BIN)/python -m pytest -m "$(TIER)"
	$(BIN)/d2lseg doctor

# What this machine has for d2lseg, each problem with its fix (exit 1 when something required is missing).
doctor: venv
	$(BIN)/d2lseg doctor

# What the build made: the venv and build/. Never runs/ (your trained models) nor data/.
clean:
	rm -rf $(VENV) build
