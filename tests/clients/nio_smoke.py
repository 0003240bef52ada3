#!/usr/bin/env python3
"""Acceptance smoke test of a Hearth homeserver with matrix-nio, run as a new user would.

Usage: nio_smoke.py HOMESERVER_URL   (loopback only, e.g. http://127.0.0.1:8008)

Each step asserts its result and prints `ok: <step>`. The first failing step prints
`FAIL: <step>: <reason>` with the response it got, and the script exits 1.
Only endpoints Hearth serves today are used: register, login, logout, whoami,
devices, profile (displayname / avatar_url).
"""

import asyncio
import logging
import secrets
import sys

from nio_common import StepFailed, describe, expect_type, loopback_homeserver
from nio import (
    AsyncClient,
    AsyncClientConfig,
    DeleteDevicesAuthResponse,
    DeleteDevicesResponse,
    DevicesResponse,
    LoginError,
    LoginResponse,
    LogoutResponse,
    ProfileGetAvatarResponse,
    ProfileGetDisplayNameResponse,
    ProfileGetResponse,
    ProfileSetAvatarResponse,
    ProfileSetDisplayNameResponse,
    RegisterResponse,
    WhoamiError,
    WhoamiResponse,
)

OVERALL_TIMEOUT_S = 120


def check(step, cond, resp=None, why=""):
    """This script's check shows the whole response when a step fails."""
    if not cond:
        msg = f"FAIL: {step}: {why or 'assertion failed'}"
        if resp is not None:
            msg += f"\n  response: {describe(resp)}"
        raise StepFailed(msg)
    print(f"ok: {step}", flush=True)


def new_client(hs, user=""):
    config = AsyncClientConfig(request_timeout=15, max_timeouts=2, store_sync_tokens=False)
    return AsyncClient(hs, user, config=config)


