/**
 * The brokerlist (docs/protocol.md 5.9): `GET` its URL for the live brokers and their
 * load, and pick the least loaded (ties at random). Also the broker addresses and URLs.
 */
import { ConnectError } from "./errors.js";
/** The URL schemes of a broker: transport and whether inside TLS. */
export const SCHEMES = Object.freeze({
    tcp: ["tcp", false],
    tls: ["tcp", true],
    ws: ["websocket", false],
    wss: ["websocket", true],
});
/** Split `"host:port"` (IPv6 as `"[::1]:6100"`); an `Error` if not host:port with a port in 1..65535. */
export function splitAddress(address) {
    const colon = address.lastIndexOf(":");
    const host = colon < 0 ? "" : address.slice(0, colon).replace(/^\[+/, "").replace(/\]+$/, "");
    const portText = colon < 0 ? "" : address.slice(colon + 1);
    const port = /^[0-9]+$/.test(portText) ? Number(portText) : NaN;
    if (!host || !(port > 0 && port < 65536)) {
        throw new Error(`expected host:port, got ${JSON.stringify(address)}`);
    }
    return { host, port };
}
/** `"host:port"`, IPv6 hosts in brackets. */
export function joinAddress(host, port) {
    return host.includes(":") ? `[${host}]:${port}` : `${host}:${port}`;
}
/**
 * The scheme, host and port of a broker URL (`tcp://`, `tls://`, `ws://`, `wss://`; a bare
 * `host:port` is `tcp`). An `Error` for an unknown scheme or no host:port.
 */
export function splitUrl(url) {
    const sep = url.indexOf("://");
    const scheme = sep < 0 ? "tcp" : url.slice(0, sep);
    const rest = sep < 0 ? url : url.slice(sep + 3);
    if (!(scheme in SCHEMES)) {
        throw new Error(`unknown broker scheme ${JSON.stringify(scheme)} in ${JSON.stringify(url)}: use tcp, tls, ws, wss`);
    }
    const slash = rest.indexOf("/");
    try {
        return { scheme, ...splitAddress(slash < 0 ? rest : rest.slice(0, slash)) };
    }
    catch {
        throw new Error(`expected host:port in ${JSON.stringify(url)}`);
    }
}
/** The URL of broker `address` (`host:port`) for `transport`, inside TLS or not. */
export function brokerUrl(address, transport, tls) {
    if (transport === "websocket")
        return `${tls ? "wss" : "ws"}://${address}/`;
    return `${tls ? "tls" : "tcp"}://${address}`;
}
function addresses(document, key) {
    const table = key in document ? document[key] : {};
    if (table === null || typeof table !== "object" || Array.isArray(table)) {
        throw new ConnectError(`brokerlist: ${JSON.stringify(key)} is not an object`);
    }
    const out = {};
    for (const [address, load] of Object.entries(table)) {
        if (typeof load !== "number" || !Number.isFinite(load)) {
            throw new ConnectError(`brokerlist: load of ${JSON.stringify(address)} is not a number: ${JSON.stringify(load)}`);
        }
        try {
            splitAddress(address);
        }
        catch (e) {
            throw new ConnectError(`brokerlist: ${e.message}`);
        }
        out[address] = load;
    }
    return out;
}
/**
 * A brokerlist answer (JSON text, or the parsed document): `{"version", "brokerList":
 * {"host:port": load}, "websocketList": {...}, "tls": ["host:port", ...]}`, the last two
 * optional. A {@link ConnectError} if it is not of that shape.
 */
