#!/usr/bin/env bash
# One-time host setup for building and running sidecap's image with podman on Debian 12 (root).
# Idempotent; run by scripts/build-image.sh and tests/e2e/run.sh.
# - Debian packages, each named (installed with --no-install-recommends, so nothing comes from a
#   Recommends): podman with its runtime (runc) and its pod infra process (catatonit, only a
#   Recommends of podman: without it `podman pod create` fails), buildah, debootstrap,
#   libcap2-bin (setcap/getcap), what the static build needs (libpcap-dev, gcc, binutils for
#   ar/strip/objcopy, file) and what tests/e2e runs on the host (tshark, jq, curl, nsenter).
# - /etc/containers/containers.conf as docs/environment.md says works here: crun fails on the
#   cgroup v1 layout of these machines and the default ulimits are refused. Written only if absent,
#   never overwritten (a real host has its own). Not CONTAINERS_CONF: that replaces the distribution
#   defaults instead of merging.
# - A Debian base image made with debootstrap, then a throwaway pod with one container in it: a
#   podman that cannot start a pod fails here, in seconds, with podman's own message.
#
#   scripts/podman-setup.sh                  # everything
#   scripts/podman-setup.sh --packages-only  # packages only (scripts/check-fresh.sh, in a container)
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/packages.sh
packages=(
  podman:podman catatonit:catatonit runc:runc conmon:conmon buildah:buildah
  debootstrap:debootstrap
  setcap:libcap2-bin getcap:libcap2-bin
  -:libpcap-dev cc:gcc ar:binutils strip:binutils objcopy:binutils file:file  # build/static/build.sh
  tshark:tshark jq:jq curl:curl nsenter:util-linux unshare:util-linux timeout:coreutils cmp:diffutils tar:tar  # tests/e2e
)
ensure_packages podman-setup "${packages[@]}"
[ "${1:-}" = --packages-only ] && exit 0

if [ ! -e /etc/containers/containers.conf ]; then
  echo "podman-setup: writing /etc/containers/containers.conf (runc, cgroupfs, file events, ulimits)" >&2
  mkdir -p /etc/containers
  cat > /etc/containers/containers.conf <<'CONF'
[containers]
default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]
[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
CONF
fi

# A Debian base made from Debian packages (no registry here): the setcap stage of the image build
# and the e2e test's main/receiver containers (python3) use it. ~1 min cold, cached as an image.
SIDECAP_DEBIAN_IMAGE="${SIDECAP_DEBIAN_IMAGE:-localhost/sidecap-debian:bookworm}"
if ! podman image exists "$SIDECAP_DEBIAN_IMAGE"; then
  rootfs="$(mktemp -d /var/tmp/sidecap-debootstrap.XXXXXX)"
  trap 'rm -rf "$rootfs"' EXIT
  echo "podman-setup: debootstrap bookworm -> $SIDECAP_DEBIAN_IMAGE" >&2
  debootstrap --variant=minbase --include=libcap2-bin,python3 bookworm "$rootfs" http://deb.debian.org/debian >/dev/null
  rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
  tar -C "$rootfs" -c . | podman import -q --change 'CMD ["/bin/bash"]' - "$SIDECAP_DEBIAN_IMAGE" >/dev/null
  rm -rf "$rootfs"; trap - EXIT
fi

# Smoke test: a pod (its infra container runs catatonit) with one container under runc, as
# tests/e2e/run.sh starts them.
probe="sidecap-setup-probe-$$"
trap 'podman pod rm -f "$probe" >/dev/null 2>&1' EXIT
works podman-setup "podman pod create (catatonit, the pod's infra process)" \
  podman pod create --name "$probe" --network none
works podman-setup "a container in a pod (runc, conmon)" \
  podman run --rm --pod "$probe" "$SIDECAP_DEBIAN_IMAGE" true
podman pod rm -f "$probe" >/dev/null 2>&1; trap - EXIT
