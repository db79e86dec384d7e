# Sourced by scripts/setup.sh and scripts/podman-setup.sh (bash; root; Debian 12).
#
#   ensure_packages TAG COMMAND:PACKAGE ...
#
# Installs every PACKAGE that dpkg does not list as installed (one apt-get call,
# --no-install-recommends: what a suite needs is named here, never left to a Recommends), then
# checks that every COMMAND is on PATH ("-" for a package that provides no command: a library or
# a module). Fails with a message naming the command and its package, so a missing piece stops the
# setup instead of a suite half an hour later. A fresh machine has only the machine image's
# packages: scripts/check-fresh.sh proves these lists on a fresh debootstrap root. Not every
# program is a Debian package: garage (tests/it's S3 store) is built by scripts/setup.sh with
# `cargo install`, and check-fresh.sh lists it apart (cargo_tools).
ensure_packages() {
  local tag="$1"; shift
  local entry pkg need=() missing=()
  for entry in "$@"; do
    pkg="${entry#*:}"
    case " ${need[*]} " in *" $pkg "*) continue ;; esac
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || need+=("$pkg")
  done
  if [ ${#need[@]} -gt 0 ]; then
    echo "$tag: installing ${need[*]}" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq || { echo "$tag: apt-get update failed" >&2; return 1; }
    apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null \
      || { echo "$tag: apt-get install ${need[*]} failed" >&2; return 1; }
  fi
  for entry in "$@"; do
    [ "${entry%%:*}" = - ] || command -v "${entry%%:*}" >/dev/null || missing+=("${entry%%:*} (package ${entry#*:})")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    echo "$tag: not on PATH after installing: ${missing[*]}" >&2
    return 1
  fi
}

# works TAG WHAT COMMAND...: runs COMMAND quietly; on failure prints its output and what broke.
works() {
  local tag="$1" what="$2" out; shift 2
  if ! out="$("$@" 2>&1)"; then
    printf '%s\n' "$out" | tail -5 >&2
    echo "$tag: $what does not work: '$*' failed" >&2
    return 1
  fi
}
