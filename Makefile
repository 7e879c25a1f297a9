# Two commands on a fresh machine:  make demo   |   make test
SHELL := /bin/bash
ENV := source env.sh &&

.PHONY: setup demo test bench clean
setup:
	@bash scripts/setup.sh

demo: setup
	@$(ENV) mu0 demo

test: setup
	@$(ENV) python -m pytest -q test

bench: setup
	@$(ENV) for b in bench/*.py; do echo "== $$b"; python $$b || exit 1; done

clean:
	rm -rf build .venv env.sh
