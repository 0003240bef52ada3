// Runs the browser flows (flows.mjs) in headless Chromium through playwright-core, against
// a Hearth that run.sh started. Called by run.sh; not meant to be run by hand.
//
// Environment (set by run.sh):
//   HS_URL               the Hearth under test (http://127.0.0.1:PORT)
//   HS_SERVER_NAME       its server name (localhost)
//   ELEMENT_WEB_DIR      the Element Web bundle; served read-only, config.json overlaid
//   ARTIFACTS_DIR        where failure screenshots, console logs and HTTP error lists go
//   RESULTS_FILE         JSON results, rewritten after every test (run.sh prints the closing line)
//   HEARTH_BROWSER_JS    the directory whose node_modules holds playwright-core
//   CHROMIUM             the browser (default /usr/bin/chromium)
//   BROWSER_TEST_TIMEOUT_S  bound per test (default 300); BROWSER_RUN_TIMEOUT_S  bound on the run
//   BROWSER_TESTS        comma-separated flow names to run (default: all; without ELEMENT_WEB_DIR,
//                        all the `standalone` flows, which need no Element Web bundle)
// `node runner.mjs --list` prints the flow names and exits; `--list-standalone` the standalone ones.
//
// Every request the browser makes to anything but the Element and Hearth origins is aborted
// (and listed), and Chromium's resolver maps every other host to nothing as well, so no
// traffic leaves the machine.
import fs from "node:fs";
import path from "node:path";
import { createRequire } from "node:module";
import { flows } from "./flows.mjs";
import { serveBundle } from "./static-server.mjs";

if (process.argv.includes("--list")) {
    console.log(flows.map((f) => f.name).join(" "));
    process.exit(0);
}
if (process.argv.includes("--list-standalone")) {
    console.log(flows.filter((f) => f.standalone).map((f) => f.name).join(" "));
    process.exit(0);
}

const env = (k, d) => process.env[k] ?? d;
const HS_URL = env("HS_URL");
const SERVER_NAME = env("HS_SERVER_NAME", "localhost");
const ELEMENT_WEB_DIR = env("ELEMENT_WEB_DIR");
const ARTIFACTS = env("ARTIFACTS_DIR");
const RESULTS_FILE = env("RESULTS_FILE");
const TEST_TIMEOUT_MS = 1000 * Number(env("BROWSER_TEST_TIMEOUT_S", "300"));
const RUN_DEADLINE = Date.now() + 1000 * Number(env("BROWSER_RUN_TIMEOUT_S", "1500"));
const selected = env("BROWSER_TESTS", "")
    .split(",")
    .map((s) => s.trim())
    .filter(Boolean);
const runnable = ELEMENT_WEB_DIR ? flows : flows.filter((f) => f.standalone);
const toRun = selected.length ? runnable.filter((f) => selected.includes(f.name)) : runnable;
if (selected.length && toRun.length !== selected.length) {
    console.error(`browser: unknown test in BROWSER_TESTS=${selected.join(",")}; known: ${runnable.map((f) => f.name).join(", ")}` + (ELEMENT_WEB_DIR ? "" : " (the others need ELEMENT_WEB_DIR)"));
    process.exit(2);
}

const t0 = Date.now();
const stamp = () => `${((Date.now() - t0) / 1000).toFixed(1).padStart(6)}s`;
const say = (msg) => console.log(`browser: ${msg}`);

const results = { total: toRun.length, passed: 0, failed: 0, tests: [] };
const writeResults = () => RESULTS_FILE && fs.writeFileSync(RESULTS_FILE, JSON.stringify(results, null, 2));
writeResults();

/** Element's config: the Hearth under test, and nothing that would reach the internet. */
function elementConfig() {
    return {
        default_server_config: { "m.homeserver": { base_url: HS_URL, server_name: SERVER_NAME } },
        disable_custom_urls: true,
        disable_guests: true,
        disable_3pid_login: true,
        disable_login_language_selector: true,
        brand: "Element",
        default_theme: "light",
        default_country_code: "GB",
        show_labs_settings: false,
        features: { feature_release_announcement: false }, // no "Threads Activity Centre" popover
        room_directory: { servers: [SERVER_NAME] },
        // No integration manager, no widgets, no bug reports, no analytics (no `posthog`
        // key), no Sentry, no map tiles (no `map_style_url`), no app download links.
        integrations_ui_url: "",
        integrations_rest_url: "",
        integrations_widgets_urls: [],
        enable_presence_by_hs_url: {},
        desktop_builds: { available: false },
        mobile_guide_toast: false,
        setting_defaults: {
            "FTUE.useCaseSelection": "Skip",
            "UIFeature.Feedback": false,
            "UIFeature.widgets": false,
            "UIFeature.voip": false,
            "UIFeature.shareSocial": false,
            "UIFeature.locationSharing": false,
            "UIFeature.thirdPartyId": false,
            "UIFeature.identityServer": false,
            "UIFeature.urlPreviews": false,
            urlPreviewsEnabled: false,
            urlPreviewsEnabled_e2ee: false,
        },
    };
}

