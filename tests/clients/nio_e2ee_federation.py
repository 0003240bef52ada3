#!/usr/bin/env python3
"""Acceptance test: a real encrypted conversation across servers, matrix-nio[e2e] on a Hearth
and on a Synapse that federate.

Usage: nio_e2ee_federation.py [IGNORED_HOMESERVER_URL]
Environment: HEARTH_BIN (the hearth binary), HEARTH_SYNAPSE_VENV (Synapse 1.163.2; default
~/.cache/hearth-bench/synapse-venv). Without Synapse the script says `skipped:` and exits 0,
unless HEARTH_TEST_REQUIRE_SYNAPSE=1 (tests/run.sh sets it), which makes that a failure.

Starts its own pair (tests/clients/fed_pair.py) on 127.0.0.132. alice (Hearth) and bob
(Synapse) are encrypting nio clients (nio_e2ee.py's RecordingClient, on-disk stores); each
uploads device and one-time keys. Twice, once with the room on each server:
the owner creates an encrypted public room with an alias (m.room.encryption in
initial_state) and the guest joins it by the alias over federation. Each client sees the other
join, queries the other's device keys (keys/query, which crosses federation), and trusts the
device. The owner sends an encrypted message: nio claims one of the guest's one-time keys
across servers (keys/claim), sends the megolm room key olm-encrypted to the guest's device
(sendToDevice to a user of the other server: an m.direct_to_device EDU), then the megolm
event. The guest's /sync brings the room key (to-device, decrypted by nio) and the message,
which nio decrypts. The guest replies encrypted the same way the other way round and the owner
decrypts it.

Each check prints `ok: <check>`; the first failing one prints `FAIL: ...` with what came back
and the script exits 1 (with both servers' log tails).
"""

import asyncio
import os
import secrets
import sys
import tempfile

import fed_pair
from nio_common import SOFT_FAILURES, NioWarnings, StepFailed, check, expect_type, ok, timeline_find
from nio_e2ee import register, sync_until
from nio import (
    JoinResponse,
    KeysQueryResponse,
    MegolmEvent,
    RoomCreateResponse,
    RoomKeyEvent,
    RoomMessageText,
    RoomPreset,
    RoomSendResponse,
    RoomVisibility,
)
from nio.event_builders import EnableEncryptionBuilder

OVERALL_TIMEOUT_S = 150  # run.sh bounds this script at FED_SCRIPT_TIMEOUT_S (180)
WAIT_S = 30              # bound on one thing crossing federation and showing up in a sync
IP = "127.0.0.132"


async def knows_device(step, client, other):
    """`client` fetches `other`'s device keys (keys/query across servers) and trusts them."""
    for _ in range(10):
        if client.should_query_keys:
            resp = await client.keys_query()
            expect_type(step, resp, KeysQueryResponse)
        devices = {d.device_id: d for d in client.device_store.active_user_devices(other.user_id)}
        device = devices.get(other.device_id)
        if device is not None:
            break
        # Not asked yet (nio asks for the members it saw join): one more sync.
        print(f"   note: {client.user_id} had not queried {other.user_id}'s keys yet; asking", flush=True)
        client.users_for_key_query.add(other.user_id)
        await client.sync(timeout=500)
    identity = other.olm.account.identity_keys
    check(step, device is not None and device.ed25519 == identity["ed25519"]
          and device.curve25519 == identity["curve25519"],
          f"{other.user_id}'s device {other.device_id} with its real ed25519/curve25519 keys",
          {k: (v.ed25519, v.curve25519) for k, v in devices.items()})
    client.verify_device(device)
    ok(f"{client.user_id} trusts {other.user_id}'s device")


async def says(step, sender, receiver, room_id, body):
    """`sender` sends `body` encrypted; `receiver` gets the room key over to-device and
    decrypts the message."""
    resp = await sender.room_send(room_id, "m.room.message", {"msgtype": "m.text", "body": body},
                                  ignore_unverified_devices=True)
    expect_type(step, resp, RoomSendResponse)
    event_id = resp.event_id
    got = {}

    def gets(r):
        for e in r.to_device_events:
            if isinstance(e, RoomKeyEvent) and e.room_id == room_id and e.sender == sender.user_id:
                got["key"] = e
        ev = timeline_find(r, room_id, lambda e: getattr(e, "event_id", None) == event_id)
        if ev is not None:
            got["msg"] = ev
        return "msg" in got and ("key" in got or not isinstance(got["msg"], MegolmEvent))
    await sync_until(receiver, receiver.user_id, step,
                     "the room key (to-device across servers) and the message", gets, timeout=WAIT_S)
    ev = got["msg"]
    raw = [t for t, src in receiver.raw_to_device
           if src.get("type") == "m.room.encrypted" and src.get("sender") == sender.user_id]
    check(f"{step}: the room key came as an olm m.room.encrypted to-device message",
          "OlmEvent" in raw, "an OlmEvent from the sender",
          [(t, s.get("type"), s.get("sender")) for t, s in receiver.raw_to_device])
    check(step, isinstance(ev, RoomMessageText) and ev.body == body and ev.sender == sender.user_id
          and ev.decrypted,
          f"a decrypted RoomMessageText {body!r} from {sender.user_id}",
          getattr(ev, "source", ev))


