# Two commands on a fresh machine:
#   make test   set up .venv and run the test suite
#   make demo   set up .venv and run the main job (synthetic corpus -> prepare.sh -> train -> decode)
# `make demo RECIPE=aishell` runs the AISHELL recipe; `DEMO_SCALE=large` the longer demo.

PYTHON ?= python3
VENV := .venv
VPY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
RECIPE ?= librispeech
DEMO_SCALE ?= default
PYTEST_ARGS ?=

.PHONY: test demo venv system-deps clean-venv

venv: $(STAMP)

# The exact torch pin in requirements.txt keeps pip on the CPU build where no GPU is present.
$(STAMP): requirements.txt pyproject.toml | system-deps
	test -x $(VPY) || $(PYTHON) -m venv $(VENV)
	$(VPY) -m pip install --quiet --upgrade pip
	$(VPY) -m pip install --quiet -r requirements.txt
	$(VPY) -m pip install --quiet --no-deps -e .
	touch $(STAMP)

# espeak-ng synthesizes the demo and test corpora; sox is used for audio checks; a CJK font
# (1.6 MB) lets the AISHELL demo's CIF plots show characters rather than token ids.
SYSTEM_PACKAGES = espeak-ng sox fonts-wqy-microhei
system-deps:
	@missing=""; \
	command -v espeak-ng >/dev/null 2>&1 || missing="$$missing espeak-ng"; \
	command -v sox >/dev/null 2>&1 || missing="$$missing sox"; \
	[ -e /usr/share/fonts/truetype/wqy/wqy-microhei.ttc ] || missing="$$missing fonts-wqy-microhei"; \
	if [ -z "$$missing" ]; then exit 0; fi; \
	if [ "$$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then \
		echo "Installing$$missing with apt-get"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(SYSTEM_PACKAGES) >/dev/null; \
	elif command -v espeak-ng >/dev/null 2>&1; then \
		echo "Optional packages missing:$$missing (sudo apt-get install -y$$missing)"; \
	else \
		echo "espeak-ng is missing. Install it with: sudo apt-get install -y $(SYSTEM_PACKAGES)"; exit 1; \
	fi

test: $(STAMP)
	$(VPY) -m pytest -q $(PYTEST_ARGS)

demo: $(STAMP)
	cd egs/$(RECIPE)/ASR && PATH="$(CURDIR)/$(VENV)/bin:$$PATH" DEMO_SCALE=$(DEMO_SCALE) ./run_demo.sh

clean-venv:
	rm -rf $(VENV)
