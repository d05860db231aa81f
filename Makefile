# portfolio-stream — two commands on a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test lint bench soak cluster install install-systemd clean

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test,lint]'
	@touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(BIN)/portfolio-stream serve

test: $(STAMP)
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

bench: $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[bench]'
	$(BIN)/python -m tests.bench $(BENCH_ARGS)

# Three nodes behind nginx on :5000, one shared simulated broker, the local Redis and
# PostgreSQL (docs/scaling.md "make cluster"); Ctrl-C stops it all. Ports: CLUSTER_PORT,
# CLUSTER_NODE_PORTS, CLUSTER_SIM_PORT.
cluster: $(STAMP)
	$(BIN)/python -m app.devcluster

# The fault suite's scenarios at scale (docs/reliability.md); loopback only, bounded in clients
# and time. SOAK_ARGS e.g. "--clients 5000 --seconds 300"; figures in tests/soak/results/.
# The failover scenario SIGKILLs an account's holder 100 times ("--only failover --kills 100").
soak: $(STAMP)
	$(BIN)/python -m tests.soak $(SOAK_ARGS)

# As root: the production install for systemd (docs/runbook.md "Initial Deployment").
# Idempotent: re-running upgrades the code and units and never overwrites the env file.
# The venv is built from the system Python: the unit's ProtectHome= hides /root and /home.
SYSTEM_PYTHON ?= /usr/bin/python3
OPT := /opt/portfolio-stream
install-systemd:
	@test "$$(id -u)" -eq 0 || { echo "install-systemd: run as root (sudo make install-systemd)" >&2; exit 1; }
	install -d -m 0755 $(OPT) $(OPT)/docs
	test -x $(OPT)/venv/bin/python || $(SYSTEM_PYTHON) -m venv $(OPT)/venv
	$(OPT)/venv/bin/python -m pip install --quiet --upgrade pip
	$(OPT)/venv/bin/python -m pip install --quiet .
	$(OPT)/venv/bin/python -m pip install --quiet --no-deps --force-reinstall .
	rm -rf build  # setuptools' in-tree build leftovers
	install -m 0644 docs/*.md docs/alerts.yml $(OPT)/docs/
	install -D -m 0644 systemd/portfolio-stream.sysusers /usr/lib/sysusers.d/portfolio-stream.conf
	systemd-sysusers /usr/lib/sysusers.d/portfolio-stream.conf 2>/dev/null || getent passwd portfolio-stream >/dev/null || useradd --system --user-group --home-dir /var/lib/portfolio-stream --shell /usr/sbin/nologin portfolio-stream
	install -d -m 0750 -o portfolio-stream -g portfolio-stream /var/lib/portfolio-stream /var/log/portfolio-stream
	install -m 0644 systemd/portfolio-stream.service systemd/portfolio-stream.socket 'systemd/portfolio-stream@.service' /etc/systemd/system/
	install -d -m 0750 -o root -g portfolio-stream /etc/portfolio-stream
	install -m 0640 -o root -g portfolio-stream systemd/portfolio-stream.env.example /etc/portfolio-stream/
	test -e /etc/portfolio-stream/portfolio-stream.env || install -m 0640 -o root -g portfolio-stream systemd/portfolio-stream.env.example /etc/portfolio-stream/portfolio-stream.env
	install -m 0644 systemd/portfolio-stream.logrotate /etc/logrotate.d/portfolio-stream
	install -m 0755 systemd/portfolio-stream-cli /usr/local/bin/portfolio-stream
	if [ -d /run/systemd/system ]; then systemctl daemon-reload; fi
	@echo "installed. Next: edit /etc/portfolio-stream/portfolio-stream.env, then"
	@echo "  systemctl enable --now portfolio-stream.socket portfolio-stream.service"
	@echo "  (already running: systemctl restart portfolio-stream — zero downtime)"
	@echo "  or several nodes: systemctl enable --now portfolio-stream@5001 portfolio-stream@5002"

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache *.egg-info
