# The two commands of the README. Both run from a fresh clone with no network beyond PyPI.
PYTHON ?= python
DEMO_DIR ?= adpretrain-demo

.PHONY: install demo test

install:
	$(PYTHON) -m pip install -r requirements-ci.txt
	$(PYTHON) -m pip install -e ".[cpu,dev,demo]"

demo: install
	adpretrain demo --output $(DEMO_DIR)

test:
	$(PYTHON) -m pytest -q -p no:cacheprovider tests