async def conversation(owner, owner_server, guest, tag):
    alias_local = f"secret-{tag}-{secrets.token_hex(3)}"
    step = f"{owner.user_id} creates an encrypted public room with an alias"
    resp = await owner.room_create(visibility=RoomVisibility.public, alias=alias_local,
                                   preset=RoomPreset.public_chat, name=f"encrypted {tag}",
                                   initial_state=[EnableEncryptionBuilder().as_dict()])
    expect_type(step, resp, RoomCreateResponse)
    room_id, alias = resp.room_id, f"#{alias_local}:{owner_server.name}"
    ok(f"{step}: {room_id} ({alias})")
    await sync_until(owner, owner.user_id, f"{owner.user_id}'s sync has the encrypted room",
                     f"{room_id} in rooms.join", lambda r: room_id in r.rooms.join, timeout=WAIT_S)

    step = f"{guest.user_id} joins by the alias over federation"
    resp = await guest.join(alias)
    expect_type(step, resp, JoinResponse)
    check(step, resp.room_id == room_id, room_id, resp.room_id)
    await sync_until(guest, guest.user_id, f"{guest.user_id}'s sync shows the joined room, encrypted",
                     f"{room_id} in rooms.join", lambda r: room_id in r.rooms.join, timeout=WAIT_S)
    check(f"{guest.user_id}'s client knows the room is encrypted", guest.rooms[room_id].encrypted,
          "encrypted True", vars(guest.rooms[room_id]).get("encrypted"))
    await sync_until(owner, owner.user_id, f"{owner.user_id} sees {guest.user_id} join",
                     "the guest's join",
                     lambda r: timeline_find(r, room_id, lambda e: getattr(e, "state_key", None) == guest.user_id
                                             and getattr(e, "membership", None) == "join"),
                     timeout=WAIT_S)

    await knows_device(f"{owner.user_id} queries {guest.user_id}'s keys across servers", owner, guest)
    await knows_device(f"{guest.user_id} queries {owner.user_id}'s keys across servers", guest, owner)

    await says(f"{guest.user_id} decrypts {owner.user_id}'s message", owner, guest, room_id,
               f"secret from the room owner {tag}")
    await says(f"{owner.user_id} decrypts {guest.user_id}'s reply", guest, owner, room_id,
               f"secret reply from the guest {tag}")


async def run(hearth, synapse, tmp):
    tag = secrets.token_hex(3)
    clients = []
    try:
        for who in ("alice", "bob"):
            os.makedirs(f"{tmp}/{who}")
        alice, _ = await register(hearth.base, f"{tmp}/alice", f"alice_{tag}", "pw-" + secrets.token_hex(8), clients)
        bob, _ = await register(synapse.base, f"{tmp}/bob", f"bob_{tag}", "pw-" + secrets.token_hex(8), clients)
        for c in clients:
            await c.sync(timeout=0, full_state=True)
        ok(f"alice is {alice.user_id} (Hearth), bob {bob.user_id} (Synapse)")
        await conversation(alice, hearth, bob, "hearth-room")
        await conversation(bob, synapse, alice, "synapse-room")
    finally:
        for c in clients:
            await c.close()


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
    from nio.crypto import ENCRYPTION_ENABLED
    if not ENCRYPTION_ENABLED:
        print("FAIL: matrix-nio installed without its e2e extra (pip install 'matrix-nio[e2e]')", flush=True)
        return 1
    # nio logs this for every device it has no olm session with yet, right before claiming a
    # one-time key for it: expected, not a server problem.
    warnings = NioWarnings(expected=("Missing session for device",)).install()
    work = tempfile.mkdtemp(prefix="hearth-nioe2eefed-")
    servers = []
    status = 0
    try:
        fed_pair.make_ca(work)
        hearth = fed_pair.Hearth(binary, work, IP, log_level="info")
        servers.append(hearth)
        synapse = fed_pair.Synapse(python, work, IP)
        servers.append(synapse)
        ok(f"hearth {hearth.name} (client API {hearth.base}), synapse {synapse.name} (client API {synapse.base})")
        asyncio.run(asyncio.wait_for(run(hearth, synapse, work), OVERALL_TIMEOUT_S))
    except StepFailed as e:
        print(e, flush=True)
        status = 1
    except (asyncio.TimeoutError, TimeoutError):
        print(f"FAIL: the run took more than {OVERALL_TIMEOUT_S} s", flush=True)
        status = 1
    except Exception as e:
        print(f"FAIL: unexpected {type(e).__name__}: {e}", flush=True)
        status = 1
    finally:
        if status:
            for s in servers:
                print(f"--- {type(s).__name__} {s.name}: warnings and errors of its log ---\n{s.log_problems()}"
                      f"--- its last lines ---\n{s.log_tail(10)}", flush=True)
        for s in servers:
            s.stop()
        fed_pair.remove(work)
    warnings.report()
    if status == 0 and SOFT_FAILURES:
        print(f"{len(SOFT_FAILURES)} soft failure(s)", flush=True)
        status = 1
    if status == 0:
        print("all encrypted federation checks passed", flush=True)
    return status


if __name__ == "__main__":
    sys.exit(main())
