#!/usr/bin/env python3
"""Acceptance test of Hearth's /sync with matrix-nio: two users chatting live.

Usage: nio_sync.py HOMESERVER_URL   (loopback only, e.g. http://127.0.0.1:8008)

alice and bob register, alice creates a room and invites bob, bob sees the invite in
his sync and joins. Then both clients run a long-polling sync loop side by side (as a
real client does) while the script checks that messages, typing notifications, read
receipts and read markers reach the other side live, that member lists and display
names are right, and that next_batch tokens advance and resume correctly.

Each check prints `ok: <check>`. The first failing check prints
`FAIL: <check>: <expected>` with what came back, and the script exits 1.
"""

import asyncio
import secrets
import sys
import time

from nio_common import (
    SOFT_FAILURES,
    NioWarnings,
    StepFailed,
    check,
    describe,
    expect_type,
    loopback_homeserver,
    ok,
    soft_fail,
    timeline_find,
)
from nio import (
    Api,
    AsyncClient,
    AsyncClientConfig,
    FullyReadEvent,
    InviteMemberEvent,
    JoinedMembersResponse,
    JoinResponse,
    ProfileSetDisplayNameResponse,
    ReceiptEvent,
    RegisterResponse,
    RoomCreateResponse,
    RoomInviteResponse,
    RoomMemberEvent,
    RoomMessageText,
    RoomPreset,
    RoomReadMarkersResponse,
    RoomSendResponse,
    RoomTypingResponse,
    SyncError,
    SyncResponse,
    TypingNoticeEvent,
    UpdateReceiptMarkerResponse,
)

OVERALL_TIMEOUT_S = 50   # run.sh's whole run must stay well under a minute
LONGPOLL_MS = 10_000     # each /sync long-poll; live delivery must beat it by far
WAIT_S = 5               # bound on waiting for any one thing to show up in a sync
LIVE_MAX_S = 2.0         # "live": delivered this soon after the triggering request
PARKED_S = 0.3           # a sync held this long by the server is parked in its long-poll




def new_client(hs, user=""):
    config = AsyncClientConfig(request_timeout=15, max_timeouts=2, store_sync_tokens=False)
    return AsyncClient(hs, user, config=config)


def summarize(resp):
    """A short account of one sync response, for failure messages."""
    if not isinstance(resp, SyncResponse):
        return repr(resp)
    parts = [f"next_batch={resp.next_batch!r}"]
    for rid, info in resp.rooms.invite.items():
        parts.append(f"invite {rid}: {[type(e).__name__ for e in info.invite_state]}")
    for rid, info in resp.rooms.join.items():
        tl = [
            f"{type(e).__name__}({getattr(e, 'sender', '')}"
            + (f", {e.body!r}" if isinstance(e, RoomMessageText) else "")
            + (f", {e.membership}" if isinstance(e, RoomMemberEvent) else "")
            + ")"
            for e in info.timeline.events
        ]
        eph = [e.source if hasattr(e, "source") else repr(e) for e in info.ephemeral]
        acc = [type(e).__name__ for e in info.account_data]
        parts.append(f"join {rid}: timeline={tl} ephemeral={eph} account_data={acc}")
    for rid in resp.rooms.leave:
        parts.append(f"leave {rid}")
    return "; ".join(parts)


def has_content(resp):
    r = resp.rooms
    return bool(r.join or r.invite or r.leave or resp.presence_events
                or resp.account_data_events or resp.to_device_events)


