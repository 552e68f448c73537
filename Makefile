# The two commands of the README. Both run from a fresh clone with no network beyond PyPI.
PYTHON ?= python
DEMO_DIR ?= adpretrain-demo

.PHONY: install browser demo test

install:
	$(PYTHON) -m pip install -r requirements-ci.txt
	$(PYTHON) -m pip install -e ".[cpu,dev,demo,app]"
	$(MAKE) browser

# The inspection page's browser test drives Debian's chromium (Playwright's own browser download
# is not reachable offline). Needs root for apt. Where it cannot be installed: an error under CI
# (the test must run there), a warning elsewhere (the test then skips, naming what is missing).
browser:
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || \
	  { apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends chromium; } || \
	  { echo "make browser: could not install Debian's chromium (as root: apt-get install -y chromium)" >&2; \
	    case "$${CI:-}" in ""|0|false) echo "  continuing: the page's browser test will be skipped" >&2;; *) exit 1;; esac; }

demo: install
	adpretrain demo --output $(DEMO_DIR)

test:
	$(PYTHON) -m pytest -q -p no:cacheprovider tests
