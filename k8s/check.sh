#!/usr/bin/env bash
# Checks the manifests and the Dockerfile (CI runs this via scripts/test.sh; as root on Debian 12):
#  1. schema: every object in k8s/examples (and the kustomize overlay's rendering, when kubectl is
#     installed) against the Kubernetes schemas of 1.29 (the first release with native sidecars on
#     by default) through the newest kubernetes-validate ships, strict (unknown fields fail);
#  2. yamllint on k8s/;
#  3. checkov on the Dockerfile and k8s/: no failed check. Findings that are the design carry their
#     reason inline (checkov.io/skipN annotations, #checkov:skip comments in the Dockerfile); the
#     summary prints them;
#  4. what those cannot see: the snapshot trigger's wiring (deployment.yaml) and the S3 example's
#     (s3.yaml: s3:// URL, credentials from a read-only Secret mount, no secret in env), each
#     shown to catch a fault planted in a copy; with target/release/sidecap built, s3.yaml's
#     preStop run with its container's env must exit 0 (a misspelt variable: 3).
# Tools are pinned and installed into a venv under target/ (no network beyond PyPI). checkov runs
# in an empty network namespace (unshare --net) with --skip-download, so it never phones home.
set -euo pipefail
cd "$(dirname "$0")/.."
venv="${SIDECAP_TOOLS_VENV:-$PWD/target/tools-venv}"
pins=("kubernetes-validate==1.37.0" "yamllint==1.38.0" "checkov==3.3.30")
if ! "$venv/bin/python" -c 'import kubernetes_validate, yamllint, checkov' 2>/dev/null \
   || [ "$(cat "$venv/.pins" 2>/dev/null)" != "${pins[*]}" ]; then
  if ! /usr/bin/python3 -c 'import venv, ensurepip' 2>/dev/null; then  # python3 and python3-venv
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends python3-venv >/dev/null \
      || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends python3-venv >/dev/null; }
  fi
  echo "check: installing ${pins[*]} into $venv" >&2
  rm -rf "$venv"
  /usr/bin/python3 -m venv "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check "${pins[@]}"
  echo "${pins[*]}" > "$venv/.pins"
fi
bin="$venv/bin"
pass=0 fail=0
ok() { pass=$((pass + 1)); echo "  ok   $*"; }
bad() { fail=$((fail + 1)); echo "  FAIL $*"; }

echo "== schema (kubernetes-validate --strict)"
schemas="$("$bin/python" -c 'import kubernetes_validate, os; d = os.path.join(os.path.dirname(kubernetes_validate.__file__), "kubernetes-json-schema"); print(" ".join(sorted({e.split("-")[0].lstrip("v") for e in os.listdir(d)}, key=lambda v: tuple(map(int, v.split("."))))))')"
versions=()
for v in $schemas; do
  minor="${v#1.}"; minor="${minor%%.*}"
  [ "$minor" -ge 29 ] && versions+=("$v")
