#!/usr/bin/env node
// Acceptance test of Hearth's rooms with matrix-js-sdk configured the way Element Web
// configures it: Rust crypto (in-memory store), createClient with timelineSupport, and
// startClient with lazyLoadMembers, pendingEventOrdering "detached" and threadSupport
// (initialSyncLimit left at the SDK's default, as Element does). With lazy-loaded
// members the SDK lists a room's members before it encrypts for the first time there,
// with GET /rooms/{id}/members?at=<its sync token>&not_membership=leave.
//
// Usage: node element_rooms.mjs HOMESERVER_URL   (loopback only)
//
// 1. alice, bob and carol register (fresh random names) and start their clients.
// 2. alice creates an encrypted private room (preset private_chat, initial_state with
//    m.room.encryption and history visibility `joined`) and invites bob, who joins; both
//    send with client.sendMessage (encrypted by the SDK) and each decrypts the other's
//    message from the room timeline.
// 3. alice invites carol, who joins: the messages from before her join are not served to
//    her or do not decrypt; the ones alice and bob send after it decrypt for her.
// 4. bob leaves; alice's next message is not served to bob or does not decrypt for him;
//    carol decrypts it.
// 5. a DM made the way Element makes one (createRoom is_direct, preset
//    trusted_private_chat, invite [bob], initial_state m.room.encryption; m.direct account
//    data): bob's invite carries is_direct and the inviter's member event, he joins and
//    sets his m.direct, and both exchange encrypted messages and decrypt them.
// 6. alice logs in on a new device with a fresh client: /messages from its sync token
//    (backwards, and later forwards from that token), paginateEventTimeline on the DM and
//    scrollback on the group room all answer cleanly with the events (which the new
//    device may not be able to decrypt).
//
// Each check prints `ok: <check>` (prefixed with its step number); the first failing one
// prints `FAIL: <check>: expected <what>` with what came back, then the SDK's warnings and
// the failed HTTP requests, and the script exits 1 (helpers in common.mjs).

import { sdk, sdkVersion, say, ok, check, fail, errText, api, poll, register, makeClient, startAndWait, waitDeviceKeys, safeJson, sleep, main } from "./common.mjs";

const OVERALL_TIMEOUT_MS = 85_000;
const WAIT_MS = 20_000;

// Element Web's client options (createMatrixClient and MatrixClientPeg's startClient).
const ELEMENT_CREATE_OPTS = { timelineSupport: true };
const ELEMENT_START_OPTS = {
    lazyLoadMembers: true,
    pendingEventOrdering: sdk.PendingEventOrdering.Detached,
    threadSupport: true,
    initialSyncLimit: 8, // the SDK's default; Element does not set it
};

const MEGOLM = "m.megolm.v1.aes-sha2";
const encryptionState = { type: "m.room.encryption", state_key: "", content: { algorithm: MEGOLM } };

let step = "start";
const clients = [];
const enc = encodeURIComponent;

async function elementClient(session, who) {
    const client = await makeClient(session, { opts: ELEMENT_CREATE_OPTS });
    clients.push(client);
    check(`${who}'s client has Rust crypto`, client.getCrypto()?.getVersion?.().includes("Rust"), "a Rust CryptoApi", client.getCrypto()?.getVersion?.());
    await startAndWait(client, who, ELEMENT_START_OPTS, WAIT_MS);
    return client;
}

// Waits until `client` sees `userId` with `membership` in the room.
async function waitMember(s, client, roomId, userId, membership) {
    await poll(s, `${userId} with membership ${membership} in ${roomId} on ${client.getUserId()}'s client`, async () => {
        const room = client.getRoom(roomId);
        const m = userId === client.getUserId() ? room?.getMyMembership() : room?.getMember(userId)?.membership;
        return { done: m === membership, got: { room: !!room, membership: m } };
    }, WAIT_MS);
    ok(s);
}