async def run(hs):
    localpart = "nio_" + secrets.token_hex(6)
    password = "nio-pw-" + secrets.token_hex(8)
    server_name = None
    clients = []
    step = "start"
    try:
        # 1. Register a fresh user (nio sends the m.login.dummy UIA stage itself).
        c1 = new_client(hs, localpart)
        clients.append(c1)
        step = "register (m.login.dummy)"
        resp = await c1.register(localpart, password, device_name="nio smoke A")
        expect_type(step, resp, RegisterResponse)
        check(
            step,
            resp.user_id.startswith(f"@{localpart}:")
            and bool(resp.access_token)
            and bool(resp.device_id)
            and c1.access_token == resp.access_token,
            resp,
            "missing user_id/access_token/device_id",
        )
        user_id = resp.user_id
        server_name = user_id.split(":", 1)[1]
        device_a = resp.device_id

        step = "whoami after register"
        resp = await c1.whoami()
        expect_type(step, resp, WhoamiResponse)
        check(step, resp.user_id == user_id and resp.device_id == device_a, resp,
              f"expected {user_id} / {device_a}")

        # 2. Log in with the password on a second client: a new device.
        c2 = new_client(hs, localpart)
        clients.append(c2)
        step = "login with password (second device)"
        resp = await c2.login(password, device_name="nio smoke B")
        expect_type(step, resp, LoginResponse)
        check(
            step,
            resp.user_id == user_id and bool(resp.access_token) and resp.device_id
            and resp.device_id != device_a,
            resp,
            "expected same user, new device id",
        )
        device_b = resp.device_id

        step = "whoami on second device"
        resp = await c2.whoami()
        expect_type(step, resp, WhoamiResponse)
        check(step, resp.user_id == user_id and resp.device_id == device_b, resp)

        # 3. Display name: set, read back.
        displayname = f"Nio Smoke {secrets.token_hex(3)}"
        step = "set displayname"
        resp = await c1.set_displayname(displayname)
        expect_type(step, resp, ProfileSetDisplayNameResponse)
        check(step, True)

        step = "get displayname"
        resp = await c2.get_displayname()
        expect_type(step, resp, ProfileGetDisplayNameResponse)
        check(step, resp.displayname == displayname, resp, f"expected {displayname!r}")

        # 4. Avatar URL (an mxc:// URI): set, read back.
        avatar = f"mxc://{server_name}/nio{secrets.token_hex(8)}"
        step = "set avatar_url"
        resp = await c1.set_avatar(avatar)
        expect_type(step, resp, ProfileSetAvatarResponse)
        check(step, True)

        step = "get avatar_url"
        resp = await c2.get_avatar()
        expect_type(step, resp, ProfileGetAvatarResponse)
        check(step, resp.avatar_url == avatar, resp, f"expected {avatar!r}")

        # 5. The whole profile.
        step = "get whole profile"
        resp = await c1.get_profile()
        expect_type(step, resp, ProfileGetResponse)
        check(step, resp.displayname == displayname and resp.avatar_url == avatar, resp,
              f"expected displayname={displayname!r} avatar_url={avatar!r}")

        # 6. Devices: both are listed.
        step = "list devices (both present)"
        resp = await c2.devices()
        expect_type(step, resp, DevicesResponse)
        ids = {d.id for d in resp.devices}
        check(step, ids == {device_a, device_b}, resp,
              f"expected {{{device_a}, {device_b}}}, got {ids}")
        names = {d.id: d.display_name for d in resp.devices}
        step = "device display names"
        check(step, names.get(device_a) == "nio smoke A" and names.get(device_b) == "nio smoke B",
              resp, f"got {names}")

        # 7. Delete the first device with UIA password auth.
        step = "delete_devices without auth -> 401 UIA challenge"
        resp = await c2.delete_devices([device_a])
        expect_type(step, resp, DeleteDevicesAuthResponse)
        flows = [f.get("stages") for f in resp.flows]
        check(step, bool(resp.session) and ["m.login.password"] in flows, resp,
              "expected a session and an m.login.password flow")
        session = resp.session

        step = "delete_devices with wrong password -> rejected"
        bad_auth = {
            "type": "m.login.password",
            "identifier": {"type": "m.id.user", "user": localpart},
            "password": password + "-wrong",
            "session": session,
        }
        resp = await c2.delete_devices([device_a], bad_auth)
        http_status = getattr(getattr(resp, "transport_response", None), "status", None)
        check(step, not isinstance(resp, DeleteDevicesResponse) and http_status == 401, resp,
              "expected 401 (UIA stage failed), not a deletion")

        step = "delete_devices with m.login.password"
        auth = {
            "type": "m.login.password",
            "identifier": {"type": "m.id.user", "user": localpart},
            "password": password,
            "session": session,
        }
        resp = await c2.delete_devices([device_a], auth)
        expect_type(step, resp, DeleteDevicesResponse)
        check(step, True)

        step = "deleted device's token is revoked (M_UNKNOWN_TOKEN)"
        resp = await c1.whoami()
        check(step, isinstance(resp, WhoamiError) and resp.status_code == "M_UNKNOWN_TOKEN",
              resp, "expected WhoamiError M_UNKNOWN_TOKEN")

        step = "list devices (only second left)"
        resp = await c2.devices()
        expect_type(step, resp, DevicesResponse)
        ids = {d.id for d in resp.devices}
        check(step, ids == {device_b}, resp, f"expected {{{device_b}}}, got {ids}")

        # 8. A wrong password login fails with M_FORBIDDEN.
        c3 = new_client(hs, localpart)
        clients.append(c3)
        step = "wrong password login -> M_FORBIDDEN"
        resp = await c3.login(password + "-wrong")
        expect_type(step, resp, LoginError)
        http_status = getattr(getattr(resp, "transport_response", None), "status", None)
        check(step, resp.status_code == "M_FORBIDDEN" and http_status in (None, 403), resp,
              "expected 403 M_FORBIDDEN")
        check("no token after failed login", not c3.access_token, resp)

        # 9. Log out the second device; its old token stops working.
        old_token = c2.access_token
        step = "logout"
        resp = await c2.logout()
        expect_type(step, resp, LogoutResponse)
        check(step, True)

        step = "token after logout is rejected (M_UNKNOWN_TOKEN)"
        c4 = new_client(hs, localpart)
        clients.append(c4)
        c4.restore_login(user_id, device_b, old_token)
        resp = await c4.whoami()
        check(step, isinstance(resp, WhoamiError) and resp.status_code == "M_UNKNOWN_TOKEN",
              resp, "expected WhoamiError M_UNKNOWN_TOKEN")
        return 0
    except StepFailed as e:
        print(str(e), flush=True)
        return 1
    except Exception as e:  # a crash in nio or a connection error: name the step
        print(f"FAIL: {step}: {type(e).__name__}: {e}", flush=True)
        return 1
    finally:
        for c in clients:
            await c.close()


def main():
    hs = loopback_homeserver("nio_smoke.py")
    if hs is None:
        return 2
    # nio logs a schema warning for every expected error body (M_FORBIDDEN, M_UNKNOWN_TOKEN);
    # failures are reported by this script with the full response instead.
    logging.getLogger("nio").setLevel(logging.ERROR)
    try:
        return asyncio.run(asyncio.wait_for(run(hs), OVERALL_TIMEOUT_S))
    except asyncio.TimeoutError:
        print(f"FAIL: timed out after {OVERALL_TIMEOUT_S}s", flush=True)
        return 1
    except Exception as e:  # a crash in nio or the script: still one failure line
        print(f"FAIL: unexpected {type(e).__name__}: {e}", flush=True)
        return 1


if __name__ == "__main__":
    sys.exit(main())