done
files=(k8s/examples/*.yaml)
tmp="$(mktemp -d)"; trap 'rm -rf "$tmp"' EXIT
if command -v kubectl >/dev/null; then
  kubectl kustomize k8s/examples/kustomize > "$tmp/kustomize-rendered.yaml"
  files+=("$tmp/kustomize-rendered.yaml")
else
  echo "  (kubectl not installed: the kustomize overlay is not rendered or validated)"
fi
for v in "${versions[@]}"; do
  for f in "${files[@]}"; do
    if out="$("$bin/kubernetes-validate" --strict --quiet -k "$v" "$f" 2>&1)"; then ok "$f against $v"
    else bad "$f against $v"; echo "$out" | sed 's/^/       /'; fi
  done
done
# The validator must be able to fail: a misspelt field has to be caught.
sed 's/terminationGracePeriodSeconds:/terminationGracePeriodSecond:/' k8s/examples/job.yaml > "$tmp/broken.yaml"
if "$bin/kubernetes-validate" --strict --quiet -k "${versions[0]}" "$tmp/broken.yaml" >/dev/null 2>&1; then
  bad "a misspelt field passed validation"
else ok "a misspelt field is rejected"; fi

echo "== yamllint"
if "$bin/yamllint" --strict -d '{extends: default, rules: {line-length: {max: 120}, document-start: disable}}' k8s/; then
  ok "yamllint k8s/"
else bad "yamllint k8s/"; fi

echo "== snapshot trigger wiring (k8s/examples/deployment.yaml)"
# The annotation trigger works only if --annotations-file names a file of a Downward API volume
# (fieldRef metadata.annotations) mounted in the uploader container; the header says how to use it.
snap_check='
import os, sys, yaml
path = sys.argv[1]
text = open(path).read()
errors = [f"header comment lacks {w!r}" for w in ("annotate pod", "exec POD -c uploader -- /sidecap snapshot", "sidecap.io/snapshot=")
          if not any(w in l for l in text.splitlines() if l.startswith("#"))]
dep = next(d for d in yaml.safe_load_all(text) if d and d.get("kind") == "Deployment")
pod = dep["spec"]["template"]["spec"]
up = next(c for c in pod["initContainers"] if c["name"] == "uploader")
args = up.get("args", [])
target = next((args[i + 1] for i, a in enumerate(args[:-1]) if a == "--annotations-file"), None)
target = target or next((e.get("value") for e in up.get("env", []) if e["name"] == "SIDECAP_ANNOTATIONS_FILE"), None)
if not target:
    errors.append("the uploader has no --annotations-file")
else:
    vols = {v["name"]: v for v in pod.get("volumes", [])}
    ok = False
    for m in up.get("volumeMounts", []):
        items = vols.get(m["name"], {}).get("downwardAPI", {}).get("items", [])
        for it in items:
            if it.get("fieldRef", {}).get("fieldPath") == "metadata.annotations" \
               and os.path.join(m["mountPath"], it["path"]) == target:
                ok = True
    if not ok:
        errors.append(f"{target} is not a metadata.annotations file of a downwardAPI volume mounted in the uploader")
print("; ".join(errors))
sys.exit(1 if errors else 0)
'
if out="$("$bin/python" -c "$snap_check" k8s/examples/deployment.yaml 2>&1)"; then ok "annotations file mounted from the Downward API, triggers in the header"
else bad "snapshot trigger wiring: $out"; fi
# ...and the check must be able to fail: the same manifest without the mount.
sed '/name: podinfo  #/,+2d' k8s/examples/deployment.yaml > "$tmp/no-podinfo.yaml"
if "$bin/python" -c "$snap_check" "$tmp/no-podinfo.yaml" >/dev/null 2>&1; then bad "a missing annotations mount passed"
else ok "a missing annotations mount is caught"; fi

echo "== S3 destination wiring (k8s/examples/s3.yaml)"
# What kubernetes-validate and checkov cannot know: the uploader (and so its preStop, which
# inherits its env) gets an s3:// URL whose key template names {file}, no webhook-only setting
# (a usage error with an s3:// URL), credentials as files of a Secret volume mounted read-only at
# --s3-credentials-dir / SIDECAP_S3_CREDENTIALS_DIR with both AWS keys, a defaultMode nobody
# else reads, and no credential as a literal env value anywhere in the Pod.
s3_check='
import os, re, sys, yaml
docs = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d]
dep = next(d for d in docs if d.get("kind") == "Deployment")
pod = dep["spec"]["template"]["spec"]
up = next(c for c in pod["initContainers"] if c["name"] == "uploader")
env = {e["name"]: e for e in up.get("env", [])}
args = up.get("args", [])
errors = []
def setting(flag, var):
    v = next((args[i + 1] for i, a in enumerate(args[:-1]) if a == flag), None)
    v = v or next((a.split("=", 1)[1] for a in args if a.startswith(flag + "=")), None)
    return v or env.get(var, {}).get("value")
url = setting("--url", "SIDECAP_UPLOAD_URL") or ""
m = re.fullmatch(r"s3://([a-z0-9][a-z0-9.-]{1,61}[a-z0-9])(/(.*))?", url)
if not m:
    errors.append(f"the upload URL {url!r} is not s3://BUCKET[/KEY-TEMPLATE] (a literal, not secret)")
elif m.group(3) and "{file}" not in m.group(3):
    errors.append(f"the key template {m.group(3)!r} lacks {{file}}: every file must get its own key")
webhook_only = ("--method", "--form", "--header", "--bearer-token-file", "--gzip")
words = args + up.get("lifecycle", {}).get("preStop", {}).get("exec", {}).get("command", [])
errors += [f"webhook-only {w} with an s3:// URL (exit 3)" for w in webhook_only if any(a.split("=")[0] == w for a in words)]
errors += [f"webhook-only {n} with an s3:// URL (exit 3)" for n in ("SIDECAP_BEARER_TOKEN_FILE", "SIDECAP_METHOD", "SIDECAP_HEADER", "SIDECAP_FORM", "SIDECAP_GZIP") if n in env]
creds = setting("--s3-credentials-dir", "SIDECAP_S3_CREDENTIALS_DIR")
vols = {v["name"]: v for v in pod.get("volumes", [])}
mount = next((m for m in up.get("volumeMounts", []) if creds and m["mountPath"].rstrip("/") == creds.rstrip("/")), None)
if not creds:
    errors.append("the uploader has no --s3-credentials-dir")
elif not mount:
    errors.append(f"nothing is mounted at the credentials directory {creds}")
else:
    name = mount["name"]
    if mount.get("readOnly") is not True:
        errors.append(f"the credentials mount {name} is not readOnly")
    sec = vols.get(name, {}).get("secret")
    if not sec:
        errors.append(f"volume {name} is not a Secret")
    else:
        keys = {i["path"] for i in sec.get("items", [])} if sec.get("items") else None
        missing = [k for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY") if keys is not None and k not in keys]
        errors += [f"the Secret volume has no file {k}" for k in missing]
        mode = sec.get("defaultMode", 0o644)
        if mode & 0o007:
            errors.append(f"the Secret volume defaultMode {mode:o} is readable by others")
secretish = re.compile(r"SECRET|TOKEN|PASSWORD|ACCESS_KEY|CREDENTIAL", re.I)
for c in pod.get("initContainers", []) + pod.get("containers", []):
    for e in c.get("env", []):
        var = e["name"]
        if "value" in e and secretish.search(var) and not var.endswith(("_DIR", "_FILE")):
            errors.append(f"env {var} holds a literal value (use the Secret)")
print("; ".join(errors))
sys.exit(1 if errors else 0)
'
if out="$("$bin/python" -c "$s3_check" k8s/examples/s3.yaml 2>&1)"; then
  ok "s3:// URL with {file}, credentials from a read-only Secret mount, no secret in env"
else bad "S3 wiring: $out"; fi
# ...and the check must be able to fail: each fault planted in a copy must be caught.
s3_fault() { # description sed-expression the-message-it-must-give
  local out
  sed "$2" k8s/examples/s3.yaml > "$tmp/s3-fault.yaml"
  if cmp -s k8s/examples/s3.yaml "$tmp/s3-fault.yaml"; then bad "S3 fault \"$1\" not planted (sed matched nothing)"
  elif out="$("$bin/python" -c "$s3_check" "$tmp/s3-fault.yaml" 2>&1)"; then bad "S3 fault passed: $1"
  elif [ "$out" != "$3" ]; then bad "S3 fault \"$1\": wanted \"$3\", got \"$out\""
  else ok "S3 fault caught: $1"; fi
}
s3_fault "a writable credentials mount" '/mountPath: \/var\/run\/secrets\/sidecap-s3/{n;s/readOnly: true/readOnly: false/}' \
  "the credentials mount s3-credentials is not readOnly"
s3_fault "a secret key as an env literal" \
  's/- name: SIDECAP_DIR$/- name: AWS_SECRET_ACCESS_KEY\n              value: "wJalrXUtnFEMI"\n            - name: SIDECAP_DIR/' \
  "env AWS_SECRET_ACCESS_KEY holds a literal value (use the Secret)"
s3_fault "an https:// URL" 's|value: "s3://my-captures/|value: "https://my-captures/|' \
  "the upload URL 'https://my-captures/{namespace}/{pod}/{yyyy}-{mm}-{dd}/{file}' is not s3://BUCKET[/KEY-TEMPLATE] (a literal, not secret)"
s3_fault "a key template without {file}" 's|/{file}"|/capture.pcapng"|' \
  "the key template '{namespace}/{pod}/{yyyy}-{mm}-{dd}/capture.pcapng' lacks {file}: every file must get its own key"
s3_fault "a bearer token with an s3:// URL" \
  's/- name: SIDECAP_DIR$/- name: SIDECAP_BEARER_TOKEN_FILE\n              value: \/t\n            - name: SIDECAP_DIR/' \
  "webhook-only SIDECAP_BEARER_TOKEN_FILE with an s3:// URL (exit 3)"
s3_fault "the Secret readable by others" 's/defaultMode: 0440  # group 65532 (fsGroup) reads it/defaultMode: 0444  #/' \
  "the Secret volume defaultMode 444 is readable by others"
s3_fault "no credentials directory" '/- name: SIDECAP_S3_CREDENTIALS_DIR/,+1d' "the uploader has no --s3-credentials-dir"
s3_fault "a Secret without the secret key" '/- key: AWS_SECRET_ACCESS_KEY/,+1d' "the Secret volume has no file AWS_SECRET_ACCESS_KEY"
# The binary itself must accept the manifest's configuration: the uploader's preStop command run
# with the container's env (literal values as written, Downward API values stand-ins, the volume
# and the Secret mount as temp directories with dummy keys) on an empty volume exits 0. A
# misspelt variable name is ignored by the YAML checks and by clap, not by this.
s3_run_prestop='
import sys, yaml, json
dep = next(d for d in yaml.safe_load_all(open(sys.argv[1])) if d and d.get("kind") == "Deployment")
pod = dep["spec"]["template"]["spec"]
up = next(c for c in pod["initContainers"] if c["name"] == "uploader")
mounts = {m["mountPath"]: m["name"] for m in up.get("volumeMounts", [])}
vols = {v["name"]: v for v in pod.get("volumes", [])}
def local(p):
    for path, name in mounts.items():
        if p == path or p.startswith(path + "/"):
            kind = "secret" if "secret" in vols.get(name, {}) else "vol"
            return sys.argv[2] + "/" + kind + p[len(path):]
    return p
env = [e["name"] + "=" + (local(e["value"]) if "value" in e else "check") for e in up.get("env", [])]
cmd = [local(a) for a in up["lifecycle"]["preStop"]["exec"]["command"][1:]]
print(json.dumps({"env": env, "cmd": cmd}))
'
s3_prestop() { # manifest -> the preStop's exit code
  local spec root="$tmp/s3-run" env=() cmd=()
  rm -rf "$root"; mkdir -p "$root/vol" "$root/secret"
  printf 'GKcheck\n' > "$root/secret/AWS_ACCESS_KEY_ID"; printf 'check\n' > "$root/secret/AWS_SECRET_ACCESS_KEY"
  spec="$("$bin/python" -c "$s3_run_prestop" "$1" "$root")" || return 99
  mapfile -t env < <("$bin/python" -c 'import json,sys; print("\n".join(json.load(sys.stdin)["env"]))' <<<"$spec")
  mapfile -t cmd < <("$bin/python" -c 'import json,sys; print("\n".join(json.load(sys.stdin)["cmd"]))' <<<"$spec")
  env -i "${env[@]}" target/release/sidecap "${cmd[@]}" --log-to-pid1 never > "$root/log" 2>&1
}
if [ -x target/release/sidecap ]; then
  if s3_prestop k8s/examples/s3.yaml; then ok "the binary accepts s3.yaml's uploader configuration (its preStop exits 0)"
  else bad "s3.yaml's preStop with its env exits $?: $(tail -2 "$tmp/s3-run/log")"; fi
  sed 's/- name: SIDECAP_S3_CREDENTIALS_DIR$/- name: SIDECAP_S3_CREDENTIAL_DIR/' k8s/examples/s3.yaml > "$tmp/s3-typo.yaml"
  rc=0; s3_prestop "$tmp/s3-typo.yaml" || rc=$?  # (set -e: a bare failing call would end the script)
  if [ "$rc" = 3 ]; then ok "a misspelt SIDECAP_S3_CREDENTIALS_DIR makes that preStop exit 3"
  else bad "a misspelt SIDECAP_S3_CREDENTIALS_DIR: preStop exit $rc, not 3"; fi
else
  echo "  (target/release/sidecap not built: the manifest's configuration is not run)"
fi

echo "== checkov (Dockerfile, k8s/)"
# The overlay's sources are checked as rendered (the component's patch alone is no workload).
k8s_files=(k8s/examples/*.yaml)
[ -e "$tmp/kustomize-rendered.yaml" ] && k8s_files+=("$tmp/kustomize-rendered.yaml")
for target in "-f Dockerfile --framework dockerfile" "$(printf -- '-f %s ' "${k8s_files[@]}")--framework kubernetes"; do
  # shellcheck disable=SC2086
  if out="$(unshare --net "$bin/checkov" $target --skip-download --compact --quiet -o cli 2>&1)"; then
    ok "checkov $target"
  else bad "checkov $target"; echo "$out" | sed 's/^/       /'; fi
done
echo "  justified exceptions:"
grep -ho '#checkov:skip=[^ ].*' Dockerfile | sed 's/^#checkov:skip=/    Dockerfile /'
grep -rho 'checkov.io/skip[0-9]*: .*' k8s | sed 's/checkov.io\/skip[0-9]*: //' | sort -u | sed 's/^/    k8s /'

echo "k8s-check: $pass passed, $fail failed"
[ "$fail" -eq 0 ]