// Waits until `client`'s crypto knows a device of each of `userIds` (so the room key is
// shared with them on the next send).
async function waitDevicesKnown(s, client, userIds) {
    await poll(s, `devices of ${userIds.join(", ")} known to ${client.getUserId()}'s crypto`, async () => {
        const map = await client.getCrypto().getUserDeviceInfo(userIds);
        const counts = Object.fromEntries(userIds.map((u) => [u, map.get(u)?.size ?? 0]));
        return { done: userIds.every((u) => counts[u] > 0), got: counts };
    }, WAIT_MS);
    ok(s);
}

// client.sendMessage (encrypted by the SDK); the server stores an m.room.encrypted event
// without the plaintext. Returns the event id.
async function sendEncrypted(s, client, session, roomId, body) {
    let res;
    try {
        res = await client.sendMessage(roomId, { msgtype: "m.text", body });
    } catch (e) {
        throw fail(s, "client.sendMessage to encrypt and send the message (before encrypting, the SDK lists the members with GET /rooms/{id}/members?at=<sync token>&not_membership=leave)", errText(e));
    }
    const r = await api("GET", `/rooms/${enc(roomId)}/event/${enc(res.event_id)}`, session.access_token);
    check(s, r.status === 200 && r.json.type === "m.room.encrypted" && r.json.content?.algorithm === MEGOLM && !JSON.stringify(r.json).includes(body), `${res.event_id} stored as an m.room.encrypted (${MEGOLM}) event without the plaintext`, r);
    return res.event_id;
}

// Waits until the event is in `client`'s room timeline, decrypted to `body`.
async function waitDecrypted(s, client, roomId, eventId, body) {
    await poll(s, `${eventId} in ${client.getUserId()}'s timeline, decrypted (getClearContent().body ${JSON.stringify(body)})`, async () => {
        const ev = client.getRoom(roomId)?.findEventById(eventId);
        if (!ev) return { got: "not in the room's timeline" };
        const clear = ev.getClearContent();
        return {
            done: ev.isEncrypted() && !ev.isBeingDecrypted() && !ev.isDecryptionFailure() && clear?.body === body,
            got: { wireType: ev.getWireType(), type: ev.getType(), decryptionFailure: ev.isDecryptionFailure(), reason: ev.decryptionFailureReason, clear },
        };
    }, WAIT_MS);
    ok(s);
}

// The event, for `client`: not served by the server (GET /event 403 or 404) and not in
// its timeline, or served but undecryptable. Returns how, or throws.
async function checkUnreadable(s, client, session, roomId, eventId, body) {
    const r = await api("GET", `/rooms/${enc(roomId)}/event/${enc(eventId)}`, session.access_token);
    if (![200, 403, 404].includes(r.status)) throw fail(s, `GET /rooms/{id}/event/${eventId} to answer 200, 403 or 404`, r);
    const inTimeline = client.getRoom(roomId)?.findEventById(eventId);
    if (r.status !== 200 && !inTimeline) {
        ok(s);
        return `not served (GET /event: ${r.status} ${r.json?.errcode ?? ""})`;
    }
    const ev = inTimeline ?? client.getEventMapper({ decrypt: false })(r.json);
    await client.decryptEventIfNeeded(ev);
    const clear = ev.getClearContent();
    check(s, ev.getWireType() === "m.room.encrypted" && (ev.isDecryptionFailure() || clear?.body !== body), `${eventId} not readable (not served, or a decryption failure)`, { get: r.status, inTimeline: !!inTimeline, decryptionFailure: ev.isDecryptionFailure(), clear });
    return `served (GET /event ${r.status}${inTimeline ? ", in the client's timeline" : ""}) but undecryptable (${ev.decryptionFailureReason})`;
}

// The user ids with `membership` in GET /rooms/{id}/members?at=<at>&not_membership=leave,
// the request the SDK makes (through client.members).
async function membersAt(s, client, roomId, at, membership) {
    let res;
    try {
        res = await client.members(roomId, undefined, "leave", at);
    } catch (e) {
        throw fail(s, `200 from GET /rooms/{id}/members?at=${at}&not_membership=leave`, errText(e));
    }
    const events = (res.chunk || []).filter((e) => e.type === "m.room.member");
    return {
        ids: events.filter((e) => e.content?.membership === membership).map((e) => e.state_key),
        all: events.map((e) => `${e.state_key}:${e.content?.membership}`),
    };
}

