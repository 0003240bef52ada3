#!/usr/bin/env python3
"""Acceptance test of Hearth federating with Synapse, through matrix-nio clients on both.

Usage: nio_federation.py [IGNORED_HOMESERVER_URL]
Environment: HEARTH_BIN (the hearth binary), HEARTH_SYNAPSE_VENV (Synapse 1.163.2; default
~/.cache/hearth-bench/synapse-venv). Without Synapse the script says `skipped:` and exits 0,
unless HEARTH_TEST_REQUIRE_SYNAPSE=1 (tests/run.sh sets it), which makes that a failure.

Starts its own pair (tests/clients/fed_pair.py): a Hearth and a Synapse on 127.0.0.131, each
named IP:PORT with a TLS federation listener whose certificate a throwaway CA issued. Then, as
users do, in an unencrypted room:

Room created on Hearth: alice (Hearth) creates a public room with an alias and says a few
things; bob (Synapse) joins it by its alias `#alias:hearth`; each sees the other's messages in
/sync; bob edits one message and redacts another, and alice's client sees the edit and the
redaction (Hearth serves the original with the edit bundled, and the other redacted); carol (Synapse) joins late and
pages back (`room_messages`) to alice's messages from before any Synapse user was in the room
(Synapse backfills them from Hearth); bob leaves and alice sees it.
Room created on Synapse: bob creates a public room, says a few things and invites alice; alice
sees the invite in /sync, joins by room ID, pages back to bob's messages from before her join
(Hearth backfills them from Synapse); they chat both ways; alice leaves and bob sees it.

Each check prints `ok: <check>`; the first failing one prints `FAIL: ...` with what came back
and the script exits 1 (with both servers' log tails).
"""

import asyncio
import os
import secrets
import sys
import tempfile
import time

import fed_pair
from nio_common import SOFT_FAILURES, NioWarnings, StepFailed, check, describe, expect_type, ok
from nio import (
    AsyncClient,
    AsyncClientConfig,
    JoinedMembersResponse,
    JoinResponse,
    MessageDirection,
    RedactedEvent,
    RedactionEvent,
    RegisterResponse,
    RoomCreateResponse,
    RoomGetEventResponse,
    RoomInviteResponse,
    RoomLeaveResponse,
    RoomMemberEvent,
    RoomMessagesResponse,
    RoomMessageText,
    RoomPreset,
    RoomRedactResponse,
    RoomSendResponse,
    RoomVisibility,
    SyncResponse,
)

OVERALL_TIMEOUT_S = 150  # run.sh bounds this script at FED_SCRIPT_TIMEOUT_S (180)
WAIT_S = 30              # bound on one thing crossing federation and showing up in a sync
IP = "127.0.0.131"


def new_client(hs):
    config = AsyncClientConfig(request_timeout=30, max_timeouts=2, store_sync_tokens=False)
    return AsyncClient(hs, "", config=config)


async def register(hs, name):
    client = new_client(hs)
    resp = await client.register(f"{name}-{secrets.token_hex(3)}", "fed-test-password", "nio-fed")
    expect_type(f"register {name} on {hs}", resp, RegisterResponse)
    first = await client.sync(timeout=0)
    expect_type(f"{name}'s first sync", first, SyncResponse)
    return client


def send_text(client, room_id, body):
    return client.room_send(room_id, "m.room.message", {"msgtype": "m.text", "body": body})


async def sent(step, awaitable):
    resp = await awaitable
    expect_type(step, resp, RoomSendResponse)
    ok(step)
    return resp.event_id


