#!/usr/bin/env node
// Acceptance test of Hearth's team-messaging features with matrix-js-sdk, configured as
// Element Web configures it (timeline support, thread support, lazy-loaded members), run as
// a new team member would use them.
//
// Usage: node team.mjs HOMESERVER_URL   (loopback only)
//
// 1. alice and bob register (fresh random names, no shared room) and set display names.
// 2. alice finds bob in the user directory by the first letters of his display name
//    (client.searchUserDirectory) and starts a DM with him the way Element does
//    (createRoom is_direct, trusted_private_chat, invite); bob joins.
// 3. alice posts a message; bob replies in a thread on it: alice's client shows the
//    thread with bob's reply, and the server's /relations and /threads list it with the
//    bundled thread summary (count 1, latest event bob's reply).
// 4. alice edits her message (m.replace): bob's client shows the new text, and the
//    server bundles the edit with the original event.
// 5. bob reacts to it (m.annotation): alice's client lists the reaction, /relations too.
// 6. alice searches for a word of the message (client.searchRoomEvents) and finds it;
//    a word nobody wrote finds nothing.
//
// Output conventions as in common.mjs: `ok: <check>` per check, the first failing check
// prints `FAIL: ...` and the script exits 1.

import { sdk, say, ok, check, fail, errText, api, poll, register, makeClient, startAndWait, hs, main } from "./common.mjs";

const OVERALL_TIMEOUT_MS = 85_000;
const WAIT_MS = 20_000;
const enc = encodeURIComponent;
const clients = [];
let step = "start";

async function v1(method, p, token) {
    const r = await fetch(`${hs}/_matrix/client/v1${p}`, {
        method,
        headers: { Authorization: `Bearer ${token}` },
        signal: AbortSignal.timeout(15_000),
    });
    const text = await r.text();
    let json;
    try {
        json = JSON.parse(text);
    } catch {
        json = text;
    }
    return { status: r.status, json };
}

// client.sendMessage; its event id. matrix-js-sdk 37 throws "updatePendingEventStatus called on
// an event which is not a local echo" when the remote echo of a thread event or an edit comes
// down /sync before the PUT's answer (its local-echo bookkeeping; the server answered 200): then
// the event is looked up on the server by its body, and the run notes it.
async function send(client, session, roomId, threadId, content) {
    try {
        return await client.sendMessage(roomId, threadId, content);
    } catch (e) {
        if (!String(e?.message).includes("not a local echo")) throw e;
        say(`note: ${step}. js-sdk: ${e.message} (remote echo before the send's answer)`);
        const r = await api("GET", `/rooms/${enc(roomId)}/messages?dir=b&limit=20`, session.access_token);
        const found = r.json.chunk?.find((ev) => ev.sender === session.user_id && ev.content?.body === content.body);
        if (!found) throw fail(`${step}. the event sent`, "it on the server", r);
        return { event_id: found.event_id };
    }
}

async function elementClient(session, who) {
    const client = await makeClient(session, { opts: { timelineSupport: true } });
    clients.push(client);
    await startAndWait(client, who, { lazyLoadMembers: true, threadSupport: true, pendingEventOrdering: sdk.PendingEventOrdering.Detached }, WAIT_MS);
    return client;
}

