#!/usr/bin/env bash
# A single-node Garage (a real S3-compatible object store, `garage` on PATH; scripts/setup.sh
# installs it) on loopback, for tests/e2e and bench/: writes DIR/garage.toml, starts the server,
# lays out one node, creates BUCKET and a key allowed to read and write it, and writes
#   DIR/env            S3_ENDPOINT=http://127.0.0.1:PORT, S3_REGION=garage, S3_BUCKET,
#                      AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY (shell syntax, for `. DIR/env`)
#   DIR/credentials/   AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, one file each with a trailing
#                      newline, as a mounted Kubernetes Secret holds them (--s3-credentials-dir)
#   DIR/garage.pid     the server's pid (stop it with SIGTERM)
# The key is generated here (random, Garage's formats: GK + 24 hex digits, 64 hex digits) and
# imported, so nothing is parsed out of garage's output. Ready in ~2-3 s.
#
#   scripts/garage-local.sh DIR [PORT [BUCKET]]          # S3 API on 127.0.0.1:PORT (3900),
#                                                        # RPC on PORT+1, admin on PORT+3
#   scripts/garage-local.sh --wait DIR [PORT [BUCKET]]   # then stay in the foreground until
#                                                        # SIGTERM or the server's exit (a container)
set -euo pipefail
foreground=
[ "${1:-}" = --wait ] && { foreground=1; shift; }
dir="${1:?usage: garage-local.sh [--wait] DIR [PORT [BUCKET]]}"
port="${2:-3900}"
bucket="${3:-captures}"
command -v garage >/dev/null || { echo "garage-local: garage not on PATH (scripts/setup.sh installs it)" >&2; exit 1; }
mkdir -p "$dir/meta" "$dir/data" "$dir/credentials"
hex() { od -An -N"$1" -tx1 /dev/urandom | tr -d ' \n'; }
cfg="$dir/garage.toml"
cat > "$cfg" <<EOF
metadata_dir = "$dir/meta"
data_dir = "$dir/data"
db_engine = "sqlite"
replication_factor = 1
rpc_bind_addr = "127.0.0.1:$((port + 1))"
rpc_public_addr = "127.0.0.1:$((port + 1))"
rpc_secret = "$(hex 32)"

[s3_api]
s3_region = "garage"
api_bind_addr = "127.0.0.1:$port"
root_domain = ".s3.garage.localhost"

[admin]
api_bind_addr = "127.0.0.1:$((port + 3))"
admin_token = "$(hex 16)"
EOF
chmod 0600 "$cfg"  # garage refuses a world-readable rpc_secret
garage -c "$cfg" server > "$dir/garage.log" 2>&1 &
pid=$!
echo "$pid" > "$dir/garage.pid"
fail() { echo "garage-local: $*; its log:" >&2; tail -20 "$dir/garage.log" >&2; kill "$pid" 2>/dev/null; exit 1; }
g() { garage -c "$cfg" "$@" >> "$dir/setup.log" 2>&1; }
node=
for _ in $(seq 1 100); do  # bounded: 10 s
  kill -0 "$pid" 2>/dev/null || fail "the server exited"
  node="$(garage -c "$cfg" node id -q 2>/dev/null)" && break
  sleep 0.1
done
[ -n "$node" ] || fail "no node id after 10 s"
# `node id` reads the node's key file; the RPC port may not listen yet (seen under load: the
# layout command then fails with "Connection refused"). `status` goes through RPC: wait for it.
up=
for _ in $(seq 1 200); do  # bounded: 20 s
  kill -0 "$pid" 2>/dev/null || fail "the server exited"
  garage -c "$cfg" status >/dev/null 2>&1 && { up=1; break; }
  sleep 0.1
done
[ -n "$up" ] || fail "RPC not answering after 20 s"
g layout assign -z dc1 -c 1G "${node%%@*}" || fail "layout assign"
g layout apply --version 1 || fail "layout apply"
key="GK$(hex 12)" secret="$(hex 32)"
# The bucket operations need the layout to be live: retry for a bounded while.
for _ in $(seq 1 50); do g bucket create "$bucket" && break; sleep 0.1; done
g bucket info "$bucket" || fail "bucket create $bucket"
g key import --yes -n sidecap "$key" "$secret" || fail "key import"
g bucket allow --read --write "$bucket" --key "$key" || fail "bucket allow"
printf '%s\n' "$key" > "$dir/credentials/AWS_ACCESS_KEY_ID"
printf '%s\n' "$secret" > "$dir/credentials/AWS_SECRET_ACCESS_KEY"
cat > "$dir/env" <<EOF
S3_ENDPOINT=http://127.0.0.1:$port
S3_REGION=garage
S3_BUCKET=$bucket
AWS_ACCESS_KEY_ID=$key
AWS_SECRET_ACCESS_KEY=$secret
EOF
echo "garage-local: ready on 127.0.0.1:$port, bucket $bucket (pid $pid)" >&2
if [ -n "$foreground" ]; then
  trap 'kill "$pid" 2>/dev/null' TERM INT
  wait "$pid" || true
  wait "$pid" 2>/dev/null || true
fi
