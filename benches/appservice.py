#!/usr/bin/env python3
"""Application-service benchmark (issue 17): transactions to a bridge, and what a registered
service adds to the send path.

A test appservice (a threaded HTTP server in this process, on 127.0.0.1) answers every
`PUT /_matrix/app/v1/transactions/{txnId}` with 200 and counts transactions and events. The
workload: USERS users chat in ROOMS rooms (user i sends into room i % ROOMS), each room with
one user of the service's namespace joined (so every message is for the bridge); MESSAGES
messages in all, CONCURRENCY sends at a time.

1. `deliver`: Hearth with the service registered. Reports sends/s, and the events/s and
   transactions/s delivered to the service from the first send until it has every message,
   plus Hearth's CPU seconds. Then `backlog`: the service answers 503 while MESSAGES more are
   sent, then 200 again (and pings Hearth through the client-server ping, which ends the
   back-off); reports the events/s and transactions/s at which the backlog drains.
2. `send_cost`: the same workload on a fresh Hearth without any registration, then again on
   one with it (RUNS pairs, alternating); reports sends/s and Hearth CPU seconds per 1,000
   sends for each, and the difference.

Usage: benches/appservice.py HEARTH_BIN [MESSAGES] [RUNS]  (one JSON line per measurement).
Traffic stays on 127.0.0.1; every loop is bounded in count and time.
"""

import concurrent.futures
import http.server
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request

USERS = 20
ROOMS = 10
CONCURRENCY = 20
DELIVERY_TIMEOUT_S = 300


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def call(base, method, path, body=None, token=None, timeout=60):
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(base + path, data=data, method=method)
    request.add_header("Content-Type", "application/json")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    with urllib.request.urlopen(request, timeout=timeout) as answer:
        return json.loads(answer.read() or b"{}")


class Service:
    """The test appservice: counts transactions and events (each transaction id once)."""

    def __init__(self):
        self.lock = threading.Lock()
        self.txns, self.events, self.bodies = set(), 0, set()
        self.last_at = None
        self.failing = False
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):  # the ping
                self.rfile.read(int(self.headers.get("Content-Length", 0)))
                self.answer(200)

            def answer(self, status):
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"{}")

            def do_PUT(self):
                length = int(self.headers.get("Content-Length", 0))
                body = json.loads(self.rfile.read(length) or b"{}")
                if outer.failing:
                    self.answer(503)
                    return
                with outer.lock:
                    if self.path not in outer.txns:
                        outer.txns.add(self.path)
                        for event in body.get("events", []):
                            outer.events += 1
                            if event.get("type") == "m.room.message":
                                outer.bodies.add(event["content"].get("body"))
                        outer.last_at = time.monotonic()
                self.answer(200)

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self):
        self.server.shutdown()