async def wait_sync(step, client, pred, section="join"):
    """Syncs `client` (long-polls of 2 s) until `pred(room_id, event)` holds for an event of its
    `section` ("join": timelines, "invite": invite states); at most WAIT_S. Returns the event."""
    deadline = time.monotonic() + WAIT_S
    seen = []
    while time.monotonic() < deadline:
        resp = await client.sync(timeout=2000)
        if not isinstance(resp, SyncResponse):
            seen.append(repr(resp)[:200])
            await asyncio.sleep(0.5)
            continue
        rooms = resp.rooms.join if section == "join" else resp.rooms.invite
        for room_id, info in rooms.items():
            events = info.timeline.events if section == "join" else info.invite_state
            for e in events:
                seen.append(f"{room_id} {type(e).__name__} {getattr(e, 'sender', '')} "
                            f"{getattr(e, 'body', getattr(e, 'membership', ''))}")
                if pred(room_id, e):
                    ok(step)
                    return e
    raise StepFailed(f"FAIL: {step}: not seen in {WAIT_S} s of /sync\n  seen: {seen[-15:]}")


async def page_back_to(step, client, room_id, start, bodies):
    """Pages `room_id` back from `start` (10 events a page, at most 30 pages) until every text of
    `bodies` was seen; returns the events seen."""
    missing, chunk, token = set(bodies), [], start
    for _ in range(30):
        resp = await client.room_messages(room_id, start=token, direction=MessageDirection.back, limit=10)
        expect_type(step, resp, RoomMessagesResponse)
        chunk.extend(resp.chunk)
        missing -= {e.body for e in resp.chunk if isinstance(e, RoomMessageText)}
        if not missing or not resp.chunk or not resp.end or resp.end == token:
            break
        token = resp.end
    check(step, not missing, f"the messages {sorted(bodies)} in the history",
          got=f"missing {sorted(missing)}; seen {[type(e).__name__ + ':' + str(getattr(e, 'body', '')) for e in chunk]}")
    return chunk


def text_from(sender, body):
    return lambda _room, e: isinstance(e, RoomMessageText) and e.sender == sender and e.body == body


def member(room_id, user_id, membership):
    return lambda room, e: (room == room_id and isinstance(e, RoomMemberEvent)
                            and e.state_key == user_id and e.membership == membership)


