# Set-up and checks for wcs. `make run` and `make test` work on a fresh Debian machine (run as root or with sudo).
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
CONFIG ?= etc/flashphoner.properties
APT_PACKAGES := ffmpeg gstreamer1.0-tools gstreamer1.0-plugins-base gstreamer1.0-plugins-good \
                gstreamer1.0-plugins-bad gstreamer1.0-plugins-ugly gstreamer1.0-libav \
                gstreamer1.0-rtsp gir1.2-gst-rtsp-server-1.0 python3-gi chromium systemd \
                redis-server
# The official WebSDK (package.json pins it) for the demo pages and the browser tests.
NODE_STAMP := node_modules/.installed

.PHONY: venv system-deps node-deps run test unit integration lint fuzz bench clean

$(VENV)/.installed: pyproject.toml setup.py
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# compat mode puts the checkout itself on sys.path, so twistd finds twisted/plugins/wcs_plugin.py
	$(PY) -m pip install -q -e '.[test]' --config-settings editable_mode=compat
	touch $@

venv: $(VENV)/.installed

# Real peers the integration tests drive: ffmpeg, GStreamer (rtmpsink is librtmp, as in OBS; the RTSP
# server through python3-gi) and Debian's Chromium (the browser tests never download a browser of their own);
# systemd for `systemd-analyze`, which checks etc/wcs.service (it needs no running systemd); redis-server
# for the cluster tests (each starts its own on a Unix socket; the Debian service is not used).
system-deps:
	@missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		$$SUDO apt-get update -q && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -q $$missing; \
	fi

# Node.js and npm from Debian only when the machine has none; `npm ci` installs exactly the lock file.
$(NODE_STAMP): package.json package-lock.json
	@command -v npm >/dev/null 2>&1 || { \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		$$SUDO apt-get update -q && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -q nodejs npm; }
	npm ci --no-audit --no-fund
	touch $@

node-deps: $(NODE_STAMP)

run: venv node-deps
	$(VENV)/bin/twistd -n --pidfile= wcs --config $(CONFIG)

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

unit: venv
	$(VENV)/bin/pytest -q tests/unit

integration: venv system-deps node-deps
	$(VENV)/bin/pytest -q tests/integration

test: venv system-deps node-deps lint
	$(VENV)/bin/pytest -q tests

# Every fuzz target for FUZZ_SECONDS each (atheris); crashers land in tests/fuzz/corpus/<target>/.
FUZZ_SECONDS ?= 30
fuzz: venv
	$(PY) -m tests.fuzz.run --seconds $(FUZZ_SECONDS)

bench: venv system-deps node-deps
	$(PY) bench/png_encode.py
	$(PY) bench/image_formats.py
	$(PY) bench/image_wall.py
	$(PY) bench/cold_decode.py
	$(PY) bench/auto_decode.py
	$(PY) bench/hot_snapshot.py --baseline 59a1987
	$(PY) bench/snapshot_latency.py
	$(PY) bench/auto_snapshot.py
	$(PY) bench/webrtc_snapshot.py
	$(PY) bench/churn.py
	$(PY) bench/reactor_probe.py
	$(PY) bench/scale.py

clean:
	rm -rf $(VENV) node_modules build *.egg-info .pytest_cache .mypy_cache .ruff_cache