async function run() {
    const tag = Math.random().toString(16).slice(2, 10);
    say(`   matrix-js-sdk ${sdkVersion}; Element options: createClient ${safeJson(ELEMENT_CREATE_OPTS)}, startClient ${safeJson(ELEMENT_START_OPTS)}`);

    // --- 1. Three users ---------------------------------------------------------------------
    const sessions = {};
    for (const who of ["alice", "bob", "carol"]) {
        step = `1. register ${who} (m.login.dummy)`;
        const { r, session } = await register(`${who}_el_${tag}`, `${who}'s element-like device`);
        check(step, r.status === 200 && r.json.access_token && r.json.device_id, "200 with access_token and device_id", r);
        sessions[who] = session;
    }
    const A = sessions.alice.user_id;
    const B = sessions.bob.user_id;
    const C = sessions.carol.user_id;
    {
        const r = await api("GET", `/profile/${enc(A)}`, sessions.alice.access_token);
        if (!r.json?.displayname) say(`note: a new account has no display name (GET /profile/${A}: ${r.status} ${safeJson(r.json)})`);
    }
    step = "1. start the clients";
    const alice = await elementClient(sessions.alice, "1. alice");
    const bob = await elementClient(sessions.bob, "1. bob");
    const carol = await elementClient(sessions.carol, "1. carol");
    for (const who of ["alice", "bob", "carol"]) await waitDeviceKeys(`1. ${who}`, sessions[who], WAIT_MS);

    // --- 2. Encrypted private room, alice and bob -----------------------------------------
    step = "2. alice creates an encrypted private room (private_chat, history visibility joined)";
    let roomId;
    try {
        ({ room_id: roomId } = await alice.createRoom({
            name: `element rooms ${tag}`,
            preset: sdk.Preset.PrivateChat,
            visibility: sdk.Visibility.Private,
            initial_state: [encryptionState, { type: "m.room.history_visibility", state_key: "", content: { history_visibility: "joined" } }],
        }));
    } catch (e) {
        throw fail(step, "createRoom to succeed", errText(e));
    }
    await poll(step, "the room in alice's client, encryption enabled, history visibility joined", async () => {
        const room = alice.getRoom(roomId);
        return {
            done: room && (await alice.getCrypto().isEncryptionEnabledInRoom(roomId)) && room.getHistoryVisibility() === "joined",
            got: { room: !!room, hv: room?.getHistoryVisibility() },
        };
    }, WAIT_MS);
    ok(step);

    step = "2. alice invites bob";
    await alice.invite(roomId, B);
    await waitMember(`2. bob sees his invite`, bob, roomId, B, "invite");
    step = "2. bob joins";
    await bob.joinRoom(roomId);
    await waitMember("2. bob joins (seen by bob)", bob, roomId, B, "join");
    await waitMember("2. bob's join reaches alice", alice, roomId, B, "join");

    // What the SDK asks before encrypting in a room with lazy-loaded members.
    step = "2. GET /rooms/{id}/members?at=<alice's sync token>&not_membership=leave (the SDK's request before encrypting)";
    {
        const { ids, all } = await membersAt(step, alice, roomId, alice.store.getSyncToken(), "join");
        check(step, ids.includes(A) && ids.includes(B), "alice and bob joined in the chunk", all);
    }

    const m1 = `alice to bob ${tag}`;
    step = "2. alice sends with client.sendMessage (encrypted)";
    const e1 = await sendEncrypted(step, alice, sessions.alice, roomId, m1);
    await waitDecrypted("2. bob decrypts alice's message", bob, roomId, e1, m1);
    const m2 = `bob to alice ${tag}`;
    step = "2. bob sends with client.sendMessage (encrypted)";
    const e2 = await sendEncrypted(step, bob, sessions.bob, roomId, m2);
    await waitDecrypted("2. alice decrypts bob's message", alice, roomId, e2, m2);

    // --- 3. carol joins later ---------------------------------------------------------------
    step = "3. alice invites carol";
    const beforeCarol = alice.store.getSyncToken();
    await alice.invite(roomId, C);
    await waitMember("3. carol sees her invite", carol, roomId, C, "invite");
    step = "3. carol joins";
    await carol.joinRoom(roomId);
    await waitMember("3. carol joins (seen by carol)", carol, roomId, C, "join");
    await waitMember("3. carol's join reaches alice", alice, roomId, C, "join");
    await waitMember("3. carol's join reaches bob", bob, roomId, C, "join");
    step = "3. /members?at=<alice's sync token from before carol's invite> lists the room as it was then";
    {
        const then = await membersAt(step, alice, roomId, beforeCarol, "join");
        check(step, then.ids.includes(A) && then.ids.includes(B) && !then.all.some((m) => m.startsWith(`${C}:`)), `alice and bob joined, no member event for carol (at=${beforeCarol})`, then.all);
        step = "3. /members?at=<alice's current sync token> lists carol joined";
        const now = await membersAt(step, alice, roomId, alice.store.getSyncToken(), "join");
        check(step, [A, B, C].every((u) => now.ids.includes(u)), "alice, bob and carol joined", now.all);
    }
    for (const [i, id, body] of [[1, e1, m1], [2, e2, m2]]) {
        const how = await checkUnreadable(`3. carol cannot read message ${i}, sent before her join`, carol, sessions.carol, roomId, id, body);
        say(`   message ${i} for carol: ${how}`);
    }
    step = "3. carol's /messages (backwards) lists nothing readable from before her join";
    {
        const r = await api("GET", `/rooms/${enc(roomId)}/messages?dir=b&limit=50`, sessions.carol.access_token);
        check(step, r.status === 200 && Array.isArray(r.json.chunk), "200 with a chunk", r);
        const early = r.json.chunk.filter((e) => e.event_id === e1 || e.event_id === e2);
        for (const raw of early) {
            const ev = carol.getEventMapper({ decrypt: false })(raw);
            await carol.decryptEventIfNeeded(ev);
            check(`3. ${raw.event_id} in carol's /messages does not decrypt`, ev.isDecryptionFailure(), "a decryption failure", ev.getClearContent());
        }
        if (early.length) say(`note: hearth lists ${early.length} event(s) from before carol's join in her /messages although history visibility is joined`);
    }
    await waitDevicesKnown("3. alice's crypto knows bob's and carol's devices", alice, [B, C]);
    await waitDevicesKnown("3. bob's crypto knows alice's and carol's devices", bob, [A, C]);
    const m3 = `alice after carol joined ${tag}`;
    step = "3. alice sends after carol's join";
    const e3 = await sendEncrypted(step, alice, sessions.alice, roomId, m3);
    await waitDecrypted("3. carol decrypts alice's message sent after her join", carol, roomId, e3, m3);
    await waitDecrypted("3. bob decrypts it too", bob, roomId, e3, m3);
    const m4 = `bob after carol joined ${tag}`;
    step = "3. bob sends after carol's join";
    const e4 = await sendEncrypted(step, bob, sessions.bob, roomId, m4);
    await waitDecrypted("3. carol decrypts bob's message sent after her join", carol, roomId, e4, m4);
    await waitDecrypted("3. alice decrypts it too", alice, roomId, e4, m4);

    // --- 4. bob leaves -----------------------------------------------------------------------
    step = "4. bob leaves";
    await bob.leave(roomId);
    await waitMember("4. bob's leave (seen by bob)", bob, roomId, B, "leave");
    await waitMember("4. bob's leave reaches alice", alice, roomId, B, "leave");
    await waitMember("4. bob's leave reaches carol", carol, roomId, B, "leave");
    step = "4. /members?at=<alice's sync token>&not_membership=leave no longer lists bob";
    {
        const { all } = await membersAt(step, alice, roomId, alice.store.getSyncToken(), "join");
        check(step, all.includes(`${A}:join`) && all.includes(`${C}:join`) && !all.some((m) => m.startsWith(`${B}:`)), "alice and carol joined, no member event for bob (not_membership=leave)", all);
    }
    const m5 = `alice after bob left ${tag}`;
    step = "4. alice sends after bob left";
    const e5 = await sendEncrypted(step, alice, sessions.alice, roomId, m5);
    await waitDecrypted("4. carol decrypts alice's message sent after bob left", carol, roomId, e5, m5);
    await sleep(1_000); // bob's client has had time to sync whatever it would be given
    {
        const how = await checkUnreadable("4. bob cannot read alice's message sent after he left", bob, sessions.bob, roomId, e5, m5);
        say(`   that message for bob: ${how}`);
    }

    // --- 5. A DM, the way Element creates one ----------------------------------------------
    step = "5. alice creates a DM with bob (is_direct, trusted_private_chat, invite, m.room.encryption)";
    let dmId;
    try {
        ({ room_id: dmId } = await alice.createRoom({
            is_direct: true,
            preset: sdk.Preset.TrustedPrivateChat,
            visibility: sdk.Visibility.Private,
            invite: [B],
            initial_state: [encryptionState],
        }));
    } catch (e) {
        throw fail(step, "createRoom to succeed", errText(e));
    }
    ok(step);
    step = "5. alice sets m.direct (bob -> [dm])";
    await alice.setAccountData(sdk.EventType.Direct, { [B]: [dmId] });
    await poll(step, "m.direct in alice's account data", async () => {
        const r = await api("GET", `/user/${enc(A)}/account_data/m.direct`, sessions.alice.access_token);
        return { done: r.status === 200 && r.json?.[B]?.includes(dmId), got: r };
    }, WAIT_MS);
    ok(step);

    await waitMember("5. bob sees the DM invite", bob, dmId, B, "invite");
    step = "5. bob's invite member event has is_direct, sent by alice";
    {
        const room = bob.getRoom(dmId);
        const inv = room.currentState.getStateEvents("m.room.member", B);
        check(step, inv?.getContent()?.is_direct === true && inv.getSender() === A && room.getDMInviter() === A, `his m.room.member (invite) with content.is_direct true, sender ${A}, getDMInviter() ${A}`, { content: inv?.getContent(), sender: inv?.getSender(), dmInviter: room.getDMInviter() });
        const strippedState = room.currentState.getStateEvents("m.room.member").map((e) => `${e.getStateKey()}:${e.getContent().membership}`);
        const inviter = room.currentState.getStateEvents("m.room.member", A);
        check("5. the invite's stripped state has alice's member event (Element shows the inviter from it)", inviter?.getContent()?.membership === "join", `an m.room.member for ${A} (join) in invite_state`, { memberEvents: strippedState, encrypted: !!room.currentState.getStateEvents("m.room.encryption", "") });
        if (!inviter.getContent().displayname) say(`note: alice's member event in the invite has no displayname (${safeJson(inviter.getContent())})`);
        check("5. the invite's stripped state has m.room.encryption", room.currentState.getStateEvents("m.room.encryption", "")?.getContent()?.algorithm === MEGOLM, "m.room.encryption in invite_state", room.currentState.getStateEvents("m.room.encryption", "")?.getContent());
    }
    step = "5. bob accepts the DM";
    await bob.joinRoom(dmId);
    await waitMember("5. bob joins the DM (seen by bob)", bob, dmId, B, "join");
    await waitMember("5. bob's join reaches alice", alice, dmId, B, "join");
    step = "5. bob sets m.direct (alice -> [dm])";
    await bob.setAccountData(sdk.EventType.Direct, { [A]: [dmId] });
    await poll(step, "m.direct in bob's account data, and in his client", async () => {
        const r = await api("GET", `/user/${enc(B)}/account_data/m.direct`, sessions.bob.access_token);
        return { done: r.status === 200 && r.json?.[A]?.includes(dmId) && bob.getAccountData(sdk.EventType.Direct)?.getContent()?.[A]?.includes(dmId), got: r };
    }, WAIT_MS);
    ok(step);
    const d1 = `dm alice to bob ${tag}`;
    step = "5. alice sends in the DM";
    const f1 = await sendEncrypted(step, alice, sessions.alice, dmId, d1);
    await waitDecrypted("5. bob decrypts alice's DM message", bob, dmId, f1, d1);
    const d2 = `dm bob to alice ${tag}`;
    step = "5. bob sends in the DM";
    const f2 = await sendEncrypted(step, bob, sessions.bob, dmId, d2);
    await waitDecrypted("5. alice decrypts bob's DM message", alice, dmId, f2, d2);

    // --- 6. A fresh client for alice paginates back ------------------------------------------
    step = "6. alice logs in on a new device";
    let r = await api("POST", "/login", null, {
        type: "m.login.password",
        identifier: { type: "m.id.user", user: sessions.alice.localpart },
        password: sessions.alice.password,
        initial_device_display_name: "alice's second element-like device",
    });
    check(step, r.status === 200 && r.json.device_id && r.json.device_id !== sessions.alice.device_id, "200 with a new device_id", r);
    const alice2 = await elementClient(r.json, "6. alice (new device)");
    await waitMember("6. the new client has the DM", alice2, dmId, A, "join");
    await waitMember("6. the new client has the group room", alice2, roomId, A, "join");
    const syncToken = alice2.store.getSyncToken();

    step = "6. /messages backwards from the new client's sync token (next_batch)";
    {
        let res;
        try {
            res = await alice2.createMessagesRequest(dmId, syncToken, 30, sdk.Direction.Backward);
        } catch (e) {
            throw fail(step, `a clean answer to GET /rooms/{dm}/messages?from=${syncToken}&dir=b`, errText(e));
        }
        const ids = (res.chunk || []).map((e) => e.event_id);
        check(step, ids.includes(f1) && ids.includes(f2), `both DM messages (${f1}, ${f2}) in the chunk`, { ids, start: res.start, end: res.end });
    }

    step = "6. paginateEventTimeline (backwards) on the DM's live timeline, to its start";
    {
        const room = alice2.getRoom(dmId);
        const tl = room.getLiveTimeline();
        for (let i = 0; i < 6 && tl.getPaginationToken(sdk.Direction.Backward); i++) {
            try {
                await alice2.paginateEventTimeline(tl, { backwards: true, limit: 8 });
            } catch (e) {
                throw fail(step, "paginateEventTimeline to succeed", errText(e));
            }
        }
        const ids = tl.getEvents().map((e) => e.getId());
        const types = tl.getEvents().map((e) => e.getType());
        check(step, ids.includes(f1) && ids.includes(f2) && types.includes("m.room.create"), "both DM messages and m.room.create in the timeline", { types, token: tl.getPaginationToken(sdk.Direction.Backward) });
        const undecryptable = tl.getEvents().filter((e) => e.isDecryptionFailure()).length;
        say(`   ${undecryptable} of the DM's events undecryptable on the new device (fine)`);
    }

    step = "6. scrollback on the group room, to its start";
    {
        const room = alice2.getRoom(roomId);
        for (let i = 0; i < 8 && room.oldState.paginationToken; i++) {
            try {
                await alice2.scrollback(room, 8);
            } catch (e) {
                throw fail(step, "scrollback to succeed", errText(e));
            }
        }
        const events = room.getLiveTimeline().getEvents();
        const ids = events.map((e) => e.getId());
        const want = [e1, e2, e3, e4, e5];
        check(step, want.every((id) => ids.includes(id)) && events.some((e) => e.getType() === "m.room.create"), "the five messages and m.room.create in the timeline", { missing: want.filter((id) => !ids.includes(id)), types: events.map((e) => e.getType()) });
    }

    step = "6. /messages forwards from the new client's earlier sync token sees a later message";
    const d3 = `dm alice later ${tag}`;
    const f3 = await sendEncrypted("6. alice (first device) sends another DM message", alice, sessions.alice, dmId, d3);
    {
        let res;
        try {
            res = await alice2.createMessagesRequest(dmId, syncToken, 10, sdk.Direction.Forward);
        } catch (e) {
            throw fail(step, `a clean answer to GET /rooms/{dm}/messages?from=${syncToken}&dir=f`, errText(e));
        }
        const ids = (res.chunk || []).map((e) => e.event_id);
        check(step, ids.includes(f3) && !ids.includes(f1), `${f3} (and not the older ${f1}) in the chunk`, { ids, start: res.start, end: res.end });
    }
    return 0;
}

await main(run, { timeoutMs: OVERALL_TIMEOUT_MS, currentStep: () => step, clients });