async def hearth_room(hearth, synapse, alice, bob, carol):
    alias_local = f"fedroom-{secrets.token_hex(3)}"
    resp = await alice.room_create(visibility=RoomVisibility.public, alias=alias_local, name="Federated",
                                   preset=RoomPreset.public_chat)
    expect_type("alice creates a public room with an alias on Hearth", resp, RoomCreateResponse)
    room_id, alias = resp.room_id, f"#{alias_local}:{hearth.name}"
    ok(f"alice created {room_id} ({alias})")
    early = [f"early from hearth {n}" for n in range(3)]
    for body in early:
        await sent(f"alice says {body!r} before anyone from Synapse is in", send_text(alice, room_id, body))

    resp = await bob.join(alias)
    expect_type(f"bob (Synapse) joins by alias {alias}", resp, JoinResponse)
    check("bob's join by alias lands in alice's room", resp.room_id == room_id, room_id, resp.room_id)
    await wait_sync("alice sees bob's join over federation", alice, member(room_id, bob.user_id, "join"))

    await sent("bob says hello", send_text(bob, room_id, "hello from synapse"))
    await wait_sync("alice sees bob's message in /sync", alice, text_from(bob.user_id, "hello from synapse"))
    await sent("alice answers", send_text(alice, room_id, "hello from hearth"))
    await wait_sync("bob sees alice's message in /sync", bob, text_from(alice.user_id, "hello from hearth"))

    typo = await sent("bob sends a message with a typo", send_text(bob, room_id, "teh typo"))
    oops = await sent("bob sends a message he will take back", send_text(bob, room_id, "oops, wrong room"))
    edit = await sent("bob edits his typo", bob.room_send(room_id, "m.room.message", {
        "msgtype": "m.text", "body": "* the typo",
        "m.new_content": {"msgtype": "m.text", "body": "the typo"},
        "m.relates_to": {"rel_type": "m.replace", "event_id": typo}}))
    resp = await bob.room_redact(room_id, oops, reason="wrong room")
    expect_type("bob redacts his other message", resp, RoomRedactResponse)

    def is_edit(_room, e):
        content = e.source.get("content", {})
        return (e.event_id == edit and e.sender == bob.user_id
                and content.get("m.relates_to", {}).get("rel_type") == "m.replace"
                and content.get("m.relates_to", {}).get("event_id") == typo
                and content.get("m.new_content", {}).get("body") == "the typo")

    await wait_sync("alice's client sees bob's edit (m.replace of the typo)", alice, is_edit)
    await wait_sync("alice's client sees bob's redaction", alice,
                    lambda room, e: isinstance(e, RedactionEvent) and e.redacts == oops and e.sender == bob.user_id)
    resp = await alice.room_get_event(room_id, typo)
    expect_type("alice fetches bob's edited message from Hearth", resp, RoomGetEventResponse)
    replace = resp.event.source.get("unsigned", {}).get("m.relations", {}).get("m.replace", {})
    check("Hearth bundles bob's edit with the original (unsigned.m.relations.m.replace)",
          replace.get("event_id") == edit, f"the edit {edit}", resp.event.source.get("unsigned"), soft=True)
    resp = await alice.room_get_event(room_id, oops)
    expect_type("alice fetches the redacted message from Hearth", resp, RoomGetEventResponse)
    check("Hearth serves the redacted message without its content", isinstance(resp.event, RedactedEvent)
          and "body" not in resp.event.source.get("content", {}), "a RedactedEvent", resp.event.source)

    resp = await carol.join(alias)
    expect_type("carol (Synapse) joins late by alias", resp, JoinResponse)
    first = await carol.sync(timeout=0)
    expect_type("carol's sync after joining", first, SyncResponse)
    info = first.rooms.join.get(room_id)
    check("carol's sync has the room", info is not None, room_id, list(first.rooms.join))
    history = await page_back_to("carol pages back (room_messages) to alice's messages from before Synapse joined",
                                 carol, room_id, info.timeline.prev_batch, early + ["hello from hearth"])
    redacted = [e for e in history if getattr(e, "event_id", None) == oops]
    check("carol's history shows bob's taken-back message redacted",
          len(redacted) == 1 and isinstance(redacted[0], RedactedEvent), "one RedactedEvent",
          [describe(e) for e in redacted], soft=True)
    await wait_sync("alice sees carol's late join", alice, member(room_id, carol.user_id, "join"))

    resp = await bob.room_leave(room_id)
    expect_type("bob leaves the room", resp, RoomLeaveResponse)
    await wait_sync("alice sees bob leave", alice, member(room_id, bob.user_id, "leave"))
    resp = await alice.joined_members(room_id)
    expect_type("alice asks Hearth for the joined members", resp, JoinedMembersResponse)
    ids = {m.user_id for m in resp.members}
    check("Hearth's member list has alice and carol, not bob",
          ids == {alice.user_id, carol.user_id}, f"{{alice, carol}}", sorted(ids))


