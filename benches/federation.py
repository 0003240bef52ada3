#!/usr/bin/env python3
"""Federation benchmark (issue 15): two Hearth servers on loopback, each with a TLS federation
listener whose certificate a throwaway CA (openssl) issued.

1. Receive rate: a user of server A sends MESSAGES messages (CONCURRENCY at a time) into a room a
   user of server B joined; reports the events/s at which they became visible on B (from the
   first send to the last one seen by B's /sync), and at which A accepted them.
2. Join memory: MEMBERS users of A join one room; a user of B then joins it over federation
   (B receives and checks every member event and its auth chain); reports B's resident memory
   before and after, its peak, and the join's duration.

Usage: benches/federation.py HEARTH_BIN [MESSAGES] [MEMBERS]   (prints one JSON line per part)
Traffic stays on 127.0.0.0/8; every loop is bounded in count and time.
"""

import concurrent.futures
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

BIN = sys.argv[1]
MESSAGES = int(sys.argv[2]) if len(sys.argv) > 2 else 2000
MEMBERS = int(sys.argv[3]) if len(sys.argv) > 3 else 1000
CONCURRENCY = 20


def free_port(ip):
    with socket.socket() as s:
        s.bind((ip, 0))
        return s.getsockname()[1]


def openssl(*args):
    subprocess.run(["openssl", *args], check=True, capture_output=True)


def make_ca(work):
    openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
            "-keyout", f"{work}/ca.key", "-out", f"{work}/ca.pem", "-days", "2", "-subj", "/CN=bench CA")


def issue(work, ip):
    openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
            "-keyout", f"{work}/{ip}.key", "-out", f"{work}/{ip}.csr", "-subj", f"/CN={ip}")
    with open(f"{work}/{ip}.ext", "w") as f:
        f.write(f"subjectAltName=IP:{ip}\n")
    openssl("x509", "-req", "-in", f"{work}/{ip}.csr", "-CA", f"{work}/ca.pem", "-CAkey", f"{work}/ca.key",
            "-CAcreateserial", "-out", f"{work}/{ip}.crt", "-days", "2", "-extfile", f"{work}/{ip}.ext")


class Server:
    def __init__(self, work, ip):
        issue(work, ip)
        self.fed_port, self.port = free_port(ip), free_port("127.0.0.1")
        self.name = f"{ip}:{self.fed_port}"
        self.base = f"http://127.0.0.1:{self.port}"
        env = dict(os.environ, HEARTH_FEDERATION__ENABLED="true", HEARTH_FEDERATION__LISTEN=self.name,
                   HEARTH_FEDERATION__TLS_CERT_FILE=f"{work}/{ip}.crt",
                   HEARTH_FEDERATION__TLS_KEY_FILE=f"{work}/{ip}.key",
                   HEARTH_FEDERATION__EXTRA_CA_FILE=f"{work}/ca.pem",
                   HEARTH_FEDERATION__ALLOW_PRIVATE_DESTINATIONS="true",
                   HEARTH_RATE_LIMITS__ENABLED="false", HEARTH_REGISTRATION__MODE="open",
                   HEARTH_PASSWORDS__ITERATIONS="1", HEARTH_PASSWORDS__MEMORY_KIB="64",
                   HEARTH_LOGGING__LEVEL="warn")
        self.log = open(f"{work}/{ip}.log", "w")
        self.proc = subprocess.Popen([BIN, "serve", "--listen", f"127.0.0.1:{self.port}", "--server-name", self.name,
                                      "--data-dir", f"{work}/{ip}-data"], env=env, stdout=self.log, stderr=self.log)
        for _ in range(300):
            try:
                urllib.request.urlopen(f"{self.base}/_matrix/client/versions", timeout=1)
                return
            except (urllib.error.URLError, ConnectionError):
                time.sleep(0.1)
        raise SystemExit(f"{self.name} did not start")

    def rss_kib(self, field="VmRSS"):
        with open(f"/proc/{self.proc.pid}/status") as f:
            for line in f:
                if line.startswith(field):
                    return int(line.split()[1])
        return 0

    def stop(self):
        self.proc.terminate()
        self.proc.wait(timeout=30)


