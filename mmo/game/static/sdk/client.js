/**
 * `Client`: a game client's session with the brokers, kept across reconnections (the
 * Python SDK's `mmo.client.Client`).
 *
 * It finds a broker (the least loaded of the brokerlist, or a fixed address), connects,
 * logs in, and then keeps the session: when the connection drops unexpectedly it
 * reconnects (to any broker the brokerlist then names) and resumes the session with its
 * token (docs/protocol.md 5.7.5), while requests made meanwhile wait for the new
 * connection, and requests that were in flight are sent again with their seq (the service
 * answers such a resend without running it twice). Each reconnect attempt waits a random
 * time: the first up to `backoffInitial` ("full jitter": the players of a broker that died
 * come back spread out), the later ones between half and all of a bound that doubles up to
 * `backoffMax`. The resume token is refreshed at half its lifetime (5.7.6).
 *
 * ```ts
 * const client = new Client({ brokerlist: "https://play.example.com/brokers/" });
 * await client.connect();
 * await client.login({ user: "harry", password: "hunter2" });
 * client.on("chat.message", (msg) => console.log(msg.from, msg.content));
 * await client.request("chat.join", { room: "hall" });
 * client.notify("chat.send", { content: "hello" });
 * await client.logout();
 * ```
 */
import { SCHEMES, brokerUrl, brokersFor, httpFetcher, joinAddress, parseBrokerList, pickBroker, rankBrokers, splitUrl, } from "./brokerlist.js";
import { MAX_DELAY, consoleLogger, systemClock } from "./clock.js";
import { BrokerConnection, DEFAULT_HEARTBEAT, Listeners, MAX_SEQ, encodeBody, } from "./connection.js";
import { BrokerError, ClientError, ClientTimeoutError, ConnectError, DisconnectedError, MmoError, } from "./errors.js";
import { connector as defaultConnector } from "./transports.js";
/** Kicks after which the session is over: no reconnect (docs/protocol.md 5.7.4). */
export const FINAL_KICKS = new Set([ClientError.KICKED, ClientError.REPLACED]);
function isObject(v) {
    return v !== null && typeof v === "object" && !Array.isArray(v) && !(v instanceof Uint8Array) && !(v instanceof Map);
}
function show(v) {
    try {
        return JSON.stringify(v, (_k, x) => (typeof x === "bigint" ? x.toString() : x)) ?? String(v);
    }
    catch {
        return String(v);
    }
}
function positive(v) {
    return typeof v === "number" && Number.isFinite(v) && v > 0 ? v : undefined;
}
/** A game client's connection and session, kept across broker failures. */
export class Client {
    /** The brokerlist URL, if any. */
    brokerlist;
    /** The fixed broker's `"host:port"`, if any. */
    broker;
    transport;
    loginRoute;
    registerRoute;
    resumeRoute;
    refreshRoute;
    logoutRoute;
    requestTimeout;
    resumeWindow;
    backoffInitial;
    backoffMax;
    /** The last login (or {@link resume}) reply. */
    loginReply;
    options;
    clock;
    logger;
    random;
    connector;
    fetcher;
    valueOptions;
    sessionValues;
    listeners;
    brokerUrlOverride;
    tlsAddresses = new Set();
    resumedHandlers = [];
    closedHandlers = [];
    stateHandlers = [];
    _state = "closed";
    conn;
    address;
    _sessionId;
    _userId;
    _token;
    heartbeat = DEFAULT_HEARTBEAT;
    closing = false;
    ended = true;
    lifetime = 0;
    waiters = [];
    nextSeq = 1;
    refreshTimer;
    sleeper;
    resuming;
    /** Describe where to connect; nothing happens until {@link connect}. */
    constructor(options) {
        if (options.brokerlist === undefined && options.broker === undefined) {
            throw new TypeError("give a brokerlist URL or a broker address");
        }
        const globalWs = globalThis.WebSocket;
        const brokerScheme = options.broker?.includes("://") ? SCHEMES[options.broker.split("://")[0]] : undefined;
        const transport = options.transport ??
            brokerScheme?.[0] ??
            (options.WebSocket !== undefined || typeof globalWs === "function" ? "websocket" : "tcp");
        if (transport !== "tcp" && transport !== "websocket") {
            throw new TypeError(`transport is "tcp" or "websocket", not ${JSON.stringify(transport)}`);
        }
        let broker = options.broker;
        if (broker !== undefined) {
            this.brokerUrlOverride = broker.includes("://") ? broker : undefined;
            let parts;
            try {
                parts = splitUrl(broker);
            }
            catch (e) {
                throw new TypeError(e.message);
            }
            broker = joinAddress(parts.host, parts.port);
        }
        this.options = options;
        this.brokerlist = options.brokerlist;
        this.broker = broker;
        this.transport = transport;
        this.loginRoute = options.loginRoute ?? "sso.login";
        this.registerRoute = options.registerRoute ?? "sso.register";
        this.resumeRoute = options.resumeRoute ?? "session.resume";
        this.refreshRoute = options.refreshRoute ?? "session.refresh";
        this.logoutRoute = options.logoutRoute ?? "session.logout";
        this.requestTimeout = options.requestTimeout ?? 5000;
        this.resumeWindow = options.resumeWindow ?? 30_000;
        this.backoffInitial = options.backoffInitial ?? 500;
        this.backoffMax = options.backoffMax ?? 8000;
        this.clock = options.clock ?? systemClock;
        this.logger = options.logger ?? consoleLogger;
        this.random = options.random ?? Math.random;
        this.valueOptions = options.valueOptions ?? {};
        this.sessionValues = { ...this.valueOptions, maps: "object" };
        const connectTimeout = options.connectTimeout ?? 5000;
        this.connector =
            options.connector ??
                defaultConnector({
                    WebSocket: options.WebSocket,
                    timeout: connectTimeout,
                    ca: options.ca,
                    maxFrame: options.maxFrame,
                    clock: this.clock,
                });
        this.fetcher = options.fetcher ?? httpFetcher(connectTimeout);
        this.listeners = new Listeners(this.logger, this.valueOptions);
    }
    // -- what it is now ------------------------------------------------------------------
    /** `"connecting"`, `"online"`, `"reconnecting"` or `"closed"`. */
    get state() {
        return this._state;
    }
    /** `"host:port"` of the broker of the current (or last) connection. */
    get brokerAddress() {
        return this.address;
    }
    /** The session's id once logged in. */
    get sessionId() {
        return this._sessionId;
    }
    /** The user id the login returned. */
    get userId() {
        return this._userId;
    }
    /** The token that resumes the session (each resume and refresh replaces it). */
    get token() {
        return this._token;
    }
    /** The connection, while one is up. */
    get connection() {
        return this.conn;
    }
    // -- connecting and the session -------------------------------------------------------
    /**
     * Connect to a broker: `broker`, else the brokerlist's least loaded (the next ones if it
     * cannot be reached). Resolves with its `"host:port"`; rejects with {@link ConnectError}
     * (the state is then `"closed"` again).
     */
    async connect() {
        if (this._state !== "closed")
            throw new MmoError(`connect: already ${this._state}`);
        this.closing = false;
        this.ended = false;
        const life = ++this.lifetime;
        this.setState("connecting");
        let conn;
        let address;
        try {
            const candidates = this.broker !== undefined ? [this.broker] : await this.candidates(undefined);
            let last;
            for (const candidate of candidates) {
                if (this.stale(life))
                    break;
                try {
                    conn = await this.open(candidate);
                    address = candidate;
                    break;
                }
                catch (e) {
                    last = e;
                    this.logger.info?.(`cannot connect to ${candidate}: ${e.message}`);
                }
            }
            if (conn === undefined && !this.stale(life)) {
                throw last instanceof ConnectError ? last : new ConnectError(`cannot connect: ${last?.message}`);
            }
        }
        catch (e) {
            if (this._state === "connecting" && life === this.lifetime) {
                this.setState("closed");
                this.ended = true;
                this.failWaiters(new DisconnectedError(`connect failed: ${e.message}`));
            }
            throw e;
        }
        if (conn === undefined || address === undefined || this.stale(life)) {
            void conn?.close();
            throw new DisconnectedError("closed while connecting");
        }
        this.adopt(conn, address);
        return address;
    }
    /**
     * Log in with the login route (`credentials` are its arguments, e.g. `{ user, password }`);
     * keep the session id, user id and token, start heartbeats and token refreshes. Rejects
     * with a {@link LoginFailedError} when refused (the connection stays up: try again).
     */
    async login(credentials = {}, opts = {}) {
        const reply = await this.request(this.loginRoute, credentials, {
            ...opts,
            valueOptions: this.sessionValues,
        });
        if (!isObject(reply) || !reply["session_id"]) {
            throw new MmoError(`login: the broker's reply has no session_id: ${show(reply)}`);
        }
        this.sessionStarted(reply);
        return reply;
    }
    /** Create an account (`sso.register`; allowed before login; it does not log in). */
    register(credentials = {}, opts = {}) {
        return this.request(this.registerRoute, credentials, opts);
    }
    /**
     * Resume a session kept from an earlier connection (e.g. a page reload: store
     * {@link sessionId} and {@link token}), in place of a login. Rejects with a
     * {@link ResumeFailedError} if the session is gone (the connection stays up: log in).
     */
    async resume(sessionId, token, opts = {}) {
        const reply = await this.request(this.resumeRoute, { session_id: sessionId, token }, { ...opts, valueOptions: this.sessionValues });
        if (!isObject(reply))
            throw new MmoError(`resume: the broker's reply is not a map: ${show(reply)}`);
        this.sessionStarted({ ...reply, session_id: String(reply["session_id"] ?? sessionId), token: reply["token"] ?? token });
        return reply;
    }
    /**
     * Ask for a new resume token now (`session.refresh`; the client does it by itself at half
     * the token's lifetime). Resolves with the reply (`{ token, token_ttl }`).
     */
    async refreshToken(opts = {}) {
        const reply = await this.request(this.refreshRoute, {}, { ...opts, valueOptions: this.sessionValues });
        if (!isObject(reply))
            throw new MmoError(`refresh: the broker's reply is not a map: ${show(reply)}`);
        if (typeof reply["token"] === "string" && reply["token"]) {
            this._token = reply["token"];
            this.scheduleRefresh(reply["token_ttl"]);
        }
        return reply;
    }
    /**
     * End the session (`session.logout`) and close the connection. A connection already lost
     * (or lost while logging out) is not an error: the broker ends the session anyway after
     * its grace period.
     */
    async logout() {
        const conn = this.conn;
        this.closing = true;
        try {
            if (conn !== undefined && this._sessionId !== undefined) {
                await conn.requestData(this.logoutRoute, encodeBody({}), {
                    timeout: this.requestTimeout,
                    seq: this.allocateSeq(),
                    valueOptions: this.sessionValues,
                });
            }
        }
        catch (e) {
            if (!(e instanceof DisconnectedError))
                throw e;
        }
        finally {
            this.forgetSession();
            await this.close();
        }
    }
    /**
     * Close the connection (the session stays resumable on the broker's side for its grace
     * period: {@link resume} it on a new connection). Stops any reconnecting; waiting
     * requests reject with {@link DisconnectedError}. Resolves once the connection is closed.
     */
    close() {
        this.closing = true;
        this.lifetime++;
        this.setState("closed");
        this.scheduleRefresh(undefined);
        const sleeper = this.sleeper;
        this.sleeper = undefined;
        if (sleeper !== undefined) {
            this.clock.clearTimeout(sleeper.timer);
            sleeper.wake();
        }
        const resuming = this.resuming;
        this.resuming = undefined;
        void resuming?.close();
        this.failWaiters(new DisconnectedError("client closed"));
        const conn = this.conn;
        this.conn = undefined;
        this.fireClosed(null);
        if (conn === undefined)
            return Promise.resolve();
        conn.stopHeartbeat();
        return conn.close().then(() => undefined);
    }
    // -- traffic --------------------------------------------------------------------------
    /**
     * Send a request and wait for its answer (`body`: a {@link WireValue}, sent as a `Value`;
     * `undefined`: no arguments). Rejects with the {@link BrokerError} subclass of the broker's
     * code, {@link ClientTimeoutError} past `timeout` (default {@link requestTimeout}),
     * {@link DisconnectedError} if the session is gone, or {@link WireError}.
     *
     * Requests are numbered per session, not per connection. While reconnecting a request
     * waits for the new connection; one in flight when the connection drops is sent again,
     * with the same seq, once the session is resumed. The wait counts against `timeout`.
     */
    request(route, body, opts = {}) {
        const timeout = opts.timeout ?? this.requestTimeout;
        let data;
        try {
            data = encodeBody(body, opts);
        }
        catch (e) {
            return Promise.reject(e);
        }
        const seq = this.allocateSeq();
        return this.send(route, data, seq, this.clock.now() + timeout, opts);
    }
    /**
     * Send a one-way notification. While (re)connecting it is queued (in order with requests)
     * and sent once online; dropped if the session cannot be resumed. A refusal comes back as
     * an error without seq ({@link onError}). Throws {@link DisconnectedError} when closed,
     * {@link WireError} for a body that does not encode.
     */
    notify(route, body, opts = {}) {
        const data = encodeBody(body, opts);
        const conn = this.conn;
        if (this._state === "online" && conn?.isConnected) {
            conn.notifyData(route, data, opts.trace);
            return;
        }
        if (this._state === "closed")
            throw new DisconnectedError(`${route}: not connected`);
        this.whenOnline(route, undefined, (online) => {
            try {
                online.notifyData(route, data, opts.trace);
            }
            catch (e) {
                this.logger.warn?.(`notify ${route} dropped: ${e.message}`);
            }
        }, (e) => this.logger.warn?.(`notify ${route} dropped: ${e.message}`));
    }
    // -- events ---------------------------------------------------------------------------
    /**
     * Call `handler(body, route)` for each push on `route` (`"*"`: every push). Registrations
     * outlive reconnections. Returns a function that removes it.
     */
    on(route, handler, opts = {}) {
        return this.listeners.on(route, handler, opts);
    }
    /** Call `handler(error)` for each `ERROR` without seq (a refused notify, a rate limit, why the broker closes). */
    onError(handler) {
        return this.listeners.onError(handler);
    }
    /** Call `handler(error)` when the broker kicks the connection (`KickedError`, `ReplacedError`, `ShutdownError`, `IdleError`). */
    onKick(handler) {
        return this.listeners.onKick(handler);
    }
    /** Call `handler(reply)` after each successful automatic resume on a new connection. */
    onResumed(handler) {
        return this.addHandler(this.resumedHandlers, handler);
    }
    /**
     * Call `handler(reason)` when the client ends up closed: `null` after {@link close} or
     * {@link logout}, else a {@link DisconnectedError} saying why: a final kick (its `cause`),
     * a drop before login, a refused resume (`cause`: {@link ResumeFailedError}), or no resume
     * within `resumeWindow`.
     */
    onClosed(handler) {
        return this.addHandler(this.closedHandlers, handler);
    }
    /** Call `handler(state)` at each change of {@link state}. */
    onStateChange(handler) {
        return this.addHandler(this.stateHandlers, handler);
    }
    // -- internals ------------------------------------------------------------------------
    addHandler(list, handler) {
        list.push(handler);
        return () => {
            const at = list.indexOf(handler);
            if (at >= 0)
                list.splice(at, 1);
        };
    }
    call(list, arg, what) {
        for (const handler of [...list]) {
            try {
                handler(arg);
            }
            catch (e) {
                this.logger.error?.(`${what} handler failed`, e);
            }
        }
    }
    setState(state) {
        if (this._state === state)
            return;
        this._state = state;
        this.call(this.stateHandlers, state, "state");
    }
    stale(life) {
        return this.closing || life !== this.lifetime;
    }
    allocateSeq() {
        const seq = this.nextSeq;
        this.nextSeq = seq >= MAX_SEQ ? 1 : seq + 1;
        return seq;
    }
    async list() {
        const listing = parseBrokerList(await this.fetcher(this.brokerlist));
        this.tlsAddresses = listing.tls;
        return brokersFor(listing, this.transport);
    }
    async candidates(avoid) {
        const brokers = await this.list();
        return rankBrokers(brokers, { avoid: avoid !== undefined ? [avoid] : [], random: this.random });
    }
    async choose(avoid) {
        if (this.brokerlist === undefined)
            return this.broker;
        const brokers = await this.list();
        return pickBroker(brokers, { avoid: avoid !== undefined ? [avoid] : [], random: this.random });
    }
    /** How to reach broker `address`: as given, or as transport and TLS say. */
    url(address) {
        if (this.brokerUrlOverride !== undefined && address === this.broker)
            return this.brokerUrlOverride;
        const tls = this.options.tls ?? this.tlsAddresses.has(address);
        return brokerUrl(address, this.transport, tls);
    }
    open(address) {
        const url = this.url(address);
        this.logger.debug?.(`connecting to ${url}`);
        return BrokerConnection.open(this.connector, url, {
            clock: this.clock,
            listeners: this.listeners,
            logger: this.logger,
            valueOptions: this.valueOptions,
        });
    }
    adopt(conn, address) {
        this.conn = conn;
        this.address = address;
        this._state = "online";
        conn.onClosed((lost) => this.lost(conn, lost));
        const waiters = this.waiters.splice(0);
        for (const waiter of waiters) {
            this.clock.clearTimeout(waiter.timer);
            waiter.online(conn);
        }
        this.call(this.stateHandlers, "online", "state");
    }
    sessionStarted(reply) {
        this.loginReply = reply;
        this._sessionId = String(reply.session_id);
        if (reply.user_id !== undefined)
            this._userId = reply.user_id;
        if (typeof reply.token === "string")
            this._token = reply.token;
        this.takeHeartbeat(reply);
        this.scheduleRefresh(reply.token_ttl);
        this.conn?.startHeartbeat(this.heartbeat);
    }
    takeHeartbeat(reply) {
        const seconds = positive(reply.heartbeat);
        if (seconds !== undefined)
            this.heartbeat = seconds * 1000;
    }
    forgetSession() {
        this._sessionId = undefined;
        this._token = undefined;
        this.scheduleRefresh(undefined);
    }
    /** Refresh the token at half its lifetime (seconds): a token that expires while online would not resume. */
    scheduleRefresh(ttl) {
        if (this.refreshTimer !== undefined)
            this.clock.clearTimeout(this.refreshTimer);
        this.refreshTimer = undefined;
        const seconds = positive(ttl);
        if (seconds === undefined || this.options.autoRefresh === false)
            return;
        this.refreshTimer = this.clock.setTimeout(() => this.refreshDue(seconds), Math.min((seconds * 1000) / 2, MAX_DELAY));
    }
    refreshDue(ttl) {
        this.refreshTimer = undefined;
        if (this._sessionId === undefined || this._state === "closed")
            return;
        const life = this.lifetime;
        this.refreshToken().catch((e) => {
            this.logger.info?.(`token refresh failed: ${e.message}`);
            if (this._sessionId !== undefined && this._state !== "closed" && life === this.lifetime) {
                this.scheduleRefresh(ttl / 2); // try again well before the token runs out
            }
        });
    }
    lost(conn, lost) {
        if (conn !== this.conn)
            return;
        this.conn = undefined;
        if (this.closing || this._state === "closed") {
            this.setState("closed");
            return;
        }
        const kick = conn.kicked;
        if (kick !== undefined && FINAL_KICKS.has(kick.code)) {
            this.end(new DisconnectedError("session ended", kick));
        }
        else if (this._sessionId === undefined || this._token === undefined) {
            this.end(lost);
        }
        else {
            this.logger.info?.(`connection to ${this.address} lost: ${lost.message}`);
            this.setState("reconnecting");
            const life = this.lifetime;
            this.reconnect(life).catch((e) => {
                if (this.stale(life))
                    return;
                this.logger.error?.("reconnecting failed", e);
                this.end(new DisconnectedError(`reconnecting failed: ${e.message}`));
            });
        }
    }
    end(reason) {
        this.logger.info?.(`client closed: ${reason.message}`);
        this.setState("closed");
        this.forgetSession();
        this.failWaiters(reason);
        this.fireClosed(reason);
    }
    /** A pause through the clock (never none: no loop in one turn), cut short by close(). */
    sleep(ms) {
        return new Promise((resolve) => {
            const sleeper = {
                timer: undefined,
                wake: () => {
                    if (this.sleeper === sleeper)
                        this.sleeper = undefined;
                    resolve();
                },
            };
            sleeper.timer = this.clock.setTimeout(sleeper.wake, Math.max(0, ms));
            this.sleeper = sleeper;
        });
    }
    /** Reconnect and resume, with backoff, until it works or the window closes. */
    async reconnect(life) {
        const deadline = this.clock.now() + this.resumeWindow;
        const lostAddress = this.address;
        let last;
        let attempt = 0;
        while (!this.stale(life)) {
            // The first attempt after a random pause of up to backoffInitial ("full jitter"):
            // every player of a dead broker loses it in the same instant, and they come back
            // spread out. Later ones wait at least half their doubling bound.
            const bound = Math.min(this.backoffMax, this.backoffInitial * 2 ** attempt);
            const low = attempt === 0 ? 0 : bound / 2;
            attempt++;
            const pause = Math.min(low + (bound - low) * this.random(), Math.max(0, deadline - this.clock.now()));
            await this.sleep(pause);
            if (this.stale(life))
                return;
            let conn;
            try {
                const address = await this.choose(lostAddress);
                if (this.stale(life))
                    return;
                conn = await this.open(address);
                if (this.stale(life)) {
                    void conn.close();
                    return;
                }
                this.resuming = conn;
                const remaining = deadline - this.clock.now();
                const reply = await conn.request(this.resumeRoute, { session_id: this._sessionId, token: this._token }, {
                    timeout: Math.max(Math.min(this.requestTimeout, remaining), 100),
                    seq: this.allocateSeq(),
                    valueOptions: this.sessionValues,
                });
                if (this.resuming === conn)
                    this.resuming = undefined;
                if (this.stale(life)) {
                    void conn.close();
                    return;
                }
                if (conn.isConnected && isObject(reply)) {
                    this.resumedOn(conn, address, reply);
                    return;
                }
                void conn.close();
                last = new MmoError(`resume: bad reply or connection lost: ${show(reply)}`);
            }
            catch (e) {
                if (conn !== undefined) {
                    if (this.resuming === conn)
                        this.resuming = undefined;
                    void conn.close();
                }
                if (this.stale(life))
                    return;
                if (e instanceof BrokerError && e.code === ClientError.RESUME_FAILED) {
                    this.end(new DisconnectedError("session ended", e));
                    return;
                }
                last = e;
            }
            this.logger.info?.(`resume failed: ${last?.message ?? show(last)}`);
            if (deadline - this.clock.now() <= 0)
                break;
        }
        if (!this.stale(life)) {
            this.end(new DisconnectedError(`could not resume within ${this.resumeWindow / 1000} s: ${last?.message ?? show(last)}`));
        }
    }
    resumedOn(conn, address, reply) {
        this.logger.info?.(`session ${this._sessionId} resumed on ${address}`);
        this.adopt(conn, address);
        if (typeof reply.token === "string")
            this._token = reply.token;
        if (reply.user_id !== undefined)
            this._userId = reply.user_id;
        this.scheduleRefresh(reply.token_ttl);
        // The resume reply need not repeat the interval: keep the login's then.
        this.takeHeartbeat(reply);
        conn.startHeartbeat(this.heartbeat);
        this.call(this.resumedHandlers, reply, "resumed");
    }
    /** Wait for the client to be online; returns a function that stops waiting. */
    whenOnline(route, timeout, online, fail) {
        if (this._state === "closed") {
            fail(new DisconnectedError(`${route}: not connected`));
            return () => { };
        }
        const waiter = { online, fail, timer: undefined };
        const remove = () => {
            const at = this.waiters.indexOf(waiter);
            if (at < 0)
                return false;
            this.waiters.splice(at, 1);
            this.clock.clearTimeout(waiter.timer);
            return true;
        };
        if (timeout !== undefined) {
            waiter.timer = this.clock.setTimeout(() => {
                if (remove())
                    fail(new ClientTimeoutError(`${route}: no connection within ${timeout / 1000} s`));
            }, Math.max(0, timeout));
        }
        this.waiters.push(waiter);
        return () => void remove();
    }
    failWaiters(error) {
        const waiters = this.waiters.splice(0);
        for (const waiter of waiters) {
            this.clock.clearTimeout(waiter.timer);
            waiter.fail(error);
        }
    }
    fireClosed(reason) {
        if (this.ended)
            return;
        this.ended = true;
        this.call(this.closedHandlers, reason, "closed");
    }
    send(route, data, seq, deadline, opts) {
        const life = this.lifetime;
        const signal = opts.signal;
        return new Promise((resolve, reject) => {
            let done = false;
            let cancelWait;
            const aborted = () => {
                cancelWait?.();
                fail(signal.reason ?? new MmoError("aborted"));
            };
            const finish = () => {
                if (done)
                    return false;
                done = true;
                signal?.removeEventListener("abort", aborted);
                return true;
            };
            const succeed = (value) => {
                if (finish())
                    resolve(value);
            };
            const fail = (error) => {
                if (finish())
                    reject(error);
            };
            if (signal !== undefined) {
                if (signal.aborted) {
                    fail(signal.reason ?? new MmoError("aborted"));
                    return;
                }
                signal.addEventListener("abort", aborted, { once: true });
            }
            const attempt = (conn) => {
                cancelWait = undefined;
                if (done)
                    return;
                const left = deadline - this.clock.now();
                if (left <= 0) {
                    fail(new ClientTimeoutError(`${route}: not reconnected in time`));
                    return;
                }
                conn.requestData(route, data, { ...opts, timeout: left, seq }).then(succeed, (e) => {
                    if (done)
                        return;
                    // The connection went while the request was out: resend it after the resume.
                    const resend = e instanceof DisconnectedError &&
                        life === this.lifetime &&
                        deadline > this.clock.now() &&
                        (this._state === "reconnecting" || (this._state === "online" && this.conn !== conn));
                    if (resend) {
                        this.logger.info?.(`request ${seq} ${route}: resending after the resume`);
                        go();
                    }
                    else {
                        fail(e);
                    }
                });
            };
            const go = () => {
                // A connection that is closing (a KICK arrived, its close is under way) is not
                // used: the request waits to learn whether the session goes on elsewhere.
                const conn = this.conn;
                if (this._state === "online" && conn?.isConnected)
                    attempt(conn);
                else
                    cancelWait = this.whenOnline(route, deadline - this.clock.now(), attempt, fail);
            };
            go();
        });
    }
}
