/**
 * How a client reaches a broker (docs/protocol.md 5.1, 5.2): a URL whose scheme says how.
 *
 * - `ws://host:port/`, `wss://host:port/`: WebSocket, one packet per binary message. The
 *   browser's global `WebSocket`, Node 22's, or a constructor you pass (e.g. the `ws`
 *   package's on Node 20).
 * - `tcp://host:port`, `tls://host:port`: TCP (inside TLS), each packet behind a 4-byte
 *   big-endian length. Node only: `node:net` / `node:tls` are loaded with a dynamic
 *   import when first used, so a browser bundle never includes them.
 *
 * A {@link Connector} is how the client opens a connection; a test passes its own.
 */
import { SCHEMES, splitUrl } from "./brokerlist.js";
import { systemClock } from "./clock.js";
import { ConnectError } from "./errors.js";
import { FrameDecoder, frame, MAX_INCOMING_FRAME } from "./packet.js";
function bytesOf(data) {
    if (data instanceof Uint8Array)
        return data;
    if (data instanceof ArrayBuffer)
        return new Uint8Array(data);
    if (ArrayBuffer.isView(data))
        return new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
    if (Array.isArray(data) && data.every((part) => part instanceof Uint8Array)) {
        // ws's "fragments"
        const out = new Uint8Array(data.reduce((n, part) => n + part.length, 0));
        let at = 0;
        for (const part of data) {
            out.set(part, at);
            at += part.length;
        }
        return out;
    }
    return undefined;
}
/** A connector for `ws://` and `wss://` URLs. */
export function webSocketConnector(opts = {}) {
    const timeout = opts.timeout ?? 5000;
    const clock = opts.clock ?? systemClock;
    return (url, sink) => new Promise((resolve, reject) => {
        const WS = opts.WebSocket ?? globalThis.WebSocket;
        if (typeof WS !== "function") {
            reject(new ConnectError(`cannot connect to ${url}: no WebSocket here: pass the WebSocket option ` +
                `(e.g. the "ws" package's class) or use transport "tcp"`));
            return;
        }
        let ws;
        try {
            ws = new WS(url);
        }
        catch (e) {
            reject(new ConnectError(`cannot connect to ${url}: ${e.message}`, { cause: e }));
            return;
        }
        try {
            ws.binaryType = "arraybuffer";
        }
        catch {
            // read-only somewhere: the messages are converted below anyway
        }
        let settled = false;
        let open = false;
        let closed = false;
        let lastError;
        const fail = (why) => {
            if (settled)
                return;
            settled = true;
            clock.clearTimeout(timer);
            reject(new ConnectError(`cannot connect to ${url}: ${why}`));
        };
        const timer = clock.setTimeout(() => {
            fail(`not open within ${timeout / 1000} s`);
            try {
                ws.close();
            }
            catch {
                // nothing to close
            }
        }, timeout);
        const lost = (error) => {
            if (closed)
                return;
            closed = true;
            sink.onClose(error);
        };
        const transport = {
            send: (packet) => ws.send(packet),
            close: () => {
                try {
                    ws.close(1000);
                }
                catch {
                    lost(new Error("WebSocket closed"));
                }
            },
            abort: () => {
                try {
                    if (typeof ws.terminate === "function")
                        ws.terminate();
                    else
                        ws.close();
                }
                catch {
                    // closed already
                }
                // A browser WebSocket closes with a handshake that a dead broker never answers.
                lost(new Error("connection aborted"));
            },
        };
        ws.onopen = () => {
            if (settled) {
                ws.close();
                return;
            }
            settled = true;
            open = true;
            clock.clearTimeout(timer);
            resolve(transport);
        };
        ws.onerror = (event) => {
            lastError = event?.message ?? event?.error?.message ?? "WebSocket error";
            if (!open)
                fail(lastError);
        };
        ws.onclose = (event) => {
            const why = `WebSocket closed (code ${event?.code ?? "?"}${event?.reason ? `: ${event.reason}` : ""})`;
            if (!open) {
                fail(lastError ?? why);
                return;
            }
            lost(new Error(lastError ? `${why}: ${lastError}` : why));
        };
        ws.onmessage = (event) => {
            if (!open || closed)
                return;
            const data = event?.data;
            const bytes = typeof data === "string" ? undefined : bytesOf(data);
            if (bytes === undefined) {
                // Brokers send binary messages only: anything else ends the connection.
                transport.abort();
                return;
            }
            sink.onPacket(bytes);
        };
    });
}
/** A dynamic import hidden from bundlers, so that browser bundles never pull in Node modules. */
function importNode(name) {
    const specifier = `node:${name}`;
    return import(/* webpackIgnore: true */ /* @vite-ignore */ specifier);
}
function isIpAddress(host) {
    return /^[0-9]+(\.[0-9]+){3}$/.test(host) || host.includes(":");
}
/** A connector for `tcp://` and `tls://` URLs (Node only). */
export function tcpConnector(opts = {}) {
    const timeout = opts.timeout ?? 5000;
    const clock = opts.clock ?? systemClock;
    return async (url, sink) => {
        let host;
        let port;
        let tls;
        try {
            const parts = splitUrl(url);
            ({ host, port } = parts);
            tls = SCHEMES[parts.scheme][1];
        }
        catch (e) {
            throw new ConnectError(`cannot connect to ${url}: ${e.message}`);
        }
        const name = tls ? "tls" : "net";
        let mod = opts.modules?.[name];
        if (mod === undefined) {
            try {
                mod = await importNode(name);
            }
            catch {
                throw new ConnectError(`cannot connect to ${url}: TCP needs Node's node:${name}; in a browser use transport "websocket"`);
            }
        }
        return new Promise((resolve, reject) => {
            let socket;
            try {
                socket = tls
                    ? mod.connect({
                        host,
                        port,
                        servername: isIpAddress(host) ? undefined : host,
                        ca: opts.ca,
                        minVersion: "TLSv1.2",
                    })
                    : mod.connect({ host, port });
            }
            catch (e) {
                reject(new ConnectError(`cannot connect to ${url}: ${e.message}`, { cause: e }));
                return;
            }
            let settled = false;
            let open = false;
            let closed = false;
            let lastError;
            const decoder = new FrameDecoder(opts.maxFrame ?? MAX_INCOMING_FRAME);
            const timer = clock.setTimeout(() => {
                fail(new Error(`not connected within ${timeout / 1000} s`));
                socket.destroy();
            }, timeout);
            const fail = (error) => {
                if (settled)
                    return;
                settled = true;
                clock.clearTimeout(timer);
                reject(new ConnectError(`cannot connect to ${url}: ${error.message}`, { cause: error }));
            };
            const transport = {
                send: (packet) => {
                    socket.write(frame(packet));
                },
                close: () => {
                    socket.end();
                },
                abort: () => {
                    socket.destroy();
                },
            };
            socket.on(tls ? "secureConnect" : "connect", () => {
                if (settled) {
                    socket.destroy();
                    return;
                }
                settled = true;
                open = true;
                clock.clearTimeout(timer);
                socket.setNoDelay?.(true);
                resolve(transport);
            });
            socket.on("error", (error) => {
                lastError = error;
                if (!open)
                    fail(error);
            });
            socket.on("data", (chunk) => {
                if (!open || closed)
                    return;
                let frames;
                try {
                    frames = decoder.push(chunk);
                }
                catch (e) {
                    lastError = e;
                    socket.destroy();
                    return;
                }
                for (const data of frames) {
                    if (closed)
                        break;
                    sink.onPacket(data);
                }
            });
            socket.on("close", () => {
                if (!open) {
                    fail(lastError ?? new Error("connection closed"));
                    return;
                }
                if (closed)
                    return;
                closed = true;
                sink.onClose(lastError ?? new Error("connection closed"));
            });
        });
    };
}
/** A connector for every scheme: WebSocket for `ws://`/`wss://`, TCP (Node) for `tcp://`/`tls://`. */
export function connector(opts = {}) {
    const ws = webSocketConnector(opts);
    const tcp = tcpConnector(opts);
    return (url, sink) => {
        const scheme = url.includes("://") ? url.slice(0, url.indexOf("://")) : "tcp";
        const how = SCHEMES[scheme];
        if (how === undefined)
            return Promise.reject(new ConnectError(`cannot connect to ${url}: unknown scheme`));
        return how[0] === "websocket" ? ws(url, sink) : tcp(url, sink);
    };
}
