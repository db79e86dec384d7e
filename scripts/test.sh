#!/usr/bin/env bash
# Sets up (Debian packages) and runs every test suite. Run as root: the tests capture on real
# interfaces, create network and PID namespaces, and start real servers.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
cargo build --release --bins
cargo test --release -- --test-threads=4
# Dependency licences, bans and sources (deny.toml); advisories need GitHub, see deny.toml.
command -v cargo-deny >/dev/null || cargo install cargo-deny --locked --quiet
cargo deny --log-level error check licenses bans sources
for suite in fuzz/run.sh bench/ci.sh k8s/check.sh tests/e2e/run.sh; do
  if [ -x "$suite" ]; then echo "== $suite"; "$suite"; fi
done
