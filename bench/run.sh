#!/usr/bin/env bash
# The full capture benchmark (issues 5, 17): sidecap vs tcpdump, interleaved rep by rep, 64/512/1400 B
# on lo, a veth in a netns and -i any (5 repetitions), a 3x longer run for RSS, and the stop
# scenarios (idle, burst then SIGTERM), then upload throughput of a 1 GiB file to a local Garage
# (S3) and a webhook (issue 15). Writes bench/results/{latest.md,latest.csv,runs.csv,
# stop.csv,upload.csv,plot.svg} (or --out DIR). Run as root on an otherwise idle machine: about 10 minutes.
# Extra arguments go to `sidecap-bench run` (e.g. --out bench/results/run-a, --drop-caches,
# --extra for the rate/sat2/rotation/slow-disk scenarios, --only NAME,.., --tools sidecap,tcpdump,dumpcap).
set -euo pipefail
cd "$(dirname "$0")/.."
need=()
command -v tcpdump >/dev/null || need+=(tcpdump)
command -v dumpcap >/dev/null || need+=(tshark)
command -v fsfreeze >/dev/null || need+=(util-linux)
command -v mkfs.ext4 >/dev/null || need+=(e2fsprogs)
command -v curl >/dev/null || need+=(curl)  # reads the upload section's objects back from Garage
if ((${#need[@]})); then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi
cargo build --release --bins
# The bench crate uses the library's pcap walkers: built into the root target/ it reuses the
# dependencies `cargo build --release` just built.
cargo build --release --locked --manifest-path bench/Cargo.toml --target-dir target
target/release/sidecap-bench run "$@" &
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
  # The upload section's Garage (scripts/garage-local.sh runs it detached).
  [ -s "$work/upload/garage/garage.pid" ] && kill -TERM "$(cat "$work/upload/garage/garage.pid")" 2>/dev/null
  rm -rf "$work"
  exit 1
}
trap cleanup INT TERM
wait $pid
