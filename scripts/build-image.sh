#!/usr/bin/env bash
# Builds the sidecap container image offline with podman on Debian 12 (as root): no Docker engine,
# no registry. Prints the image name and size.
#
#   scripts/build-image.sh                          # -> localhost/sidecap:latest
#   SIDECAP_IMAGE=localhost/sidecap:dev scripts/build-image.sh
#   SIDECAP_RUST_IMAGE=my-registry/rust:1-bookworm scripts/build-image.sh --from-source
#
# Default ("prebuilt"): build/static/build.sh compiles the static binary on this host (cargo's
# cache makes a rebuild take seconds), and the Dockerfile's runtime-prebuilt target takes it, sets
# the file capability and puts it into the same FROM scratch runtime stage. That is the same Dockerfile and
# the same link recipe as `docker build .`; only the place where cargo runs differs. We chose it
# over copying the host's Rust toolchain into a debootstrapped builder image (1.4 GB here, minutes
# per build, and a cold cargo cache inside the build every time).
# The only base image it needs, for the setcap stage, is made from Debian packages by
# scripts/podman-setup.sh (debootstrap -> podman import); the runtime stage is FROM scratch.
#
# --from-source: the Dockerfile's default path (cargo inside the build), for when a Rust builder
# image is available (SIDECAP_RUST_IMAGE, default docker.io/library/rust:1-bookworm).
set -euo pipefail
cd "$(dirname "$0")/.."
mode=prebuilt
[ "${1:-}" = "--from-source" ] && mode=source
image="${SIDECAP_IMAGE:-localhost/sidecap:latest}"
scripts/podman-setup.sh
debian_image="${SIDECAP_DEBIAN_IMAGE:-localhost/sidecap-debian:bookworm}"
start=$(date +%s)
args=(--build-arg "DEBIAN_IMAGE=$debian_image" -t "$image")
if [ "$mode" = prebuilt ]; then
  bin="$(build/static/build.sh)"
  mkdir -p build/prebuilt
  # Stripped: the symbols and line tables are ~14 MB of the ~19 MB; keep the unstripped binary
  # (target/x86_64-unknown-linux-gnu/image/sidecap) for symbolizing a crash.
  strip -o build/prebuilt/sidecap.tmp "$bin"
  mv build/prebuilt/sidecap.tmp build/prebuilt/sidecap
  args+=(--target runtime-prebuilt --build-arg PREBUILT=build/prebuilt/sidecap)
else
  args+=(--target runtime --build-arg "RUST_IMAGE=${SIDECAP_RUST_IMAGE:-docker.io/library/rust:1-bookworm}")
fi
log="$(mktemp)"
if ! podman build "${args[@]}" . > "$log" 2>&1; then
  tail -40 "$log" >&2; rm -f "$log"
  echo "build-image: podman build failed" >&2; exit 1
fi
rm -f "$log"
size=$(podman image inspect "$image" --format '{{.Size}}')
echo "build-image: $image ($mode): $size bytes ($(awk -v s="$size" 'BEGIN{printf "%.1f MiB", s/1048576}')) in $(( $(date +%s) - start ))s" >&2
echo "$image"
