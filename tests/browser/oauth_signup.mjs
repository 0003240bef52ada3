// The OAuth 2.0 sign-up flow in a real browser, against Hearth's own pages (no Element Web
// bundle needed: the flow is marked `standalone` in flows.mjs). What a native Matrix client such
// as Element X does: discover the server metadata, register a client (a loopback redirect URI,
// which matches any port), open the authorization URL with `prompt=create` in the browser; the
// user creates an account on the sign-up page and allows access on the consent page; the
// browser is sent to the redirect URI with a code and the state; the client exchanges the code
// with its PKCE verifier and the access token works for `whoami`.
//
// The redirect lands on the Hearth origin (the loopback redirect URI with Hearth's port), so the
// browser never leaves the allowed origins; Hearth answers that /callback with a 404 (listed in
// the run's summary), and the address the browser was sent to is what the test reads.
import crypto from "node:crypto";

const PASSWORD = "correct horse battery staple 7";

async function json(resp, what) {
    const text = await resp.text();
    if (!resp.ok) throw new Error(`${what}: ${resp.status} ${text}`);
    return JSON.parse(text);
}

const b64url = (buf) => buf.toString("base64").replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");

export async function oauthSignup(t) {
    const hs = new URL(t.hsUrl);
    t.step("discover the authorization server and register a client");
    const meta = await json(await fetch(`${t.hsUrl}/_matrix/client/v1/auth_metadata`), "auth_metadata");
    if (!(meta.prompt_values_supported || []).includes("create")) throw new Error("prompt=create not offered");
    const client = await json(
        await fetch(meta.registration_endpoint, {
            method: "POST",
            headers: { "Content-Type": "application/json" },
            body: JSON.stringify({
                client_name: "Browser test client",
                client_uri: "https://example.com/",
                redirect_uris: ["http://127.0.0.1/callback"],
                application_type: "native",
                token_endpoint_auth_method: "none",
                response_types: ["code"],
                grant_types: ["authorization_code", "refresh_token"],
            }),
        }),
        "client registration",
    );

    const verifier = b64url(crypto.randomBytes(48));
    const challenge = b64url(crypto.createHash("sha256").update(verifier).digest());
    const state = b64url(crypto.randomBytes(12));
    const deviceId = `BROWSER${crypto.randomBytes(4).toString("hex").toUpperCase()}`;
    const redirectUri = `http://127.0.0.1:${hs.port}/callback`;
    const authorize = new URL(meta.authorization_endpoint);
    for (const [k, v] of Object.entries({
        response_type: "code",
        response_mode: "query",
        client_id: client.client_id,
        redirect_uri: redirectUri,
        scope: `urn:matrix:client:api:* urn:matrix:client:device:${deviceId}`,
        state,
        code_challenge: challenge,
        code_challenge_method: "S256",
        prompt: "create",
    })) {
        authorize.searchParams.set(k, v);
    }

    const page = await t.session("oauth");

    t.step("open the authorization URL: the sign-up page");
    await page.goto(authorize.toString());
    await page.getByRole("heading", { name: /Create an account/ }).waitFor();
    const username = `oauth${crypto.randomBytes(4).toString("hex")}`;
    // Labelled fields (what a screen reader announces) are how the test finds them.
    await page.getByLabel("Username").fill(username);
    await page.getByLabel("Password").fill(PASSWORD);
    t.step(`create account ${username}`);
    await page.getByRole("button", { name: "Create account" }).click();

    t.step("consent page: allow");
    await page.getByRole("heading", { name: "Allow access?" }).waitFor();
    const consentText = await page.locator("main").innerText();
    for (const expected of ["Browser test client", `@${username}:${t.serverName}`, deviceId]) {
        if (!consentText.includes(expected)) throw new Error(`consent page does not show ${expected}: ${consentText}`);
    }
    await page.getByRole("button", { name: "Allow", exact: true }).click();
    await page.waitForURL((u) => u.pathname === "/callback", { timeout: 30_000 });
    const callback = new URL(page.url());
    const code = callback.searchParams.get("code");
    if (callback.searchParams.get("state") !== state) throw new Error(`state not returned: ${callback}`);
    if (!code) throw new Error(`no code in the redirect: ${callback}`);
    t.step("redirected with a code; exchange it");

    const tokens = await json(
        await fetch(meta.token_endpoint, {
            method: "POST",
            headers: { "Content-Type": "application/x-www-form-urlencoded" },
            body: new URLSearchParams({
                grant_type: "authorization_code",
                code,
                redirect_uri: redirectUri,
                client_id: client.client_id,
                code_verifier: verifier,
            }),
        }),
        "token exchange",
    );
    const me = await json(
        await fetch(`${t.hsUrl}/_matrix/client/v3/account/whoami`, {
            headers: { Authorization: `Bearer ${tokens.access_token}` },
        }),
        "whoami",
    );
    if (me.user_id !== `@${username}:${t.serverName}` || me.device_id !== deviceId) {
        throw new Error(`whoami: ${JSON.stringify(me)}`);
    }
    t.step(`signed in as ${me.user_id} on ${me.device_id}`);
}