export function parseBrokerList(data) {
    let document = data;
    if (typeof data === "string") {
        try {
            document = JSON.parse(data);
        }
        catch (e) {
            throw new ConnectError(`brokerlist: not JSON: ${e.message}`);
        }
    }
    if (document === null || typeof document !== "object" || Array.isArray(document)) {
        throw new ConnectError('brokerlist: expected an object with a "brokerList" object');
    }
    const doc = document;
    const list = doc["brokerList"];
    if (list === null || typeof list !== "object" || Array.isArray(list)) {
        throw new ConnectError('brokerlist: expected an object with a "brokerList" object');
    }
    const tls = "tls" in doc ? doc["tls"] : [];
    if (!Array.isArray(tls) || !tls.every((a) => typeof a === "string")) {
        throw new ConnectError('brokerlist: "tls" is not a list of addresses');
    }
    const result = {
        brokers: addresses(doc, "brokerList"),
        websockets: addresses(doc, "websocketList"),
        tls: new Set(tls),
    };
    if (typeof doc["version"] === "string")
        result.version = doc["version"];
    return result;
}
/** The addresses of `transport` in `list` -> load. */
export function brokersFor(list, transport) {
    return transport === "websocket" ? list.websockets : list.brokers;
}
function candidates(brokers, avoid) {
    const all = Object.entries(brokers);
    if (all.length === 0)
        throw new ConnectError("brokerlist: no broker available");
    const skip = new Set(avoid ?? []);
    const kept = all.filter(([address]) => !skip.has(address));
    return kept.length > 0 ? kept : all;
}
function compare(a, b) {
    return a < b ? -1 : a > b ? 1 : 0;
}
/** The least-loaded broker of `{"host:port": load}` (as the Python SDK picks it). */
export function pickBroker(brokers, opts = {}) {
    const listed = candidates(brokers, opts.avoid);
    const least = Math.min(...listed.map(([, load]) => load));
    const best = listed
        .filter(([, load]) => load === least)
        .map(([address]) => address)
        .sort(compare);
    if (opts.random === undefined)
        return best[0];
    const index = Math.min(best.length - 1, Math.max(0, Math.floor(opts.random() * best.length)));
    return best[index];
}
/**
 * Every broker, in the order to try them (docs/protocol.md 5.1: "the next one if it cannot
 * be reached"): {@link pickBroker}'s choice first, then by load and address, the avoided
 * ones last.
 */
export function rankBrokers(brokers, opts = {}) {
    const first = pickBroker(brokers, opts);
    const skip = new Set(opts.avoid ?? []);
    const rest = Object.entries(brokers)
        .filter(([address]) => address !== first)
        .sort(([a, la], [b, lb]) => Number(skip.has(a)) - Number(skip.has(b)) || la - lb || compare(a, b))
        .map(([address]) => address);
    return [first, ...rest];
}
/** A {@link Fetcher} with the global `fetch` (browsers, Node >= 18), `timeout` ms for the whole GET. */
export function httpFetcher(timeout = 5000) {
    return async (url) => {
        const fetchFn = globalThis.fetch;
        if (typeof fetchFn !== "function")
            throw new ConnectError(`brokerlist ${url}: no fetch() here: pass a fetcher`);
        const controller = new AbortController();
        const timer = setTimeout(() => controller.abort(), timeout);
        try {
            const response = await fetchFn(url, {
                headers: { Accept: "application/json" },
                cache: "no-store",
                signal: controller.signal,
            });
            const text = await response.text();
            if (response.status !== 200)
                throw new ConnectError(`brokerlist ${url}: HTTP ${response.status}`);
            return text;
        }
        catch (e) {
            if (e instanceof ConnectError)
                throw e;
            const why = controller.signal.aborted ? `no answer within ${timeout / 1000} s` : e.message;
            throw new ConnectError(`brokerlist ${url}: ${why}`, { cause: e });
        }
        finally {
            clearTimeout(timer);
        }
    };
}
/** `GET` the brokerlist at `url` and parse it; a {@link ConnectError} if that fails. */
export async function fetchBrokerList(url, opts = {}) {
    const fetcher = opts.fetcher ?? httpFetcher(opts.timeout);
    return parseBrokerList(await fetcher(url));
}
