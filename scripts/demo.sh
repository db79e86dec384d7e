#!/usr/bin/env bash
# The main job, end to end on loopback: build sidecap, capture while sending 200 UDP packets to
# 127.0.0.1, stop it with SIGTERM the way the kubelet does, and show what was captured.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
cargo build --release --quiet
dir=$(mktemp -d /tmp/sidecap-demo.XXXXXX)
port=47123
./target/release/sidecap capture -i lo -w "$dir" --listen 127.0.0.1:0 "udp port $port" &
pid=$!
for _ in $(seq 50); do ls "$dir"/*.pcap.part >/dev/null 2>&1 && break; sleep 0.1; done
for i in $(seq 200); do printf 'packet %d' "$i" > /dev/udp/127.0.0.1/$port; done
kill -TERM "$pid"
wait "$pid" && echo "demo: sidecap exited 0 after SIGTERM"
echo "demo: files in $dir:"; ls -l "$dir"
echo "demo: done marker:"; cat "$dir/capture.done"; echo
capinfos -c -e "$dir"/*.pcap
tshark -r "$dir"/*.pcap -c 3
