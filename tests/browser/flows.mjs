// The browser flows run by runner.mjs: Element Web against Hearth, each a test of its own
// that registers fresh users (random names) through the UI, each user in its own browser
// context. `t` is the harness (runner.mjs): t.session(label) opens a page in a new context,
// t.step(text) logs progress, t.elementUrl / t.hsUrl are the two loopback origins.
//   dm      two users; Alice starts an (encrypted) DM, Bob accepts, reads, replies; both reload
//           and still read everything
//   image   a PNG uploaded into the encrypted DM: its encrypted thumbnail shows, decrypted,
//           in the other user's timeline
//   backup  Set up Secure Backup (recovery key); sign out, sign in, enter the key, old
//           encrypted messages decrypt again
//   verify  a second session of Alice verifies itself against the first by emoji; both see
//           their devices verified
//   oauth   (standalone: needs no Element Web bundle) Hearth's own OAuth 2.0 pages: a client
//           asks for prompt=create, the user signs up and consents, the browser is redirected
//           with a code that the client exchanges for a working access token (oauth_signup.mjs)
import {
    Fatal,
    LONG,
    SHORT,
    acceptInvite,
    closeDialogs,
    expectEncryptedRoom,
    login,
    makePng,
    openRoom,
    openUserMenuItem,
    ownDeviceVerified,
    randomName,
    register,
    sendMessage,
    startDm,
    utdCount,
    visible,
    waitForApp,
    waitForMessage,
    waitUntil,
    withClient,
} from "./element.mjs";
import { oauthSignup } from "./oauth_signup.mjs";

const PASSWORD = "correct horse battery staple 7";

/** Registers Alice and Bob, Alice opens a DM with Bob, Bob accepts and answers. */
async function setUpDm(t) {
    const aliceName = randomName("alice");
    const bobName = randomName("bob");
    const alice = await t.session("alice");
    const bob = await t.session("bob");
    t.step(`register ${aliceName} and ${bobName}`);
    await Promise.all([
        register(alice, t.elementUrl, aliceName, PASSWORD),
        register(bob, t.elementUrl, bobName, PASSWORD),
    ]);
    const bobId = `@${bobName}:${t.serverName}`;
    const first = `hello bob ${randomName("m")}`;
    t.step(`alice starts a DM with ${bobId}`);
    const roomId = await startDm(alice, bobId, first);
    await expectEncryptedRoom(alice);
    t.step(`bob accepts the invite to ${roomId} and reads`);
    await acceptInvite(bob, aliceName);
    await expectEncryptedRoom(bob);
    await waitForMessage(bob, first);
    const reply = `hi alice ${randomName("m")}`;
    t.step("bob replies");
    await sendMessage(bob, reply);
    await waitForMessage(alice, reply);
    return { alice, bob, aliceName, bobName, roomId, messages: [first, reply] };
}

async function expectNoUtd(page, who) {
    const n = await utdCount(page);
    if (n > 0) throw new Error(`${who} sees ${n} undecryptable message(s)`);
}

async function dm(t) {
    const { alice, bob, roomId, messages } = await setUpDm(t);
    for (const [who, page] of [
        ["alice", alice],
        ["bob", bob],
    ]) {
        t.step(`${who} reloads`);
        await page.reload();
        await waitForApp(page);
        await openRoom(page, t.elementUrl, roomId);
        for (const m of messages) await waitForMessage(page, m);
        await expectNoUtd(page, who);
    }
}

async function image(t) {
    const { alice, bob, roomId } = await setUpDm(t);
    // 1000x750 with noise (~2 MB): big enough that Element also uploads an (encrypted)
    // thumbnail, which is what the other side's timeline shows.
    const png = await makePng(1000, 750, true);
    t.step(`alice uploads a ${png.length}-byte PNG`);
    await alice
        .locator(".mx_MessageComposer_actions input[type='file']")
        .setInputFiles({ name: "gradient.png", mimeType: "image/png", buffer: png });
    await (await visible(alice.locator(".mx_Dialog").getByRole("button", { name: "Upload" }), "upload dialog")).click();
    await waitUntil("the image event to be sent", async () => {
        if (await alice.getByText("Some of your messages have not been sent").isVisible()) {
            throw new Fatal('Element says "Some of your messages have not been sent" (image)');
        }
        return alice
            .locator('.mx_RoomView_body .mx_EventTile[data-scroll-tokens^="$"] .mx_MImageBody')
            .first()
            .isVisible();
    });
    t.step("bob sees the picture");
    const img = bob.locator(".mx_RoomView_body .mx_EventTile .mx_MImageBody img").last();
    await visible(img, "the image in bob's timeline", LONG);
    const shown = await waitUntil("bob's image to load", async () => {
        const r = await img.evaluate((el) => ({
            complete: el.complete,
            w: el.naturalWidth,
            h: el.naturalHeight,
            src: el.currentSrc || el.src,
        }));
        return r.complete && r.w > 0 ? r : null;
    });
    const content = await withClient(
        bob,
        (cli, roomId) => {
            const ev = cli
                .getRoom(roomId)
                .getLiveTimeline()
                .getEvents()
                .filter((e) => e.getContent().msgtype === "m.image")
                .pop();
            return ev && { encrypted: ev.isEncrypted(), content: ev.getContent() };
        },
        roomId,
    );
    if (!content || !content.encrypted || !content.content.file) {
        throw new Error(`bob's image event is not an encrypted file: ${JSON.stringify(content)}`);
    }
    const info = content.content.info || {};
    if (!info.thumbnail_file) throw new Error(`the image has no encrypted thumbnail: ${JSON.stringify(info)}`);
    const tw = info.thumbnail_info?.w;
    const th = info.thumbnail_info?.h;
    if (shown.w !== tw || shown.h !== th) {
        throw new Error(`bob's timeline shows a ${shown.w}x${shown.h} image, the thumbnail is ${tw}x${th}`);
    }
    if (!shown.src.startsWith("blob:")) {
        throw new Error(`bob's image was not decrypted client-side (src ${shown.src})`);
    }
    t.step(`bob's timeline shows the decrypted ${shown.w}x${shown.h} thumbnail of the 1000x750 picture`);
}

