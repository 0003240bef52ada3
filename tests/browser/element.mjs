// Helpers that drive Element Web 1.11.88 through its UI, as a person would, for the
// browser flows in flows.mjs. Selectors are roles, aria-labels, data-testids and the
// component class names from Element's own source (src/components/...), the same ones its
// playwright suite uses. Every wait is bounded; failures throw an Error saying what was
// awaited.

export const SHORT = 20_000; // a UI step
export const LONG = 90_000; // a step that involves the server, crypto or another user

export function randomName(prefix) {
    return `${prefix}_${Math.random().toString(36).slice(2, 8)}`;
}

/** An error that ends a wait at once (Element showed a failure), not one to retry past. */
export class Fatal extends Error {}

/** Polls fn() until it returns a truthy value; throws `what` on time-out, or a Fatal at once. */
export async function waitUntil(what, fn, { timeout = LONG, interval = 250 } = {}) {
    const deadline = Date.now() + timeout;
    let last;
    for (;;) {
        try {
            const v = await fn();
            if (v) return v;
        } catch (e) {
            if (e instanceof Fatal) throw e;
            last = e;
        }
        if (Date.now() > deadline) {
            throw new Error(`timed out after ${timeout} ms waiting for ${what}${last ? ` (last error: ${last.message})` : ""}`);
        }
        await new Promise((r) => setTimeout(r, interval));
    }
}

/** Waits for a locator to be visible, with a readable error. */
export async function visible(locator, what, timeout = SHORT) {
    try {
        await locator.first().waitFor({ state: "visible", timeout });
    } catch (e) {
        throw new Error(`${what} not visible after ${timeout} ms`);
    }
    return locator.first();
}

/** Runs an expression against the page's MatrixClient (window.mxMatrixClientPeg). */
export function withClient(page, fn, arg) {
    return page.evaluate(
        ([src, a]) => {
            const cli = window.mxMatrixClientPeg.get();
            // eslint-disable-next-line no-new-func
            return new Function("cli", "arg", `return (${src})(cli, arg);`)(cli, a);
        },
        [fn.toString(), arg],
    );
}

/** Waits until Element shows the logged-in app (home or a room), failing fast on a crypto setup error. */
export async function waitForApp(page, timeout = LONG) {
    await waitUntil(
        "Element's main view after login",
        async () => {
            if (await page.getByText("Unable to set up keys").isVisible()) {
                throw new Fatal("Element says 'Unable to set up keys' (cross-signing bootstrap failed)");
            }
            return page.getByRole("button", { name: "User menu" }).isVisible();
        },
        { timeout },
    );
}

/** Registers `username` through #/register and waits for the app. */
export async function register(page, elementUrl, username, password) {
    await page.goto(`${elementUrl}/#/register`);
    const user = await visible(page.getByRole("textbox", { name: "Username", exact: true }), "registration form", LONG);
    await user.fill(username);
    await page.getByPlaceholder("Password", { exact: true }).fill(password);
    await page.getByPlaceholder("Confirm password", { exact: true }).fill(password);
    await page.getByRole("button", { name: "Register", exact: true }).click();
    await waitForApp(page);
    const cli = await withClient(page, (cli) => ({ userId: cli.getUserId(), deviceId: cli.getDeviceId() }));
    if (!cli.userId || !cli.userId.startsWith(`@${username}:`)) {
        throw new Error(`registered as ${cli.userId}, expected @${username}:…`);
    }
    return cli;
}

/** Logs in through #/login. Leaves the page on whatever Element shows next. */
export async function login(page, elementUrl, username, password) {
    await page.goto(`${elementUrl}/#/login`);
    await (await visible(page.getByRole("textbox", { name: "Username" }), "login form", LONG)).fill(username);
    await page.getByPlaceholder("Password").fill(password);
    await page.getByRole("button", { name: "Sign in", exact: true }).click();
}

/** Whether the current session's own device is verified by the user's cross-signing. */
export function ownDeviceVerified(page) {
    return withClient(page, async (cli) => {
        const st = await cli.getCrypto().getDeviceVerificationStatus(cli.getUserId(), cli.getDeviceId());
        return Boolean(st && st.crossSigningVerified);
    });
}

