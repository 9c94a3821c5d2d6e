# Two commands on a fresh machine: `make run` and `make test`.
# uv is installed with pip when missing; everything else comes from uv.lock.
UV = $(shell command -v uv 2>/dev/null || echo python3 -m uv)
STAMP = .venv/.installed

.PHONY: install chromium run test lint format bench clean

install: $(STAMP)

$(STAMP): pyproject.toml uv.lock
	@command -v uv >/dev/null 2>&1 || python3 -m uv --version >/dev/null 2>&1 \
		|| python3 -m pip install --quiet --disable-pip-version-check uv
	$(UV) sync --locked --all-groups
	@touch $(STAMP)

# The browser tests (tests/browser) drive Debian's chromium through Playwright;
# Playwright's own browser downloads are never used.
chromium:
	@if [ ! -x /usr/bin/chromium ]; then \
		if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
			DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends chromium \
			|| { apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends chromium; }; \
		else \
			echo "The browser tests need /usr/bin/chromium: run 'sudo apt-get install -y --no-install-recommends chromium' (Debian/Ubuntu)." >&2; \
			exit 1; \
		fi; \
	fi

run: $(STAMP)
	$(UV) run ai-service dev

test: $(STAMP) chromium
	$(UV) run pytest

lint: $(STAMP)
	$(UV) run ruff check src tests bench clients examples
	$(UV) run ruff format --check src tests bench clients examples
	$(UV) run mypy

format: $(STAMP)
	$(UV) run ruff check --fix src tests bench clients examples
	$(UV) run ruff format src tests bench clients examples

bench: $(STAMP)
	$(UV) run python -m bench.run_all

clean:
	rm -rf .venv .data .pytest_cache .mypy_cache .ruff_cache
