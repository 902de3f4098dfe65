# The commands: `make pretrain` (built-in demo), `make finetune` (after it) and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cat requirements.txt pyproject.toml | cksum | cut -d' ' -f1)
KSTAMP := $(VENV)/.kernels-$(shell cksum requirements-kernels.txt | cut -d' ' -f1)
CONFIG ?= configs/demo.yaml
SUITE ?= cpu

.PHONY: pretrain finetune test test-slow test-kernels test-all bench flops reproduce clean-venv

$(STAMP): requirements.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	$(PY) -m pip install --quiet --no-deps -e .
	$(PY) -c "from sparse_ops.kernels import cpp_build; cpp_build.main()"
	rm -f $(VENV)/.installed-*
	touch $(STAMP)

$(KSTAMP): $(STAMP) requirements-kernels.txt
	$(PY) -m pip install --quiet -r requirements-kernels.txt
	rm -f $(VENV)/.kernels-*
	touch $(KSTAMP)

venv: $(STAMP)

pretrain: $(STAMP)
	$(PY) -m bert_ipu.pretrain --config $(CONFIG) $(ARGS)

# After `make pretrain`: export runs/demo, fine-tune pre-trained vs randomly initialised
# on the offline docstring-topic task (bert_ipu/finetune/demo.py); results in RUN/finetune
# (RUN=runs/demo unless given: make finetune RUN=runs/other).
RUN ?= runs/demo
finetune: $(STAMP)
	$(PY) -m bert_ipu.finetune.demo --run $(RUN) --out $(RUN)/finetune $(ARGS)

test: $(STAMP)
	$(PY) -m pytest -q -rs -m "not slow and not kernels" $(ARGS)

test-slow: $(STAMP)
	$(PY) -m pytest -q -rs -m "slow" $(ARGS)

test-kernels: $(KSTAMP)
	TRITON_INTERPRET=1 $(PY) -m pytest -q -rs -m "kernels" $(ARGS)

test-all: test test-slow test-kernels

bench: $(STAMP)
	$(PY) -m dynsp_tools.bench_ops --quick

# The reproduction suite (docs/results/README.md): resumable, run it again after a stop.
# In the background: nohup make reproduce > runs/reproduce.log 2>&1 &
reproduce: $(STAMP)
	mkdir -p runs
	nice $(PY) -m dynsp_tools.reproduce --suite $(SUITE) $(ARGS)

clean-venv:
	rm -rf $(VENV)