/** Alice: "Start chat" with `mxid`, send the first message, wait for the real room. Returns its id. */
export async function startDm(page, mxid, firstMessage) {
    await page.locator(".mx_RoomList").getByRole("button", { name: "Start chat" }).click();
    const input = await visible(page.getByTestId("invite-dialog-input"), "invite dialog");
    await input.fill(mxid);
    await input.press("Enter"); // turns the MXID into a pill (after a profile lookup)
    await visible(page.locator(".mx_InviteDialog_userTile_pill"), `pill for ${mxid}`);
    await page.getByRole("button", { name: "Go", exact: true }).click();
    // Element opens a local room; the real one is created by the first message.
    await sendMessage(page, firstMessage);
    const roomId = await waitUntil("a real room id in the URL", async () => {
        const m = decodeURIComponent(new URL(page.url()).hash).match(/#\/room\/(![^/?]+)/);
        return m && m[1];
    });
    return roomId;
}

export function composer(page) {
    return page.locator(".mx_MessageComposer .mx_BasicMessageComposer_input");
}

/** Sends `text` from the open room and waits until Element marks it sent. */
export async function sendMessage(page, text) {
    const box = await visible(composer(page), "message composer", LONG);
    await box.click();
    await box.fill(text);
    await box.press("Enter");
    await waitForSent(page, text);
}

/**
 * Waits until the event tile with `text` is sent: Element gives a tile its server event id
 * (data-scroll-tokens="$…") only once the send succeeded. Fails at once on "not sent".
 */
export async function waitForSent(page, text, timeout = LONG) {
    const sent = page.locator('.mx_RoomView_body .mx_EventTile[data-scroll-tokens^="$"]', { hasText: text });
    await waitUntil(
        `"${text}" to be sent`,
        async () => {
            if (await page.getByText("Some of your messages have not been sent").isVisible()) {
                throw new Fatal(`Element says "Some of your messages have not been sent" (sending "${text}")`);
            }
            return sent.first().isVisible();
        },
        { timeout },
    );
}

/** Waits for a decrypted/plain message body with `text` in the open room's timeline. */
export async function waitForMessage(page, text, timeout = LONG) {
    await visible(
        page.locator(".mx_RoomView_body .mx_EventTile .mx_EventTile_body", { hasText: text }),
        `message "${text}" in the timeline`,
        timeout,
    );
}

/** Whether the open room shows any undecryptable event. */
export function utdCount(page) {
    return page.locator(".mx_RoomView_body .mx_DecryptionFailureBody").count();
}

/**
 * Bob: open the pending invite from the room list and accept it. The invite must be named
 * after `inviterName` (Element names a DM invite from the inviter's member event in the
 * invite's stripped state, "Empty room" without it).
 */
export async function acceptInvite(page, inviterName, timeout = LONG) {
    const invites = page.getByRole("group", { name: "Invites" });
    const tile = await visible(invites.locator(".mx_RoomTile"), "an invite in the room list", timeout);
    const name = (await tile.locator(".mx_RoomTile_title").textContent()).trim();
    if (!name.includes(inviterName)) {
        throw new Error(`the invite is shown as "${name}", expected the inviter's name ${inviterName}`);
    }
    await tile.click();
    const accept = page
        .locator(".mx_RoomPreviewBar")
        .getByRole("button", { name: /^(Start chatting|Accept)$/ });
    await (await visible(accept, "the invite's accept button")).click();
    await visible(composer(page), "composer of the joined room", LONG);
}

/** Waits until the room shows it is encrypted (the "Encryption enabled" notice). */
export async function expectEncryptedRoom(page) {
    await visible(
        page.locator(".mx_RoomView_body .mx_cryptoEvent").getByText("Encryption enabled"),
        `"Encryption enabled" notice`,
        LONG,
    );
}

/** Opens a room by id through the URL bar (after a reload Element reopens the last room anyway). */
export async function openRoom(page, elementUrl, roomId) {
    await page.goto(`${elementUrl}/#/room/${roomId}`);
    await visible(composer(page), `room ${roomId}`, LONG);
}

export async function openUserMenuItem(page, name) {
    await page.getByRole("button", { name: "User menu" }).click();
    await (
        await visible(page.locator(".mx_UserMenu_contextMenu").getByRole("menuitem", { name }), `menu item ${name}`)
    ).click();
}

/** Closes every open dialog (Escape), used after settings dialogs. */
export async function closeDialogs(page) {
    for (let i = 0; i < 3 && (await page.locator(".mx_Dialog").count()) > 0; i++) {
        await page.keyboard.press("Escape");
        await page.waitForTimeout(200);
    }
}

/**
 * A valid PNG (RGB, w x h), built with zlib only: a colour gradient, plus pseudo-random noise
 * when `noisy` (so the file stays large and Element uploads a separate, smaller thumbnail).
 */
export async function makePng(w, h, noisy = false) {
    const zlib = await import("node:zlib");
    const crcTable = Array.from({ length: 256 }, (_, n) => {
        let c = n;
        for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
        return c >>> 0;
    });
    const crc = (buf) => {
        let c = 0xffffffff;
        for (const b of buf) c = crcTable[(c ^ b) & 0xff] ^ (c >>> 8);
        return (c ^ 0xffffffff) >>> 0;
    };
    const chunk = (type, data) => {
        const len = Buffer.alloc(4);
        len.writeUInt32BE(data.length);
        const td = Buffer.concat([Buffer.from(type, "ascii"), data]);
        const c = Buffer.alloc(4);
        c.writeUInt32BE(crc(td));
        return Buffer.concat([len, td, c]);
    };
    const ihdr = Buffer.alloc(13);
    ihdr.writeUInt32BE(w, 0);
    ihdr.writeUInt32BE(h, 4);
    ihdr[8] = 8; // bit depth
    ihdr[9] = 2; // RGB
    const raw = Buffer.alloc(h * (1 + 3 * w));
    let seed = 12345;
    const noise = () => {
        seed = (seed * 1103515245 + 12345) >>> 0;
        return noisy ? (seed >>> 24) & 0x3f : 0;
    };
    for (let y = 0; y < h; y++) {
        const row = y * (1 + 3 * w);
        raw[row] = 0; // filter: none
        for (let x = 0; x < w; x++) {
            raw[row + 1 + 3 * x] = Math.floor((190 * x) / w) + noise();
            raw[row + 2 + 3 * x] = Math.floor((190 * y) / h) + noise();
            raw[row + 3 + 3 * x] = 120 + noise();
        }
    }
    return Buffer.concat([
        Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]),
        chunk("IHDR", ihdr),
        chunk("IDAT", zlib.deflateSync(raw)),
        chunk("IEND", Buffer.alloc(0)),
    ]);
}
