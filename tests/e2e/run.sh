#!/usr/bin/env bash
# End-to-end test of the Pod lifecycle with real containers from the built image (podman, root,
# Debian 12). No kubelet can run here, so this script plays the kubelet: it starts and stops the
# containers of one `podman pod` (shared network namespace, shared volume) in the order and with
# the timing the kubelet uses, and cites the upstream code each step copies. CI runs it through
# scripts/test.sh.
#
# The pod: receiver (the webhook and the app's server; it stands for things outside the Pod, so
# the "kubelet" never stops it), then the spec's containers:
#   initContainers: uploader (restartPolicy: Always), capture (restartPolicy: Always, startupProbe)
#   containers:     main
# Cases: job (main exits by itself), deployment (the Pod is deleted while main runs, continuous
# upload with rotation, a snapshot by annotation and one by exec first), short-grace (the deadline hits with files left), least-privilege,
# s3 (the uploader uploads to a real object store, Garage, running in the pod like the receiver:
# credentials from a mounted Secret that is rotated before the preStop, objects read back and
# checked). The
# uploader runs with every capability dropped and none added; only the capture adds NET_RAW.
#
#   tests/e2e/run.sh                   # everything
#   SIDECAP_E2E_CASES=s3,job tests/e2e/run.sh   # only these cases (of: job deployment
#                                               # short-grace least-privilege s3)
#   SIDECAP_E2E_KEEP=1 tests/e2e/run.sh   # keep the work directory (volumes, logs) for a look
set -uo pipefail
cd "$(dirname "$0")/../.." || exit 1
repo="$PWD"
cases_known=" job deployment short-grace least-privilege s3 "
cases_wanted="${SIDECAP_E2E_CASES:-}"
for c in ${cases_wanted//,/ }; do
  [[ "$cases_known" == *" $c "* ]] || { echo "e2e: unknown case $c in SIDECAP_E2E_CASES (known:$cases_known)"; exit 1; }
done
scripts/podman-setup.sh || exit 1
image="$(SIDECAP_IMAGE="${SIDECAP_IMAGE:-localhost/sidecap:e2e}" scripts/build-image.sh)" || exit 1
debian="${SIDECAP_DEBIAN_IMAGE:-localhost/sidecap-debian:bookworm}"
for tool in tshark capinfos jq curl nsenter unshare getcap; do
  command -v "$tool" >/dev/null || { echo "e2e: $tool missing (scripts/setup.sh, scripts/podman-setup.sh)"; exit 1; }
done
# Every container runs under runc-k8s-caps: the capability sets containerd/CRI-O give a non-root
# container (bounding set only), not podman's (which adds --cap-add to the ambient set).
runtime="$repo/tests/e2e/runc-k8s-caps"
work="$(mktemp -d /tmp/sidecap-e2e.XXXXXX)"
token="e2e-token-$RANDOM$RANDOM"
pods=()
cleanup() {
  for p in "${pods[@]}"; do podman pod rm -f "$p" >/dev/null 2>&1; done
  if [ -n "${SIDECAP_E2E_KEEP:-}" ]; then echo "e2e: kept $work"; else rm -rf "$work"; fi
}
trap cleanup EXIT

pass=0 fail=0 failed=()
ok() { pass=$((pass + 1)); echo "  ok   $*"; }
bad() { fail=$((fail + 1)); failed+=("$case: $*"); echo "  FAIL $*"; }
check() { local what="$1"; shift; if "$@"; then ok "$what"; else bad "$what"; fi; }
want() { [ -z "${SIDECAP_E2E_CASES:-}" ] || [[ ",$SIDECAP_E2E_CASES," == *",$case,"* ]]; }
now_ms() { date +%s%3N; }
state() { podman inspect -f "{{.State.$2}}" "$1" 2>/dev/null; }
alive() { case "$(state "$1" Status)" in running|stopping) return 0 ;; *) return 1 ;; esac; }

# HTTP GET from inside the pod's network namespace, as the kubelet's httpGet probe does from the
# node (the pod has no other network: --network none, loopback only).
probe() { nsenter --net="/proc/$infra_pid/ns/net" curl -fsS -o /dev/null -m 1 "http://127.0.0.1:$1$2" 2>/dev/null; }

# Start-up, copying the kubelet (pkg/kubelet/kuberuntime/kuberuntime_manager.go: SyncPod step 6
# starts the next init container computed by computeInitContainerActions, KEP-753): init
# containers, sidecars included, start one at a time in spec order; a sidecar (restartPolicy:
# Always) lets the next one start once it is "started", i.e. its startupProbe succeeded (here
# polled like periodSeconds 1, failureThreshold 30 in k8s/examples, at 0.2 s to keep the test
# short); main containers start after all of them.
wait_started() { # container port path
  local _
  for _ in $(seq 1 150); do
    probe "$2" "$3" && return 0
    [ "$(state "$1" Running)" = true ] || break
    sleep 0.2
  done
  echo "  $1 never passed its startup probe; log:"; podman logs "$1" 2>&1 | tail -20 | sed 's/^/    /'
  return 1
}

