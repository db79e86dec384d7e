#!/usr/bin/env bash
# Proves, independently of this machine's history, that the setup scripts install every command
# the suites run: a fresh Debian 12 root (debootstrap --variant=minbase: fewer packages than any
# machine image), imported into podman, runs the package part of scripts/setup.sh and
# scripts/podman-setup.sh (--packages-only: no podman-in-podman needed), and then every command
# in $commands must be on PATH. Before that, a lint greps the Rust suites for the programs they
# spawn and fails if one is not in $commands, so the list cannot silently fall behind a test.
# Run as root on a host where podman works (scripts/podman-setup.sh). About 4-5 min.
#
#   scripts/check-fresh.sh
#   scripts/check-fresh.sh --lint            # only the lint (scripts/test.sh runs this, in seconds)
#   SIDECAP_E2E_KEEP=1 scripts/check-fresh.sh   # keep the fresh image (localhost/sidecap-fresh:*)
set -euo pipefail
cd "$(dirname "$0")/.."

# Every program a suite or build step runs: tests/it, bench (bench/ci.sh), fuzz/run.sh,
# k8s/check.sh, tests/e2e (host side), build/static/build.sh, scripts/*.sh.
commands=(
  cc c++ ar strip file make                   # build/static/build.sh, build scripts, libFuzzer; garage's libsodium
  tcpdump tshark capinfos dumpcap editcap     # tests, bench, demo, e2e
  ip pgrep setcap getcap unshare nsenter setpriv fsfreeze prlimit flock fincore script mount umount losetup mkfs.ext4
  sh cp cmp timeout tar
  nginx openssl curl jq python3               # tests/it servers and certificates; e2e; fuzz; k8s
  podman catatonit runc conmon buildah debootstrap  # image build and tests/e2e
)
# Programs the suites run that are no Debian package: scripts/setup.sh builds them with `cargo
# install` after its packages (garage: the S3 store of tests/it/s3.rs), as scripts/test.sh does
# cargo-deny. The lint accepts them; the fresh root (packages only, no cargo) does not have them.
cargo_tools=(garage)
# Packages without a command that the suites need.
libraries=(libpcap-dev python3-venv libnginx-mod-http-dav-ext)

if [ "${1:-}" = --inside ]; then
  # In the fresh container: no daemon may start during installs (nginx, dbus).
  printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d; chmod 0755 /usr/sbin/policy-rc.d
  t0=$(date +%s)
  scripts/setup.sh --packages-only
  scripts/podman-setup.sh --packages-only
  echo "check-fresh: packages installed in $(( $(date +%s) - t0 )) s" >&2
  missing=()
  for c in "${commands[@]}"; do
    command -v "$c" >/dev/null || missing+=("$c")
  done
  for p in "${libraries[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("package $p")
  done
  /usr/bin/python3 -c 'import venv, ensurepip' 2>/dev/null || missing+=("python3 venv/ensurepip")
  if [ ${#missing[@]} -gt 0 ]; then
    echo "check-fresh: FAIL: missing on a fresh root after setup: ${missing[*]}"; exit 1
  fi
  echo "check-fresh: ok: all ${#commands[@]} commands and ${#libraries[@]} library packages present on a fresh root"
  exit 0
fi

# Lint: the programs the Rust suites spawn (Command::new("x"), sh("x", ...), sh(&["x", ...])).
spawned="$(grep -rhoE '(Command::new\(|\bsh\(&?\[?)"[a-z0-9._+-]+"' tests/it bench/src src \
  | sed -E 's/.*"([^"]+)"/\1/' | sort -u)"
unlisted=()
for c in $spawned; do
  case " ${commands[*]} ${cargo_tools[*]} " in *" $c "*) ;; *) unlisted+=("$c") ;; esac
done
if [ ${#unlisted[@]} -gt 0 ]; then
  echo "check-fresh: FAIL: suites spawn programs not in scripts/check-fresh.sh's list (and maybe not installed by the setup scripts): ${unlisted[*]}"
  exit 1
fi
echo "check-fresh: lint ok: the Rust suites spawn only listed programs ($(echo $spawned | wc -w) of them)"
[ "${1:-}" = --lint ] && exit 0

command -v podman >/dev/null && command -v debootstrap >/dev/null \
  || { echo "check-fresh: needs podman and debootstrap: run scripts/podman-setup.sh first" >&2; exit 1; }
image="localhost/sidecap-fresh:$$"
rootfs="$(mktemp -d /var/tmp/sidecap-fresh.XXXXXX)"
cleanup() {
  rm -rf "$rootfs"
  [ -n "${SIDECAP_E2E_KEEP:-}" ] || podman rmi -f "$image" >/dev/null 2>&1 || true
}
trap cleanup EXIT
t0=$(date +%s)
echo "check-fresh: debootstrap --variant=minbase bookworm (fresh, no cache)" >&2
debootstrap --variant=minbase bookworm "$rootfs" http://deb.debian.org/debian >/dev/null
# The machine image's package sources (bookworm, -updates, -security), as a new machine has them.
if [ -f /etc/apt/sources.list.d/debian.sources ]; then
  cp /etc/apt/sources.list.d/debian.sources "$rootfs/etc/apt/sources.list.d/"
  rm -f "$rootfs/etc/apt/sources.list"
fi
tar -C "$rootfs" -c . | podman import -q --change 'CMD ["/bin/bash"]' - "$image" >/dev/null
rm -rf "$rootfs"
echo "check-fresh: fresh root imported as $image in $(( $(date +%s) - t0 )) s" >&2
# Host network: apt reaches the mirror; nothing listens (policy-rc.d, see --inside).
podman run --rm --network host -v "$PWD:/src:ro" -w /src "$image" /src/scripts/check-fresh.sh --inside
echo "check-fresh: done in $(( $(date +%s) - t0 )) s"