/** /_matrix/client/v3/rooms/!a:b/members?at=x → /_matrix/client/v3/rooms/{roomId}/members?at= */
function pathTemplate(url) {
    const u = new URL(url);
    const segs = u.pathname.split("/").map((s) => {
        const d = (() => {
            try {
                return decodeURIComponent(s);
            } catch {
                return s;
            }
        })();
        if (d.startsWith("!")) return "{roomId}";
        if (d.startsWith("$")) return "{eventId}";
        if (d.startsWith("@")) return "{userId}";
        if (d.startsWith("#")) return "{alias}";
        return s;
    });
    // transaction ids, media ids, backup versions/sessions: long opaque segments
    let p = segs.join("/");
    p = p.replace(/\/(send|sendToDevice)\/([^/]+)\/[^/]+$/, "/$1/$2/{txnId}");
    p = p.replace(/\/(download|thumbnail)\/([^/]+)\/[^/]+/, "/$1/$2/{mediaId}");
    const q = [...u.searchParams.keys()];
    return p + (q.length ? `?${[...new Set(q)].map((k) => `${k}=`).join("&")}` : "");
}

const allHttpErrors = [];
const allBlocked = new Set();

async function main() {
    const require = createRequire(path.join(env("HEARTH_BROWSER_JS", "."), "package.json"));
    const { chromium } = require("playwright-core");
    // Without a bundle only the standalone flows run, and no Element origin exists.
    const web = ELEMENT_WEB_DIR ? await serveBundle(ELEMENT_WEB_DIR, elementConfig()) : null;
    const hsOrigin = new URL(HS_URL).origin;
    const allowed = (u) =>
        (web && u.origin === web.url) || u.origin === hsOrigin || u.protocol === "data:" || u.protocol === "blob:";
    say(web ? `element web ${ELEMENT_WEB_DIR} served at ${web.url}, hearth at ${HS_URL}` : `no Element Web bundle, hearth at ${HS_URL}`);

    const browser = await chromium.launch({
        executablePath: env("CHROMIUM", "/usr/bin/chromium"),
        headless: true,
        args: [
            // Belt and braces with the route block below: no name resolves but loopback.
            "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1, EXCLUDE localhost",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-domain-reliability",
            "--disable-sync",
            "--no-pings",
            "--metrics-recording-only",
            "--disable-features=Translate,OptimizationHints,MediaRouter,AutofillServerCommunication",
        ],
    });
    say(`chromium ${browser.version()}`);

    try {
        for (const flow of toRun) {
            if (Date.now() > RUN_DEADLINE) {
                say(`${flow.name} FAILED: not started, the run's time bound was reached`);
                record(flow, false, "not started: the run's time bound was reached", 0);
                continue;
            }
            await runOne(browser, flow, web?.url, allowed);
        }
    } finally {
        await browser.close().catch(() => {});
        await web?.close();
    }
}

function record(flow, ok, error, ms) {
    results.tests.push({ name: flow.name, ok, error, seconds: Math.round(ms / 1000) });
    if (ok) results.passed++;
    else results.failed++;
    writeResults();
}

