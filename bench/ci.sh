#!/usr/bin/env bash
# CI load check (issue 5): a short capture under load with sidecap and tcpdump side by side.
# It asserts correctness, not speed: every written file is valid (our walker and capinfos agree),
# sidecap's packets in files == sidecap_packets_written_total on /metrics == packets_written in
# the done marker, and the capture ratio and kernel drops are reported. It prints the ratio table
# so every CI log carries the figures, and exits non-zero on any correctness problem.
# Needs root and target/release/sidecap (scripts/test.sh builds it first). About 30 s.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v tcpdump >/dev/null || need+=(tcpdump)
command -v capinfos >/dev/null || need+=(tshark)
command -v ip >/dev/null || need+=(iproute2)
if ((${#need[@]})); then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi
[ -x target/release/sidecap ] || cargo build --release --bins
cargo build --release --locked --quiet --manifest-path bench/Cargo.toml

t0=$(date +%s)
bench/target/release/sidecap-bench ci "$@" &
pid=$!
# The runner removes its namespaces itself; this covers an interrupted run.
trap 'kill -TERM $pid 2>/dev/null; wait $pid; for ns in scb-node-$pid scb-pod-$pid; do ip netns del $ns 2>/dev/null || true; done; rm -rf /var/tmp/sidecap-bench-$pid; exit 1' INT TERM
wait $pid
echo "bench/ci.sh: load check passed in $(( $(date +%s) - t0 )) s"