async function run() {
    const tag = Math.random().toString(36).slice(2, 8);
    step = "1";
    const a = await register(`alice_team_${tag}`, "alice laptop");
    const b = await register(`bob_team_${tag}`, "bob phone");
    check(`${step}. alice and bob register`, a.session && b.session, "two 200 answers", [a.r, b.r]);
    const bobName = `Björn Team${tag}`;
    for (const [s, name] of [[a.session, `Alice Team${tag}`], [b.session, bobName]]) {
        const r = await api("PUT", `/profile/${enc(s.user_id)}/displayname`, s.access_token, { displayname: name });
        check(`${step}. ${name} set as display name`, r.status === 200, "200", r);
    }
    const alice = await elementClient(a.session, "alice");
    const bob = await elementClient(b.session, "bob");

    step = "2";
    // Accent- and case-insensitive prefix of bob's display name, as a user would type it.
    const found = await alice.searchUserDirectory({ term: `bjorn team${tag.slice(0, 3)}`, limit: 10 }).catch((e) => {
        throw fail(`${step}. user directory search`, "a 200 answer", errText(e));
    });
    check(`${step}. alice finds bob in the user directory by "bjorn team…"`, found.results?.some((u) => u.user_id === b.session.user_id && u.display_name === bobName), `a result ${b.session.user_id} named ${bobName}`, found);
    const dm = await alice.createRoom({ is_direct: true, preset: "trusted_private_chat", invite: [b.session.user_id] });
    await poll(`${step}. bob gets the DM invite`, "the invite in bob's client", async () => ({ done: bob.getRoom(dm.room_id)?.getMyMembership() === "invite" }), WAIT_MS);
    await bob.joinRoom(dm.room_id);
    await poll(`${step}. bob joined`, "alice's client to see bob joined", async () => ({ done: alice.getRoom(dm.room_id)?.getMember(b.session.user_id)?.membership === "join" }), WAIT_MS);
    ok(`${step}. alice starts a DM with the user she found and bob joins`);

    step = "3";
    const word = `quokka${tag}`;
    const root = await alice.sendMessage(dm.room_id, { msgtype: "m.text", body: `lunch plans: ${word} cafe at noon?` });
    await poll(`${step}. bob sees alice's message`, "the message in bob's timeline", async () => ({ done: !!bob.getRoom(dm.room_id)?.findEventById(root.event_id) }), WAIT_MS);
    const reply = await send(bob, b.session, dm.room_id, root.event_id, {
        msgtype: "m.text",
        body: "count me in",
        "m.relates_to": { rel_type: "m.thread", event_id: root.event_id, is_falling_back: true, "m.in_reply_to": { event_id: root.event_id } },
    });
    await poll(`${step}. alice's client shows the thread`, "a thread on alice's message with bob's reply", async () => {
        const thread = alice.getRoom(dm.room_id)?.getThread(root.event_id);
        const events = thread?.timeline?.map((e) => e.getId()) ?? [];
        return { done: events.includes(reply.event_id) || thread?.replyToEvent?.getId() === reply.event_id, got: { thread: !!thread, length: thread?.length, events } };
    }, WAIT_MS);
    ok(`${step}. bob replies in a thread and alice's client shows it`);
    const rel = await v1("GET", `/rooms/${enc(dm.room_id)}/relations/${enc(root.event_id)}/m.thread`, a.session.access_token);
    check(`${step}. /relations lists bob's reply`, rel.status === 200 && rel.json.chunk?.some((e) => e.event_id === reply.event_id), "200 with the reply in chunk", rel);
    const threads = await v1("GET", `/rooms/${enc(dm.room_id)}/threads`, a.session.access_token);
    const summary = threads.json.chunk?.find((e) => e.event_id === root.event_id)?.unsigned?.["m.relations"]?.["m.thread"];
    check(`${step}. /threads lists the thread with its summary`, threads.status === 200 && summary?.count === 1 && summary?.latest_event?.event_id === reply.event_id && summary?.current_user_participated === true, "the root with m.thread count 1, latest bob's reply, alice participating (she sent the root)", threads);

    step = "4";
    const edited = `lunch plans: ${word} cafe at one instead`;
    await send(alice, a.session, dm.room_id, null, {
        msgtype: "m.text",
        body: `* ${edited}`,
        "m.new_content": { msgtype: "m.text", body: edited },
        "m.relates_to": { rel_type: "m.replace", event_id: root.event_id },
    });
    await poll(`${step}. bob's client shows the edit`, "the new text on alice's message in bob's client", async () => {
        const ev = bob.getRoom(dm.room_id)?.findEventById(root.event_id);
        return { done: ev?.getContent()?.body === edited, got: ev?.getContent() };
    }, WAIT_MS);
    ok(`${step}. alice edits her message and bob sees the new text`);
    const original = await api("GET", `/rooms/${enc(dm.room_id)}/event/${enc(root.event_id)}`, b.session.access_token);
    check(`${step}. the server bundles the edit with the original`, original.status === 200 && original.json.unsigned?.["m.relations"]?.["m.replace"]?.content?.["m.new_content"]?.body === edited, "unsigned.m.relations.m.replace with the new content", original);

    step = "5";
    const reaction = await bob.sendEvent(dm.room_id, "m.reaction", { "m.relates_to": { rel_type: "m.annotation", event_id: root.event_id, key: "👍" } });
    await poll(`${step}. alice's client lists bob's reaction`, "a 👍 annotation on alice's message", async () => {
        const rels = alice.getRoom(dm.room_id)?.relations?.getChildEventsForEvent(root.event_id, "m.annotation", "m.reaction");
        const keys = rels?.getSortedAnnotationsByKey()?.map(([key]) => key) ?? [];
        return { done: keys.includes("👍"), got: keys };
    }, WAIT_MS);
    ok(`${step}. bob reacts and alice's client shows the reaction`);
    const ann = await v1("GET", `/rooms/${enc(dm.room_id)}/relations/${enc(root.event_id)}/m.annotation`, a.session.access_token);
    check(`${step}. /relations lists the reaction`, ann.status === 200 && ann.json.chunk?.some((e) => e.event_id === reaction.event_id), "200 with the reaction", ann);

    step = "6";
    let results;
    try {
        results = await alice.searchRoomEvents({ term: word });
    } catch (e) {
        throw fail(`${step}. search`, "a 200 answer", errText(e));
    }
    const hits = results.results?.map((r) => r.context?.getEvent?.()?.getId?.()) ?? [];
    check(`${step}. alice finds her message by searching "${word}"`, hits.includes(root.event_id), `${root.event_id} among the results`, { count: results.count, hits });
    const none = await alice.searchRoomEvents({ term: `nobodywrote${tag}` });
    check(`${step}. a word nobody wrote finds nothing`, (none.results?.length ?? 0) === 0, "no results", none.count);
    return 0;
}

await main(run, { timeoutMs: OVERALL_TIMEOUT_MS, currentStep: () => step, clients });
