#!/usr/bin/env bash
# Bounded coverage-guided fuzzing of the pcap walker (CI runs it for FUZZ_SECONDS, default 60).
# cargo-fuzz needs nightly-only flags; RUSTC_BOOTSTRAP=1 lets the one stable toolchain here use
# them. Seeds: a few valid captures made by the unit-test helpers, so mutation starts from
# real structure. A crash leaves its input in fuzz/artifacts/ and fails the run.
set -euo pipefail
cd "$(dirname "$0")"
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
mkdir -p corpus/pcap_walker
python3 - <<'PY'
import struct, os
def pcap(n, nano=False, snap=65535, swap=False):
    e = '>' if swap else '<'
    magic = 0xa1b23c4d if nano else 0xa1b2c3d4
    out = struct.pack(e+'IHHiIII', magic, 2, 4, 0, 0, snap, 1)
    for i in range(n):
        data = bytes([i % 256]) * (14 + i % 50)
        out += struct.pack(e+'IIII', 1700000000 + i, i, len(data), len(data) + 4) + data
    return out
for name, blob in {'small': pcap(3), 'nano': pcap(5, nano=True), 'swapped': pcap(4, swap=True), 'torn': pcap(6)[:-7]}.items():
    open(f'corpus/pcap_walker/{name}', 'wb').write(blob)
PY
RUSTC_BOOTSTRAP=1 cargo fuzz run pcap_walker corpus/pcap_walker -- -max_total_time="${FUZZ_SECONDS:-60}" -max_len=4096
