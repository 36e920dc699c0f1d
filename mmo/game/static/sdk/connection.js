/**
 * One connection to a broker: packets, requests matched by seq with a deadline each,
 * heartbeats, and what the broker sends unasked (pushes, errors without seq, kicks) handed
 * to {@link Listeners}. It knows nothing of sessions or reconnecting: that is
 * {@link Client}'s. Use it directly to manage connections yourself.
 *
 * Bodies: a JavaScript value is sent as a `Value` (`undefined`/`null`: an empty map, i.e.
 * no arguments); with `raw: true` the body is bytes sent as they are (and the reply is
 * returned as bytes); with `encode` / `decode` your own codec (e.g. a {@link defineStruct}
 * struct's) turns the body into bytes and the reply bytes into a value.
 */
import { consoleLogger, systemClock } from "./clock.js";
import { ClientTimeoutError, DisconnectedError, MmoError, WireError, brokerError, } from "./errors.js";
import { PacketKind, decodePacket, encodePacket } from "./packet.js";
import { decodeValue, encodeValue } from "./value.js";
/** Register a push handler under this route to receive every push. */
export const ANY_ROUTE = "*";
/** Requests without a timeout get this many milliseconds. */
export const DEFAULT_TIMEOUT = 5000;
/** Heartbeat interval when the broker did not say (milliseconds). */
export const DEFAULT_HEARTBEAT = 10_000;
/** The largest seq: it is an i32 on the wire. */
export const MAX_SEQ = 2 ** 31 - 1;
/** The bytes of a body; a {@link WireError} if it cannot be encoded. */
export function encodeBody(body, opts = {}) {
    if (opts.encode !== undefined)
        return opts.encode(body);
    if (opts.raw) {
        if (body instanceof Uint8Array)
            return body;
        if (body instanceof ArrayBuffer)
            return new Uint8Array(body);
        if (ArrayBuffer.isView(body))
            return new Uint8Array(body.buffer, body.byteOffset, body.byteLength);
        throw new WireError(`a raw body must be bytes, not ${body === null ? "null" : typeof body}`);
    }
    return encodeValue(body === undefined || body === null ? {} : body);
}
/** A body's value (an absent or empty body is `null` for a `Value`); a {@link WireError} if malformed. */
export function decodeBody(data, opts = {}) {
    if (opts.decode !== undefined)
        return opts.decode(data ?? new Uint8Array(0));
    if (opts.raw)
        return (data ?? new Uint8Array(0));
    if (data === undefined || data.length === 0)
        return null;
    return decodeValue(data, opts.valueOptions);
}
function abortReason(signal) {
    return signal.reason ?? new MmoError("aborted");
}
function safely(logger, what, fn) {
    try {
        fn();
    }
    catch (e) {
        logger.error?.(`${what} failed`, e);
    }
}
/**
 * Handlers for what the broker sends unasked: pushes, errors without seq, kicks. One
 * instance may be shared by successive connections (a {@link Client} does), so that
 * registrations survive reconnecting. A handler that throws is logged and disturbs
 * neither the others nor the connection.
 */
