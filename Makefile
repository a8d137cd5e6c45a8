# README quick start: `make demo`, `make test`. Everything installs itself into .venv from nothing.
PYTHON ?= python3
VENV := .venv
VPY := $(VENV)/bin/python
COMFYUI_PATH ?= /opt/ComfyUI
COMFY_PY ?= $(COMFYUI_PATH)/.venv/bin/python
export PIP_DISABLE_PIP_VERSION_CHECK = 1

.PHONY: install demo test test-host test-host-full bench bench-toy clean

$(VENV)/.installed: pyproject.toml requirements.txt
	$(PYTHON) -m venv $(VENV)
	# torch first and explicitly (a CPU build here); the host owns torch, so it is not in requirements.txt
	$(VPY) -m pip install -q torch==2.13.0
	$(VPY) -m pip install -q -r requirements.txt pytest websocket-client
	$(VPY) -m pip install -q --no-deps -e .
	touch $@

install: $(VENV)/.installed

demo: install
	$(VPY) -m continual_concepts.bench.demo

test: install
	$(VPY) -m pytest -q tests --ignore=tests/host

test-host:
	@if [ ! -x "$(COMFY_PY)" ]; then echo "test-host: no ComfyUI python at $(COMFY_PY) (set COMFYUI_PATH): skipped"; exit 0; fi
	# the test runner too: a ComfyUI env has our requirements (README install) but seldom pytest
	$(COMFY_PY) -m pip install -q pytest websocket-client
	$(COMFY_PY) -m pip install -q --no-deps -e .
	COMFYUI_PATH=$(COMFYUI_PATH) $(COMFY_PY) -m pytest -q tests/host

# not in CI: full-size SD1.5 and SDXL checkpoints (random weights, built in a temp folder) through the server
# (peak RSS on a CPU, measured: SD1.5 6.6 GiB, SDXL 18.8 GiB; each skipped below 10 / 20 GiB of RAM)
test-host-full:
	@if [ ! -x "$(COMFY_PY)" ]; then echo "test-host-full: no ComfyUI python at $(COMFY_PY) (set COMFYUI_PATH)"; exit 1; fi
	$(COMFY_PY) -m pip install -q pytest websocket-client
	$(COMFY_PY) -m pip install -q --no-deps -e .
	CONTINUAL_FULL=1 COMFYUI_PATH=$(COMFYUI_PATH) $(COMFY_PY) -m pytest -q -s -m full tests/host

bench: install
	# (d) runs our merge node inside ComfyUI's python: make this checkout importable there when it exists
	@if [ -x "$(COMFY_PY)" ]; then $(COMFY_PY) -m pip install -q --no-deps -e .; fi
	$(VPY) -m continual_concepts.bench.speed

bench-toy: install
	$(VPY) -m continual_concepts.bench.toyworld.benchmark

clean:
	rm -rf $(VENV) out .pytest_cache
