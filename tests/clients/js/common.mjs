// Helpers shared by the matrix-js-sdk client scripts (js/*.mjs) run by tests/clients/run.sh.
//
// Importing this module reads the homeserver URL from the command line (loopback only,
// else exit 2), loads matrix-js-sdk from $HEARTH_CLIENTS_JS/node_modules (default
// ~/.cache/hearth-clients-js, where run.sh installs js/package.json) and silences the SDK's
// console output, keeping its warnings/errors for the failure report.
//
// Output conventions: each check prints `ok: <check>`; the first failing one prints
// `FAIL: <check>: expected <what>` with what came back, then the SDK's last warnings and
// the failed HTTP requests, and the script exits 1 (see `main`).

import fs from "node:fs";
import path from "node:path";
import os from "node:os";
import { pathToFileURL } from "node:url";

const script = path.basename(process.argv[1] || "script.mjs");
export const hs = (process.argv[2] || "").replace(/\/+$/, "");
if (!hs) {
    console.error(`usage: ${script} HOMESERVER_URL`);
    process.exit(2);
}
{
    const host = new URL(hs).hostname;
    if (!(host === "localhost" || host === "127.0.0.1" || host === "[::1]" || host.startsWith("127."))) {
        console.error(`refusing non-loopback homeserver ${hs}`);
        process.exit(2);
    }
}

export const jsDir = process.env.HEARTH_CLIENTS_JS || path.join(os.homedir(), ".cache", "hearth-clients-js");
export const modUrl = (p) => pathToFileURL(path.join(jsDir, "node_modules", p)).href;
export const sdk = await import(modUrl("matrix-js-sdk/lib/index.js"));
export const sdkVersion = JSON.parse(fs.readFileSync(path.join(jsDir, "node_modules", "matrix-js-sdk", "package.json"), "utf8")).version;

export const say = (line) => process.stdout.write(`${line}\n`);
export function safeJson(x) {
    try {
        return JSON.stringify(x);
    } catch {
        return String(x);
    }
}
export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

// Quiet the SDK; keep its warnings/errors to show on failure.
export const logs = [];
const keep = (lvl) => (...m) => {
    logs.push(`${lvl} ${m.map((x) => (typeof x === "string" ? x : x instanceof Error ? `${x.name}: ${x.message}` : safeJson(x))).join(" ")}`.slice(0, 500));
    if (logs.length > 400) logs.shift();
};
export function makeLogger() {
    const l = { trace() {}, debug() {}, info() {}, log() {}, warn: keep("WARN"), error: keep("ERROR") };
    l.getChild = () => l;
    return l;
}
// The SDK (and the Rust crypto's tracing) write to console.*: keep those lines for the
// failure report; this script's own lines go out with `say`.
for (const [m, lvl] of [["log", null], ["info", null], ["debug", null], ["trace", null], ["warn", "WARN"], ["error", "ERROR"]]) {
    console[m] = lvl ? keep(lvl) : () => {};
}

// The SDK's requests go through fetchFn: every answer >= 400 is kept (request, status, body)
// for the failure report.
export const httpErrors = [];
async function noteError(method, url, res) {
    if (res.status < 400) return;
    let body = "";
    try {
        body = (await res.clone().text()).slice(0, 300);
    } catch {}
    httpErrors.push(`${method} ${url.pathname}${url.search} -> ${res.status} ${body}`);
    if (httpErrors.length > 100) httpErrors.shift();
}

// If Hearth answers GET /pushrules/ with 404 M_UNRECOGNIZED (it served no push rules at
// first), the js-sdk's startClient cannot get past that: answer that one request
// client-side with an empty rule set (the SDK then uses its built-in defaults) and say so
// in the output.
export const stubbed = new Set();
export async function fetchFn(input, init) {
    const url = new URL(typeof input === "string" ? input : input.url ?? String(input));
    const method = (init?.method || "GET").toUpperCase();
    const real = await fetch(input, init);
    if (method === "GET" && url.pathname.replace(/\/+$/, "") === "/_matrix/client/v3/pushrules" && real.status === 404) {
        stubbed.add(`GET ${url.pathname} (404 from hearth)`);
        return new Response(JSON.stringify({ global: {} }), { status: 200, headers: { "Content-Type": "application/json" } });
    }
    await noteError(method, url, real);
    return real;
}

export class StepFailed extends Error {}

// An SDK error (a MatrixError carries the HTTP status and the body) as one line.
export function errText(e) {
    return `${e?.name}: ${e?.message}${e?.httpStatus ? ` (http ${e.httpStatus} ${safeJson(e.data)})` : ""}`;
}

export const ok = (step) => say(`ok: ${step}`);
export function fail(step, why, got) {
    let msg = `FAIL: ${step}: expected ${why}`;
    if (got !== undefined) msg += `\n  got: ${typeof got === "string" ? got : safeJson(got)}`;
    return new StepFailed(msg);
}
export function check(step, cond, why, got) {
    if (!cond) throw fail(step, why, got);
    ok(step);
}

