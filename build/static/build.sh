#!/usr/bin/env bash
# Builds a fully static sidecap (glibc, +crt-static) and prints its path.
# Used by the Dockerfile's builder stage and by scripts/build-image.sh on the host, so both paths
# produce the same binary. Needs: cargo, a C compiler, binutils (ar, objcopy) and libpcap-dev
# (Debian).
#
# Why each piece (sizes measured in docs/image.md):
# - An explicit --target keeps the host's normal target/release build untouched (RUSTFLAGS with
#   +crt-static then apply to the binary only, not to build scripts and proc-macros).
# - Cargo.toml's `image` profile (release + fat LTO, one codegen unit, opt-level "z" except the
#   uploader's per-byte crates).
# - libpcap.a is a copy of Debian's without pcap-dbus.o (pcap-nodbus.c stands in): Debian builds
#   libpcap with D-Bus capture, which would link libdbus-1.a and, through it, libsystemd symbols
#   Debian has no static library for. Without it: no dbus-system/dbus-session pseudo-devices in
#   the image's binary, -330 KB.
# - libc.a and libpcap.a without .eh_frame: unwind tables of C code. Rust panics unwind only
#   through Rust frames (std and tokio catch them before any C frame; a panic in an extern "C"
#   callback aborts), so nothing unwinds through glibc or libpcap; a backtrace just ends at the
#   first C frame. libgcc_eh (the unwinder, which unwinds its own frames) keeps its tables. -107 KB.
# - -z pack-relative-relocs: the static-pie's ~8,000 relative relocations as a RELR bitmap instead
#   of 24-byte RELA entries (glibc >= 2.36 applies them at start-up; an older glibc would link
#   fine and crash at start, hence the --version run below); still position-independent, so ASLR
#   is unchanged. -196 KB.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
target="${SIDECAP_STATIC_TARGET:-x86_64-unknown-linux-gnu}"
out="${CARGO_TARGET_DIR:-$root/target}"
libs="$out/static-libs"
mkdir -p "$libs"
# Written to temporary names and renamed only when complete, and only when they change, so an
# interrupted run leaves no half-made archive and cargo's link step sees stable inputs.
cc -O2 -c "$here/pcap-nodbus.c" -o "$libs/pcap-nodbus.o"
cp "$(cc -print-file-name=libpcap.a)" "$libs/libpcap.a.tmp"
ar d "$libs/libpcap.a.tmp" pcap-dbus.o
ar rs "$libs/libpcap.a.tmp" "$libs/pcap-nodbus.o"
objcopy -R .eh_frame "$libs/libpcap.a.tmp"
objcopy -R .eh_frame "$(cc -print-file-name=libc.a)" "$libs/libc.a.tmp"
for a in libpcap.a libc.a; do
  if cmp -s "$libs/$a.tmp" "$libs/$a"; then rm "$libs/$a.tmp"; else mv "$libs/$a.tmp" "$libs/$a"; fi
done
# Source paths in panic locations are relative to the crate (`http-1.5.0/src/uri/scheme.rs`,
# `src/capture/mod.rs`) instead of `$CARGO_HOME/registry/src/index.crates.io-<hash>/...` and the
# checkout's absolute path: ~300 such strings, -17 KB. The sources are fetched first so the
# registry's directory exists to be named (a no-op when they are already there).
(cd "$root" && cargo fetch --locked >&2)
remap=""
for d in "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/; do
  [ -d "$d" ] && remap="$remap --remap-path-prefix=$d="
done
remap="$remap --remap-path-prefix=$root/="
# -L native=$libs comes before the system directories, so these archives win for -lpcap and -lc.
# Frame pointers: a function's unwind entry then says "CFA = rbp + 16" once instead of tracking
# every push, pop and stack adjustment, -91 KB of .eh_frame for +6 KB of .text (-84 KB in all; no
# CPU change measured), and perf can walk the image's stacks without DWARF.
export RUSTFLAGS="-C target-feature=+crt-static -L native=$libs -C link-arg=-Wl,-z,pack-relative-relocs$remap -C force-frame-pointers=yes ${SIDECAP_STATIC_RUSTFLAGS:-}"
(cd "$root" && cargo build --profile image --locked --bin sidecap --target "$target" >&2)
bin="$out/$target/image/sidecap"
# A static-pie still has an interpreter-less ELF; refuse anything that would need a loader.
if file "$bin" 2>/dev/null | grep -q 'dynamically linked'; then
  echo "build-static: $bin is dynamically linked" >&2; exit 1
fi
# The archives above must be the ones linked: D-Bus code in the binary means Debian's libpcap.a was.
if grep -q 'dbus_connection_open' "$bin"; then
  echo "build-static: $bin links libdbus (the system libpcap.a was used, not $libs/libpcap.a)" >&2; exit 1
fi
# It must start: relocations, libc start-up and clap's parser all run before --version prints.
if ! "$bin" --version >/dev/null; then
  echo "build-static: $bin does not start (glibc older than 2.36 cannot apply RELR relocations?)" >&2; exit 1
fi
echo "$bin"
