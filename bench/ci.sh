#!/usr/bin/env bash
# CI load check (issues 5, 17): short captures under load with sidecap and tcpdump interleaved.
# Correctness: every written file is valid (our walker and capinfos agree), sidecap's packets in
# files == sidecap_packets_written_total on /metrics == packets_written in the done marker, peak
# RSS within --buffer-size + --queue-size + 20 MiB, a SIGTERM idle and right after a burst exits in
# at most 100 ms (median of 3) and keeps every
# packet; a 256 MiB file uploaded to a local Garage (S3) and to a webhook arrives whole, no
# multipart upload left (MB/s and peak RSS printed, not gated). The gate: on lo at 64 B and 1400 B (5 repetitions each), the median same-run CPU ratio
# sidecap/tcpdump must stay under report::CPU_GATE and sidecap must capture no fewer packets
# than tcpdump. Prints the tables into the log; exits non-zero on any failure.
# Needs root and target/release/sidecap (scripts/test.sh builds it first). About 2 minutes.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v tcpdump >/dev/null || need+=(tcpdump)
command -v capinfos >/dev/null || need+=(tshark)
command -v ip >/dev/null || need+=(iproute2)
command -v curl >/dev/null || need+=(curl)
if ((${#need[@]})); then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi
[ -x target/release/sidecap ] || cargo build --release --bins
cargo build --release --locked --quiet --manifest-path bench/Cargo.toml --target-dir target

t0=$(date +%s)
target/release/sidecap-bench ci "$@" &
pid=$!
# The runner removes its namespaces itself; this covers an interrupted run.
# (and the upload section's Garage, which scripts/garage-local.sh runs detached).
trap 'kill -TERM $pid 2>/dev/null; wait $pid; for ns in scb-node-$pid scb-pod-$pid; do ip netns del $ns 2>/dev/null || true; done; g=/var/tmp/sidecap-bench-$pid/upload/garage/garage.pid; [ -s $g ] && kill -TERM "$(cat $g)" 2>/dev/null; rm -rf /var/tmp/sidecap-bench-$pid; exit 1' INT TERM
wait $pid
echo "bench/ci.sh: load check passed in $(( $(date +%s) - t0 )) s"