// A client-server API call outside the SDK: { status, json }.
export async function api(method, p, token, body) {
    const headers = { "Content-Type": "application/json" };
    if (token) headers.Authorization = `Bearer ${token}`;
    const r = await fetch(`${hs}/_matrix/client/v3${p}`, {
        method,
        headers,
        body: body === undefined ? undefined : JSON.stringify(body),
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

// Calls fn until it returns { done: truthy } (then gives its value), at most `timeout` ms.
export async function poll(step, why, fn, timeout = 15_000, interval = 250) {
    const deadline = Date.now() + timeout;
    let last;
    while (Date.now() < deadline) {
        last = await fn();
        if (last && last.done) return last.value;
        await sleep(interval);
    }
    throw new StepFailed(`FAIL: ${step}: expected ${why} within ${timeout / 1000}s\n  last: ${safeJson(last?.got ?? last)}`);
}

// Register a fresh user with m.login.dummy: the /register answer plus the password.
export async function register(localpart, deviceName) {
    const password = `pw-${localpart}-${Math.random().toString(36).slice(2)}`;
    const r = await api("POST", "/register", null, {
        username: localpart,
        password,
        auth: { type: "m.login.dummy" },
        initial_device_display_name: deviceName,
    });
    return { r, session: r.status === 200 ? { ...r.json, localpart, password } : null };
}

// A js-sdk client with Rust crypto (in-memory store) for an existing access token.
// `ssKeys` (a Map) holds secret-storage keys it learns or is given, handed out by
// getSecretStorageKey; `opts` is added to createClient's options.
export async function makeClient(session, { ssKeys = new Map(), opts = {} } = {}) {
    const client = sdk.createClient({
        baseUrl: hs,
        userId: session.user_id,
        accessToken: session.access_token,
        deviceId: session.device_id,
        logger: makeLogger(),
        fetchFn,
        cryptoCallbacks: {
            getSecretStorageKey: async ({ keys }) => {
                for (const id of Object.keys(keys)) {
                    if (ssKeys.has(id)) return [id, ssKeys.get(id)];
                }
                // A key restored from the recovery key alone (its id unknown yet).
                if (ssKeys.has("*")) return [Object.keys(keys)[0], ssKeys.get("*")];
                return null;
            },
            cacheSecretStorageKey: (keyId, _info, key) => ssKeys.set(keyId, key),
        },
        ...opts,
    });
    await client.initRustCrypto({ useIndexedDB: false });
    return client;
}

// startClient(startOpts) and wait for the first sync (PREPARED), at most waitMs.
export async function startAndWait(client, who, startOpts = {}, waitMs = 15_000) {
    const step = `${who}'s client syncs (startClient)`;
    const prepared = new Promise((resolve, reject) => {
        const t = setTimeout(() => reject(new StepFailed(`FAIL: ${step}: expected sync state PREPARED within ${waitMs / 1000}s`)), waitMs);
        client.on(sdk.ClientEvent.Sync, (state, _prev, data) => {
            if (state === "PREPARED" || state === "SYNCING") {
                clearTimeout(t);
                resolve();
            } else if (state === "ERROR") {
                clearTimeout(t);
                reject(new StepFailed(`FAIL: ${step}: expected sync to work\n  got: ERROR ${data?.error}`));
            }
        });
    });
    await client.startClient({ initialSyncLimit: 20, lazyLoadMembers: false, ...startOpts });
    await prepared;
    ok(step);
}

// The device's keys are on the server (keys/upload, seen in keys/query).
export async function waitDeviceKeys(who, session, waitMs = 15_000) {
    const step = `${who}'s device keys are uploaded (keys/upload, seen in keys/query)`;
    await poll(step, `device ${session.device_id} with ed25519 keys in keys/query`, async () => {
        const q = await api("POST", "/keys/query", session.access_token, { device_keys: { [session.user_id]: [] } });
        const d = q.json?.device_keys?.[session.user_id]?.[session.device_id];
        return { done: q.status === 200 && d && d.keys?.[`ed25519:${session.device_id}`], got: q };
    }, waitMs);
    ok(step);
}

// SDK log lines that say nothing about the server: push-rule defaults (see fetchFn) and
// MatrixRTC's complaint about state seen before its room.
const NOISE = [/default global .* push rule/, /MatrixRTCSessionManager\] Got room state event for unknown room/];
// Failed requests every run makes: no key backup (the SDK checks for one).
const EXPECTED_ERRORS = [/^GET \/_matrix\/client\/v3\/room_keys\/version -> 404 /];

export function dumpLogs() {
    // First line of each (the Rust crypto's lines carry their source location after it).
    const shown = logs.filter((l) => !NOISE.some((re) => re.test(l))).map((l) => l.split("\n")[0]);
    if (shown.length) {
        say(`js-sdk warnings/errors (last ${Math.min(shown.length, 15)} of ${shown.length}):`);
        for (const l of shown.slice(-15)) say(`  ${l}`);
    }
    const failed = httpErrors.filter((l) => !EXPECTED_ERRORS.some((re) => re.test(l)));
    if (failed.length) {
        say(`failed requests made by the js-sdk (last ${Math.min(failed.length, 10)} of ${failed.length}):`);
        for (const l of failed.slice(-10)) say(`  ${l}`);
    }
}

// Run `run` (returns an exit status) bounded by timeoutMs; report the failing step (from
// currentStep()) on an exception or timeout; stop the clients; exit.
export async function main(run, { timeoutMs, currentStep, clients }) {
    let status;
    const timer = setTimeout(() => {
        say(`FAIL: ${currentStep()}: timed out after ${timeoutMs / 1000}s`);
        dumpLogs();
        process.exit(1);
    }, timeoutMs);
    try {
        status = await run();
    } catch (e) {
        if (e instanceof StepFailed) say(e.message);
        else say(`FAIL: ${currentStep()}: ${errText(e)}`);
        dumpLogs();
        status = 1;
    } finally {
        clearTimeout(timer);
        for (const s of stubbed) say(`note: stubbed client-side: ${s}`);
        for (const c of clients) {
            try {
                c.stopClient();
            } catch {}
        }
    }
    process.exit(status);
}