async def synapse_room(hearth, synapse, alice, bob):
    resp = await bob.room_create(visibility=RoomVisibility.public, name="Synapse's room",
                                 preset=RoomPreset.public_chat)
    expect_type("bob creates a public room on Synapse", resp, RoomCreateResponse)
    room_id = resp.room_id
    early = [f"early from synapse {n}" for n in range(3)]
    for body in early:
        await sent(f"bob says {body!r} before alice is in", send_text(bob, room_id, body))
    resp = await bob.room_invite(room_id, alice.user_id)
    expect_type("bob invites alice (Hearth)", resp, RoomInviteResponse)
    await wait_sync("alice sees the invite in /sync", alice,
                    lambda room, e: room == room_id and getattr(e, "state_key", None) == alice.user_id
                    and getattr(e, "membership", None) == "invite", section="invite")

    resp = await alice.join(room_id)
    expect_type("alice joins Synapse's room by ID", resp, JoinResponse)
    first = await alice.sync(timeout=0)
    expect_type("alice's sync after joining", first, SyncResponse)
    info = first.rooms.join.get(room_id)
    if info is None:  # the join may have come in the sync before: ask again from scratch
        alice.next_batch = None
        first = await alice.sync(timeout=0, full_state=True)
        info = first.rooms.join.get(room_id) if isinstance(first, SyncResponse) else None
    check("alice's sync has Synapse's room", info is not None, room_id, describe(first))
    await page_back_to("alice pages back (room_messages) to bob's messages from before her join",
                       alice, room_id, info.timeline.prev_batch, early)
    await wait_sync("bob sees alice join", bob, member(room_id, alice.user_id, "join"))

    await sent("alice says hi in Synapse's room", send_text(alice, room_id, "hi from hearth"))
    await wait_sync("bob sees alice's message", bob, text_from(alice.user_id, "hi from hearth"))
    await sent("bob answers", send_text(bob, room_id, "hi from synapse"))
    await wait_sync("alice sees bob's answer", alice, text_from(bob.user_id, "hi from synapse"))

    resp = await alice.room_leave(room_id)
    expect_type("alice leaves Synapse's room", resp, RoomLeaveResponse)
    await wait_sync("bob sees alice leave", bob, member(room_id, alice.user_id, "leave"))


async def run(hearth, synapse):
    warnings = NioWarnings().install()
    clients = []
    try:
        alice = await register(hearth.base, "alice")
        clients.append(alice)
        bob = await register(synapse.base, "bob")
        clients.append(bob)
        carol = await register(synapse.base, "carol")
        clients.append(carol)
        ok(f"alice is {alice.user_id}, bob {bob.user_id}, carol {carol.user_id}")
        await hearth_room(hearth, synapse, alice, bob, carol)
        await synapse_room(hearth, synapse, alice, bob)
    finally:
        for c in clients:
            await c.close()
        warnings.report()


def main():
    binary = os.environ.get("HEARTH_BIN") or os.path.expanduser("~/.cache/hearth-target/debug/hearth")
    python = fed_pair.synapse_python()
    if python is None:
        why = f"no Synapse venv at {fed_pair.synapse_venv()} (set HEARTH_SYNAPSE_VENV, or run tests/run.sh)"
        if os.environ.get("HEARTH_TEST_REQUIRE_SYNAPSE") == "1":
            print(f"FAIL: HEARTH_TEST_REQUIRE_SYNAPSE=1 but {why}", flush=True)
            return 1
        print(f"skipped: {why}", flush=True)
        return 0
    work = tempfile.mkdtemp(prefix="hearth-niofed-")
    servers = []
    try:
        fed_pair.make_ca(work)
        hearth = fed_pair.Hearth(binary, work, IP, log_level="info")
        servers.append(hearth)
        synapse = fed_pair.Synapse(python, work, IP)
        servers.append(synapse)
        ok(f"hearth {hearth.name} (client API {hearth.base}), synapse {synapse.name} (client API {synapse.base})")
        asyncio.run(asyncio.wait_for(run(hearth, synapse), OVERALL_TIMEOUT_S))
    except StepFailed as e:
        print(e, flush=True)
        for s in servers:
            print(f"--- {type(s).__name__} {s.name}: warnings and errors of its log ---\n{s.log_problems()}"
                  f"--- its last lines ---\n{s.log_tail(10)}", flush=True)
        return 1
    except (asyncio.TimeoutError, TimeoutError):
        print(f"FAIL: the run took more than {OVERALL_TIMEOUT_S} s", flush=True)
        return 1
    finally:
        for s in servers:
            s.stop()
        fed_pair.remove(work)
    if SOFT_FAILURES:
        print(f"{len(SOFT_FAILURES)} soft failure(s)", flush=True)
        return 1
    print("all federation checks passed", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
