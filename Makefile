# The two commands a new user runs are `make demo` and `make test`; both go
# through `make setup`, which installs only what is missing (scripts/setup.sh).
.PHONY: setup demo test bench guest doctor screenshots clean

setup:
	@bash scripts/setup.sh

guest: setup
	@.venv/bin/sbtui guest build

demo: setup
	@.venv/bin/sbtui demo

test: setup
	@.venv/bin/sbtui guest build >/dev/null
	@.venv/bin/python -m pytest -q -ra

bench: setup
	@.venv/bin/python -m benchmarks

doctor: setup
	@.venv/bin/sbtui doctor

screenshots: setup
	@.venv/bin/python -m sbtui.screenshots

clean:
	rm -rf .venv .pytest_cache
