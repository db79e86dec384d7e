#!/usr/bin/env bash
# Sets up (Debian packages) and runs every test suite. Run as root: the tests capture on real
# interfaces, create network and PID namespaces, and start real servers. Prints how long each
# step took (most of it compiling: sidecap twice, host and static image, plus cargo-deny).
set -euo pipefail
cd "$(dirname "$0")/.."
t0=$(date +%s) last=$(date +%s) times=()
step() { # NAME: closes the previous step's timer
  local now; now=$(date +%s)
  [ -n "${current:-}" ] && times+=("$(printf '%-22s %4d s' "$current" $((now - last)))")
  current="$1" last=$now
  [ -n "$1" ] && echo "== $1"
  return 0
}
summary() {
  step ""
  echo "== times"; printf '  %s\n' "${times[@]}"
  echo "  total                  $(( $(date +%s) - t0 )) s"
}
trap summary EXIT  # also when a step fails: the times up to it
step setup; scripts/setup.sh
# A test that spawns a program no setup script names fails here, not on the next fresh machine.
scripts/check-fresh.sh --lint
step "cargo build"; cargo build --release --bins
step "cargo test"; cargo test --release -- --test-threads=4
# Dependency licences, bans and sources (deny.toml); advisories need GitHub, see deny.toml.
step cargo-deny
if ! command -v cargo-deny >/dev/null; then
  # Its release profile is fat LTO with one codegen unit, slow to build on two cores for a tool
  # that checks a lock file in a second: built without them (230 s here, on a busy machine).
  CARGO_PROFILE_RELEASE_LTO=false CARGO_PROFILE_RELEASE_CODEGEN_UNITS=16 CARGO_PROFILE_RELEASE_OPT_LEVEL=1 \
    cargo install cargo-deny --locked --quiet
fi
cargo deny --log-level error check licenses bans sources
for suite in fuzz/run.sh bench/ci.sh k8s/check.sh tests/e2e/run.sh; do
  if [ -x "$suite" ]; then step "$suite"; "$suite"; fi
done