# caps_of CONTAINER FIELD-REGEX -> the distinct hex values of those /proc status fields over every
# thread of the container's PID 1 (capabilities are per thread), space-separated.
caps_of() {
  grep -hE "^$2:" "/proc/$(state "$1" Pid)"/task/*/status 2>/dev/null | awk '{print $2}' | sort -u | tr '\n' ' '
}

# start_pod NAME GRACE RECEIVER_DELAY "UPLOADER ARGS" "CAPTURE ARGS" "APP ARGS"
# A Downward API volume update the way the kubelet's AtomicWriter (pkg/volume/util/
# atomic_writer.go) does it: the payload goes into a new timestamped directory, a `..data_tmp` link
# to it is renamed over `..data` (one rename(2): readers see the old or the new version, never a
# mix), the user-visible name is a link into `..data`, and the old directory is removed.
# Secret volumes are written by the same AtomicWriter, so atomic_write serves both.
downward_write() { # dir annotations-text
  atomic_write "$1" annotations "$2"
}
atomic_write() { # dir name text [name text]...
  local d="$1" ts old
  shift
  ts="..$(date -u +%Y_%m_%d_%H_%M_%S).$(date +%N)"
  mkdir -m 0755 "$d/$ts" || return 1
  while [ $# -ge 2 ]; do
    printf '%s\n' "$2" > "$d/$ts/$1" && chmod 0644 "$d/$ts/$1" || return 1
    [ -L "$d/$1" ] || ln -s "..data/$1" "$d/$1"
    shift 2
  done
  old="$(readlink "$d/..data" 2>/dev/null)"
  ln -s "$ts" "$d/..data_tmp" && mv -T "$d/..data_tmp" "$d/..data"
  if [ -n "$old" ]; then rm -rf "${d:?}/$old"; fi
}
start_pod() {
  pod="sidecap-e2e-$1"; grace="$2"; dir="$work/$1"
  mkdir -p "$dir/vol" "$dir/recv" "$dir/secret"
  # emptyDir directories are created 0777 by the kubelet (volume/emptydir: perm 0777).
  chmod 0777 "$dir/vol" "$dir/recv"
  printf '%s' "$token" > "$dir/secret/token"; chmod 0444 "$dir/secret/token"
  # The Downward API volume with the Pod's annotations (the snapshot trigger), as the kubelet
  # lays it out.
  mkdir -m 0755 "$dir/podinfo"
  downward_write "$dir/podinfo" 'kubernetes.io/config.seen="2026-12-01T10:00:00Z"'
  # The webhook is reached by name through a DNS server in the pod (pod.py): the static binary's
  # resolver is exercised as cluster DNS would exercise it.
  printf 'nameserver 127.0.0.1\noptions attempts:1 timeout:1\n' > "$dir/resolv.conf"
  podman pod rm -f "$pod" >/dev/null 2>&1
  # The manifests' Pod sysctl: the uploader's own ports (--own-ports) are reserved.
  podman pod create --name "$pod" --network none \
    --sysctl net.ipv4.ip_local_reserved_ports=61000-61031 >/dev/null || return 1
  pods+=("$pod")
  podman run --runtime "$runtime" -d --pod "$pod" --name "$pod-receiver" -v "$dir/recv:/recv" -v "$repo/tests/e2e:/e2e:ro" \
    "$debian" python3 /e2e/pod.py receiver "$token" "$3" >/dev/null || return 1
  infra_pid="$(podman inspect -f '{{.State.Pid}}' "$(podman pod inspect -f '{{.InfraContainerID}}' "$pod")")"
  local _; for _ in $(seq 1 100); do probe 8081 / && break; sleep 0.1; done
  # The destination: the webhook, or (s3 case) the Garage store started here, reached by name
  # through the pod's DNS like the webhook, credentials from a Secret volume.
  local dest=(-e "SIDECAP_UPLOAD_URL=http://webhook.sidecap-e2e.test:8080/upload/{file}"
    -e SIDECAP_BEARER_TOKEN_FILE=/var/run/secrets/sidecap/token)
  if [ "$case" = s3 ]; then
    start_garage || return 1
    dest=(-e "SIDECAP_UPLOAD_URL=s3://captures/{namespace}/{pod}/{file}"
      -e "SIDECAP_S3_ENDPOINT=http://s3.sidecap-e2e.test:3900" -e SIDECAP_S3_REGION=garage
      -e SIDECAP_S3_CREDENTIALS_DIR=/var/run/secrets/sidecap-s3 -e SIDECAP_S3_PART_SIZE=5MiB
      -v "$dir/s3-secret:/var/run/secrets/sidecap-s3:ro")
  fi
  # The sidecars run exactly as the manifests say: default user of the image (65532), drop ALL,
  # read-only root filesystem. The uploader adds no capability at all and has no_new_privs
  # (allowPrivilegeEscalation: false): the binary's cap_net_raw+p has no effective bit, so the
  # kernel execs it without NET_RAW in the bounding set. The capture adds NET_RAW and leaves
  # no_new_privs unset, so the file capability gives it NET_RAW in its permitted set.
  # shellcheck disable=SC2086
  podman run --runtime "$runtime" -d --pod "$pod" --name "$pod-uploader" --read-only \
    --cap-drop ALL --security-opt no-new-privileges \
    -v "$dir/vol:/capture" -v "$dir/secret:/var/run/secrets/sidecap:ro" -v "$dir/resolv.conf:/etc/resolv.conf:ro" \
    -v "$dir/podinfo:/etc/podinfo:ro" "${dest[@]}" \
    -e "SIDECAP_GRACE_PERIOD=${grace}s" -e SIDECAP_DIR=/capture \
    -e "POD_NAME=$pod" -e POD_NAMESPACE=e2e -e POD_UID=00000000-e2e -e NODE_NAME=localhost \
    "$image" uploader --dir /capture $4 >/dev/null || return 1
  wait_started "$pod-uploader" 9798 /readyz || return 1
  # shellcheck disable=SC2086
  # The Downward API variables the manifests give the capture (the pcapng section header's
  # Pod identity).
  podman run --runtime "$runtime" -d --pod "$pod" --name "$pod-capture" --read-only --cap-drop ALL --cap-add NET_RAW \
    -e "POD_NAME=$pod" -e POD_NAMESPACE=e2e -e POD_UID=00000000-e2e -e NODE_NAME=localhost \
    -e CONTAINER_IMAGE=localhost/sidecap-debian:bookworm \
    -v "$dir/vol:/capture" "$image" capture --dir /capture $5 >/dev/null || return 1
  wait_started "$pod-capture" 9797 /readyz || return 1
  # Capabilities are per thread: read every thread's sets, once both sidecars are started (the
  # capture drops its capabilities right after opening the pcap handle and the first file).
  capture_threads_caps="$(caps_of "$pod-capture" 'Cap(Prm|Eff)')"
  capture_threads="$(find "/proc/$(state "$pod-capture" Pid)/task" -mindepth 1 -maxdepth 1 | wc -l)"
  uploader_caps="$(caps_of "$pod-uploader" 'Cap(Prm|Eff)')"
  # shellcheck disable=SC2086
  podman run --runtime "$runtime" -d --pod "$pod" --name "$pod-main" -v "$repo/tests/e2e:/e2e:ro" \
    "$debian" python3 /e2e/pod.py app $6 >/dev/null || return 1
}

# The object store of the s3 case: Garage (scripts/garage-local.sh) in the same Debian image as
# the receiver, the host's /usr/local/bin/garage bind-mounted read-only (it needs only glibc). It
# stands outside the Pod: the "kubelet" never stops it. Its key becomes a Secret volume, laid out
# as the kubelet does (AtomicWriter: ..data links), mounted read-only in the uploader.
start_garage() {
  local garage_bin _
  garage_bin="$(command -v garage)" || { echo "  garage not installed (scripts/setup.sh)"; return 1; }
  mkdir -p "$dir/garage" "$dir/s3-secret"
  podman run --runtime "$runtime" -d --pod "$pod" --name "$pod-garage" \
    -v "$garage_bin:/usr/local/bin/garage:ro" -v "$repo/scripts/garage-local.sh:/garage-local.sh:ro" \
    -v "$dir/garage:/garage" "$debian" bash /garage-local.sh --wait /garage 3900 captures >/dev/null || return 1
  for _ in $(seq 1 450); do [ -s "$dir/garage/env" ] && break; alive "$pod-garage" || break; sleep 0.1; done  # 45 s: loaded CI
  [ -s "$dir/garage/env" ] || { echo "  garage did not start; log:"; podman logs "$pod-garage" 2>&1 | tail -20 | sed 's/^/    /'; return 1; }
  # shellcheck disable=SC1091
  . "$dir/garage/env"
  atomic_write "$dir/s3-secret" AWS_ACCESS_KEY_ID "$AWS_ACCESS_KEY_ID" AWS_SECRET_ACCESS_KEY "$AWS_SECRET_ACCESS_KEY"
}
# A request to Garage's S3 API from the host, in the pod's network namespace (as probe does),
# signed with the key (SigV4, region garage) by curl.
s3c() {
  nsenter --net="/proc/$infra_pid/ns/net" curl -sS -m 20 --aws-sigv4 "aws:amz:garage:s3" \
    --user "$AWS_ACCESS_KEY_ID:$AWS_SECRET_ACCESS_KEY" -H "x-amz-content-sha256: UNSIGNED-PAYLOAD" "$@"
}

# Termination, copying the kubelet (pkg/kubelet/kuberuntime):
# - killContainersWithSyncResult (kuberuntime_container.go) starts one goroutine per running
#   container at once, so every preStop hook starts at t0 and every container counts its grace
#   period from t0;
# - killContainer: gracePeriod -= seconds spent in executePreStopHook; then, with sidecars,
#   gracePeriod -= seconds spent in ordering.waitForTurn (both truncated to whole seconds);
#   "always give containers a minimal shutdown window": at least minimumGracePeriodInSeconds = 2;
#   then runtimeService.StopContainer(id, gracePeriod): the runtime sends the image's STOPSIGNAL
#   (SIGTERM) and SIGKILL after gracePeriod seconds. `podman stop -t N` does exactly that.
# - newTerminationOrdering (kuberuntime_termination_order.go): main containers have no prereqs;
#   each sidecar's prereqs are every main container's channel plus the channel of the sidecar
#   declared after it (reverse spec order); containers not running start with closed channels;
#   containerTerminated closes a container's channel once StopContainer returned.
# - executePreStopHook runs the hook with the remaining grace period as its timeout.
kill_container() { # name prestop-command waits-for...
  local name="$1" prestop="$2"; shift 2
  local g="$grace" start waited
  if [ "$(state "$name" Running)" != true ]; then return 0; fi
  if [ -n "$prestop" ]; then
    start=$(now_ms)
    # shellcheck disable=SC2086
    timeout "$g" podman exec "$name" $prestop > "$dir/$name.prestop.out" 2>&1
    echo $? > "$dir/$name.prestop.rc"
    now_ms > "$dir/$name.prestop.end"
    g=$(( g - ($(now_ms) - start) / 1000 ))
  fi
  if [ "$g" -gt 0 ] && [ $# -gt 0 ]; then
    start=$(now_ms)
    local other deadline=$(( start + g * 1000 ))
    # Until the other container has terminated: podman reports Running false already while it
    # is "stopping" (SIGTERM sent, process alive), which would let a sidecar go first.
    for other in "$@"; do
      while alive "$other" && [ "$(now_ms)" -lt "$deadline" ]; do sleep 0.05; done
    done
    waited=$(( ($(now_ms) - start) / 1000 ))
    g=$(( g - waited ))
  fi
  [ "$g" -lt 2 ] && g=2
  now_ms > "$dir/$name.sigterm"
  echo "$g" > "$dir/$name.stop-timeout"
  podman stop -t "$g" "$name" > "$dir/$name.stop.log" 2>&1
  now_ms > "$dir/$name.exited"
}

delete_pod() { # the uploader's preStop command
  t0=$(now_ms)
  kill_container "$pod-main" "" &
  kill_container "$pod-capture" "" "$pod-main" &
  kill_container "$pod-uploader" "$1" "$pod-main" "$pod-capture" &
  wait
}

# --- assertions ---------------------------------------------------------------------------
exit_code_is() { [ "$(state "$1" ExitCode)" = "$2" ]; }
finished_in_time() { # every container of the spec exited before t0 + grace
  local c
  for c in main capture uploader; do
    [ "$(state "$pod-$c" Running)" = false ] || { echo "    $c still running"; return 1; }
    [ -e "$dir/$pod-$c.exited" ] || continue
    [ "$(cat "$dir/$pod-$c.exited")" -le $(( t0 + grace * 1000 )) ] \
      || { echo "    $c exited $(( $(cat "$dir/$pod-$c.exited") - t0 )) ms after t0 (grace ${grace}s)"; return 1; }
  done
}
pcap_ok() { # readable to the end by tshark, no "cut short" or other complaint
  local f out rc
  for f in "$@"; do
    out="$(tshark -r "$f" -T fields -e frame.number 2>&1 >/dev/null)"; rc=$?
    # tshark warns about running as root on stderr: not a complaint about the file.
    out="$(printf '%s\n' "$out" | grep -v -e 'Running as user' -e '^$')"
    [ "$rc" = 0 ] && [ -z "$out" ] || { echo "    $f: rc $rc $out"; return 1; }
  done
}
received_files() { find "$dir/recv" -maxdepth 1 \( -name '*.pcap' -o -name '*.pcapng' \) | sort; }
volume_files() { find "$dir/vol" -maxdepth 1 \( -name '*.pcap' -o -name '*.pcapng' \) | sort; }
all_volume_files_received() { # every finished file on the volume arrived byte for byte
  local f name got
  for f in $(volume_files); do
    name="$(basename "$f")"
    got="$(find "$dir/recv" -maxdepth 1 -name "*-$name" | head -1)"
    [ -n "$got" ] || { echo "    $name not received"; return 1; }
    cmp -s "$f" "$got" || { echo "    $name differs from what was received"; return 1; }
  done
}
pcapng_identity() { # the section header's comment and the interface names, as tshark reads them
  local f n=0
  for f in $(received_files); do
    n=$((n + 1))
    [ "${f%.pcapng}" != "$f" ] || { echo "    $f: not .pcapng"; return 1; }
    capinfos -k "$f" 2>/dev/null | grep -q "kubernetes pod=$pod namespace=e2e uid=00000000-e2e node=localhost" \
      || { echo "    $f: no Pod identity in the section header"; capinfos -k "$f" | tail -1; return 1; }
  done
  [ "$n" -gt 0 ] || return 1
  # -i any: the packets name their interface (lo in this pod) through the per-interface blocks.
  [ "$(tshark -r "$(received_files | tail -1)" -T fields -e frame.interface_name 2>/dev/null | sort -u)" = lo ]
}
no_duplicates() { # idempotent: each file uploaded once
  local dups
  dups="$(received_files | xargs -r -n1 basename | sed 's/^[0-9]*-//' | sort | uniq -d)"
  [ -z "$dups" ] || { echo "    uploaded twice: $dups"; return 1; }
}
app_ports() { podman logs "$pod-main" 2>&1 | sed -n 's/.*first_port=\([0-9]*\) last_port=\([0-9]*\).*/\1 \2/p' | tail -1; }
count_in_received() { # display filter -> number of matching packets over all received files
  local n=0 f c
  for f in $(received_files); do
    c="$(tshark -r "$f" -Y "$1" -T fields -e frame.number 2>/dev/null | wc -l)"
    n=$((n + c))
  done
  echo "$n"
}
first_syn_captured() {
  local first; read -r first _ <<<"$(app_ports)"
  [ -n "$first" ] || { echo "    no ports in the app's log"; return 1; }
  [ "$(count_in_received "tcp.srcport == $first && tcp.flags.syn == 1 && tcp.flags.ack == 0")" -ge 1 ]
}
last_fin_captured() { # both FINs of the last connection and the final ACK after them
  local last; read -r _ last <<<"$(app_ports)"
  [ -n "$last" ] || return 1
  [ "$(count_in_received "tcp.port == $last && tcp.flags.fin == 1")" -ge 2 ] \
    && [ "$(count_in_received "tcp.port == $last && tcp.flags.fin == 0 && tcp.flags.ack == 1 && tcp.len == 0")" -ge 1 ]
}
identity_headers() {
  local h; h="$(find "$dir/recv" -name '*.headers' | head -1)"
  [ -n "$h" ] && grep -qi "^authorization: Bearer $token" "$h" && grep -qi "^x-sidecap-pod-name: $pod\$" "$h"
}
report() { jq -r "$1" "$dir/vol/capture.upload-report.json" 2>/dev/null; }
manifests() { find "$dir/recv" -maxdepth 1 -name '*-capture-snapshot-*.json' | sort; }
manifest_is() { # file trigger reason: the trigger, the reason, the Pod, at least one file
  jq -e --arg t "$2" --arg r "$3" --arg p "$pod" \
    '.trigger == $t and .reason == $r and .pod.name == $p and .pod.namespace == "e2e" and (.files | length) > 0 and .packets > 0' \
    "$1" >/dev/null || { echo "    $1:"; jq -c '{trigger, reason, pod, packets, files: [.files[].name]}' "$1"; return 1; }
}
manifest_files_received() { # every file the manifest lists arrived, with the SHA-256 it states
  local name sha got
  while read -r name sha; do
    got="$(find "$dir/recv" -maxdepth 1 -name "*-$name" | head -1)"
    [ -n "$got" ] || { echo "    $name listed but not received"; return 1; }
    [ "$(sha256sum < "$got" | cut -d' ' -f1)" = "$sha" ] || { echo "    $name: SHA-256 differs"; return 1; }
  done < <(jq -r '.files[] | "\(.name) \(.sha256)"' "$1")
}
# (not `podman logs | grep -q`: grep's early exit would fail the pipeline under pipefail)
summary_in_log() { in_log 'Upload summary'; }
in_log() { local log; log="$(podman logs "$pod-uploader" 2>&1)"; grep -q "$1" <<<"$log"; }
show_timeline() {
  local c
  for c in main capture uploader; do
    printf '    %-9s' "$c"
    [ -e "$dir/$pod-$c.prestop.end" ] && printf ' preStop done +%sms (rc %s)' \
      "$(( $(cat "$dir/$pod-$c.prestop.end") - t0 ))" "$(cat "$dir/$pod-$c.prestop.rc")"
    [ -e "$dir/$pod-$c.sigterm" ] && printf ' SIGTERM +%sms (SIGKILL after %ss)' \
      "$(( $(cat "$dir/$pod-$c.sigterm") - t0 ))" "$(cat "$dir/$pod-$c.stop-timeout")"
    [ -e "$dir/$pod-$c.exited" ] && printf ' exited +%sms' "$(( $(cat "$dir/$pod-$c.exited") - t0 ))"
    printf ' code %s\n' "$(state "$pod-$c" ExitCode)"
  done
}
dump_logs() {
  local c
  for c in capture uploader main receiver; do
    echo "    --- $c"; podman logs "$pod-$c" 2>&1 | tail -15 | sed 's/^/    /'
  done
  [ -e "$dir/$pod-uploader.prestop.out" ] && { echo "    --- uploader preStop"; tail -15 "$dir/$pod-uploader.prestop.out" | sed 's/^/    /'; }
  # podman stop's own warnings ("StopSignal SIGTERM failed to stop container ... resorting to SIGKILL").
  for c in main capture uploader; do
    [ -s "$dir/$pod-$c.stop.log" ] && { echo "    --- podman stop $c"; grep -v "^$pod-$c\$" "$dir/$pod-$c.stop.log" | tail -5 | sed 's/^/    /'; }
  done
  return 0
}
lifecycle_asserts() {
  check "app made its requests (exit 0)" exit_code_is "$pod-main" 0
  check "capture exited 0 (not 137/143)" exit_code_is "$pod-capture" 0
  check "uploader exited 0 (not 137/143)" exit_code_is "$pod-uploader" 0
  check "preStop upload exited 0" [ "$(cat "$dir/$pod-uploader.prestop.rc" 2>/dev/null)" = 0 ]
  check "everything finished before t0 + ${grace}s" finished_in_time
  check "the receiver got pcap files" [ -n "$(received_files)" ]
  local received; mapfile -t received < <(received_files)
  check "received files are valid pcaps (tshark reads them to the end)" pcap_ok "${received[@]}"
  check "every finished file on the volume was received, byte for byte" all_volume_files_received
  check "no file uploaded twice" no_duplicates
  check "capture holds the app's first packet (its TCP SYN)" first_syn_captured
  check "capture holds the app's last connection's FIN/ACK" last_fin_captured
  check "upload report on the volume: all uploaded, none left" \
    [ "$(report '.totals.left'):$(report '.deadline_reached')" = "0:false" ]
  check "'Upload summary' in the uploader container's log" summary_in_log
  check "uploads carried the token and the Pod's identity (downward API env)" identity_headers
}

# --- cases --------------------------------------------------------------------------------
prestop="/sidecap upload --dir /capture --safety-margin 2s"

case=job
if want; then
echo "== job: main makes 5 requests and exits; the kubelet then stops the sidecars (grace 20s)"
if start_pod job 20 0 "" "--max-total-size 64MiB" "job 5 0.2"; then
  # A Job's Pod terminates when its main container has exited (KEP-753: sidecars then get the
  # normal termination sequence). Bounded wait for main.
  timeout 60 podman wait "$pod-main" >/dev/null
  delete_pod "$prestop"
  show_timeline
  check "live capture holds no capability: every thread's CapPrm/CapEff empty ($capture_threads threads: $capture_threads_caps)" \
    [ "$capture_threads_caps" = "0000000000000000 " ]
  check "uploader (drop ALL, no NET_RAW) holds no capability in any thread (CapPrm/CapEff: $uploader_caps)" \
    [ "$uploader_caps" = "0000000000000000 " ]
  lifecycle_asserts
  [ "$fail" -gt 0 ] && dump_logs
else bad "pod start-up"; dump_logs; fi
fi  # want

case=deployment
if want; then
echo "== deployment: the Pod is deleted while main still runs; rotation + continuous upload (grace 20s)"
before=$fail
# The capture writes pcapng, as the manifests in k8s/examples do.
if start_pod deploy 20 0 "--continuous --poll-interval 500ms --annotations-file /etc/podinfo/annotations" "--max-total-size 64MiB --rotate-interval 2s --format pcapng" "serve 0 0.2"; then
  sleep 7   # main keeps making requests; the capture rotates, the uploader ships finished files
  check "continuous mode uploaded files while the app ran" [ -n "$(received_files)" ]
  # Flight recorder, trigger 1: `kubectl annotate pod ... sidecap.io/snapshot=...`, delivered the
  # way the kubelet updates the Downward API volume.
  downward_write "$dir/podinfo" "$(printf '%s\n%s' 'kubernetes.io/config.seen="2026-12-01T10:00:00Z"' 'sidecap.io/snapshot="e2e incident \"one\""')"
  for _ in $(seq 1 300); do [ -n "$(manifests)" ] && break; sleep 0.1; done
  check "annotation: one snapshot manifest received" [ "$(manifests | wc -l)" = 1 ]
  check "annotation: the manifest names the trigger, the reason and the Pod" manifest_is "$(manifests | head -1)" annotation 'e2e incident "one"'
  check "annotation: every file it lists was received, SHA-256 as stated" manifest_files_received "$(manifests | head -1)"
  # Trigger 2: `kubectl exec POD -c uploader -- /sidecap snapshot` (the container's environment).
  podman exec "$pod-uploader" /sidecap snapshot --last 1m --reason "e2e exec" > "$dir/snapshot.out" 2>&1
  echo $? > "$dir/snapshot.rc"
  check "exec: sidecap snapshot exited 0 and printed its summary" \
    grep -q '^snapshot .*manifest capture-snapshot-.* uploaded; done' "$dir/snapshot.out"
  check "exec: exit code 0" [ "$(cat "$dir/snapshot.rc")" = 0 ]
  check "exec: a second manifest, trigger exec" manifest_is "$(manifests | tail -1)" exec "e2e exec"
  check "exec: every file it lists was received, SHA-256 as stated" manifest_files_received "$(manifests | tail -1)"
  delete_pod "$prestop"
  show_timeline
  lifecycle_asserts
  check "more than one file (rotation)" [ "$(volume_files | wc -l)" -ge 2 ]
  check "every file is pcapng and names the Pod and the interface" pcapng_identity
  # Issue 11: with -i any and the continuous uploader, no upload (webhook port 8080), no lookup
  # of the webhook's name and no packet from the uploader's own ports is in the capture; the
  # app's traffic (port 8081) is.
  check "no uploader packet in the capture (-i any): webhook connections" \
    [ "$(count_in_received "tcp.port == 8080")" = 0 ]
  check "no uploader packet in the capture (-i any): its DNS lookups" \
    [ "$(count_in_received 'dns.qry.name contains "webhook"')" = 0 ]
  check "no uploader packet in the capture (-i any): its own ports" \
    [ "$(count_in_received "tcp.port in {61000..61031} || udp.port in {61000..61031}")" = 0 ]
  check "the app's traffic is in the capture" [ "$(count_in_received "tcp.port == 8081")" -gt 0 ]
  [ "$fail" -gt "$before" ] && dump_logs
else bad "pod start-up"; dump_logs; fi
fi  # want

case=short-grace
if want; then
echo "== short grace: 4s of grace, a webhook that takes 3s per file, several files"
before=$fail
if start_pod short 4 3 "" "--max-total-size 64MiB --rotate-interval 1s" "job 20 0.25"; then
  timeout 60 podman wait "$pod-main" >/dev/null
  delete_pod "$prestop"
  show_timeline
  check "preStop upload exited 5 (deadline with files left)" [ "$(cat "$dir/$pod-uploader.prestop.rc" 2>/dev/null)" = 5 ]
  check "'deadline reached' in the uploader container's log" in_log 'deadline reached'
  check "report: deadline_reached true, files left listed" \
    [ "$(report '.deadline_reached'):$(report '.totals.left > 0'):$(report '.not_uploaded | length > 0')" = "true:true:true" ]
  check "capture exited 0" exit_code_is "$pod-capture" 0
  check "uploader exited 0 (not 137/143)" exit_code_is "$pod-uploader" 0
  check "everything finished before t0 + ${grace}s" finished_in_time
  check "no corrupt file on the volume" pcap_ok "$dir"/vol/*.pcap
  mapfile -t received < <(received_files)
  check "no corrupt file at the receiver" pcap_ok "${received[@]}"
  [ "$fail" -gt "$before" ] && dump_logs
else bad "pod start-up"; dump_logs; fi
fi  # want

case=least-privilege
if want; then
echo "== least privilege"
lp="$work/lp"; mkdir -p "$lp/vol" "$lp/fs"; chmod 0777 "$lp/vol"
user="$(podman image inspect -f '{{.Config.User}}' "$image")"
non_root_user() { [ -n "$user" ] && [ "${user%%:*}" != 0 ] && [ "${user%%:*}" != root ]; }
check "image's default user is non-root ($user)" non_root_user
cid="$(podman create "$image")"
podman export "$cid" | tar -C "$lp/fs" --xattrs --xattrs-include='security.capability' -x
podman rm "$cid" >/dev/null
# Permitted only (no effective bit): sidecap raises CAP_NET_RAW itself, and the kernel does not
# refuse to exec the binary where the bounding set lacks NET_RAW (the uploader's container).
check "binary has cap_net_raw+p, no effective bit ($(getcap "$lp/fs/sidecap" | cut -d' ' -f2))" \
  [ "$(getcap "$lp/fs/sidecap" | cut -d' ' -f2)" = "cap_net_raw=p" ]
only_binary() { [ "$(find "$lp/fs" -mindepth 1 -not -path "$lp/fs/dev*" -not -path "$lp/fs/proc*" -not -path "$lp/fs/sys*" -not -path "$lp/fs/etc*" -not -path "$lp/fs/run*" | tr '\n' ' ')" = "$lp/fs/sidecap " ]; }
check "nothing in the image but /sidecap (no shell)" only_binary
check "STOPSIGNAL is SIGTERM" [ "$(podman image inspect -f '{{.Config.StopSignal}}' "$image")" = SIGTERM ]
grep_and_not() { grep -q "$1" "$3" && ! grep -q "$2" "$3"; }  # present absent file
lprun() { podman run --runtime "$runtime" --rm --network none --read-only -v "$lp/vol:/capture" "$@"; }
lprun --cap-drop ALL --cap-add NET_RAW "$image" capture -i lo --dir /capture --prefix nonroot --duration 1s --listen off > "$lp/ok.log" 2>&1
rc=$?
check "non-root capture with only NET_RAW (bounding set) + the file capability works (exit $rc)" [ "$rc" = 0 ]
owned_0640() { [ "$(stat -c '%u %a' "$lp"/vol/nonroot-*.pcap 2>/dev/null)" = "65532 640" ] && pcap_ok "$lp"/vol/nonroot-*.pcap; }
check "its file is owned by 65532, mode 0640, and valid" owned_0640
# allowPrivilegeEscalation: false (no_new_privs) voids the file capability: the binary runs
# without NET_RAW and must say what to grant.
lprun --cap-drop ALL --cap-add NET_RAW --security-opt no-new-privileges "$image" \
  capture -i lo --dir /capture --prefix nnp --duration 1s --listen off > "$lp/nnp.log" 2>&1
rc=$?
check "without NET_RAW (no_new_privs) it exits 4 (got $rc)" [ "$rc" = 4 ]
check "and its message names NET_RAW and says what to grant" grep -q 'capabilities.add: \["NET_RAW"\]' "$lp/nnp.log"
# NET_RAW missing from capabilities.add: with +p (no effective bit) the kernel still execs the
# binary, which starts and fails with its own message, not with the runtime's EPERM.
lprun --cap-drop ALL "$image" capture -i lo --dir /capture --prefix nocap --duration 1s --listen off > "$lp/nocap.log" 2>&1
rc=$?
check "without NET_RAW in the bounding set it starts and exits 4 (got $rc)" [ "$rc" = 4 ]
check "and its message names NET_RAW and says what to grant" grep -q 'capabilities.add: \["NET_RAW"\]' "$lp/nocap.log"
# The binary ran (its own error line), and the runtime did not fail the exec ("exec ...
# /sidecap...: operation not permitted"; libpcap's "socket: Operation not permitted" is expected).
check "the error is sidecap's own, not the runtime's exec EPERM" \
  grep_and_not 'sidecap: error: .*capturing needs CAP_NET_RAW' 'exec.*operation not permitted' "$lp/nocap.log"
lprun --user 0 --cap-drop ALL --cap-add NET_RAW "$image" capture -i lo --dir /capture --prefix root --duration 1s --listen off > "$lp/root.log" 2>&1
rc=$?
check "as root with only NET_RAW it works too (exit $rc)" [ "$rc" = 0 ]
[ "$fail" -gt 0 ] && { for f in "$lp"/*.log; do echo "    --- $f"; tail -5 "$f" | sed 's/^/    /'; done; }
fi  # want

case=s3
if want; then
echo "== s3: main fetches 12 MiB then makes 5 requests and exits; the uploader uploads to Garage (grace 20s)"
before=$fail
# Objects under the key template's prefix ({namespace}/{pod}/), read back from Garage into recv/
# under the receiver's naming (NNN-FILE), so the webhook cases' file checks apply unchanged.
s3_keys() {
  s3c "http://127.0.0.1:3900/captures?list-type=2&prefix=e2e%2F$pod%2F" | grep -o '<Key>[^<]*</Key>' | sed 's/<[^>]*>//g'
}
s3_fetch() {
  local k n=0
  for k in $(s3_keys); do
    n=$((n + 1))
    s3c -f -o "$dir/recv/$(printf %03d "$n")-${k##*/}" "http://127.0.0.1:3900/captures/$k" || return 1
  done
  [ "$n" -gt 0 ]
}
s3_keys_are_files() { # one object per finished file, each at namespace/pod/file
  [ "$(s3_keys | sort | tr '\n' ' ')" = "$(volume_files | xargs -n1 basename | sed "s|^|e2e/$pod/|" | sort | tr '\n' ' ')" ] \
    || { echo "    objects: $(s3_keys | tr '\n' ' ')"; echo "    files:   $(volume_files | xargs -n1 basename | tr '\n' ' ')"; return 1; }
}
multipart_object() { # an ETag of the form MD5-PARTS: Garage assembled the object from parts
  local k
  for k in $(s3_keys); do
    s3c -I "http://127.0.0.1:3900/captures/$k" | grep -qiE '^etag: "[0-9a-f]{32}-[0-9]+"' && return 0
  done
  return 1
}
no_uploads_left() { # ListMultipartUploads: nothing in progress, no parts to bill
  local out; out="$(s3c "http://127.0.0.1:3900/captures?uploads=")"
  grep -q '<ListMultipartUploadsResult' <<<"$out" && ! grep -q '<Upload>' <<<"$out" || { echo "    $out"; return 1; }
}
secret_nowhere() { # neither secret key (before and after rotation) is in a log, report or ledger
  local log; log="$(podman logs "$pod-uploader" 2>&1; cat "$dir/$pod-uploader.prestop.out" "$dir"/vol/*.json "$dir"/vol/*.jsonl 2>/dev/null)"
  [ -n "$log" ] && ! grep -qF -e "$AWS_SECRET_ACCESS_KEY" -e "$old_secret" <<<"$log"
}
# Secret rotation while the uploader runs: a new key allowed on the bucket, the Secret directory
# swapped the kubelet's way (AtomicWriter), the old key deleted. The uploader read the old key at
# start; the preStop's uploads only work if the files are read again.
rotate_s3_key() {
  local g=(podman exec "$pod-garage" garage -c /garage/garage.toml) key secret
  key="GK$(od -An -N12 -tx1 /dev/urandom | tr -d ' \n')" secret="$(od -An -N32 -tx1 /dev/urandom | tr -d ' \n')"
  "${g[@]}" key import --yes -n rotated "$key" "$secret" >/dev/null \
    && "${g[@]}" bucket allow --read --write captures --key "$key" >/dev/null || return 1
  atomic_write "$dir/s3-secret" AWS_ACCESS_KEY_ID "$key" AWS_SECRET_ACCESS_KEY "$secret" || return 1
  "${g[@]}" key delete --yes "$AWS_ACCESS_KEY_ID" >/dev/null || return 1
  old_key="$AWS_ACCESS_KEY_ID" old_secret="$AWS_SECRET_ACCESS_KEY"
  AWS_ACCESS_KEY_ID="$key" AWS_SECRET_ACCESS_KEY="$secret"  # s3c signs with the new key from now on
}
old_key_refused() {
  AWS_ACCESS_KEY_ID="$old_key" AWS_SECRET_ACCESS_KEY="$old_secret" s3c -o /dev/null -w '%{http_code}' \
    "http://127.0.0.1:3900/captures?list-type=2" | grep -q '^403$'
}
old_key="" old_secret=""
if start_pod s3 20 0 "" "--max-total-size 64MiB --rotate-size 32MiB --format pcapng" "job 5 0.2 12582912"; then
  timeout 60 podman wait "$pod-main" >/dev/null
  check "the Secret rotated: new key in Garage and in the Secret directory, old key deleted" rotate_s3_key
  delete_pod "$prestop"
  show_timeline
  # (S3 requests of the test itself only once the capture has stopped: the capture checks below
  # count every packet to port 3900 as the uploader's.)
  check "Garage refuses the old key (403)" old_key_refused
  check "app made its requests (exit 0)" exit_code_is "$pod-main" 0
  check "capture exited 0, uploader exited 0" [ "$(state "$pod-capture" ExitCode):$(state "$pod-uploader" ExitCode)" = 0:0 ]
  check "preStop upload exited 0" [ "$(cat "$dir/$pod-uploader.prestop.rc" 2>/dev/null)" = 0 ]
  check "everything finished before t0 + ${grace}s" finished_in_time
  check "one object per finished file, at {namespace}/{pod}/{file} (Downward API env), sent with the rotated key" s3_keys_are_files
  check "every object read back (SigV4 GET from the pod's network)" s3_fetch
  mapfile -t received < <(received_files)
  check "the objects are valid pcapng (tshark reads them to the end)" pcap_ok "${received[@]}"
  check "every finished file on the volume is an object, byte for byte" all_volume_files_received
  check "every object names the Pod and the interface (capinfos, tshark)" pcapng_identity
  check "the file above one part (5 MiB) went up in parts (ETag MD5-N)" multipart_object
  check "no multipart upload left in progress (ListMultipartUploads)" no_uploads_left
  check "capture holds the app's first packet and its last connection's FIN/ACK" eval "first_syn_captured && last_fin_captured"
  check "no uploader packet in the capture (-i any): S3 connections" [ "$(count_in_received "tcp.port == 3900")" = 0 ]
  check "upload report on the volume: all uploaded, none left" \
    [ "$(report '.totals.left'):$(report '.deadline_reached')" = "0:false" ]
  check "the secret key is in no log, report or ledger" secret_nowhere
  [ "$fail" -gt "$before" ] && { dump_logs; echo "    --- garage"; podman logs "$pod-garage" 2>&1 | tail -10 | sed 's/^/    /'; }
else bad "pod start-up"; dump_logs; fi
fi  # want

echo
echo "image: $image, $(podman image inspect -f '{{.Size}}' "$image") bytes"
for f in "${failed[@]}"; do echo "FAILED: $f"; done
echo "e2e: $pass passed, $fail failed"
[ "$fail" -eq 0 ]
