#!/usr/bin/env node
// Acceptance test of Hearth's cross-signing, secret storage and server-side key backup
// with matrix-js-sdk and its Rust crypto (matrix-sdk-crypto-wasm).
//
// Usage: node e2ee_backup.mjs HOMESERVER_URL   (loopback only)
// The SDK is loaded from $HEARTH_CLIENTS_JS/node_modules (default
// ~/.cache/hearth-clients-js), where run.sh installs js/package.json.
//
// alice registers and starts a js-sdk client with Rust crypto (keys/upload), then
// bootstraps cross-signing (keys/device_signing/upload behind user-interactive auth with
// her password, keys/signatures/upload for her device) and secret storage with a new key
// backup (account data m.secret_storage.*, POST room_keys/version). She creates an
// encrypted room and sends a message; the Rust crypto uploads the megolm room key to the
// backup (PUT room_keys/keys), seen with GET room_keys/keys. Then alice logs in on a new
// device, which has no room key: with the recovery key it reads the backup key from
// secret storage, restores the backup (GET room_keys/keys) and decrypts the old message
// fetched with /messages. The new device also takes the cross-signing keys from secret
// storage and signs itself, which keys/query then shows.
//
// Each check prints `ok: <check>`; the first failing one prints
// `FAIL: <check>: expected <what>` with what came back, and the script exits 1
// (helpers and output conventions in common.mjs).

import { modUrl, sdkVersion, say, ok, check, api, poll, makeClient as makeClientWith, startAndWait, main } from "./common.mjs";

const OVERALL_TIMEOUT_MS = 75_000;
// The js-sdk's backup loop waits a random 0-10 s before each upload.
const BACKUP_WAIT_MS = 25_000;

const { decodeRecoveryKey } = await import(modUrl("matrix-js-sdk/lib/crypto-api/index.js"));

// A js-sdk client with Rust crypto; secret-storage keys it learns (or is given) are kept
// in `ssKeys` and handed out by getSecretStorageKey.
const makeClient = (session, ssKeys) => makeClientWith(session, { ssKeys });

async function ownKeys(token, userId) {
    return api("POST", "/keys/query", token, { device_keys: { [userId]: [] } });
}

let step = "start";
const clients = [];

