#!/usr/bin/env python3
"""Acceptance test of Hearth's end-to-end encryption endpoints with matrix-nio[e2e].

Usage: nio_e2ee.py HOMESERVER_URL   (loopback only, e.g. http://127.0.0.1:8008)

Two real encrypting clients (nio with its vodozemac/olm crypto and an on-disk store):
alice and bob register, upload their device and one-time keys (keys/upload), and see
the one-time key count in /sync (device_one_time_keys_count). alice creates an encrypted
room (m.room.encryption m.megolm.v1.aes-sha2 in initial_state) and invites bob, who
joins; each sees the other in /sync device_lists.changed and in keys/changes, and fetches
the other's device keys (keys/query) and trusts them. alice sends a message: nio claims
one of bob's one-time keys (keys/claim), sends the megolm room key olm-encrypted to
bob's device (sendToDevice m.room.encrypted), and sends the megolm-encrypted event.
bob's /sync brings the to-device m.room.encrypted (decrypted by nio to the m.room_key)
and the room event, which nio decrypts to the RoomMessageText alice sent. bob replies
encrypted the same way and alice decrypts it. The one-time key counts go down by the
claimed keys.

Each check prints `ok: <check>`. The first failing check prints
`FAIL: <check>: expected <what>` with what came back, and the script exits 1.
"""

import asyncio
import json
import secrets
import shutil
import sys
import tempfile
import time
from urllib.parse import quote

from nio_common import (
    SOFT_FAILURES,
    NioWarnings,
    StepFailed,
    check,
    describe,
    expect_type,
    loopback_homeserver,
    ok,
    timeline_find,
)
from nio import (
    AsyncClient,
    AsyncClientConfig,
    JoinResponse,
    KeysClaimResponse,
    KeysQueryResponse,
    KeysUploadResponse,
    MegolmEvent,
    RegisterResponse,
    RoomCreateResponse,
    RoomKeyEvent,
    RoomMessageText,
    RoomSendResponse,
    ShareGroupSessionResponse,
    SyncResponse,
)
from nio.event_builders import EnableEncryptionBuilder

OVERALL_TIMEOUT_S = 60
WAIT_S = 8          # bound on waiting for any one thing to show up in a sync
POLL_MS = 1_000     # each /sync long-poll while waiting




class RecordingClient(AsyncClient):
    """An AsyncClient that remembers every parsed response and the to-device events
    as they came from the server (before nio decrypts them in place)."""

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.responses = []
        self.raw_to_device = []   # (type name, event source) as received
        self.otk_counts = []      # signed_curve25519 of each sync, and 'upload N' marks

    async def receive_response(self, response):
        self.responses.append(response)
        return await super().receive_response(response)

    def _handle_to_device(self, response):
        for e in response.to_device_events:
            self.raw_to_device.append((type(e).__name__, getattr(e, "source", {})))
        return super()._handle_to_device(response)

    def last(self, cls):
        for r in reversed(self.responses):
            if isinstance(r, cls):
                return r
        return None


def summarize(resp):
    if not isinstance(resp, SyncResponse):
        return repr(resp)
    parts = [f"next_batch={resp.next_batch!r}",
             f"otk_count={resp.device_key_count}",
             f"device_lists={resp.device_list}",
             f"to_device={[type(e).__name__ for e in resp.to_device_events]}"]
    for rid, info in resp.rooms.join.items():
        parts.append(f"join {rid}: {[type(e).__name__ for e in info.timeline.events]}")
    for rid in resp.rooms.invite:
        parts.append(f"invite {rid}")
    return "; ".join(parts)