/** Security & Privacy → Set up Secure Backup → recovery key. Returns the key. */
async function setUpSecureBackup(t, page) {
    await openUserMenuItem(page, "Security & Privacy");
    // The Secure Backup section's "Set up" (the "Set up Secure Backup" toast opens the same dialog).
    const setUp = page.locator(".mx_SecureBackupPanel_buttonRow").getByRole("button", { name: "Set up", exact: true });
    await (await visible(setUp, "Secure Backup's 'Set up' button", LONG)).click();
    const dialog = page.locator(".mx_Dialog");
    // "Generate a Security Key" is selected by default.
    await (await visible(dialog.getByRole("button", { name: "Continue" }), "backup dialog's Continue", LONG)).click();
    // Unless cross-signing was set up at registration, Element asks for the password here.
    const keyCode = dialog.locator(".mx_CreateSecretStorageDialog_recoveryKey code");
    await waitUntil("the recovery key (or a password prompt)", async () => {
        const pw = dialog.getByPlaceholder("Password");
        if (await pw.isVisible()) {
            t.step("backup dialog asks for the account password");
            await pw.fill(PASSWORD);
            await dialog.getByRole("button", { name: "Continue" }).click();
        }
        return keyCode.isVisible();
    });
    const key = (await keyCode.textContent()).trim();
    await dialog.getByRole("button", { name: "Copy" }).click();
    await dialog.getByRole("button", { name: "Continue" }).click();
    await visible(dialog.getByText("Secure Backup successful"), "Secure Backup successful", LONG);
    await dialog.getByRole("button", { name: "Done" }).click();
    await closeDialogs(page);
    return key;
}

async function backup(t) {
    const { alice, aliceName, roomId, messages } = await setUpDm(t);
    const own = `backed up ${randomName("m")}`;
    await sendMessage(alice, own);
    messages.push(own);
    t.step("alice sets up Secure Backup");
    const key = await setUpSecureBackup(t, alice);
    await waitUntil("cross-signing ready and its keys plus the backup key in secret storage", () =>
        withClient(alice, async (cli) => {
            const c = cli.getCrypto();
            return (await c.isCrossSigningReady()) && (await c.isSecretStorageReady());
        }),
    );
    t.step("waiting for the room keys to reach the server-side backup");
    await waitUntil("room keys in the backup", () =>
        withClient(alice, async (cli) => {
            const v = await cli.getCrypto().getActiveSessionBackupVersion();
            if (!v) return false;
            const info = await cli.http.authedRequest("GET", "/room_keys/version");
            return info && info.version === v && info.count >= 1;
        }),
    );
    t.step("alice signs out");
    await openUserMenuItem(alice, "Sign out");
    await (
        await visible(alice.locator(".mx_Dialog").getByRole("button", { name: "Sign out", exact: true }), "sign-out confirmation")
    ).click();
    await visible(alice.getByRole("heading", { name: "Sign in" }), "the sign-in page", LONG);
    t.step("alice signs in again and enters the recovery key");
    await login(alice, t.elementUrl, aliceName, PASSWORD);
    await (
        await visible(alice.locator(".mx_AuthPage").getByRole("button", { name: /^Verify with Security Key/ }), "'Verify with Security Key'", LONG)
    ).click();
    const dialog = alice.locator(".mx_Dialog");
    const keyInput = await visible(dialog.locator("#mx_securityKey, input[type='password']"), "security key input");
    await keyInput.fill(key);
    await (await visible(dialog.locator(".mx_Dialog_primary:not([disabled])", { hasText: "Continue" }), "enabled Continue")).click();
    await (await visible(alice.locator(".mx_AuthPage").getByRole("button", { name: "Done" }), "'Done' after verification", LONG)).click();
    await waitForApp(alice);
    await waitUntil("the new session to be verified by the recovery key", () => ownDeviceVerified(alice));
    t.step("the old messages decrypt again");
    await openRoom(alice, t.elementUrl, roomId);
    for (const m of messages) await waitForMessage(alice, m, LONG);
    await expectNoUtd(alice, "alice after restoring from backup");
}

