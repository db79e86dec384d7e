#!/usr/bin/env bash
# Measures what --own-ports costs (issue 11), as root on Debian 12, with target/release/sidecap:
#  1. upload: one 1 GiB pcap sent by `sidecap upload` to a discarding receiver on 127.0.0.1,
#     with --own-ports none (reqwest connects directly) and with the default range (through the
#     in-process forwarder), REPS times each, alternating;
#  2. capture: CPU per packet of the capture's added BPF test on lo: a C sendmmsg generator sends
#     N UDP datagrams to 127.0.0.1 while `sidecap capture -i lo udp dst port P` runs with
#     --own-ports none and with the default; the filter runs on the sender's CPU (softirq), so
#     the generator's and the capture's CPU seconds are both counted.
# Prints one line per run; docs/capture.md and docs/upload.md quote the medians.
set -euo pipefail
cd "$(dirname "$0")/.."
bin="$PWD/target/release/sidecap"
reps="${REPS:-3}"
work="$(mktemp -d)"; trap 'kill $(jobs -p) 2>/dev/null; rm -rf "$work"' EXIT

echo "== upload of 1 GiB to 127.0.0.1"
mkdir "$work/up"
python3 - "$work/up/capture-20260101T000000Z-000001.pcap" <<'PY'
import struct, sys
with open(sys.argv[1], "wb") as f:
    f.write(struct.pack("<IHHiIII", 0xa1b2c3d4, 2, 4, 0, 0, 65535, 1))
    rec = struct.pack("<IIII", 0, 0, 65519, 65519) + bytes(65519)  # 64 KiB a record
    for _ in range((1 << 30) // len(rec)):
        f.write(rec)
PY
cat > "$work/sink.py" <<'PY'
import http.server, sys
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_POST(self):
        n = int(self.headers["Content-Length"]); buf = bytearray(1 << 20); v = memoryview(buf)
        while n > 0:
            got = self.rfile.readinto(v[:min(n, len(buf))])
            if not got: return
            n -= got
        self.send_response(200); self.send_header("Content-Length", "0"); self.end_headers()
    def log_message(self, *a): pass
s = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
print(s.server_address[1], flush=True); s.serve_forever()
PY
python3 "$work/sink.py" > "$work/port" &
until [ -s "$work/port" ]; do sleep 0.1; done
port="$(cat "$work/port")"
for r in $(seq "$reps"); do
  for mode in none 61000-61031; do
    rm -f "$work/up/"capture.upload-*
    /usr/bin/time -f "own-ports=$mode run=$r: %e s wall, %U s user, %S s sys" \
      "$bin" --log-level warn upload --dir "$work/up" --url "http://127.0.0.1:$port/in/{file}" \
      --grace-period 120s --own-ports "$mode" --log-to-pid1 never
  done
done

echo "== capture: CPU per packet of the added filter (lo)"
cat > "$work/gen.c" <<'C'
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
int main(int argc, char **argv) {
  long n = atol(argv[1]); int port = atoi(argv[2]);
  int s = socket(AF_INET, SOCK_DGRAM, 0);
  struct sockaddr_in to = { .sin_family = AF_INET, .sin_port = htons(port) };
  inet_pton(AF_INET, "127.0.0.1", &to.sin_addr);
  static char payload[64]; struct iovec iov = { payload, sizeof payload };
  struct mmsghdr m[64]; memset(m, 0, sizeof m);
  for (int i = 0; i < 64; i++) { m[i].msg_hdr.msg_name = &to; m[i].msg_hdr.msg_namelen = sizeof to;
    m[i].msg_hdr.msg_iov = &iov; m[i].msg_hdr.msg_iovlen = 1; }
  for (long sent = 0; sent < n; ) { int k = sendmmsg(s, m, 64, 0); if (k > 0) sent += k; }
  return 0;
}
C
gcc -O2 -o "$work/gen" "$work/gen.c"
n="${PACKETS:-2000000}"; udp=47811
for r in $(seq "$reps"); do
  for mode in none 61000-61031; do
    rm -rf "$work/cap"; mkdir "$work/cap"
    "$bin" --log-format json capture -i lo -w "$work/cap" --listen off -q --own-ports "$mode" \
      udp dst port "$udp" 2> "$work/cap.log" &
    cpid=$!
    until grep -q "Capture is live" "$work/cap.log"; do sleep 0.05; done
    gen_cpu="$( { /usr/bin/time -f "%U %S" "$work/gen" "$n" "$udp"; } 2>&1 )"
    sleep 1
    cap_cpu="$(awk -v hz="$(getconf CLK_TCK)" '{print ($14+$15)/hz}' "/proc/$cpid/stat")"
    kill -TERM "$cpid"; wait "$cpid" || true
    written="$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["packets_written"])' "$work/cap/capture.done")"
    echo "own-ports=$mode run=$r: generator user+sys $(echo "$gen_cpu" | awk '{print $1+$2}') s, capture $cap_cpu s, for $n packets, written $written"
  done
done