class Hearth:
    def __init__(self, binary, work, registration=None):
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        env = {k: v for k, v in os.environ.items() if not k.startswith("HEARTH_")}
        env.update(HEARTH_RATE_LIMITS__ENABLED="false", HEARTH_REGISTRATION__MODE="open",
                   HEARTH_PASSWORDS__ITERATIONS="1", HEARTH_PASSWORDS__MEMORY_KIB="64",
                   HEARTH_LOGGING__LEVEL="warn")
        if registration:
            env["HEARTH_APPSERVICES__REGISTRATION_FILES"] = registration
        self.log_path = f"{work}/hearth.log"
        with open(self.log_path, "w") as log:
            self.proc = subprocess.Popen(
                [binary, "serve", "--listen", f"127.0.0.1:{self.port}", "--server-name", "bench.test",
                 "--data-dir", f"{work}/data"],
                env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=log)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                break
            try:
                with urllib.request.urlopen(f"{self.base}/_matrix/client/versions", timeout=2):
                    return
            except (urllib.error.URLError, ConnectionError, OSError):
                time.sleep(0.2)
        self.proc.kill()
        raise RuntimeError(f"hearth did not start; see {self.log_path}")

    def cpu_s(self):
        with open(f"/proc/{self.proc.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)


def register(base, name):
    body = {"username": name, "password": "bench-password", "auth": {"type": "m.login.dummy"}}
    return call(base, "POST", "/_matrix/client/v3/register", body)["access_token"]


def setup(hearth):
    """USERS chatting users, ROOMS rooms each with a namespace user joined: (tokens, rooms)."""
    users = [register(hearth.base, f"user{i}") for i in range(USERS)]
    rooms = []
    for r in range(ROOMS):
        room = call(hearth.base, "POST", "/_matrix/client/v3/createRoom", {"preset": "public_chat"},
                    users[r % USERS])["room_id"]
        bridge_user = register(hearth.base, f"bridge_{r}")
        call(hearth.base, "POST", f"/_matrix/client/v3/join/{room}", {}, bridge_user)
        rooms.append(room)
    for i, token in enumerate(users):
        if i >= ROOMS:
            call(hearth.base, "POST", f"/_matrix/client/v3/join/{rooms[i % ROOMS]}", {}, token)
    return users, rooms


def chat(hearth, users, rooms, messages, tag):
    def send(n):
        user = n % USERS
        call(hearth.base, "PUT", f"/_matrix/client/v3/rooms/{rooms[user % ROOMS]}/send/m.room.message/{tag}{n}",
             {"msgtype": "m.text", "body": f"{tag}{n}"}, users[user])

    cpu = hearth.cpu_s()
    start = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(CONCURRENCY) as pool:
        list(pool.map(send, range(messages)))
    return start, time.monotonic() - start, hearth.cpu_s() - cpu


def registration_file(work, service):
    path = f"{work}/bridge.yaml"
    with open(path, "w") as f:
        f.write(f"""id: bridge
url: http://127.0.0.1:{service.port}
as_token: as-bench
hs_token: hs-bench
sender_localpart: bridgebot
rate_limited: false
namespaces:
  users:
    - exclusive: false
      regex: '@bridge_.*:bench\\.test'
  aliases: []
  rooms: []
""")
    return path


def deliver(binary, messages):
    with tempfile.TemporaryDirectory() as work:
        service = Service()
        hearth = Hearth(binary, work, registration_file(work, service))
        try:
            users, rooms = setup(hearth)
            with service.lock:
                txns_before = len(service.txns)
            start, send_s, _ = chat(hearth, users, rooms, messages, "d")
            cpu_before_wait = hearth.cpu_s()
            deadline = time.monotonic() + DELIVERY_TIMEOUT_S
            while time.monotonic() < deadline:
                with service.lock:
                    got = sum(1 for b in service.bodies if b and b.startswith("d"))
                if got >= messages:
                    break
                time.sleep(0.05)
            with service.lock:
                done = service.last_at - start
                txns = len(service.txns) - txns_before
            print(json.dumps({
                "part": "deliver", "messages": messages, "delivered": got,
                "sends_per_s": round(messages / send_s, 1),
                "delivered_events_per_s": round(got / done, 1),
                "transactions": txns, "transactions_per_s": round(txns / done, 1),
                "events_per_transaction": round(got / max(txns, 1), 1),
                "lag_after_last_send_s": round(done - send_s, 2),
                "hearth_cpu_s_after_sends": round(hearth.cpu_s() - cpu_before_wait, 2),
            }), flush=True)
            # The backlog: queued while the service fails, drained once it is back.
            service.failing = True
            chat(hearth, users, rooms, messages, "k")
            with service.lock:
                txns_before = len(service.txns)
            service.failing = False
            start = time.monotonic()
            call(hearth.base, "POST", "/_matrix/client/v1/appservice/bridge/ping", {}, "as-bench")
            deadline = time.monotonic() + DELIVERY_TIMEOUT_S
            while time.monotonic() < deadline:
                with service.lock:
                    got = sum(1 for b in service.bodies if b and b.startswith("k"))
                if got >= messages:
                    break
                time.sleep(0.02)
            with service.lock:
                done = service.last_at - start
                txns = len(service.txns) - txns_before
            print(json.dumps({
                "part": "backlog", "messages": messages, "delivered": got,
                "drain_s": round(done, 2), "delivered_events_per_s": round(got / done, 1),
                "transactions": txns, "transactions_per_s": round(txns / done, 1),
            }), flush=True)
        finally:
            hearth.stop()
            service.stop()


def send_cost(binary, messages, registered):
    with tempfile.TemporaryDirectory() as work:
        service = Service()
        registration = registration_file(work, service) if registered else None
        hearth = Hearth(binary, work, registration)
        try:
            users, rooms = setup(hearth)
            _, send_s, cpu_s = chat(hearth, users, rooms, messages, "c")
            if registered:
                # The delivery's own work, after the sends, is not part of the send path.
                deadline = time.monotonic() + DELIVERY_TIMEOUT_S
                while time.monotonic() < deadline:
                    with service.lock:
                        if sum(1 for b in service.bodies if b and b.startswith("c")) >= messages:
                            break
                    time.sleep(0.05)
            return messages / send_s, cpu_s * 1000 / messages
        finally:
            hearth.stop()
            service.stop()


def main():
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    binary = sys.argv[1]
    messages = int(sys.argv[2]) if len(sys.argv) > 2 else 2000
    runs = int(sys.argv[3]) if len(sys.argv) > 3 else 2
    deliver(binary, messages)
    without, with_service = [], []
    for _ in range(runs):
        without.append(send_cost(binary, messages, False))
        with_service.append(send_cost(binary, messages, True))
    for label, results in (("without_service", without), ("with_service", with_service)):
        print(json.dumps({
            "part": "send_cost", "case": label, "messages": messages,
            "sends_per_s": [round(r[0], 1) for r in results],
            "cpu_ms_per_send": [round(r[1], 3) for r in results],
        }), flush=True)
    def median(results, i):
        return sorted(r[i] for r in results)[len(results) // 2]

    print(json.dumps({
        "part": "send_cost", "case": "difference",
        "median_sends_per_s_change_pct": round((median(with_service, 0) / median(without, 0) - 1) * 100, 1),
        "median_cpu_ms_per_send_change_pct": round((median(with_service, 1) / median(without, 1) - 1) * 100, 1),
    }), flush=True)


if __name__ == "__main__":
    main()
