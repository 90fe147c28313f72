# The two commands a fresh machine needs (see README):
#   make serve  set everything up, then serve the embedded Gemma 3 270M ("default") and
#               SmolLM2-135M-Instruct ("smollm2", loaded on its first request) over HTTP
#   make test   set everything up, then run the whole test suite
VENV ?= .venv
PROMPT ?= The capital of France is

HOST ?= 127.0.0.1
PORT ?= 8000

.PHONY: setup serve run test test-quick lint docs

setup:
	@bash scripts/bootstrap.sh

serve: setup
	$(VENV)/bin/kvllama serve --host $(HOST) --port $(PORT) --model default --model smollm2

run: setup
	$(VENV)/bin/kvllama complete --max-tokens 32 --temperature 0 --stats "$(PROMPT)"

# One run; tests/conftest.py orders it: stub unit tests, then real-model tests, slow ones last.
# ensure_browser.sh installs chromium (apt-get, only if missing) for the status-page test.
test: setup
	@bash scripts/ensure_browser.sh
	$(VENV)/bin/python -m pytest -q

test-quick: setup
	$(VENV)/bin/python -m pytest -m "not model" -q

lint:
	$(VENV)/bin/ruff check src tests

# The documentation site (docs/ + mkdocs.yml) into site/; strict: a broken link fails.
docs: setup
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/python -m mkdocs build --strict
