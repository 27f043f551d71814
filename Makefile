# The two commands a new user types: `make demo` and `make test`. Each creates or reuses .venv and installs what it needs.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
DEMO   := demo
FIXTURE := tests/fixtures/lfm2-tools-tiny

.PHONY: demo test setup setup-test mutate clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

# llama-cpp-python compiles llama.cpp (6-8 minutes once per machine; the wheel is cached in ~/.cache/lfmq/wheels)
$(VENV)/.runtime: pyproject.toml scripts/install-llama-cpp-python.sh | $(BIN)/python
	bash scripts/install-llama-cpp-python.sh $(BIN)/python
	$(BIN)/python -m pip install -q -e .
	touch $@

# torch==2.13.0 is the CPU build that lies on these machines; transformers is the reference implementation.
# The device tests need qemu-user, OpenSSH and adb from the system (installed only when missing) and zig from PyPI.
$(VENV)/.test: $(VENV)/.runtime scripts/install-system-deps.sh
	bash scripts/install-system-deps.sh
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $@

setup: $(VENV)/.runtime
setup-test: $(VENV)/.test

demo: setup
	@echo "== 1. a shape-exact LFM2.5-350M checkpoint with RANDOM weights (this machine cannot reach the Hub)"
	$(BIN)/lfmq synth lfm2.5-350m -o $(DEMO)/LFM2.5-350M-synthetic --force
	@echo "== 2. convert it to GGUF (torch-free, streaming)"
	$(BIN)/lfmq convert $(DEMO)/LFM2.5-350M-synthetic -o $(DEMO)/LFM2.5-350M-synthetic-F16.gguf --outtype f16 --force
	@echo "== 3. what the GGUF holds"
	$(BIN)/lfmq inspect $(DEMO)/LFM2.5-350M-synthetic-F16.gguf
	@echo "== 4. the Q4-Q8 ladder through llama.cpp's quantizer, measured against the F16 (random weights: the"
	@echo "==    quality columns exercise the measurement; they say nothing about the real model's quality)"
	$(BIN)/lfmq quantize $(DEMO)/LFM2.5-350M-synthetic-F16.gguf -q ladder -o $(DEMO) --force --eval --eval-chunks 4
	@echo "== 5. a SMALL TRAINED model (tests/fixtures/lfm2-tools-tiny: 3M parameters trained by scripts/train_fixture.py on"
	@echo "==    synthetic tool-call conversations; not Liquid's): does each quant still call tools as the F16 does?"
	@echo "==    The ladder, then the mix lfmq quantize --recipe auto finds within Q4_K_M's size (searched on lfmq's calibration"
	@echo "==    text), scored on the fixture's 200 held-out task cases; PPL and KLD are on lfmq's eval.txt, news the fixture never saw"
	$(BIN)/lfmq convert $(FIXTURE) -o $(DEMO)/lfm2-tools-tiny-F16.gguf --outtype f16 --force
	$(BIN)/lfmq quantize $(DEMO)/lfm2-tools-tiny-F16.gguf -q Q8_0,Q4_K_M,Q2_K -o $(DEMO) --force
	$(BIN)/lfmq quantize $(DEMO)/lfm2-tools-tiny-F16.gguf --recipe auto --budget Q4_K_M -o $(DEMO)/lfm2-tools-tiny-auto-Q4_K_M.gguf -c 256 --chunks 8 --force
	$(BIN)/lfmq eval $(DEMO)/lfm2-tools-tiny-Q8_0.gguf $(DEMO)/lfm2-tools-tiny-Q4_K_M.gguf $(DEMO)/lfm2-tools-tiny-auto-Q4_K_M.gguf \
		$(DEMO)/lfm2-tools-tiny-Q2_K.gguf -r $(DEMO)/lfm2-tools-tiny-F16.gguf --task $(FIXTURE)/tasks.jsonl -c 256 --chunks 16
	@echo "== 6. extraction constrained by a JSON schema (RANDOM weights: the values are noise; the JSON always validates)"
	$(BIN)/lfmq extract $(DEMO)/LFM2.5-350M-synthetic-Q4_0.gguf --schema examples/person.schema.json --lines examples/people.txt --seed 0
	@echo "== 7. one tool-call round: a forced call, the tool's result, the answer (RANDOM weights: the text is noise;"
	@echo "==    parsing and the reuse of the conversation state are real)"
	$(BIN)/lfmq chat $(DEMO)/LFM2.5-350M-synthetic-Q4_0.gguf --tools examples/weather-tools.json --tool-choice required --max-tokens 160 --seed 0 < examples/tool-round.txt
	@echo "== 8. a host benchmark of the ladder (pp, tg, TTFT, peak memory), with this machine's predicted figures beside the measured ones"
	$(BIN)/lfmq bench $(DEMO)/LFM2.5-350M-synthetic-Q4_0.gguf $(DEMO)/LFM2.5-350M-synthetic-Q4_K_M.gguf \
		$(DEMO)/LFM2.5-350M-synthetic-Q5_K_M.gguf $(DEMO)/LFM2.5-350M-synthetic-Q6_K.gguf \
		$(DEMO)/LFM2.5-350M-synthetic-Q8_0.gguf -p 256 -n 64 -r 2 --report $(DEMO)/bench-report --force
	@echo "== the HTML report: $(CURDIR)/$(DEMO)/bench-report/report.html"

test: setup-test
	$(BIN)/python -m pytest -q

# small defects put into a scratch copy one at a time: does the suite catch each? (minutes; not part of `make test`)
mutate: setup-test
	$(BIN)/python scripts/mutate.py

clean:
	rm -rf $(DEMO) build *.egg-info