async def sync_until(client, who, step, expected, pred, timeout=WAIT_S):
    """Sync (short long-polls) until pred(resp) is truthy; return (resp, value)."""
    deadline = time.monotonic() + timeout
    seen = []
    while time.monotonic() < deadline:
        resp = await client.sync(timeout=POLL_MS)
        if not isinstance(resp, SyncResponse):
            raise StepFailed(f"FAIL: {step}: expected {expected}; {who}'s sync failed"
                             f"\n  response: {describe(resp)}")
        client.otk_counts.append(resp.device_key_count.signed_curve25519)
        if client.should_upload_keys:
            # nio tops its one-time keys up to max_one_time_keys whenever sync reports
            # fewer (as sync_forever does)
            up = await client.keys_upload()
            if isinstance(up, KeysUploadResponse):
                client.otk_counts.append(f"upload {up.signed_curve25519_count}")
        value = pred(resp)
        if value:
            return resp, value
        seen.append(summarize(resp))
    got = "\n    ".join(seen[-5:]) or "(no sync response)"
    raise StepFailed(f"FAIL: {step}: expected {expected} in {who}'s sync within {timeout}s"
                     f"\n  got {len(seen)} response(s) without it:\n    {got}")


async def raw_get(client, path):
    """GET a client-server API path with the client's token; (status, json)."""
    r = await client.send("GET", path, headers={"Authorization": f"Bearer {client.access_token}"})
    try:
        body = await r.json(content_type=None)
    except Exception:
        body = await r.text()
    return r.status, body


async def register(hs, store, localpart, password, clients):
    config = AsyncClientConfig(encryption_enabled=True, store_sync_tokens=True,
                               request_timeout=15, max_timeouts=2)
    c = RecordingClient(hs, localpart, store_path=store, config=config)
    clients.append(c)
    step = f"register {localpart}"
    resp = await c.register(localpart, password, device_name=f"nio e2ee {localpart}")
    expect_type(step, resp, RegisterResponse)
    check(step, resp.user_id.startswith(f"@{localpart}:") and bool(c.access_token)
          and c.olm is not None,
          "a user id, access token and a loaded olm account", describe(resp))

    step = f"{localpart} uploads device keys and one-time keys (keys/upload)"
    check(f"{localpart} needs a key upload", c.should_upload_keys, "should_upload_keys True",
          c.should_upload_keys)
    resp = await c.keys_upload()
    expect_type(step, resp, KeysUploadResponse)
    check(step, resp.signed_curve25519_count > 0 and c.olm_account_shared,
          "one_time_key_counts.signed_curve25519 > 0 and the account marked shared",
          describe(resp))
    print(f"   {localpart}: {resp.signed_curve25519_count} signed_curve25519 one-time keys",
          flush=True)
    return c, resp.signed_curve25519_count