async function run() {
    const tag = Math.random().toString(16).slice(2, 10);
    const localpart = `alice_js_${tag}`;
    const password = `pw-${tag}-${Math.random().toString(36).slice(2)}`;

    step = "register alice (m.login.dummy)";
    let r = await api("POST", "/register", null, {
        username: localpart,
        password,
        auth: { type: "m.login.dummy" },
        initial_device_display_name: "js first device",
    });
    check(step, r.status === 200 && r.json.access_token && r.json.device_id, "200 with access_token and device_id", r);
    const s1 = r.json;
    const userId = s1.user_id;

    // --- First device: cross-signing, secret storage, key backup ---------------------------
    const ssKeys1 = new Map();
    const c1 = await makeClient(s1, ssKeys1);
    clients.push(c1);
    const crypto1 = c1.getCrypto();
    say(`   matrix-js-sdk ${sdkVersion}, crypto ${crypto1?.getVersion?.()}`);
    check("Rust crypto initialised", !!crypto1 && crypto1.getVersion().includes("Rust"), "a Rust CryptoApi", crypto1?.getVersion?.());
    await startAndWait(c1, "alice (device 1)");

    step = "device 1's keys are uploaded (keys/upload, seen in keys/query)";
    await poll(step, `device ${s1.device_id} with ed25519 keys in keys/query`, async () => {
        const q = await ownKeys(s1.access_token, userId);
        const d = q.json?.device_keys?.[userId]?.[s1.device_id];
        return { done: q.status === 200 && d && d.keys?.[`ed25519:${s1.device_id}`], got: q };
    });
    ok(step);

    step = "alice bootstraps cross-signing (keys/device_signing/upload with UIA m.login.password)";
    let uiaCalls = 0;
    await crypto1.bootstrapCrossSigning({
        authUploadDeviceSigningKeys: async (makeRequest) => {
            uiaCalls++;
            await makeRequest({
                type: "m.login.password",
                identifier: { type: "m.id.user", user: userId },
                password,
            });
        },
    });
    check(step, uiaCalls >= 1 && (await crypto1.isCrossSigningReady()), "the UIA callback used and isCrossSigningReady()", { uiaCalls, status: await crypto1.getCrossSigningStatus() });

    step = "keys/query shows alice's master/self-signing/user-signing keys and device 1 signed";
    const q1 = await poll(step, "master, self_signing, user_signing keys and a self-signing signature on device 1", async () => {
        const q = await ownKeys(s1.access_token, userId);
        const j = q.json || {};
        const ssk = j.self_signing_keys?.[userId];
        const sskId = ssk && Object.keys(ssk.keys || {})[0];
        const dev = j.device_keys?.[userId]?.[s1.device_id];
        return {
            done: j.master_keys?.[userId] && ssk && j.user_signing_keys?.[userId] && sskId && dev?.signatures?.[userId]?.[sskId],
            value: j,
            got: q,
        };
    });
    ok(step);
    step = "device 1 is cross-signed by alice's own identity (client side)";
    await poll(step, "getDeviceVerificationStatus(device 1).crossSigningVerified", async () => {
        const st = await crypto1.getDeviceVerificationStatus(userId, s1.device_id);
        return { done: st?.crossSigningVerified, got: st };
    });
    ok(step);

    step = "alice bootstraps secret storage with a new key backup";
    let recovery;
    await crypto1.bootstrapSecretStorage({
        createSecretStorageKey: async () => {
            recovery = await crypto1.createRecoveryKeyFromPassphrase();
            return recovery;
        },
        setupNewKeyBackup: true,
    });
    // resetKeyBackup() enables the new backup in the background: ask again, bounded.
    const backupVersion = await poll(step, "getActiveSessionBackupVersion() set", async () => {
        const v = await crypto1.getActiveSessionBackupVersion();
        if (!v) await crypto1.checkKeyBackupAndEnable();
        return { done: !!v, value: v, got: v };
    });
    check(step, recovery?.encodedPrivateKey && backupVersion && (await crypto1.isSecretStorageReady()), "a recovery key, an active backup version and isSecretStorageReady()", {
        recovery: !!recovery,
        backupVersion,
        ready: await crypto1.isSecretStorageReady(),
    });

    step = "GET room_keys/version shows the backup";
    r = await api("GET", "/room_keys/version", s1.access_token);
    check(step, r.status === 200 && r.json.version === backupVersion && r.json.algorithm === "m.megolm_backup.v1.curve25519-aes-sha2" && r.json.auth_data?.public_key, `version ${backupVersion}, algorithm m.megolm_backup.v1.curve25519-aes-sha2, auth_data.public_key`, r);
    step = "the backup's auth_data is signed by device 1 and alice's master key";
    const sigs = r.json.auth_data?.signatures?.[userId] || {};
    check(step, sigs[`ed25519:${s1.device_id}`] && Object.keys(sigs).length >= 2, "signatures by the device and the master key", sigs);

    step = "secret storage lives in account data";
    r = await api("GET", `/user/${encodeURIComponent(userId)}/account_data/m.secret_storage.default_key`, s1.access_token);
    const keyId = r.json?.key;
    const r2 = await api("GET", `/user/${encodeURIComponent(userId)}/account_data/m.megolm_backup.v1`, s1.access_token);
    const r3 = await api("GET", `/user/${encodeURIComponent(userId)}/account_data/m.cross_signing.master`, s1.access_token);
    check(step, r.status === 200 && keyId && r2.status === 200 && r2.json?.encrypted?.[keyId] && r3.status === 200 && r3.json?.encrypted?.[keyId], `m.secret_storage.default_key, and m.megolm_backup.v1 / m.cross_signing.master encrypted with key ${keyId}`, { default_key: r, backup: r2.status, master: r3.status });

    // --- Encrypted room, one message, its key in the backup --------------------------------
    step = "alice creates an encrypted room";
    const { room_id: roomId } = await c1.createRoom({
        name: `js e2ee backup ${tag}`,
        initial_state: [{ type: "m.room.encryption", state_key: "", content: { algorithm: "m.megolm.v1.aes-sha2" } }],
    });
    await poll(step, "the room in the client, encryption enabled", async () => ({
        done: c1.getRoom(roomId) && (await crypto1.isEncryptionEnabledInRoom(roomId)),
    }));
    ok(step);

    const body = `backed-up secret ${tag}`;
    step = "alice sends an encrypted message";
    const { event_id: eventId } = await c1.sendTextMessage(roomId, body);
    r = await api("GET", `/rooms/${encodeURIComponent(roomId)}/event/${encodeURIComponent(eventId)}`, s1.access_token);
    check(step, r.status === 200 && r.json.type === "m.room.encrypted" && !JSON.stringify(r.json).includes(body), "an m.room.encrypted event on the server without the plaintext", r);

    const tSent = Date.now();
    step = "the room key is uploaded to the backup (GET room_keys/keys)";
    const backedUp = await poll(step, `a session for ${roomId} in backup version ${backupVersion}`, async () => {
        const k = await api("GET", `/room_keys/keys?version=${encodeURIComponent(backupVersion)}`, s1.access_token);
        const sessions = k.json?.rooms?.[roomId]?.sessions || {};
        return { done: k.status === 200 && Object.keys(sessions).length >= 1, value: sessions, got: k };
    }, BACKUP_WAIT_MS, 500);
    say(`   room key in the backup ${((Date.now() - tSent) / 1000).toFixed(1)} s after sending`);
    const [sessionId, sessionData] = Object.entries(backedUp)[0];
    check(step, sessionData.session_data?.ciphertext && sessionData.session_data?.ephemeral && sessionData.session_data?.mac !== undefined, "session_data with ciphertext/ephemeral/mac", sessionData);
    r = await api("GET", `/room_keys/version`, s1.access_token);
    check("room_keys/version counts the key (count >= 1, etag set)", r.status === 200 && r.json.count >= 1 && typeof r.json.etag === "string", "count >= 1 and an etag", r);
    r = await api("GET", `/room_keys/keys/${encodeURIComponent(roomId)}/${encodeURIComponent(sessionId)}?version=${encodeURIComponent(backupVersion)}`, s1.access_token);
    check("GET room_keys/keys/{roomId}/{sessionId} returns the same session", r.status === 200 && r.json.session_data?.ciphertext === sessionData.session_data.ciphertext, "the same session_data", r);

    // --- New device: restore the backup and decrypt the old message ------------------------
    // Device 1 goes offline first, so the only way to the room key is the backup (not a
    // key forwarded by device 1 on request).
    c1.stopClient();
    step = "alice logs in on a new device (m.login.password)";
    r = await api("POST", "/login", null, {
        type: "m.login.password",
        identifier: { type: "m.id.user", user: localpart },
        password,
        initial_device_display_name: "js second device",
    });
    check(step, r.status === 200 && r.json.device_id && r.json.device_id !== s1.device_id, "200 with a new device_id", r);
    const s2 = r.json;
    // The new device knows only the recovery key (as the user would type it in).
    const ssKeys2 = new Map([["*", decodeRecoveryKey(recovery.encodedPrivateKey)]]);
    const c2 = await makeClient(s2, ssKeys2);
    clients.push(c2);
    const crypto2 = c2.getCrypto();
    await startAndWait(c2, "alice (device 2)");

    step = "device 2 sees the old message but cannot decrypt it yet";
    const msgs = await api("GET", `/rooms/${encodeURIComponent(roomId)}/messages?dir=b&limit=20`, s2.access_token);
    const raw = (msgs.json?.chunk || []).find((e) => e.event_id === eventId);
    check(step, msgs.status === 200 && raw && raw.type === "m.room.encrypted", `${eventId} (m.room.encrypted) in /messages`, msgs);
    const mapper = c2.getEventMapper({ decrypt: false });
    const before = mapper(raw);
    await c2.decryptEventIfNeeded(before);
    check("without the backup, device 2 fails to decrypt it", before.isDecryptionFailure(), "a decryption failure (no room key yet)", before.getContent());

    step = "device 2 reads the backup key from secret storage with the recovery key";
    await crypto2.loadSessionBackupPrivateKeyFromSecretStorage();
    const chk = await crypto2.checkKeyBackupAndEnable();
    check(step, chk?.backupInfo?.version === backupVersion, `checkKeyBackupAndEnable() finding version ${backupVersion}`, chk);

    step = "device 2 restores the key backup (restoreKeyBackup)";
    const res = await crypto2.restoreKeyBackup();
    check(step, res.total >= 1 && res.imported >= 1, "total >= 1 and imported >= 1", res);

    step = "device 2 decrypts the old message with the restored key";
    const after = c2.getEventMapper({ decrypt: false })(raw);
    await c2.decryptEventIfNeeded(after);
    check(step, !after.isDecryptionFailure() && after.getType() === "m.room.message" && after.getContent().body === body, `m.room.message with body ${JSON.stringify(body)}`, { type: after.getType(), content: after.getContent() });

    step = "device 2 signs itself with the cross-signing keys from secret storage";
    await crypto2.bootstrapCrossSigning({});
    await poll(step, `device ${s2.device_id} signed by the self-signing key in keys/query`, async () => {
        const q = await ownKeys(s2.access_token, userId);
        const j = q.json || {};
        const sskId = Object.keys(j.self_signing_keys?.[userId]?.keys || {})[0];
        const d = j.device_keys?.[userId]?.[s2.device_id];
        return { done: sskId && d?.signatures?.[userId]?.[sskId], got: q };
    });
    ok(step);
    step = "device 2 counts itself as cross-signing verified";
    await poll(step, "getDeviceVerificationStatus(device 2).crossSigningVerified on device 2", async () => {
        const st = await crypto2.getDeviceVerificationStatus(userId, s2.device_id);
        return { done: st?.crossSigningVerified, got: st };
    });
    ok(step);
    return 0;
}

await main(run, { timeoutMs: OVERALL_TIMEOUT_MS, currentStep: () => step, clients });