async function runOne(browser, flow, elementUrl, allowed) {
    const started = Date.now();
    say(`--- ${flow.name}: ${flow.title}`);
    const sessions = []; // { label, context, page, console: [] }
    const httpErrors = [];
    const pending = new Set();
    const t = {
        elementUrl,
        hsUrl: HS_URL,
        serverName: SERVER_NAME,
        step: (msg) => say(`${stamp()} ${flow.name}: ${msg}`),
        async session(label) {
            const context = await browser.newContext({
                viewport: { width: 1280, height: 900 },
                permissions: ["clipboard-read", "clipboard-write"],
                serviceWorkers: "allow",
            });
            context.setDefaultTimeout(30_000);
            const s = { label, context, page: null, console: [] };
            sessions.push(s);
            await context.route(
                (u) => !allowed(u),
                (route) => {
                    allBlocked.add(new URL(route.request().url()).origin);
                    s.console.push(`${stamp()} [blocked] ${route.request().method()} ${route.request().url()}`);
                    return route.abort("blockedbyclient");
                },
            );
            const page = await context.newPage();
            s.page = page;
            const onPage = (p) => {
                p.on("console", (m) => s.console.push(`${stamp()} ${m.type()}: ${m.text()}`));
                p.on("pageerror", (e) => s.console.push(`${stamp()} pageerror: ${e.stack || e.message}`));
            };
            onPage(page);
            context.on("page", onPage);
            context.on("response", (resp) => {
                const url = resp.url();
                if (!url.startsWith(HS_URL) || resp.status() < 400) return;
                const req = resp.request();
                const p = (async () => {
                    let errcode = "";
                    let error = "";
                    try {
                        const body = JSON.parse(await resp.text());
                        errcode = body.errcode || "";
                        error = body.error || "";
                    } catch {}
                    const entry = {
                        test: flow.name,
                        session: label,
                        at: stamp().trim(),
                        method: req.method(),
                        path: new URL(url).pathname + new URL(url).search,
                        template: pathTemplate(url),
                        status: resp.status(),
                        errcode,
                        error,
                    };
                    httpErrors.push(entry);
                    allHttpErrors.push(entry);
                })();
                pending.add(p);
                p.finally(() => pending.delete(p));
            });
            return page;
        },
    };

    let error = null;
    let timer;
    try {
        await Promise.race([
            flow.fn(t),
            new Promise((_, reject) => {
                const left = Math.min(TEST_TIMEOUT_MS, Math.max(1000, RUN_DEADLINE - Date.now()));
                timer = setTimeout(() => reject(new Error(`test timed out after ${Math.round(left / 1000)} s`)), left);
            }),
        ]);
    } catch (e) {
        error = e;
    } finally {
        clearTimeout(timer);
    }
    await Promise.race([Promise.allSettled([...pending]), new Promise((r) => setTimeout(r, 2000))]);

    const ms = Date.now() - started;
    const dir = path.join(ARTIFACTS, flow.name);
    if (error) {
        fs.mkdirSync(dir, { recursive: true });
        for (const s of sessions.filter((x) => x.page)) {
            await s.page
                .screenshot({ path: path.join(dir, `${s.label}.png`), fullPage: true, timeout: 10_000 })
                .catch((e) => s.console.push(`(screenshot failed: ${e.message})`));
            fs.writeFileSync(path.join(dir, `${s.label}-console.log`), s.console.join("\n") + "\n");
            fs.writeFileSync(path.join(dir, `${s.label}-url.txt`), s.page.url() + "\n");
        }
        fs.writeFileSync(
            path.join(dir, "http-errors.txt"),
            httpErrors.map((e) => `${e.at} ${e.session} ${e.method} ${e.path} -> ${e.status} ${e.errcode} ${e.error}`).join("\n") + "\n",
        );
        fs.writeFileSync(path.join(dir, "error.txt"), `${error.stack || error}\n`);
    }
    for (const s of sessions) await s.context.close().catch(() => {});
    if (error) {
        say(`${flow.name} FAILED (${Math.round(ms / 1000)} s): ${error.message}`);
        say(`${flow.name}: screenshots, console logs and Hearth 4xx/5xx in ${dir}`);
    } else {
        say(`${flow.name} passed (${Math.round(ms / 1000)} s)`);
    }
    record(flow, !error, error ? error.message : null, ms);
}

function summary() {
    if (allHttpErrors.length) {
        const counts = new Map();
        for (const e of allHttpErrors) {
            const k = `${e.method} ${e.template} -> ${e.status} ${e.errcode}`;
            counts.set(k, (counts.get(k) || 0) + 1);
        }
        say(`Hearth answered ${allHttpErrors.length} request(s) with 4xx/5xx:`);
        for (const [k, n] of [...counts].sort()) say(`  ${String(n).padStart(4)} x ${k}`);
        fs.writeFileSync(
            path.join(ARTIFACTS, "http-errors-all.txt"),
            allHttpErrors
                .map((e) => `${e.test} ${e.at} ${e.session} ${e.method} ${e.path} -> ${e.status} ${e.errcode} ${e.error}`)
                .join("\n") + "\n",
        );
    } else {
        say("Hearth answered no request with 4xx/5xx");
    }
    if (allBlocked.size) say(`blocked requests to: ${[...allBlocked].sort().join(", ")}`);
}

try {
    await main();
} catch (e) {
    say(`runner error: ${e.stack || e}`);
    for (const f of toRun.slice(results.tests.length)) record(f, false, `runner error: ${e.message}`, 0);
}
summary();
say(`took ${Math.round((Date.now() - t0) / 1000)} s`);
process.exit(results.failed === 0 && results.passed === results.total ? 0 : 1);
