# imserver — the two commands a new user needs:
#   make run    set up a virtualenv and run the server on the embedded default
#   make test   set up a virtualenv and run lint, type checks and the whole test suite

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install lock run demo test test-postgres lint typecheck pytest clean chromium jdk dashboard-assets

$(STAMP): pyproject.toml clients/python_sdk/pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e ".[dev]" -e clients/python_sdk
	touch $(STAMP)

# Re-pin constraints.txt to the newest versions pyproject.toml allows (then run make test).
lock:
	rm -rf $(VENV)-lock
	$(PYTHON) -m venv $(VENV)-lock
	$(VENV)-lock/bin/python -m pip install --quiet -e ".[dev]" -e clients/python_sdk
	{ grep '^#' constraints.txt; $(VENV)-lock/bin/pip freeze --exclude-editable; } > constraints.new
	mv constraints.new constraints.txt
	rm -rf $(VENV)-lock

install: $(STAMP) chromium jdk

# The dashboard's browser tests drive Debian's chromium (never `playwright install`:
# browser downloads fail offline), with a Chinese font for its zh-CN labels. CI runs as root.
chromium:
	@test -x /usr/bin/chromium && fc-list :lang=zh | grep -q . \
		|| apt-get install -y chromium fonts-wqy-microhei

# tests/integration/test_java_client.py compiles clients/java with the JDK's javac (Java 17).
jdk:
	@command -v javac >/dev/null && command -v java >/dev/null \
		|| apt-get install -y openjdk-17-jdk-headless

# Re-fetch the dashboard's one third-party asset (uPlot, pinned in package-lock.json)
# into the package; the result is committed, so no build step is needed to serve it.
DASH := imserver/dashboard
dashboard-assets:
	cd $(DASH)/frontend && npm ci --ignore-scripts --no-audit --no-fund
	cp $(DASH)/frontend/node_modules/uplot/dist/uPlot.iife.min.js $(DASH)/static/vendor/uplot.iife.min.js
	cp $(DASH)/frontend/node_modules/uplot/dist/uPlot.min.css $(DASH)/static/vendor/uplot.min.css
	cp $(DASH)/frontend/node_modules/uplot/LICENSE $(DASH)/static/vendor/uplot.LICENSE
	rm -rf $(DASH)/frontend/node_modules

run: install
	$(BIN)/python -m imserver serve --config config/default.toml

# The server, the bots, simulated business systems and a sample org (docs/bots.md, "Demo").
demo: install
	$(BIN)/python -m bots.demo run

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: install
	$(BIN)/mypy

# Two workers (pytest-xdist): the suite mostly waits on sockets and timers, so two
# processes halve its time on two cores (tests use free ports and their own databases).
pytest: install
	$(BIN)/pytest -q -n 2

test: lint typecheck pytest

# The same suite with every test server on PostgreSQL instead of SQLite (tests/support.py
# make_test_config; tests that inspect SQLite itself pin it). Not part of `make test`.
test-postgres: install
	IM_TEST_STORE=postgres $(BIN)/pytest -q -n 2

clean:
	rm -rf $(VENV) data data-demo .pytest_cache .mypy_cache .ruff_cache .hypothesis
