# The README's two commands. Each sets up everything it needs (virtualenv, install) and is
# idempotent: the install step re-runs only when pyproject.toml changed.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
CHROMIUM ?= /usr/bin/chromium
EXTRAS ?= test,parquet,rocksdb

.PHONY: demo test up bench chaos lint clean-venv browser

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[$(EXTRAS)]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/onyx-wa demo

# The admin web UI's end-to-end tests drive Debian's chromium through playwright (no browser
# download). `make browser` installs it when missing on a Debian-like machine where we are root;
# elsewhere it prints a notice and tests/test_admin_ui.py skips, saying why. Idempotent and cheap
# when chromium is there (one file test), so it runs before every `make test`.
browser:
	@if [ -x "$(CHROMIUM)" ]; then :; \
	elif command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
		echo "make: installing Debian's chromium for the admin UI tests (apt-get, once)"; \
		export DEBIAN_FRONTEND=noninteractive; \
		apt-get update -qq && apt-get install -y -qq chromium fonts-liberation >/dev/null \
			|| { echo "make: apt-get install chromium failed" >&2; exit 1; }; \
	else \
		echo "make: $(CHROMIUM) is missing and apt-get cannot install it here (not root, or" \
		     "not Debian): the admin UI browser tests will be skipped;" \
		     "set ONYX_WA_CHROMIUM=/path/to/chromium to run them"; \
	fi

# pytest exits 5 when it collected nothing: that is a failure here, not a pass.
test: $(STAMP) browser
	@$(BIN)/python -m pytest $(PYTEST_ARGS); status=$$?; \
	if [ $$status -eq 5 ]; then echo "make test: no tests ran" >&2; exit 1; fi; exit $$status

up: $(STAMP)
	$(BIN)/onyx-wa up

bench: $(STAMP)
	$(BIN)/onyx-wa bench all --json

# Every chaos scenario under a steady load (about 6 minutes); a short subset runs in `make test`.
chaos: $(STAMP)
	$(BIN)/onyx-wa chaos

lint: $(STAMP)
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

clean-venv:
	rm -rf $(VENV)
