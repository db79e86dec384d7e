#!/usr/bin/env bash
# Bounded coverage-guided fuzzing of the pcap and pcapng walkers (CI runs each for FUZZ_SECONDS, default 60).
# cargo-fuzz needs nightly-only flags; RUSTC_BOOTSTRAP=1 lets the one stable toolchain here use
# them. Seeds: a few valid captures made by the unit-test helpers, so mutation starts from
# real structure. A crash leaves its input in fuzz/artifacts/ and fails the run.
set -euo pipefail
cd "$(dirname "$0")"
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
mkdir -p corpus/pcap_walker corpus/pcapng_walker
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
def pcapng(n, swap=False, torn=0):
    e = '>' if swap else '<'
    def block(t, body):
        body += bytes(-len(body) % 4)
        return struct.pack(e+'II', t, len(body) + 12) + body + struct.pack(e+'I', len(body) + 12)
    opt = lambda code, v: struct.pack(e+'HH', code, len(v)) + v + bytes(-len(v) % 4)
    out = block(0x0A0D0D0A, struct.pack(e+'IHHq', 0x1A2B3C4D, 1, 0, -1) + opt(4, b'sidecap') + bytes(4))
    out += block(1, struct.pack(e+'HHI', 276, 0, 65535) + opt(2, b'any') + opt(9, b'\x09') + bytes(4))
    out += block(0xA, struct.pack(e+'II', 0x544c534b, 20) + b'CLIENT_RANDOM 00 11\n')
    for i in range(n):
        data = bytes([i % 256]) * (20 + i % 50)
        out += block(6, struct.pack(e+'IIIII', 0, 0, 1700000000 + i, len(data), len(data)) + data)
    out += block(5, struct.pack(e+'III', 0, 0, 0) + opt(4, struct.pack(e+'Q', n)) + bytes(4))
    return out[:len(out) - torn]
for name, blob in {'small': pcapng(3), 'swapped': pcapng(4, swap=True), 'torn': pcapng(6, torn=9)}.items():
    open(f'corpus/pcapng_walker/{name}', 'wb').write(blob)
PY
RUSTC_BOOTSTRAP=1 cargo fuzz run pcapng_walker corpus/pcapng_walker -- -max_total_time="${FUZZ_SECONDS:-60}" -max_len=4096
RUSTC_BOOTSTRAP=1 cargo fuzz run pcap_walker corpus/pcap_walker -- -max_total_time="${FUZZ_SECONDS:-60}" -max_len=4096
