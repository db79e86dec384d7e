#!/usr/bin/env bash
# The full capture benchmark (issue 5): sidecap vs tcpdump (and dumpcap when installed), every
# scenario, 3 repetitions. Writes bench/results/{latest.md,latest.csv,runs.csv,plot.svg}.
# Run as root on an otherwise idle machine; takes about 25 minutes. Extra arguments go to
# `sidecap-bench run` (e.g. --reps 1 --only lo-sat-64,lo-rate-100k-64 --tools sidecap,tcpdump).
set -euo pipefail
cd "$(dirname "$0")/.."
need=()
command -v tcpdump >/dev/null || need+=(tcpdump)
command -v dumpcap >/dev/null || need+=(tshark)
command -v fsfreeze >/dev/null || need+=(util-linux)
command -v mkfs.ext4 >/dev/null || need+=(e2fsprogs)
if ((${#need[@]})); then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi
cargo build --release --bins
cargo build --release --locked --manifest-path bench/Cargo.toml
bench/target/release/sidecap-bench run "$@" &
pid=$!
# The runner cleans up after itself; this covers an interrupted run (namespaces, the frozen
# loop-mounted file system of the slow-disk scenario, the work directory).
cleanup() {
  kill -TERM $pid 2>/dev/null || true
  wait $pid 2>/dev/null || true
  work=/var/tmp/sidecap-bench-$pid
  if mountpoint -q "$work/slowdisk"; then
    fsfreeze -u "$work/slowdisk" 2>/dev/null || true
    dev=$(findmnt -n -o SOURCE "$work/slowdisk")
    umount "$work/slowdisk" && losetup -d "$dev" 2>/dev/null || true
  fi
  for ns in scb-node-$pid scb-pod-$pid; do ip netns del $ns 2>/dev/null || true; done
  rm -rf "$work"
  exit 1
}
trap cleanup INT TERM
wait $pid
