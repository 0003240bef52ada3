#!/usr/bin/env python3
"""Federation benchmark (issue 15): servers on loopback, each with a TLS federation listener
whose certificate a throwaway CA (openssl) issued (tests/clients/fed_pair.py starts them).

1. `receive`, Hearth -> Hearth: a user of Hearth A sends MESSAGES messages (CONCURRENCY at a
   time) into a room a user of Hearth B joined; reports the events/s at which they became
   visible on B (from the first send to the last one seen by B's /sync), and at which A
   accepted them, and the CPU seconds each server used meanwhile.
2. `synapse_receive`, Synapse -> Hearth: the same with a Synapse (from the venv at
   $HEARTH_SYNAPSE_VENV, default ~/.cache/hearth-bench/synapse-venv; its rate limits out of
   reach) as the sender and a fresh Hearth C as the receiver: a Synapse user creates the room, a
   Hearth user joins it over federation, the Synapse user sends. Skipped (with a JSON line
   saying why) when the venv has no Synapse.
3. `join`, join memory: MEMBERS users of A join one room; a user of B then joins it over
   federation (B receives and checks every member event and its auth chain); reports B's
   resident memory before and after, its peak, and the join's duration.

Usage: benches/federation.py HEARTH_BIN [MESSAGES] [MEMBERS] [--parts receive,synapse_receive,join]
(prints one JSON line per part). Traffic stays on 127.0.0.0/8; every loop is bounded in count
and time.
"""

import argparse
import concurrent.futures
import json
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "clients"))
import fed_pair  # noqa: E402
from fed_pair import call  # noqa: E402

PARTS = ("receive", "synapse_receive", "join")
CONCURRENCY = 20
SEEN_TIMEOUT_S = 300  # bound on waiting for the last message on the receiving side


def register(server, name):
    return fed_pair.register(server.base, name, "bench-password")[1]


