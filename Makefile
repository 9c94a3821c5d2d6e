# Two commands on a fresh machine: `make run` and `make test`.
# uv is installed with pip when missing; everything else comes from uv.lock.
UV = $(shell command -v uv 2>/dev/null || echo python3 -m uv)
STAMP = .venv/.installed

.PHONY: install run test lint format bench clean

install: $(STAMP)

$(STAMP): pyproject.toml uv.lock
	@command -v uv >/dev/null 2>&1 || python3 -m uv --version >/dev/null 2>&1 \
		|| python3 -m pip install --quiet --disable-pip-version-check uv
	$(UV) sync --locked --all-groups
	@touch $(STAMP)

run: $(STAMP)
	$(UV) run ai-service dev

test: $(STAMP)
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
