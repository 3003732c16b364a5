# `make demo` and `make test` are all a newcomer needs: each sets up .venv first when missing.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# torch first, pinned: on these machines torch==2.13.0 is the CPU wheel on local disk, while an
# unpinned torch (even as a dependency) would pull a multi-GB CUDA build.
TORCH_SPEC ?= torch==2.13.0

.PHONY: setup demo test bench bench-transformer zoo readme-flags clean-venv

$(BIN)/uhd: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "$(TORCH_SPEC)"
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	@touch $(BIN)/uhd

setup: $(BIN)/uhd

demo: setup
	@test -d data/synth || $(BIN)/uhd dataset synth data/synth --n 3000 --seed 0
	$(BIN)/uhd train --preset quickstart --exist-ok

test: setup
	$(BIN)/python -m pytest -q

bench: setup
	$(BIN)/python bench/train_throughput.py

bench-transformer: setup
	$(BIN)/python bench/transformer_cost.py

# Model zoo on the real dev data: train, export, eval, then latency; ~30 min on 2 cores, cached in
# runs/zoo/ (a rerun redoes only what changed); writes docs/zoo.md and docs/zoo.png.
zoo: setup
	$(BIN)/python bench/zoo.py

# Rewrite the README's flag table from RunConfig (tests/test_readme.py fails while it is stale).
readme-flags: setup
	$(BIN)/python -c "from pathlib import Path; from uhd_cli.commands.train import write_readme_flag_table as w; \
	p = Path('README.md'); p.write_text(w(p.read_text()))"

clean-venv:
	rm -rf $(VENV)