async function verify(t) {
    const aliceName = randomName("alice");
    const first = await t.session("alice1");
    t.step(`register ${aliceName}`);
    await register(first, t.elementUrl, aliceName, PASSWORD);
    // Element bootstraps cross-signing right after registration only when /versions lists
    // org.matrix.e2e_cross_signing in unstable_features (MatrixChat.postLoginSetup).
    await waitUntil(
        "cross-signing set up at registration (the first session cross-signed)",
        () => ownDeviceVerified(first),
        { timeout: 30_000 },
    );
    const second = await t.session("alice2");
    t.step("a second session of alice signs in and asks to verify with another device");
    await login(second, t.elementUrl, aliceName, PASSWORD);
    await (
        await visible(second.locator(".mx_AuthPage").getByRole("button", { name: "Verify with another device" }), "'Verify with another device'", LONG)
    ).click();
    t.step("the first session accepts the request");
    const toast = first.locator(".mx_Toast_toast", { hasText: "Verification requested" });
    await (await visible(toast.getByRole("button", { name: "Verify Session" }), "the 'Verification requested' toast", LONG)).click();
    await (await visible(first.locator(".mx_Dialog").getByRole("button", { name: "Start", exact: true }), "'Start' (emoji)", LONG)).click();
    t.step("both compare the emoji");
    const emoji = async (page) => {
        const blocks = page.locator(".mx_VerificationShowSas_emojiSas_block");
        await visible(blocks, "the emoji", LONG);
        return (await blocks.allTextContents()).map((s) => s.trim().toLowerCase());
    };
    const [e1, e2] = await Promise.all([emoji(first), emoji(second)]);
    if (e1.length !== 7 || e1.join("|") !== e2.join("|")) {
        throw new Error(`emoji differ: first ${JSON.stringify(e1)} second ${JSON.stringify(e2)}`);
    }
    await first.getByRole("button", { name: "They match" }).click();
    await second.getByRole("button", { name: "They match" }).click();
    for (const page of [first, second]) {
        await (await visible(page.getByRole("button", { name: /^Got it$/i }), "'Got it' after verification", LONG)).click();
    }
    // The new session leaves the "complete security" screen.
    await waitUntil("the second session's main view", async () => {
        const done = second.locator(".mx_AuthPage").getByRole("button", { name: "Done" });
        if (await done.isVisible()) await done.click();
        return second.getByRole("button", { name: "User menu" }).isVisible();
    });
    const dev2 = await withClient(second, (cli) => cli.getDeviceId());
    const dev1 = await withClient(first, (cli) => cli.getDeviceId());
    t.step(`checking ${dev1} and ${dev2} are verified on both sides`);
    await waitUntil("the second session to be cross-signed", () => ownDeviceVerified(second));
    await waitUntil("the first session to see the second as verified", () =>
        withClient(first, async (cli, d) => {
            const st = await cli.getCrypto().getDeviceVerificationStatus(cli.getUserId(), d);
            return Boolean(st && st.crossSigningVerified);
        }, dev2),
    );
    // And what a person sees in Settings → Sessions.
    for (const [page, other] of [
        [first, dev2],
        [second, dev1],
    ]) {
        await openUserMenuItem(page, "All settings");
        await (await visible(page.getByRole("tab", { name: "Sessions" }), "Sessions tab")).click();
        const current = page.getByTestId("current-session-section").getByTestId("device-metadata-isVerified");
        await waitUntil("current session shown as Verified", async () => (await current.textContent()) === "Verified", { timeout: SHORT });
        const otherTile = page.getByTestId(`device-tile-${other}`).getByTestId("device-metadata-isVerified");
        await waitUntil(`session ${other} shown as Verified`, async () => (await otherTile.textContent()) === "Verified", { timeout: SHORT });
        await closeDialogs(page);
    }
}

export const flows = [
    { name: "dm", title: "two users chat in an encrypted DM, reload, still read everything", fn: dm },
    { name: "image", title: "a picture sent into the encrypted room shows for the other user", fn: image },
    { name: "backup", title: "Secure Backup, sign out, sign in with the recovery key, old messages decrypt", fn: backup },
    { name: "verify", title: "a second session verifies itself against the first by emoji", fn: verify },
    {
        name: "oauth",
        title: "OAuth 2.0: sign up on Hearth's pages, consent, redirect with a code, token works",
        fn: oauthSignup,
        standalone: true,
    },
];
