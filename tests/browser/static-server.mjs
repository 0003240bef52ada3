// A small static file server for the Element Web bundle (no dependencies beyond Node).
//
// Serves ELEMENT_WEB_DIR read-only on a loopback port and overlays the config: every
// `/config.json` and `/config.<host>.json` request gets the JSON object the caller passes,
// so the bundle itself is never changed. Content types cover what Element loads (`.wasm` as
// application/wasm for the opus decoder; the crypto wasm is inlined in the JS); nothing is
// cached, paths never leave the bundle directory, and unknown paths answer 404.
import http from "node:http";
import fs from "node:fs";
import path from "node:path";

const TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".mjs": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".json": "application/json; charset=utf-8",
    ".map": "application/json; charset=utf-8",
    ".wasm": "application/wasm",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".gif": "image/gif",
    ".ico": "image/x-icon",
    ".webp": "image/webp",
    ".woff": "font/woff",
    ".woff2": "font/woff2",
    ".ttf": "font/ttf",
    ".ogg": "audio/ogg",
    ".mp3": "audio/mpeg",
    ".txt": "text/plain; charset=utf-8",
    ".xml": "application/xml",
    ".webmanifest": "application/manifest+json",
};

/**
 * Starts the server on 127.0.0.1 (port 0 = any free one).
 * @returns {Promise<{url: string, close: () => Promise<void>}>}
 */
export async function serveBundle(root, config, port = 0) {
    const rootReal = fs.realpathSync(root);
    const configBody = Buffer.from(JSON.stringify(config, null, 2));
    const server = http.createServer((req, res) => {
        const send = (status, type, body, extra = {}) => {
            res.writeHead(status, {
                "Content-Type": type,
                "Content-Length": body.length,
                "Cache-Control": "no-cache",
                ...extra,
            });
            res.end(req.method === "HEAD" ? undefined : body);
        };
        if (req.method !== "GET" && req.method !== "HEAD") {
            return send(405, "text/plain", Buffer.from("method not allowed\n"), { Allow: "GET, HEAD" });
        }
        let pathname;
        try {
            pathname = decodeURIComponent(new URL(req.url, "http://x").pathname);
        } catch {
            return send(400, "text/plain", Buffer.from("bad path\n"));
        }
        if (/^\/config(\.[^/]+)?\.json$/.test(pathname)) {
            return send(200, TYPES[".json"], configBody);
        }
        if (pathname.endsWith("/")) pathname += "index.html";
        const file = path.join(rootReal, path.normalize(pathname));
        if (file !== rootReal && !file.startsWith(rootReal + path.sep)) {
            return send(403, "text/plain", Buffer.from("forbidden\n"));
        }
        fs.stat(file, (err, st) => {
            if (err || !st.isFile()) return send(404, "text/plain", Buffer.from("not found\n"));
            const type = TYPES[path.extname(file).toLowerCase()] || "application/octet-stream";
            res.writeHead(200, { "Content-Type": type, "Content-Length": st.size, "Cache-Control": "no-cache" });
            if (req.method === "HEAD") return res.end();
            fs.createReadStream(file)
                .on("error", () => res.destroy())
                .pipe(res);
        });
    });
    await new Promise((resolve, reject) => {
        server.once("error", reject);
        server.listen(port, "127.0.0.1", resolve);
    });
    const url = `http://127.0.0.1:${server.address().port}`;
    return {
        url,
        close: () =>
            new Promise((resolve) => {
                server.closeAllConnections?.();
                server.close(() => resolve());
            }),
    };
}
