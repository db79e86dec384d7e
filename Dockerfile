# sidecap: one static binary in an otherwise empty image.
#
#   docker build -t sidecap .                      # from source (needs Docker Hub: rust, debian)
#   scripts/build-image.sh                         # offline with podman/buildah on Debian 12
#
# The runtime image is FROM scratch: no shell, no libc, no package manager; probes and hooks use
# HTTP or the binary itself. The binary is static (glibc +crt-static, Debian's libpcap.a without its
# D-Bus capture source; recipe and reasons in build/static/build.sh), runs as 65532 and carries the
# file capability cap_net_raw+p, so the capture container needs only capabilities.add [NET_RAW] with
# drop [ALL], never privileged mode or root. It works as root too. Permitted only, no effective bit:
# sidecap raises CAP_NET_RAW from its permitted set itself just to open the capture, then drops it.
# With the effective bit the kernel would refuse to exec the binary (EPERM) in any container whose
# bounding set lacks NET_RAW; without it, the uploader container runs the same binary with drop
# [ALL], nothing added and allowPrivilegeEscalation: false (see k8s/examples).

# checkov findings that are the design (k8s/check.sh runs checkov):
#checkov:skip=CKV_DOCKER_2:no HEALTHCHECK - Kubernetes ignores it; the manifests probe /livez and /readyz over HTTP, and the image has no shell or client to run one
#checkov:skip=CKV_DOCKER_7:the builder base is a build argument (default rust:1-bookworm, a version tag); pass a digest to pin it

# Base images are build arguments; scripts/build-image.sh points them at local images made with
# debootstrap (no registry on our machines).
ARG RUST_IMAGE=docker.io/library/rust:1-bookworm
ARG DEBIAN_IMAGE=docker.io/library/debian:bookworm-slim
ARG RUNTIME_IMAGE=scratch
# Two ways to get /out/sidecap, one runtime image:
# - the default (last) stage compiles it from this source tree in "builder";
# - --target runtime-prebuilt takes a binary built on a Debian 12 host by build/static/build.sh,
#   the same recipe (scripts/build-image.sh: no Rust toolchain inside the image build, and
#   cargo's cache on the host makes a rebuild take seconds). Targets rather than an ARG-selected
#   stage, because buildah does not follow a stage chosen by an ARG's default value.

FROM ${RUST_IMAGE} AS builder
RUN apt-get update \
 && apt-get install -y --no-install-recommends libpcap-dev libcap2-bin file \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN bin="$(build/static/build.sh)" \
 && install -D -m 0755 "$bin" /out/sidecap \
 && strip /out/sidecap \
 && setcap cap_net_raw+p /out/sidecap \
 && getcap /out/sidecap

FROM ${DEBIAN_IMAGE} AS prebuilt
ARG PREBUILT=build/prebuilt/sidecap
COPY ${PREBUILT} /out/sidecap
# setcap runs here, in the stage the binary is copied from: a file capability is an xattr
# (security.capability) that COPY --from keeps (buildah >= 1.22, BuildKit) but that a plain COPY
# from the build context would not carry.
RUN command -v setcap >/dev/null \
    || { apt-get update && apt-get install -y --no-install-recommends libcap2-bin; } \
 && chmod 0755 /out/sidecap \
 && setcap cap_net_raw+p /out/sidecap \
 && getcap /out/sidecap

FROM ${RUNTIME_IMAGE} AS runtime-base
LABEL org.opencontainers.image.title="sidecap" \
      org.opencontainers.image.description="PID-1-safe packet capture sidecar for Kubernetes Pods, with a paired uploader" \
      org.opencontainers.image.licenses="Apache-2.0"
# 65532: the conventional "nonroot" uid/gid of distroless images. Numeric, so the kubelet can
# enforce runAsNonRoot without an /etc/passwd.
USER 65532:65532
# The binary itself is PID 1: it handles SIGTERM (finalize and exit 0) and reaps orphans.
ENTRYPOINT ["/sidecap"]
CMD ["--help"]
STOPSIGNAL SIGTERM

FROM runtime-base AS runtime-prebuilt
# Owned by root and not writable by the runtime user; no --chown, which would reset the capability.
COPY --from=prebuilt /out/sidecap /sidecap

FROM runtime-base AS runtime
COPY --from=builder /out/sidecap /sidecap
