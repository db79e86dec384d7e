#!/usr/bin/env bash
# Installs what sidecap needs to build, run and test on Debian 12 (run as root). Idempotent.
# The Rust toolchain itself comes from rustup (https://rustup.rs); everything else from Debian.
# Every command a suite runs is named with its package (scripts/check-fresh.sh proves the list
# on a fresh root); scripts/podman-setup.sh adds what the image build and tests/e2e need.
# Garage (tests/it's S3 store) is no Debian package: built with cargo below, after the packages.
#
#   scripts/setup.sh                  # packages, then a quick check that each tool runs
#   scripts/setup.sh --packages-only  # packages only (scripts/check-fresh.sh, in a container)
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/packages.sh
packages=(
  -:libpcap-dev                        # the pcap crate links libpcap
  cc:gcc c++:g++                       # build scripts (ring); fuzz/ builds libFuzzer (C++)
  tcpdump:tcpdump                      # bench/ci.sh runs it beside sidecap
  tshark:tshark capinfos:wireshark-common dumpcap:wireshark-common editcap:wireshark-common  # tests, bench, demo
  ip:iproute2                          # veths and netns (tests/it, bench)
  pgrep:procps                         # tests/it
  setcap:libcap2-bin getcap:libcap2-bin  # tests/it security, tests/e2e
  unshare:util-linux nsenter:util-linux setpriv:util-linux fsfreeze:util-linux prlimit:util-linux flock:util-linux fincore:util-linux-extra  # tests, k8s/check.sh
  script:bsdutils                      # tests/it/laptop.rs: a real terminal for the status line
  mount:mount umount:mount losetup:mount  # tests/it (tmpfs), bench (loop ext4)
  mkfs.ext4:e2fsprogs                  # bench: a small ext4 image
  curl:curl jq:jq                      # tests/e2e
  nginx:nginx-light -:libnginx-mod-http-dav-ext  # tests/it/nginx.rs (WebDAV PUT, TLS)
  openssl:openssl                      # tests/it: test certificates
  python3:python3 -:python3-venv       # fuzz/run.sh seeds; k8s/check.sh's tool venv
  cmp:diffutils timeout:coreutils
  make:make                            # garage's bundled libsodium (./configure && make), below
)
ensure_packages setup "${packages[@]}"
[ "${1:-}" = --packages-only ] && exit 0

if ! command -v cargo >/dev/null && [ -x "$HOME/.cargo/bin/cargo" ]; then
  echo "setup: cargo is in ~/.cargo/bin but not on PATH: run 'source ~/.cargo/env' first" >&2
  exit 1
fi
if ! command -v cargo >/dev/null; then
  # No rustup toolchain: Debian 12 ships a current Rust as cargo-web/rustc-web (1.96 as of 2026-12; sidecap needs 1.89, rusty-s3's minimum).
  echo "setup: no cargo on PATH; installing Debian's cargo-web (or install Rust with rustup)" >&2
  ensure_packages setup cargo:cargo-web rustc:rustc-web
fi
# Garage, the real S3 store tests/it uploads to (tests/it/garage.rs, issue 15): not a Debian
# package, so built from crates.io when missing, as scripts/test.sh builds cargo-deny: only the
# features the tests use (SQLite metadata, bundled C libraries), at opt-level 1 without debug
# info (a test fixture; the full release build is far slower on two cores). Into /usr/local/bin.
if ! command -v garage >/dev/null; then
  echo "setup: building garage 2.5.0 from crates.io (the S3 store of tests/it; a few minutes)" >&2
  CARGO_PROFILE_RELEASE_OPT_LEVEL=1 CARGO_PROFILE_RELEASE_DEBUG=false \
    cargo install garage --version 2.5.0 --locked --no-default-features \
    --features bundled-libs,sqlite --root /usr/local --quiet
fi
# Each tool starts (a missing shared library or a broken install shows here, not in a suite).
works setup garage garage --version
works setup tshark tshark -v
works setup capinfos capinfos -v
works setup tcpdump tcpdump --version
works setup nginx nginx -V
works setup "python3 -m venv" /usr/bin/python3 -c 'import venv, ensurepip'
works setup "network namespaces" unshare --net true