async def run(hs, tmp):
    tag = secrets.token_hex(4)
    clients = []
    step = "start"
    try:
        alice, alice_otks = await register(hs, f"{tmp}/alice", f"alice_{tag}",
                                           "pw-" + secrets.token_hex(8), clients)
        bob, bob_otks = await register(hs, f"{tmp}/bob", f"bob_{tag}",
                                       "pw-" + secrets.token_hex(8), clients)
        alice_id, bob_id = alice.user_id, bob.user_id

        # --- Initial syncs: one-time key counts ---------------------------------------
        for c, who, n in ((alice, "alice", alice_otks), (bob, "bob", bob_otks)):
            step = f"initial sync ({who}) reports device_one_time_keys_count"
            resp = await c.sync(timeout=0, full_state=True)
            expect_type(step, resp, SyncResponse)
            check(step, resp.device_key_count.signed_curve25519 == n,
                  f"signed_curve25519 == {n}", summarize(resp))
        alice_token0 = alice.next_batch

        # --- Encrypted room ------------------------------------------------------------
        step = "alice creates an encrypted room and invites bob"
        resp = await alice.room_create(
            name=f"nio e2ee {tag}", invite=[bob_id],
            initial_state=[EnableEncryptionBuilder().as_dict()])
        expect_type(step, resp, RoomCreateResponse)
        room_id = resp.room_id
        ok(step)

        step = "alice's sync shows the room as encrypted"
        await sync_until(alice, "alice", step, f"{room_id} in rooms.join",
                         lambda r: room_id in r.rooms.join)
        check(step, alice.rooms[room_id].encrypted, "rooms[].encrypted True",
              vars(alice.rooms[room_id]).get("encrypted"))

        step = "bob's sync shows the invite"
        await sync_until(bob, "bob", step, f"{room_id} in rooms.invite",
                         lambda r: room_id in r.rooms.invite)
        ok(step)

        step = "bob joins"
        resp = await bob.join(room_id)
        expect_type(step, resp, JoinResponse)
        ok(step)

        step = "bob's sync shows the joined encrypted room"
        await sync_until(bob, "bob", step, f"{room_id} in rooms.join",
                         lambda r: room_id in r.rooms.join)
        check(step, bob.rooms[room_id].encrypted, "rooms[].encrypted True on bob's side",
              vars(bob.rooms[room_id]).get("encrypted"))

        step = "alice's sync: bob joined, and bob in device_lists.changed"
        changed_seen = set()

        def bob_joined(r):
            changed_seen.update(r.device_list.changed)
            return timeline_find(r, room_id, lambda e: getattr(e, "state_key", None) == bob_id
                                 and getattr(e, "membership", None) == "join")
        await sync_until(alice, "alice", step, "bob's join", bob_joined)
        check(step, bob_id in changed_seen,
              f"{bob_id} in device_lists.changed once he shares an encrypted room with alice",
              sorted(changed_seen), soft=True)

        step = "keys/changes from before the room lists bob"
        st, body = await raw_get(
            alice, f"/_matrix/client/v3/keys/changes?from={quote(alice_token0)}"
                   f"&to={quote(alice.next_batch)}")
        check(step, st == 200 and isinstance(body, dict) and bob_id in body.get("changed", []),
              f"200 with {bob_id} in changed", f"{st} {body}", soft=True)

        # --- keys/query ----------------------------------------------------------------
        for c, who, other, other_c in ((alice, "alice", bob_id, bob), (bob, "bob", alice_id, alice)):
            step = f"{who} queries the keys of the room's members (keys/query)"
            if c.should_query_keys:
                resp = await c.keys_query()
                expect_type(step, resp, KeysQueryResponse)
            dev = c.device_store.active_user_devices(other)
            devs = {d.device_id: d for d in dev}
            d = devs.get(other_c.device_id)
            check(step, d is not None
                  and d.ed25519 == other_c.olm.account.identity_keys["ed25519"]
                  and d.curve25519 == other_c.olm.account.identity_keys["curve25519"],
                  f"{other}'s device {other_c.device_id} with its real ed25519/curve25519 keys"
                  " (signature checked by nio)",
                  {k: (v.ed25519, v.curve25519) for k, v in devs.items()})
            step = f"{who} trusts {other}'s device"
            check(step, c.verify_device(d) or d.verified, "device verified", d)

        # --- alice -> bob ---------------------------------------------------------------
        bob_counts_before = len(bob.otk_counts)
        step = "alice shares a megolm session with bob (keys/claim + sendToDevice)"
        resp = await alice.share_group_session(room_id)
        expect_type(step, resp, ShareGroupSessionResponse)
        claim = alice.last(KeysClaimResponse)
        claimed = (claim.one_time_keys or {}).get(bob_id, {}).get(bob.device_id, {}) \
            if claim else {}
        check("keys/claim returned one of bob's signed_curve25519 keys",
              len(claimed) == 1 and next(iter(claimed)).startswith("signed_curve25519:"),
              f"one_time_keys[{bob_id}][{bob.device_id}] with one signed_curve25519:* key",
              describe(claim))
        check(step, (bob_id, bob.device_id) in resp.users_shared_with,
              f"({bob_id}, {bob.device_id}) in users_shared_with (sendToDevice accepted)",
              describe(resp))

        body_a = f"secret hello from alice {tag}"
        step = "alice sends an encrypted message"
        resp = await alice.room_send(room_id, "m.room.message",
                                     {"msgtype": "m.text", "body": body_a})
        expect_type(step, resp, RoomSendResponse)
        alice_msg = resp.event_id
        ok(step)

        step = "the event on the server is m.room.encrypted (megolm), not plaintext"
        st, ev = await raw_get(alice, f"/_matrix/client/v3/rooms/{quote(room_id)}/event/"
                                      f"{quote(alice_msg)}")
        check(step, st == 200 and ev.get("type") == "m.room.encrypted"
              and ev.get("content", {}).get("algorithm") == "m.megolm.v1.aes-sha2"
              and body_a not in json.dumps(ev),
              "type m.room.encrypted, algorithm m.megolm.v1.aes-sha2, no plaintext",
              f"{st} {ev}")

        step = "bob's sync brings the room key (to-device m.room.encrypted) and the message"
        got = {}

        def bob_gets(r):
            for e in r.to_device_events:
                if isinstance(e, RoomKeyEvent) and e.room_id == room_id:
                    got["key"] = e
            ev = timeline_find(r, room_id, lambda e: getattr(e, "event_id", None) == alice_msg)
            if ev is not None:
                got["msg"] = ev
            return "key" in got and "msg" in got
        await sync_until(bob, "bob", step, "an m.room_key to-device event and alice's message",
                         bob_gets)
        raw = [t for t, src in bob.raw_to_device
               if src.get("type") == "m.room.encrypted" and src.get("sender") == alice_id]
        check("bob's to-device event arrived as m.room.encrypted (olm) from alice",
              raw and raw[0] == "OlmEvent", "an OlmEvent of type m.room.encrypted",
              [(t, s.get("type"), s.get("sender")) for t, s in bob.raw_to_device])
        ev = got["msg"]
        if isinstance(ev, MegolmEvent):
            raise StepFailed(f"FAIL: bob decrypts alice's message: expected RoomMessageText,"
                             f" got undecryptable MegolmEvent\n  event: {ev.source}")
        check("bob decrypts alice's message", isinstance(ev, RoomMessageText)
              and ev.body == body_a and ev.sender == alice_id and ev.decrypted
              and ev.verified,
              f"a decrypted, verified RoomMessageText {body_a!r} from {alice_id}",
              f"{type(ev).__name__} {getattr(ev, 'body', None)!r} "
              f"decrypted={getattr(ev, 'decrypted', None)} "
              f"verified={getattr(ev, 'verified', None)}")

        step = "bob's one-time key count went down by the key alice claimed, then nio topped it up"
        await sync_until(bob, "bob", step, "a device_one_time_keys_count",
                         lambda r: r.device_key_count.signed_curve25519 is not None)
        counts = bob.otk_counts[bob_counts_before:]
        dropped = bob_otks - 1 in counts
        check(step, dropped and f"upload {bob_otks}" in counts[counts.index(bob_otks - 1):]
              and counts[-1] == bob_otks,
              f"a sync with signed_curve25519 {bob_otks - 1}, then keys/upload answering "
              f"{bob_otks} and the next sync saying {bob_otks}",
              f"bob's syncs since the claim: {counts}", soft=True)

        # --- bob -> alice ----------------------------------------------------------------
        body_b = f"secret reply from bob {tag}"
        step = "bob replies encrypted (his own megolm session, olm to alice)"
        resp = await bob.room_send(room_id, "m.room.message",
                                   {"msgtype": "m.text", "body": body_b},
                                   ignore_unverified_devices=True)
        expect_type(step, resp, RoomSendResponse)
        bob_msg = resp.event_id
        ok(step)

        step = "alice's sync brings bob's room key and decrypts his reply"
        got.clear()

        def alice_gets(r):
            for e in r.to_device_events:
                if isinstance(e, RoomKeyEvent) and e.room_id == room_id:
                    got["key"] = e
            ev = timeline_find(r, room_id, lambda e: getattr(e, "event_id", None) == bob_msg)
            if ev is not None:
                got["msg"] = ev
            return "key" in got and "msg" in got
        await sync_until(alice, "alice", step, "an m.room_key and bob's reply", alice_gets)
        ev = got["msg"]
        check(step, isinstance(ev, RoomMessageText) and ev.body == body_b
              and ev.sender == bob_id and ev.decrypted,
              f"a decrypted RoomMessageText {body_b!r} from {bob_id}",
              getattr(ev, "source", ev))

        # bob answers over the olm session alice opened, so he claims none of alice's
        # one-time keys unless nio decided to open a new session.
        claimed_by_bob = sum(
            len(r.one_time_keys.get(alice_id, {}).get(alice.device_id, {}))
            for r in bob.responses if isinstance(r, KeysClaimResponse))
        step = (f"alice's one-time key count: {alice_otks} minus the {claimed_by_bob} "
                "key(s) bob claimed")
        await sync_until(alice, "alice", step, "a device_one_time_keys_count",
                         lambda r: r.device_key_count.signed_curve25519 is not None)
        counts = [n for n in alice.otk_counts if isinstance(n, int)]
        check(step, min(counts) == alice_otks - claimed_by_bob,
              f"lowest signed_curve25519 {alice_otks - claimed_by_bob}",
              f"alice's syncs: {alice.otk_counts}", soft=True)

        step = "a second message reuses the megolm session (no new to-device)"
        before = len(bob.raw_to_device)
        resp = await alice.room_send(room_id, "m.room.message",
                                     {"msgtype": "m.text", "body": body_a + " again"})
        expect_type(step, resp, RoomSendResponse)
        again = resp.event_id
        r, ev = await sync_until(bob, "bob", step, "alice's second message",
                                 lambda r: timeline_find(r, room_id, lambda e: getattr(
                                     e, "event_id", None) == again))
        check(step, isinstance(ev, RoomMessageText) and ev.body == body_a + " again"
              and len(bob.raw_to_device) == before,
              "a decrypted RoomMessageText and no new to-device event",
              f"{type(ev).__name__}, to-device {bob.raw_to_device[before:]}")

        if SOFT_FAILURES:
            print(f"{len(SOFT_FAILURES)} check(s) failed (see FAIL lines above)", flush=True)
            return 1
        return 0
    except StepFailed as e:
        print(str(e), flush=True)
        return 1
    except Exception as e:
        print(f"FAIL: {step}: {type(e).__name__}: {e}", flush=True)
        return 1
    finally:
        for c in clients:
            await c.close()


def main():
    hs = loopback_homeserver("nio_e2ee.py")
    if hs is None:
        return 2
    from nio.crypto import ENCRYPTION_ENABLED
    if not ENCRYPTION_ENABLED:
        print("FAIL: matrix-nio installed without its e2e extra (pip install "
              "'matrix-nio[e2e]')", flush=True)
        return 1
    # nio logs this for every device it has no olm session with yet, right before claiming a
    # one-time key for it: expected, not a server problem.
    warnings = NioWarnings(expected=("Missing session for device",)).install()
    tmp = tempfile.mkdtemp(prefix="nio-e2ee-")
    try:
        import os
        os.makedirs(f"{tmp}/alice")
        os.makedirs(f"{tmp}/bob")
        status = asyncio.run(asyncio.wait_for(run(hs, tmp), OVERALL_TIMEOUT_S))
    except asyncio.TimeoutError:
        print(f"FAIL: timed out after {OVERALL_TIMEOUT_S}s", flush=True)
        status = 1
    except Exception as e:
        print(f"FAIL: unexpected {type(e).__name__}: {e}", flush=True)
        status = 1
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    warnings.report()
    return status

if __name__ == "__main__":
    sys.exit(main())