def call(base, method, path, body=None, token=None):
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(base + path, data=data, method=method)
    request.add_header("Content-Type", "application/json")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    with urllib.request.urlopen(request, timeout=60) as answer:
        return json.loads(answer.read() or b"{}")


def register(server, name):
    body = {"username": name, "password": "bench-password", "auth": {"type": "m.login.dummy"}}
    return call(server.base, "POST", "/_matrix/client/v3/register", body)["access_token"]


def main():
    work = tempfile.mkdtemp(prefix="hearth-fedbench-")
    make_ca(work)
    a, b = Server(work, "127.0.0.61"), Server(work, "127.0.0.62")
    try:
        alice, bob = register(a, "alice"), register(b, "bob")
        room = call(a.base, "POST", "/_matrix/client/v3/createRoom", {"preset": "public_chat"}, alice)["room_id"]
        call(b.base, "POST", f"/_matrix/client/v3/join/{room}?via={a.name}", {}, bob)
        since = call(b.base, "GET", "/_matrix/client/v3/sync?timeout=0", None, bob)["next_batch"]

        def send(n):
            call(a.base, "PUT", f"/_matrix/client/v3/rooms/{room}/send/m.room.message/b{n}",
                 {"msgtype": "m.text", "body": f"m{n}"}, alice)

        start = time.monotonic()
        with concurrent.futures.ThreadPoolExecutor(CONCURRENCY) as pool:
            list(pool.map(send, range(MESSAGES)))
        # A last message after all the others: A's queue delivers in order, so once B shows it,
        # B has received everything before it.
        call(a.base, "PUT", f"/_matrix/client/v3/rooms/{room}/send/m.room.message/last",
             {"msgtype": "m.text", "body": "last"}, alice)
        sent = time.monotonic()
        done, deadline = None, time.monotonic() + 120
        while done is None and time.monotonic() < deadline:
            answer = call(b.base, "GET", f"/_matrix/client/v3/sync?timeout=5000&since={since}", None, bob)
            since = answer["next_batch"]
            events = answer.get("rooms", {}).get("join", {}).get(room, {}).get("timeline", {}).get("events", [])
            if any(e.get("content", {}).get("body") == "last" for e in events):
                done = time.monotonic()
        seen, token = 0, None
        for _ in range(MESSAGES // 100 + 5):
            page = call(b.base, "GET", f"/_matrix/client/v3/rooms/{room}/messages?dir=b&limit=100"
                        + (f"&from={token}" if token else ""), None, bob)
            seen += sum(1 for e in page["chunk"] if e.get("type") == "m.room.message")
            token = page.get("end")
            if not token or not page["chunk"]:
                break
        print(json.dumps({"part": "receive", "messages": MESSAGES + 1, "seen_on_b": seen,
                          "sent_per_s_on_a": round((MESSAGES + 1) / (sent - start), 1),
                          "received_per_s_on_b": round((MESSAGES + 1) / (done - start), 1) if done else None,
                          "b_rss_kib": b.rss_kib()}), flush=True)

        big = call(a.base, "POST", "/_matrix/client/v3/createRoom", {"preset": "public_chat"}, alice)["room_id"]

        def member(n):
            token = register(a, f"member{n}")
            call(a.base, "POST", f"/_matrix/client/v3/join/{big}", {}, token)

        with concurrent.futures.ThreadPoolExecutor(CONCURRENCY) as pool:
            list(pool.map(member, range(MEMBERS)))
        before = b.rss_kib()
        joined = time.monotonic()
        call(b.base, "POST", f"/_matrix/client/v3/join/{big}?via={a.name}", {}, bob)
        took = time.monotonic() - joined
        members = call(b.base, "GET", f"/_matrix/client/v3/rooms/{big}/joined_members", None, bob)["joined"]
        print(json.dumps({"part": "join", "members": len(members), "join_s": round(took, 2),
                          "b_rss_kib_before": before, "b_rss_kib_after": b.rss_kib(),
                          "b_peak_rss_kib": b.rss_kib("VmHWM")}))
    finally:
        a.stop()
        b.stop()


if __name__ == "__main__":
    main()
