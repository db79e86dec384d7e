#!/usr/bin/env bash
# Installs what sidecap needs to build, run and test on Debian 12 (run as root). Idempotent.
# The Rust toolchain itself comes from rustup (https://rustup.rs); everything else from Debian.
set -euo pipefail
need=()
for p in libpcap-dev tcpdump tshark iproute2 procps libcap2-bin curl jq util-linux nginx-light libnginx-mod-http-dav-ext openssl; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || need+=("$p")
done
if [ ${#need[@]} -gt 0 ]; then
  echo "setup: installing ${need[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
if ! command -v cargo >/dev/null && [ -x "$HOME/.cargo/bin/cargo" ]; then
  echo "setup: cargo is in ~/.cargo/bin but not on PATH: run 'source ~/.cargo/env' first" >&2
  exit 1
fi
if ! command -v cargo >/dev/null; then
  # No rustup toolchain: Debian 12 ships a current Rust as cargo-web/rustc-web (1.85+).
  echo "setup: no cargo on PATH; installing Debian's cargo-web (or install Rust with rustup)" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends cargo-web >/dev/null
fi
