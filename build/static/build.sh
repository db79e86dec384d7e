#!/usr/bin/env bash
# Builds a fully static sidecap (glibc, +crt-static) and prints its path.
# Used by the Dockerfile's builder stage and by scripts/build-image.sh on the host, so both paths
# produce the same binary. Needs: cargo, a C compiler, libpcap-dev and libdbus-1-dev (Debian).
#
# Why each piece:
# - An explicit --target keeps the host's normal target/release build untouched (RUSTFLAGS with
#   +crt-static then apply to the binary only, not to build scripts and proc-macros).
# - Cargo.toml's `image` profile (release + fat LTO, one codegen unit, dependencies at
#   opt-level "s"): the image's size, measured step by step in docs/image.md.
# - Debian's libpcap.a is built with D-Bus support, so it needs -ldbus-1 (libdbus-1.a exists).
# - libdbus-1.a references sd_listen_fds/sd_is_socket from libsystemd, which Debian ships no
#   static library for: sd-stub.c answers "no sockets passed" (sidecap never talks to D-Bus).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
target="${SIDECAP_STATIC_TARGET:-x86_64-unknown-linux-gnu}"
out="${CARGO_TARGET_DIR:-$root/target}"
mkdir -p "$out/static-stub"
cc -O2 -c "$here/sd-stub.c" -o "$out/static-stub/sd-stub.o"
ar rcs "$out/static-stub/libsdstub.a" "$out/static-stub/sd-stub.o"
export RUSTFLAGS="-C target-feature=+crt-static -L native=$out/static-stub -C link-arg=-Wl,-Bstatic -C link-arg=-ldbus-1 -C link-arg=-lsdstub -C link-arg=-lc ${SIDECAP_STATIC_RUSTFLAGS:-}"
(cd "$root" && cargo build --profile image --locked --bin sidecap --target "$target" >&2)
bin="$out/$target/image/sidecap"
# A static-pie still has an interpreter-less ELF; refuse anything that would need a loader.
if file "$bin" 2>/dev/null | grep -q 'dynamically linked'; then
  echo "build-static: $bin is dynamically linked" >&2; exit 1
fi
echo "$bin"
