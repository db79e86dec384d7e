#!/usr/bin/env bash
# One-time host setup for building and running sidecap's image with podman on Debian 12 (root).
# Idempotent; sourced or run by scripts/build-image.sh and tests/e2e/run.sh.
# - Debian packages: podman, buildah, runc, debootstrap, libcap2-bin (setcap/getcap), and what the
#   static build needs (libpcap-dev, libdbus-1-dev, binutils for strip, file).
# - /etc/containers/containers.conf as docs/environment.md says works here: crun fails on the
#   cgroup v1 layout of these machines and the default ulimits are refused. Written only if absent,
#   never overwritten (a real host has its own). Not CONTAINERS_CONF: that replaces the distribution
#   defaults instead of merging.
set -euo pipefail
need=()
for p in podman buildah runc debootstrap libcap2-bin libpcap-dev libdbus-1-dev binutils file gcc tshark; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || need+=("$p")
done
if [ ${#need[@]} -gt 0 ]; then
  echo "podman-setup: installing ${need[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
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