export class Listeners {
    logger;
    valueOptions;
    pushes = new Map();
    errors = [];
    kicks = [];
    constructor(logger = consoleLogger, valueOptions = {}) {
        this.logger = logger;
        this.valueOptions = valueOptions;
    }
    /**
     * Call `handler(body, route)` for each push on `route` (`"*"`: every push). The body is
     * decoded as `opts` say (a `Value` by default); a body that does not decode is logged and
     * this handler skipped. Returns a function that removes the registration.
     */
    on(route, handler, opts = {}) {
        const registration = { handler: handler, opts: opts };
        const list = this.pushes.get(route) ?? [];
        list.push(registration);
        this.pushes.set(route, list);
        return () => {
            const current = this.pushes.get(route);
            const at = current?.indexOf(registration) ?? -1;
            if (current !== undefined && at >= 0) {
                current.splice(at, 1);
                if (current.length === 0)
                    this.pushes.delete(route);
            }
        };
    }
    /** Call `handler(error)` for each `ERROR` without seq (a refused notify, or why the broker closes). */
    onError(handler) {
        return this.add(this.errors, handler);
    }
    /** Call `handler(error)` when the broker sends `KICK` (it then closes the connection). */
    onKick(handler) {
        return this.add(this.kicks, handler);
    }
    add(list, handler) {
        list.push(handler);
        return () => {
            const at = list.indexOf(handler);
            if (at >= 0)
                list.splice(at, 1);
        };
    }
    /** Dispatch a push to the handlers of its route, then to the catch-all ones; returns how many were called. */
    push(route, data) {
        const registrations = [...(this.pushes.get(route) ?? []), ...(route === ANY_ROUTE ? [] : (this.pushes.get(ANY_ROUTE) ?? []))];
        if (registrations.length === 0)
            this.logger.debug?.(`push on ${route} with no handler`);
        const decoded = new Map();
        let called = 0;
        for (const { handler, opts } of registrations) {
            const key = opts.decode ?? (opts.raw ? "raw" : (opts.valueOptions ?? "value"));
            let entry = decoded.get(key);
            if (entry === undefined) {
                try {
                    entry = { value: decodeBody(data, { valueOptions: this.valueOptions, ...opts }) };
                }
                catch (e) {
                    this.logger.warn?.(`push on ${route}: undecodable body: ${e.message}`);
                    entry = { failed: true };
                }
                decoded.set(key, entry);
            }
            if (entry.failed)
                continue;
            called++;
            safely(this.logger, `push handler for ${route}`, () => handler(entry.value, route));
        }
        return called;
    }
    /** Dispatch an `ERROR` without seq. */
    error(error) {
        this.logger.info?.(`broker error: ${error.message}`);
        for (const handler of [...this.errors])
            safely(this.logger, "error handler", () => handler(error));
    }
    /** Dispatch a `KICK`. */
    kick(error) {
        this.logger.info?.(`kicked: ${error.message}`);
        for (const handler of [...this.kicks])
            safely(this.logger, "kick handler", () => handler(error));
    }
}
/** The client side of one broker connection (the Python SDK's `ClientProtocol`). */
export class BrokerConnection {
    /** The connection is dropped when nothing arrived for this many heartbeat intervals. */
    static DEAD_AFTER_BEATS = 3;
    /** Where pushes, errors without seq and kicks go. */
    listeners;
    /** Where the transport delivers packets: pass it to a {@link Connector}. */
    sink;
    /** The `KICK` the broker sent, if any. */
    kicked;
    /** The last `ERROR` without seq (often why the broker closed). */
    lastError;
    /** Milliseconds between heartbeats once started. */
    heartbeatInterval;
    /** When the last packet arrived ({@link Clock} time). */
    lastReceived;
    clock;
    logger;
    valueOptions;
    closeGrace;
    transport;
    pending = new Map();
    nextSeq = 1;
    heartbeatTimer;
    graceTimer;
    connected = false;
    closing = false;
    lost;
    lostText = "";
    closedHandlers = [];
    constructor(opts = {}) {
        this.clock = opts.clock ?? systemClock;
        this.logger = opts.logger ?? consoleLogger;
        this.valueOptions = opts.valueOptions ?? {};
        this.listeners = opts.listeners ?? new Listeners(this.logger, this.valueOptions);
        this.closeGrace = opts.closeGrace ?? 2000;
        this.lastReceived = this.clock.now();
        this.sink = {
            onPacket: (data) => this.received(data),
            onClose: (error) => this.connectionLost(error),
        };
    }
    /** Open a connection to `url` with `connector`; resolves once it is open. */
    static async open(connector, url, opts = {}) {
        const conn = new BrokerConnection(opts);
        conn.attach(await connector(url, conn.sink));
        return conn;
    }
    /** Send through `transport` from now on (what {@link open} does once the connector resolved). */
    attach(transport) {
        this.transport = transport;
        this.lastReceived = this.clock.now();
        if (this.lost === undefined)
            this.connected = true;
    }
    /** Whether the connection is up (open, and neither lost nor closing). */
    get isConnected() {
        return this.connected && !this.closing && this.lost === undefined;
    }
    /** How many requests await their answer. */
    get inFlight() {
        return this.pending.size;
    }
    /**
     * Send a `REQUEST` and wait for its `RESPONSE`. Rejects with a {@link BrokerError}
     * subclass (the broker's `ERROR`), {@link ClientTimeoutError}, {@link DisconnectedError} or
     * {@link WireError} (a body that does not encode, a reply that does not decode).
     */
    request(route, body, opts = {}) {
        let data;
        try {
            data = encodeBody(body, opts);
        }
        catch (e) {
            return Promise.reject(e);
        }
        return this.requestData(route, data, opts);
    }
    /** {@link request} with a body already encoded. */
    requestData(route, data, opts = {}) {
        if (!this.isConnected)
            return Promise.reject(this.disconnected(route));
        const signal = opts.signal;
        if (signal?.aborted)
            return Promise.reject(abortReason(signal));
        const seq = opts.seq ?? this.allocateSeq();
        const timeout = opts.timeout ?? DEFAULT_TIMEOUT;
        return new Promise((resolve, reject) => {
            const entry = {
                route,
                resolve: resolve,
                reject,
                timer: this.clock.setTimeout(() => this.expire(seq, entry, timeout), Math.max(0, timeout)),
                reply: opts,
            };
            if (signal !== undefined) {
                const aborted = () => {
                    if (this.pending.get(seq) !== entry)
                        return;
                    this.pending.delete(seq);
                    this.settle(entry);
                    reject(abortReason(signal));
                };
                signal.addEventListener("abort", aborted, { once: true });
                entry.cleanup = () => signal.removeEventListener("abort", aborted);
            }
            const previous = this.pending.get(seq);
            if (previous !== undefined) {
                this.settle(previous);
                previous.reject(new MmoError(`${previous.route}: seq ${seq} was reused by ${route}`));
            }
            this.pending.set(seq, entry);
            const packet = { kind: PacketKind.REQUEST, seq, route, body: data };
            if (opts.trace !== undefined)
                packet.trace = opts.trace;
            try {
                this.sendPacket(packet);
            }
            catch (e) {
                this.pending.delete(seq);
                this.settle(entry);
                reject(e);
            }
        });
    }
    /** Send a one-way `NOTIFY` (a refusal comes back as an error without seq: {@link Listeners.onError}). */
    notify(route, body, opts = {}) {
        this.notifyData(route, encodeBody(body, opts), opts.trace);
    }
    /** {@link notify} with a body already encoded. */
    notifyData(route, data, trace) {
        if (!this.isConnected)
            throw this.disconnected(route);
        const packet = { kind: PacketKind.NOTIFY, route, body: data };
        if (trace !== undefined)
            packet.trace = trace;
        this.sendPacket(packet);
    }
    /** Register a push handler; see {@link Listeners.on}. */
    on(route, handler, opts = {}) {
        return this.listeners.on(route, handler, opts);
    }
    /** Register a handler of errors without seq; see {@link Listeners.onError}. */
    onError(handler) {
        return this.listeners.onError(handler);
    }
    /**
     * Send `HEARTBEAT` every `interval` ms from now on (restarts if running; default 10 000).
     * Start it once logged in. When nothing at all arrived for {@link DEAD_AFTER_BEATS}
     * intervals, the broker is taken for dead and the connection aborted.
     */
    startHeartbeat(interval) {
        this.stopHeartbeat();
        this.heartbeatInterval = interval !== undefined && interval > 0 ? interval : DEFAULT_HEARTBEAT;
        this.scheduleBeat();
    }
    /** Stop sending heartbeats. */
    stopHeartbeat() {
        if (this.heartbeatTimer !== undefined)
            this.clock.clearTimeout(this.heartbeatTimer);
        this.heartbeatTimer = undefined;
    }
    /** Send one `HEARTBEAT` now (if connected). */
    sendHeartbeat() {
        if (this.isConnected)
            this.sendPacket({ kind: PacketKind.HEARTBEAT });
    }
    /** Encode and send one packet. */
    sendPacket(packet) {
        if (this.transport === undefined || this.lost !== undefined)
            throw this.disconnected(packet.route ?? "send");
        this.transport.send(encodePacket(packet));
    }
    /**
     * Close the connection gracefully (aborted after `closeGrace` ms if it lingers); resolves
     * once it is closed, with the {@link DisconnectedError} of its end.
     */
    close() {
        const closed = this.whenClosed();
        if (this.transport !== undefined && this.lost === undefined && !this.closing) {
            this.closing = true;
            this.stopHeartbeat();
            this.graceTimer = this.clock.setTimeout(() => this.abort(), this.closeGrace);
            try {
                this.transport.close();
            }
            catch (e) {
                this.logger.debug?.("close failed", e);
                this.abort();
            }
        }
        return closed;
    }
    /** Drop the connection at once. */
    abort() {
        this.closing = true;
        this.stopHeartbeat();
        if (this.transport === undefined || this.lost !== undefined)
            return;
        try {
            this.transport.abort();
        }
        catch (e) {
            this.logger.debug?.("abort failed", e);
        }
    }
    /** Resolves (never rejects) with the {@link DisconnectedError} of the connection's end. */
    whenClosed() {
        if (this.lost !== undefined)
            return Promise.resolve(this.lost);
        return new Promise((resolve) => this.closedHandlers.push(resolve));
    }
    /** Call `handler(lost)` synchronously when the connection ends, before its requests fail. */
    onClosed(handler) {
        if (this.lost !== undefined)
            handler(this.lost);
        else
            this.closedHandlers.push(handler);
    }
    // -- what the transport delivers ---------------------------------------------------
    received(data) {
        if (this.lost !== undefined)
            return;
        this.lastReceived = this.clock.now();
        let packet;
        try {
            packet = decodePacket(data);
        }
        catch (e) {
            // A broker never sends this: the stream can no longer be trusted.
            this.logger.warn?.(`undecodable packet from the broker: ${e.message}`);
            this.abort();
            return;
        }
        switch (packet.kind) {
            case PacketKind.RESPONSE:
                this.answer(packet, undefined);
                break;
            case PacketKind.ERROR: {
                const error = brokerError(packet.code ?? 0, packet.message ?? "");
                if (packet.seq) {
                    this.answer(packet, error);
                }
                else {
                    this.lastError = error;
                    this.listeners.error(error);
                }
                break;
            }
            case PacketKind.PUSH:
                this.listeners.push(packet.route ?? "", packet.body);
                break;
            case PacketKind.HEARTBEAT:
                break; // lastReceived is all it is for
            case PacketKind.KICK:
                this.kicked = brokerError(packet.code ?? 0, packet.message ?? "");
                this.listeners.kick(this.kicked);
                void this.close();
                break;
            default:
                this.logger.warn?.(`ignored a packet of kind ${packet.kind} from the broker`);
        }
    }
    connectionLost(error) {
        if (this.lost !== undefined)
            return;
        this.connected = false;
        this.stopHeartbeat();
        if (this.graceTimer !== undefined)
            this.clock.clearTimeout(this.graceTimer);
        this.graceTimer = undefined;
        const cause = this.kicked ?? this.lastError;
        this.lostText = `connection lost: ${error?.message ?? "closed"}`;
        const lost = new DisconnectedError(this.lostText, cause);
        this.lost = lost;
        // Whoever watches the connection (a Client) learns of the loss before the requests
        // fail, so that a request retried on failure sees the new state.
        const handlers = this.closedHandlers.splice(0);
        for (const handler of handlers)
            safely(this.logger, "close handler", () => handler(lost));
        const pending = [...this.pending.entries()].sort(([a], [b]) => a - b);
        this.pending.clear();
        for (const [seq, entry] of pending) {
            this.settle(entry);
            this.logger.debug?.(`request ${seq} ${entry.route}: connection lost`);
            entry.reject(new DisconnectedError(`${entry.route}: ${this.lostText}`, cause));
        }
    }
    // -- internals ----------------------------------------------------------------------
    settle(entry) {
        this.clock.clearTimeout(entry.timer);
        entry.cleanup?.();
    }
    answer(packet, error) {
        const seq = packet.seq ?? 0;
        const entry = this.pending.get(seq);
        if (entry === undefined) {
            // Typically the answer to a request that timed out here.
            this.logger.info?.(`answer to no pending request (seq ${seq})`);
            return;
        }
        this.pending.delete(seq);
        this.settle(entry);
        if (error !== undefined) {
            entry.reject(error);
            return;
        }
        let reply;
        try {
            reply = decodeBody(packet.body, { valueOptions: this.valueOptions, ...entry.reply });
        }
        catch (e) {
            entry.reject(e instanceof WireError ? e : new WireError(`${entry.route}: ${e.message}`, { cause: e }));
            return;
        }
        entry.resolve(reply);
    }
    expire(seq, entry, timeout) {
        if (this.pending.get(seq) !== entry)
            return;
        this.pending.delete(seq);
        entry.cleanup?.();
        entry.reject(new ClientTimeoutError(`${entry.route}: no answer within ${timeout / 1000} s (seq ${seq})`));
    }
    allocateSeq() {
        for (;;) {
            const seq = this.nextSeq;
            this.nextSeq = seq >= MAX_SEQ ? 1 : seq + 1;
            if (!this.pending.has(seq))
                return seq;
        }
    }
    scheduleBeat() {
        this.heartbeatTimer = this.clock.setTimeout(() => this.beat(), this.heartbeatInterval ?? DEFAULT_HEARTBEAT);
    }
    beat() {
        this.heartbeatTimer = undefined;
        if (!this.isConnected)
            return;
        const interval = this.heartbeatInterval ?? DEFAULT_HEARTBEAT;
        const silent = this.clock.now() - this.lastReceived;
        if (silent >= BrokerConnection.DEAD_AFTER_BEATS * interval) {
            this.logger.warn?.(`nothing from the broker for ${(silent / 1000).toFixed(1)} s: dropping it`);
            this.abort();
            return;
        }
        this.sendHeartbeat();
        this.scheduleBeat();
    }
    disconnected(route) {
        if (this.lost !== undefined)
            return new DisconnectedError(`${route}: ${this.lostText}`, this.lost.cause);
        return new DisconnectedError(`${route}: not connected`);
    }
}