class Syncer:
    """Runs client.sync(timeout=LONGPOLL_MS) back to back, like sync_forever, and
    hands each response (with the time it arrived) to whoever is waiting for it."""

    def __init__(self, name, client):
        self.name = name
        self.client = client
        self.queue = asyncio.Queue()
        self.task = None
        self.inflight_since = None  # monotonic start of the sync request in flight
        self.tokens = []            # (since, next_batch) of each response
        self.seen_event_ids = {}    # event_id -> count over incremental timelines
        self.errors = []

    def start(self):
        self.task = asyncio.create_task(self._loop(), name=f"sync-{self.name}")

    async def stop(self):
        if self.task:
            self.task.cancel()
            try:
                await self.task
            except (asyncio.CancelledError, Exception):
                pass
            self.task = None

    async def _loop(self):
        while True:
            since = self.client.next_batch
            self.inflight_since = time.monotonic()
            resp = await self.client.sync(timeout=LONGPOLL_MS)
            self.inflight_since = None
            now = time.monotonic()
            if isinstance(resp, SyncResponse):
                self.tokens.append((since, resp.next_batch, has_content(resp)))
                for info in resp.rooms.join.values():
                    for e in info.timeline.events:
                        eid = getattr(e, "event_id", None)
                        if eid:
                            self.seen_event_ids[eid] = self.seen_event_ids.get(eid, 0) + 1
            else:
                self.errors.append(resp)
            await self.queue.put((now, resp))
            if not isinstance(resp, SyncResponse):
                await asyncio.sleep(0.5)  # don't spin on a failing server

    async def wait_parked(self, step):
        """Wait until this client's sync has been held by the server PARKED_S, i.e. it
        sits in its long-poll, so what follows must be pushed to it live."""
        deadline = time.monotonic() + WAIT_S
        while time.monotonic() < deadline:
            started = self.inflight_since
            if started is not None and time.monotonic() - started >= PARKED_S:
                return
            await asyncio.sleep(0.02)
        raise StepFailed(
            f"FAIL: {step}: expected {self.name}'s /sync to be held open in a long-poll "
            f"(timeout={LONGPOLL_MS} ms) for {PARKED_S}s within {WAIT_S}s; it kept returning"
            f"\n  last responses: {self.tokens[-5:]}"
        )

    def drain(self):
        while not self.queue.empty():
            self.queue.get_nowait()

    async def wait_for(self, step, expected, pred, timeout=WAIT_S):
        """Consume this client's sync responses until pred(resp) is truthy; return
        (arrival time, resp, value). Fails after `timeout` seconds, naming what came."""
        deadline = time.monotonic() + timeout
        seen = []
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            try:
                t, resp = await asyncio.wait_for(self.queue.get(), remaining)
            except asyncio.TimeoutError:
                break
            if isinstance(resp, SyncError) or not isinstance(resp, SyncResponse):
                raise StepFailed(
                    f"FAIL: {step}: expected {expected}; {self.name}'s sync failed"
                    f"\n  response: {describe(resp)}"
                )
            value = pred(resp)
            if value:
                return t, resp, value
            seen.append(summarize(resp))
        got = "\n    ".join(seen[-6:]) or "(no sync response at all)"
        raise StepFailed(
            f"FAIL: {step}: expected {expected} in {self.name}'s sync within {timeout}s"
            f"\n  got {len(seen)} response(s) without it:\n    {got}"
        )


def ephemeral_find(resp, room_id, pred):
    info = resp.rooms.join.get(room_id)
    if not info:
        return None
    for e in info.ephemeral:
        if pred(e):
            return e
    return None


async def register(hs, localpart, password, displayname, clients):
    c = new_client(hs, localpart)
    clients.append(c)
    step = f"register {localpart}"
    resp = await c.register(localpart, password, device_name=f"nio sync {localpart}")
    expect_type(step, resp, RegisterResponse)
    check(step, resp.user_id.startswith(f"@{localpart}:") and bool(c.access_token),
          "a user id and access token", describe(resp))
    step = f"set {localpart}'s displayname"
    resp = await c.set_displayname(displayname)
    expect_type(step, resp, ProfileSetDisplayNameResponse)
    ok(step)
    return c


