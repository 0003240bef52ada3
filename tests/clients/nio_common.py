"""What the matrix-nio acceptance scripts share: step reporting (`ok:` / `FAIL:` lines, hard
and soft failures), response description, timeline search, the loopback guard on the
homeserver URL, and the collector of nio's own warnings (schema warnings name server JSON bugs).
"""

import ipaddress
import logging
import sys
from urllib.parse import urlsplit


class StepFailed(Exception):
    pass


# Failures a script can work around to go on testing the rest: each is printed as
# `FAIL: ...` when it happens, and the script still exits 1 at the end.
SOFT_FAILURES = []


def soft_fail(msg):
    SOFT_FAILURES.append(msg)
    print(msg, flush=True)


def describe(resp):
    text = repr(resp)
    transport = getattr(resp, "transport_response", None)
    if transport is not None:
        text += f"\n  http status: {getattr(transport, 'status', '?')}"
    return text


def ok(step):
    print(f"ok: {step}", flush=True)


def check(step, cond, why="", got=None, soft=False):
    if not cond:
        msg = f"FAIL: {step}: expected {why or 'assertion to hold'}"
        if got is not None:
            msg += f"\n  got: {got}"
        if soft:
            soft_fail(msg)
            return False
        raise StepFailed(msg)
    ok(step)
    return True


def expect_type(step, resp, cls):
    if not isinstance(resp, cls):
        raise StepFailed(
            f"FAIL: {step}: expected {cls.__name__}, got {type(resp).__name__}"
            f"\n  response: {describe(resp)}"
        )


def timeline_find(resp, room_id, pred):
    info = resp.rooms.join.get(room_id)
    if not info:
        return None
    for e in info.timeline.events:
        if pred(e):
            return e
    return None


def loopback_homeserver(script):
    """The homeserver URL from the command line, or None (after saying why) unless it is on
    loopback: these tests never send traffic anywhere else."""
    if len(sys.argv) != 2:
        print(f"usage: {script} HOMESERVER_URL", file=sys.stderr)
        return None
    hs = sys.argv[1].rstrip("/")
    host = urlsplit(hs).hostname or ""
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        print(f"refusing non-loopback homeserver {hs!r}", file=sys.stderr)
        return None
    return hs


class NioWarnings(logging.Handler):
    """Keeps nio's warnings, except those starting with one of `expected`."""

    def __init__(self, expected=()):
        super().__init__(logging.WARNING)
        self.expected = tuple(expected)
        self.records = []

    def emit(self, record):
        text = self.format(record)
        if not (self.expected and text.startswith(self.expected)):
            self.records.append(text)

    def install(self):
        nio_log = logging.getLogger("nio")
        nio_log.setLevel(logging.WARNING)
        nio_log.propagate = False
        nio_log.addHandler(self)
        return self

    def report(self):
        if self.records:
            print(f"nio warnings ({len(self.records)}):", flush=True)
            for r in self.records[:10]:
                print(f"  {r[:600]}", flush=True)
