#!/usr/bin/env python3
"""Helpers that run inside the e2e pod (Debian image, python3 stdlib only).

receiver: a DNS server on 127.0.0.1:53 that answers every A query with 127.0.0.1 (so the
          uploader reaches the webhook by name, through the static binary's resolver, as it would
          through cluster DNS), the webhook (127.0.0.1:8080, stores every POST/PUT body under /recv, checks the bearer
          token, optional per-request delay to make uploads slow) and the app's server
          (127.0.0.1:8081, answers GET with a small page, or N bytes for /?bytes=N). It stands for
          things outside the Pod.
app:      the main container: new TCP connection per request to the app server; "job" mode makes
          --count requests and exits 0, "serve" mode loops until SIGTERM, finishes the request in
          flight and exits 0. Prints the local ports of its first and last connection so the test
          can find the first SYN and the last FIN/ACK in the capture. An optional fifth argument
          makes the first request fetch that many bytes (a capture file larger than one S3 part).
"""
import http.client
import http.server
import os
import signal
import socket
import sys
import threading
import time
import urllib.parse


def dns():
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 53))
    while True:
        q, addr = sock.recvfrom(512)
        if len(q) < 17:
            continue
        end = 12
        while end < len(q) and q[end] != 0:
            end += q[end] + 1
        question = q[12:end + 5]
        qtype = int.from_bytes(q[end + 1:end + 3], "big")
        answer = b""
        if qtype == 1:  # A -> 127.0.0.1; AAAA and the rest: no data (NOERROR)
            answer = b"\xc0\x0c" + (1).to_bytes(2, "big") + (1).to_bytes(2, "big") + (60).to_bytes(4, "big") \
                + (4).to_bytes(2, "big") + bytes([127, 0, 0, 1])
        header = q[:2] + b"\x81\x80" + b"\x00\x01" + (1 if answer else 0).to_bytes(2, "big") + b"\x00\x00\x00\x00"
        sock.sendto(header + question + answer, addr)


def receiver(token, delay):
    threading.Thread(target=dns, daemon=True).start()
    seq = [0]
    lock = threading.Lock()

    class Hook(http.server.BaseHTTPRequestHandler):
        def _body(self):
            # Only a complete body counts: an upload cut off at the deadline must not leave a
            # truncated file here (that would be the seed recipe's failure, hidden).
            if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                parts = []
                while True:
                    line = self.rfile.readline()
                    if not line:
                        return None
                    size = int(line.split(b";")[0].strip() or b"0", 16)
                    if size == 0:
                        self.rfile.readline()
                        return b"".join(parts)
                    chunk = self.rfile.read(size)
                    if len(chunk) != size:
                        return None
                    parts.append(chunk)
                    self.rfile.readline()
            length = int(self.headers.get("Content-Length", "0"))
            body = self.rfile.read(length) if length else b""
            return body if len(body) == length else None

        def _store(self):
            body = self._body()
            if body is None:
                sys.stderr.write("receiver: incomplete body discarded: %s\n" % self.path)
                self.close_connection = True
                return
            if self.headers.get("Authorization") != "Bearer " + token:
                self.send_response(401)
                self.end_headers()
                return
            if delay:
                time.sleep(delay)
            name = os.path.basename(urllib.parse.unquote(urllib.parse.urlsplit(self.path).path)) or "upload"
            with lock:
                seq[0] += 1
                n = seq[0]
            path = "/recv/%03d-%s" % (n, name)
            with open(path + ".tmp", "wb") as f:
                f.write(body)
            os.rename(path + ".tmp", path)
            with open(path + ".headers", "w") as f:
                f.write("%s %s\n%s" % (self.command, self.path, self.headers))
            self.send_response(201)
            self.send_header("Content-Length", "0")
            self.end_headers()

        do_POST = _store
        do_PUT = _store

        def log_message(self, fmt, *args):
            sys.stderr.write("receiver: " + (fmt % args) + "\n")

    class App(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.0"

        def do_GET(self):
            query = urllib.parse.parse_qs(urllib.parse.urlsplit(self.path).query)
            size = int(query.get("bytes", ["0"])[0])
            body = b"hello from the app server\n" * 8 if not size else os.urandom(size)
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, fmt, *args):
            pass

    hook = http.server.ThreadingHTTPServer(("127.0.0.1", 8080), Hook)
    app = http.server.ThreadingHTTPServer(("127.0.0.1", 8081), App)
    threading.Thread(target=app.serve_forever, daemon=True).start()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    print("receiver: listening on 127.0.0.1:8080 (webhook) and 127.0.0.1:8081 (app server)", flush=True)
    hook.serve_forever()


def app(mode, count, interval, bulk=0):
    # The SIGTERM handler takes no lock: it appends to a list and writes with os.write. It was
    # `threading.Event.set`, which takes the Event's lock; a Python handler runs in the main
    # thread between bytecodes, so one that runs while that thread holds the lock inside
    # Event.wait waits for itself, and only SIGKILL ends the app (a narrow window, but a signal
    # handler must not take locks). The app says when it started and when SIGTERM arrived, so a
    # stop that ends in SIGKILL shows which side did not act.
    stopping = []

    def on_sigterm(*_):
        stopping.append(True)
        os.write(1, b"app: SIGTERM\n")

    signal.signal(signal.SIGTERM, on_sigterm)
    print("app: started (%s)" % mode, flush=True)
    first = last = None
    n = 0
    while not stopping and (mode == "serve" or n < count):
        conn = http.client.HTTPConnection("127.0.0.1", 8081, timeout=5)
        conn.connect()
        port = conn.sock.getsockname()[1]
        path = "/?bytes=%d" % bulk if bulk and n == 0 else "/"
        conn.request("GET", path, headers={"Connection": "close"})
        resp = conn.getresponse()
        resp.read()
        conn.close()
        if resp.status != 200:
            print("app: HTTP %d" % resp.status, flush=True)
            sys.exit(1)
        first = port if first is None else first
        last = port
        n += 1
        if not stopping:
            time.sleep(interval)  # a signal ends it early only by the handler; at most `interval`
    # Let the server's side of the last connection close too, so its FIN/ACK is on the wire.
    time.sleep(0.2)
    print("app: requests=%d first_port=%s last_port=%s" % (n, first, last), flush=True)

if __name__ == "__main__":
    if sys.argv[1] == "receiver":
        receiver(sys.argv[2], float(sys.argv[3]) if len(sys.argv) > 3 else 0.0)
    else:
        app(sys.argv[2], int(sys.argv[3]), float(sys.argv[4]), int(sys.argv[5]) if len(sys.argv) > 5 else 0)