async def run(hs):
    tag = secrets.token_hex(4)
    clients = []
    syncers = []
    step = "start"
    try:
        alice_name = f"Alice {tag}"
        bob_name = f"Bob {tag}"
        alice = await register(hs, f"alice_{tag}", "pw-" + secrets.token_hex(8), alice_name,
                               clients)
        bob = await register(hs, f"bob_{tag}", "pw-" + secrets.token_hex(8), bob_name, clients)
        alice_id, bob_id = alice.user_id, bob.user_id

        # Initial syncs: the first /sync without a since token.
        for c, who in ((alice, "alice"), (bob, "bob")):
            step = f"initial sync ({who})"
            resp = await c.sync(timeout=0, full_state=True)
            expect_type(step, resp, SyncResponse)
            check(step, bool(resp.next_batch) and c.next_batch == resp.next_batch,
                  "a next_batch token", summarize(resp))

        # Both clients now sync continuously, as a chat client does.
        sa, sb = Syncer("alice", alice), Syncer("bob", bob)
        syncers += [sa, sb]
        sa.start()
        sb.start()

        # --- Room, invite, join -------------------------------------------------------
        step = "alice creates a room (private_chat)"
        resp = await alice.room_create(name=f"nio sync {tag}", topic="live sync test",
                                       preset=RoomPreset.private_chat)
        expect_type(step, resp, RoomCreateResponse)
        room_id = resp.room_id
        check(step, room_id.startswith("!"), "a room id", describe(resp))

        step = "alice's sync shows the new room"
        await sa.wait_for(step, f"{room_id} in rooms.join",
                          lambda r: room_id in r.rooms.join)
        ok(step)

        await sb.wait_parked("bob is long-polling before the invite")
        step = "alice invites bob"
        t0 = time.monotonic()
        resp = await alice.room_invite(room_id, bob_id)
        expect_type(step, resp, RoomInviteResponse)
        ok(step)

        step = "bob's sync shows the invite (rooms.invite)"
        t, resp, info = await sb.wait_for(
            step, f"{room_id} in rooms.invite",
            lambda r: r.rooms.invite.get(room_id))
        invite_delay = t - t0
        members = [e for e in info.invite_state
                   if isinstance(e, InviteMemberEvent) and e.state_key == bob_id]
        check(step, members and members[0].membership == "invite"
              and members[0].sender == alice_id,
              f"invite_state with bob's m.room.member invite sent by {alice_id}",
              [getattr(e, "source", e) for e in info.invite_state])
        iroom = bob.invited_rooms.get(room_id)
        check("invited room's name shown to bob",
              iroom is not None and iroom.name == f"nio sync {tag}",
              f"bob.invited_rooms[{room_id}].name == 'nio sync {tag}'",
              iroom and vars(iroom).get("name"))
        print(f"   invite delivered to bob in {invite_delay * 1000:.0f} ms", flush=True)

        step = "bob joins (nio's join: POST /join/{roomIdOrAlias}, empty body)"
        resp = await bob.join(room_id)
        if isinstance(resp, JoinResponse):
            ok(step)
        else:
            soft_fail(f"FAIL: {step}: expected JoinResponse, got {type(resp).__name__}"
                      f"\n  response: {resp.status_code} {resp.message!r}"
                      f" (http {getattr(resp.transport_response, 'status', '?')})")
            # Go on with the same request carrying `{}`, to test the rest.
            step = "bob joins (same request with body {} as a workaround)"
            method, path = Api.join(bob.access_token, room_id)
            resp = await bob._send(JoinResponse, method, path, "{}")
            expect_type(step, resp, JoinResponse)
            ok(step)

        step = "bob's sync moves the room to rooms.join"
        await sb.wait_for(step, f"{room_id} in rooms.join with bob's join",
                          lambda r: timeline_find(
                              r, room_id, lambda e: isinstance(e, RoomMemberEvent)
                              and e.state_key == bob_id and e.membership == "join"))
        check(step, room_id in bob.rooms and room_id not in bob.invited_rooms,
              "room in bob.rooms, gone from bob.invited_rooms",
              f"rooms={list(bob.rooms)} invited={list(bob.invited_rooms)}")

        step = "alice's sync shows bob joining"
        await sa.wait_for(step, "bob's m.room.member join in the timeline",
                          lambda r: timeline_find(
                              r, room_id, lambda e: isinstance(e, RoomMemberEvent)
                              and e.state_key == bob_id and e.membership == "join"))
        ok(step)

        # --- Members and display names --------------------------------------------------
        ar, br = alice.rooms[room_id], bob.rooms[room_id]
        check("alice's member list: alice and bob",
              set(ar.users) == {alice_id, bob_id}, f"{{{alice_id}, {bob_id}}}", set(ar.users))
        check("bob's member list: alice and bob",
              set(br.users) == {alice_id, bob_id}, f"{{{alice_id}, {bob_id}}}", set(br.users))
        got = {u: m.display_name for u, m in ar.users.items()}
        check("alice sees bob's display name",
              got.get(bob_id) == bob_name and ar.user_name(bob_id) == bob_name,
              f"{bob_id} -> {bob_name!r}", got)
        got = {u: m.display_name for u, m in br.users.items()}
        check("bob sees alice's display name",
              got.get(alice_id) == alice_name and br.user_name(alice_id) == alice_name,
              f"{alice_id} -> {alice_name!r}", got)
        check("joined member count is 2 on both sides",
              ar.joined_count == 2 and br.joined_count == 2,
              "joined_count 2 / 2", f"alice {ar.joined_count}, bob {br.joined_count}")
        check("room name known to both",
              ar.name == f"nio sync {tag}" and br.name == f"nio sync {tag}",
              f"'nio sync {tag}'", f"alice {ar.name!r}, bob {br.name!r}")

        step = "joined_members API"
        resp = await alice.joined_members(room_id)
        expect_type(step, resp, JoinedMembersResponse)
        got = {m.user_id: m.display_name for m in resp.members}
        check(step, got == {alice_id: alice_name, bob_id: bob_name},
              f"{{{alice_id}: {alice_name!r}, {bob_id}: {bob_name!r}}}", got)

        # --- 1. Messages, live ------------------------------------------------------------
        await sb.wait_parked("bob is long-polling before alice's message")
        bob_token_before_msg = bob.next_batch
        sa.drain()
        body = f"hello bob {secrets.token_hex(3)}"
        txn = "txn-" + secrets.token_hex(6)
        step = "alice sends a message"
        t0 = time.monotonic()
        resp = await alice.room_send(room_id, "m.room.message",
                                     {"msgtype": "m.text", "body": body}, tx_id=txn)
        t_sent = time.monotonic()
        expect_type(step, resp, RoomSendResponse)
        alice_msg = resp.event_id
        check(step, alice_msg.startswith("$"), "an event id", describe(resp))

        step = "bob receives alice's message live"
        t, resp, ev = await sb.wait_for(
            step, f"RoomMessageText {body!r} from alice",
            lambda r: timeline_find(r, room_id, lambda e: isinstance(e, RoomMessageText)
                                    and e.body == body))
        msg_delay = t - t0
        check(step, ev.sender == alice_id and ev.event_id == alice_msg,
              f"sender {alice_id}, event_id {alice_msg}", f"{ev.sender}, {ev.event_id}")
        check("message delivery is live (long-poll woken)", msg_delay < LIVE_MAX_S,
              f"under {LIVE_MAX_S}s with a {LONGPOLL_MS} ms long-poll", f"{msg_delay:.3f}s")
        after = t - t_sent
        print(f"   alice->bob message: {msg_delay * 1000:.0f} ms after the send started ("
              + (f"{after * 1000:.0f} ms after it returned)" if after >= 0 else
                 f"bob had it {-after * 1000:.0f} ms before alice's send returned)"),
              flush=True)

        step = "alice's own sync echoes her message with its transaction_id"
        _, _, ev = await sa.wait_for(
            step, f"her message {alice_msg}",
            lambda r: timeline_find(r, room_id, lambda e: getattr(e, "event_id", None)
                                    == alice_msg))
        got_txn = ev.source.get("unsigned", {}).get("transaction_id")
        check(step, got_txn == txn, f"unsigned.transaction_id == {txn!r}",
              ev.source.get("unsigned"))

        await sa.wait_parked("alice is long-polling before bob's reply")
        reply = f"hi alice {secrets.token_hex(3)}"
        step = "bob replies"
        t0 = time.monotonic()
        resp = await bob.room_send(room_id, "m.room.message",
                                   {"msgtype": "m.text", "body": reply})
        expect_type(step, resp, RoomSendResponse)
        bob_msg = resp.event_id
        ok(step)

        step = "alice receives bob's reply live"
        t, resp, ev = await sa.wait_for(
            step, f"RoomMessageText {reply!r} from bob",
            lambda r: timeline_find(r, room_id, lambda e: isinstance(e, RoomMessageText)
                                    and e.body == reply))
        reply_delay = t - t0
        check(step, ev.sender == bob_id and ev.event_id == bob_msg
              and reply_delay < LIVE_MAX_S,
              f"sender {bob_id}, event_id {bob_msg}, within {LIVE_MAX_S}s",
              f"{ev.sender}, {ev.event_id}, {reply_delay:.3f}s")
        print(f"   bob->alice reply: {reply_delay * 1000:.0f} ms", flush=True)

        # --- 2. Typing --------------------------------------------------------------------
        await sb.wait_parked("bob is long-polling before alice types")
        step = "alice starts typing"
        t0 = time.monotonic()
        resp = await alice.room_typing(room_id, True, timeout=30_000)
        expect_type(step, resp, RoomTypingResponse)
        ok(step)

        step = "bob sees alice typing"
        t, resp, ev = await sb.wait_for(
            step, f"TypingNoticeEvent with users [{alice_id}]",
            lambda r: ephemeral_find(r, room_id, lambda e: isinstance(e, TypingNoticeEvent)
                                     and alice_id in e.users))
        typing_delay = t - t0
        check(step, ev.users == [alice_id] and bob.rooms[room_id].typing_users == [alice_id]
              and typing_delay < LIVE_MAX_S,
              f"users == [{alice_id}] (also in rooms[].typing_users), within {LIVE_MAX_S}s",
              f"event {ev.users}, room {bob.rooms[room_id].typing_users}, "
              f"{typing_delay:.3f}s")
        print(f"   typing start: {typing_delay * 1000:.0f} ms", flush=True)

        await sb.wait_parked("bob is long-polling before alice stops typing")
        step = "alice stops typing"
        t0 = time.monotonic()
        resp = await alice.room_typing(room_id, False)
        expect_type(step, resp, RoomTypingResponse)
        ok(step)

        step = "bob sees alice's typing cleared"
        t, _, _ = await sb.wait_for(
            step, "TypingNoticeEvent with users []",
            lambda r: ephemeral_find(r, room_id, lambda e: isinstance(e, TypingNoticeEvent)
                                     and e.users == []))
        untyping_delay = t - t0
        check(step, bob.rooms[room_id].typing_users == [] and untyping_delay < LIVE_MAX_S,
              f"rooms[].typing_users == [] within {LIVE_MAX_S}s",
              f"{bob.rooms[room_id].typing_users}, {untyping_delay:.3f}s")
        print(f"   typing stop: {untyping_delay * 1000:.0f} ms", flush=True)

        step = "typing expires by itself after its timeout"
        resp = await alice.room_typing(room_id, True, timeout=1_000)
        expect_type(step, resp, RoomTypingResponse)
        t0 = time.monotonic()
        await sb.wait_for(step, f"TypingNoticeEvent with users [{alice_id}]",
                          lambda r: ephemeral_find(r, room_id, lambda e: isinstance(
                              e, TypingNoticeEvent) and alice_id in e.users))
        t, _, _ = await sb.wait_for(
            step, "TypingNoticeEvent with users [] after the 1 s timeout",
            lambda r: ephemeral_find(r, room_id, lambda e: isinstance(e, TypingNoticeEvent)
                                     and e.users == []))
        expiry = t - t0
        check(step, 0.5 <= expiry < 1.0 + LIVE_MAX_S,
              f"cleared about 1 s after typing started (0.5 .. {1.0 + LIVE_MAX_S} s)",
              f"{expiry:.3f}s")
        print(f"   typing with timeout=1000 ms cleared after {expiry * 1000:.0f} ms", flush=True)

        # --- 3. Receipts and read markers -------------------------------------------------
        await sa.wait_parked("alice is long-polling before bob's receipt")
        step = "bob sets read markers (m.fully_read + m.read) on alice's message"
        t0 = time.monotonic()
        resp = await bob.room_read_markers(room_id, fully_read_event=alice_msg,
                                           read_event=alice_msg)
        expect_type(step, resp, RoomReadMarkersResponse)
        ok(step)

        def bob_receipt(r):
            return ephemeral_find(r, room_id, lambda e: isinstance(e, ReceiptEvent) and any(
                x.user_id == bob_id and x.event_id == alice_msg and x.receipt_type == "m.read"
                for x in e.receipts))

        step = "alice sees bob's read receipt live"
        t, _, ev = await sa.wait_for(step, f"m.receipt: {bob_id} read {alice_msg}",
                                     bob_receipt)
        receipt_delay = t - t0
        rr = alice.rooms[room_id].read_receipts.get(bob_id)
        check(step, rr is not None and rr.event_id == alice_msg and rr.timestamp > 0
              and receipt_delay < LIVE_MAX_S,
              f"rooms[].read_receipts[{bob_id}].event_id == {alice_msg} with a ts, "
              f"within {LIVE_MAX_S}s",
              f"{rr}, {receipt_delay:.3f}s; event {ev!r}")
        print(f"   bob's receipt to alice: {receipt_delay * 1000:.0f} ms", flush=True)

        step = "bob's sync shows his m.fully_read marker (room account data)"
        await sb.wait_for(
            step, f"FullyReadEvent for {alice_msg}",
            lambda r: r.rooms.join.get(room_id) and any(
                isinstance(e, FullyReadEvent) and e.event_id == alice_msg
                for e in r.rooms.join[room_id].account_data))
        ok(step)

        await sb.wait_parked("bob is long-polling before alice's receipt")
        step = "alice sends a receipt for bob's reply (update_receipt_marker)"
        t0 = time.monotonic()
        resp = await alice.update_receipt_marker(room_id, bob_msg)
        expect_type(step, resp, UpdateReceiptMarkerResponse)
        ok(step)

        step = "bob sees alice's read receipt live"
        t, _, _ = await sb.wait_for(
            step, f"m.receipt: {alice_id} read {bob_msg}",
            lambda r: ephemeral_find(r, room_id, lambda e: isinstance(e, ReceiptEvent) and any(
                x.user_id == alice_id and x.event_id == bob_msg for x in e.receipts)))
        # nio's update_receipt_marker sends {"thread_id": "main"}: a threaded receipt for
        # the main timeline, which nio files under threaded_read_receipts[user]["main"].
        rr = bob.rooms[room_id].threaded_read_receipts.get(alice_id, {}).get("main")
        delay = t - t0
        check(step, rr is not None and rr.event_id == bob_msg and rr.thread_id == "main"
              and delay < LIVE_MAX_S,
              f"rooms[].threaded_read_receipts[{alice_id}]['main'].event_id == {bob_msg}"
              f" within {LIVE_MAX_S}s",
              f"{rr}, {delay:.3f}s; read_receipts={bob.rooms[room_id].read_receipts}")
        print(f"   alice's receipt to bob: {delay * 1000:.0f} ms", flush=True)

        # --- Profile change while in the room -----------------------------------------
        await sa.wait_parked("alice is long-polling before bob renames himself")
        new_name = f"Robert {tag}"
        step = "bob changes his displayname while in the room"
        t0 = time.monotonic()
        resp = await bob.set_displayname(new_name)
        expect_type(step, resp, ProfileSetDisplayNameResponse)
        ok(step)
        step = "alice sees bob's new display name live"
        t, _, ev = await sa.wait_for(
            step, f"bob's m.room.member join with displayname {new_name!r}",
            lambda r: timeline_find(r, room_id, lambda e: isinstance(e, RoomMemberEvent)
                                    and e.state_key == bob_id
                                    and e.content.get("displayname") == new_name))
        delay = t - t0
        check(step, ev.membership == "join"
              and alice.rooms[room_id].user_name(bob_id) == new_name and delay < LIVE_MAX_S,
              f"membership join, rooms[].user_name == {new_name!r}, within {LIVE_MAX_S}s",
              f"{ev.membership}, {alice.rooms[room_id].user_name(bob_id)!r}, {delay:.3f}s")
        # Clients tell "changed their display name" from "joined" by unsigned.prev_content
        # (spec: optional, but servers send it and nio reads prev_membership from it).
        step = "the rename's member event carries unsigned.prev_content (old name)"
        prev = ev.source.get("unsigned", {}).get("prev_content")
        if prev and prev.get("membership") == "join" and prev.get("displayname") == bob_name:
            ok(step)
        else:
            soft_fail(f"FAIL: {step}: expected unsigned.prev_content == {{'membership': 'join', "
                      f"'displayname': {bob_name!r}, ...}}\n  got event: {ev.source}")
        print(f"   bob's rename to alice: {delay * 1000:.0f} ms", flush=True)

        # --- 4. Tokens --------------------------------------------------------------------
        await sa.stop()
        await sb.stop()
        for s in (sa, sb):
            check(f"{s.name}'s sync loop had no errors", not s.errors,
                  "no SyncError", [describe(e) for e in s.errors])
            stuck = [(a, b) for a, b, content in s.tokens if content and a == b]
            check(f"{s.name}'s next_batch advanced on every response with news",
                  not stuck and all(b for _, b, _ in s.tokens),
                  "each non-empty response's next_batch differs from the since it answered",
                  f"{len(stuck)} of {len(s.tokens)} responses repeated the token: {stuck[:3]}")
            chain = all(s.tokens[i][0] == s.tokens[i - 1][1] for i in range(1, len(s.tokens)))
            check(f"{s.name}'s tokens chain (each since is the previous next_batch)",
                  chain, "a chain", s.tokens)
            tokens = [b for _, b, content in s.tokens if content]
            check(f"{s.name}'s next_batch tokens are all distinct",
                  len(set(tokens)) == len(tokens), "no token repeated", tokens)
            dups = {e: n for e, n in s.seen_event_ids.items() if n > 1}
            check(f"{s.name} got no timeline event twice", not dups, "no duplicates", dups)
        print(f"   sync responses: alice {len(sa.tokens)}, bob {len(sb.tokens)} "
              f"(empty: {sum(not c for *_, c in sa.tokens)}, "
              f"{sum(not c for *_, c in sb.tokens)})", flush=True)

        # A second client on bob's session resumes from an older token: it gets what
        # happened since then, and nothing is lost or repeated.
        bob2 = new_client(hs, bob_id)
        clients.append(bob2)
        bob2.restore_login(bob_id, bob.device_id, bob.access_token)
        step = "resuming from the token before alice's message replays it"
        resp = await bob2.sync(timeout=0, since=bob_token_before_msg)
        expect_type(step, resp, SyncResponse)
        ids = [getattr(e, "event_id", None)
               for e in resp.rooms.join.get(room_id).timeline.events] \
            if room_id in resp.rooms.join else []
        check(step, alice_msg in ids and bob_msg in ids
              and ids.index(alice_msg) < ids.index(bob_msg),
              f"timeline containing {alice_msg} then {bob_msg}", summarize(resp))
        step = "syncing from the latest token returns no old events"
        resp = await bob2.sync(timeout=0, since=bob.next_batch)
        expect_type(step, resp, SyncResponse)
        info = resp.rooms.join.get(room_id)
        old = [e.event_id for e in info.timeline.events] if info else []
        check(step, not old, "an empty timeline", summarize(resp))
        if SOFT_FAILURES:
            print(f"{len(SOFT_FAILURES)} check(s) failed (see FAIL lines above)", flush=True)
            return 1
        return 0
    except StepFailed as e:
        print(str(e), flush=True)
        return 1
    except Exception as e:  # a crash in nio or a connection error: name the step
        print(f"FAIL: {step}: {type(e).__name__}: {e}", flush=True)
        return 1
    finally:
        for s in syncers:
            await s.stop()
        for c in clients:
            await c.close()


def main():
    hs = loopback_homeserver("nio_sync.py")
    if hs is None:
        return 2
    warnings = NioWarnings().install()
    try:
        status = asyncio.run(asyncio.wait_for(run(hs), OVERALL_TIMEOUT_S))
    except asyncio.TimeoutError:
        print(f"FAIL: timed out after {OVERALL_TIMEOUT_S}s", flush=True)
        status = 1
    except Exception as e:
        print(f"FAIL: unexpected {type(e).__name__}: {e}", flush=True)
        status = 1
    warnings.report()
    return status

if __name__ == "__main__":
    sys.exit(main())