def receive(part, sender, receiver, messages, extra=None):
    """`sender` (Hearth or Synapse) creates a public room, a user of `receiver` (a Hearth) joins
    it over federation, then the sender's user sends `messages` messages CONCURRENCY at a time
    and a last one; prints the rates."""
    alice, bob = register(sender, "alice"), register(receiver, "bob")
    room = call(sender.base, "POST", "/_matrix/client/v3/createRoom", {"preset": "public_chat"}, alice)["room_id"]
    call(receiver.base, "POST", f"/_matrix/client/v3/join/{room}?via={sender.name}&server_name={sender.name}",
         {}, bob)
    since = call(receiver.base, "GET", "/_matrix/client/v3/sync?timeout=0", None, bob)["next_batch"]

    def send(n):
        call(sender.base, "PUT", f"/_matrix/client/v3/rooms/{room}/send/m.room.message/b{n}",
             {"msgtype": "m.text", "body": f"m{n}"}, alice)

    cpu_before = sender.cpu_s(), receiver.cpu_s()
    start = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(CONCURRENCY) as pool:
        list(pool.map(send, range(messages)))
    # A last message after all the others: the sender's queue delivers in order, so once the
    # receiver shows it, it has received everything before it (or fetched what it missed).
    call(sender.base, "PUT", f"/_matrix/client/v3/rooms/{room}/send/m.room.message/last",
         {"msgtype": "m.text", "body": "last"}, alice)
    sent = time.monotonic()
    done, deadline = None, time.monotonic() + SEEN_TIMEOUT_S
    while done is None and time.monotonic() < deadline:
        answer = call(receiver.base, "GET", f"/_matrix/client/v3/sync?timeout=5000&since={since}", None, bob)
        since = answer["next_batch"]
        events = answer.get("rooms", {}).get("join", {}).get(room, {}).get("timeline", {}).get("events", [])
        if any(e.get("content", {}).get("body") == "last" for e in events):
            done = time.monotonic()
    # CPU seconds each server spent from the first send until the receiver showed the last one
    # (plus at most one 5 s long-poll of the receiver's /sync, which costs nothing).
    sender_cpu, receiver_cpu = sender.cpu_s() - cpu_before[0], receiver.cpu_s() - cpu_before[1]
    seen, token = 0, None
    for _ in range(messages // 100 + 5):
        page = call(receiver.base, "GET", f"/_matrix/client/v3/rooms/{room}/messages?dir=b&limit=100"
                    + (f"&from={token}" if token else ""), None, bob)
        seen += sum(1 for e in page["chunk"] if e.get("type") == "m.room.message")
        token = page.get("end")
        if not token or not page["chunk"]:
            break
    sender_name = "a" if part == "receive" else "synapse"
    sender_key = f"sent_per_s_on_{sender_name}"
    receiver_key = "b" if part == "receive" else "hearth"
    print(json.dumps({"part": part, "messages": messages + 1, f"seen_on_{receiver_key}": seen,
                      sender_key: round((messages + 1) / (sent - start), 1),
                      f"received_per_s_on_{receiver_key}": round((messages + 1) / (done - start), 1) if done else None,
                      f"{receiver_key}_lag_after_last_send_s": round(done - sent, 2) if done else None,
                      f"{sender_name}_cpu_s": round(sender_cpu, 1), f"{receiver_key}_cpu_s": round(receiver_cpu, 1),
                      f"{receiver_key}_rss_kib": receiver.rss_kib(), **(extra or {})}), flush=True)


def join(a, b, members):
    alice, bob = register(a, "carol"), register(b, "dave")
    big = call(a.base, "POST", "/_matrix/client/v3/createRoom", {"preset": "public_chat"}, alice)["room_id"]

    def member(n):
        token = register(a, f"member{n}")
        call(a.base, "POST", f"/_matrix/client/v3/join/{big}", {}, token)

    with concurrent.futures.ThreadPoolExecutor(CONCURRENCY) as pool:
        list(pool.map(member, range(members)))
    before = b.rss_kib()
    joined = time.monotonic()
    call(b.base, "POST", f"/_matrix/client/v3/join/{big}?via={a.name}", {}, bob)
    took = time.monotonic() - joined
    joined_members = call(b.base, "GET", f"/_matrix/client/v3/rooms/{big}/joined_members", None, bob)["joined"]
    print(json.dumps({"part": "join", "members": len(joined_members), "join_s": round(took, 2),
                      "b_rss_kib_before": before, "b_rss_kib_after": b.rss_kib(),
                      "b_peak_rss_kib": b.rss_kib("VmHWM")}), flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("hearth_bin")
    parser.add_argument("messages", nargs="?", type=int, default=2000)
    parser.add_argument("members", nargs="?", type=int, default=1000)
    parser.add_argument("--parts", default=",".join(PARTS),
                        help=f"comma-separated subset of {','.join(PARTS)} (default: all)")
    args = parser.parse_args()
    parts = [p for p in args.parts.split(",") if p]
    unknown = [p for p in parts if p not in PARTS]
    if unknown:
        parser.error(f"unknown parts {unknown}; known: {', '.join(PARTS)}")

    work = tempfile.mkdtemp(prefix="hearth-fedbench-")
    fed_pair.make_ca(work)
    servers = []
    try:
        if "receive" in parts or "join" in parts:
            a = fed_pair.Hearth(args.hearth_bin, work, "127.0.0.61")
            servers.append(a)
            b = fed_pair.Hearth(args.hearth_bin, work, "127.0.0.62")
            servers.append(b)
        if "receive" in parts:
            receive("receive", a, b, args.messages)
        if "synapse_receive" in parts:
            python = fed_pair.synapse_python()
            if python is None:
                print(json.dumps({"part": "synapse_receive",
                                  "skipped": f"no Synapse venv at {fed_pair.synapse_venv()} "
                                             "(set HEARTH_SYNAPSE_VENV, or run tests/run.sh which installs it)"}),
                      flush=True)
            else:
                c = fed_pair.Hearth(args.hearth_bin, work, "127.0.0.63")
                servers.append(c)
                # WARNING: Synapse's INFO log (every request) would cost it time of its own.
                synapse = fed_pair.Synapse(python, work, "127.0.0.64", log_level="WARNING")
                servers.append(synapse)
                receive("synapse_receive", synapse, c, args.messages,
                        {"synapse_peak_rss_kib": synapse.rss_kib("VmHWM")})
                synapse.stop()
                c.stop()
        if "join" in parts:
            join(a, b, args.members)
    finally:
        for server in servers:
            server.stop()
        fed_pair.remove(work)


if __name__ == "__main__":
    main()
