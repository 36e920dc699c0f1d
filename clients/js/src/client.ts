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

import {
  type Fetcher,
  type TransportName,
  SCHEMES,
  brokerUrl,
  brokersFor,
  httpFetcher,
  joinAddress,
  parseBrokerList,
  pickBroker,
  rankBrokers,
  splitUrl,
} from "./brokerlist.js";
import { type Clock, type Logger, MAX_DELAY, consoleLogger, systemClock } from "./clock.js";
import {
  BrokerConnection,
  DEFAULT_HEARTBEAT,
  type ErrorHandler,
  Listeners,
  MAX_SEQ,
  type NotifyOptions,
  type PushHandler,
  type ReplyOptions,
  type RequestOptions,
  encodeBody,
} from "./connection.js";
import {
  BrokerError,
  ClientError,
  ClientTimeoutError,
  ConnectError,
  DisconnectedError,
  MmoError,
} from "./errors.js";
import { type Connector, type WebSocketConstructor, connector as defaultConnector } from "./transports.js";
import type { DecodeOptions } from "./value.js";

/** Where a {@link Client} is. */
export type ClientState = "connecting" | "online" | "reconnecting" | "closed";

/** Kicks after which the session is over: no reconnect (docs/protocol.md 5.7.4). */
export const FINAL_KICKS: ReadonlySet<number> = new Set([ClientError.KICKED, ClientError.REPLACED]);

/** The login reply (docs/protocol.md 5.7.1): the broker's fields and the auth service's. */
export interface LoginReply {
  session_id: string;
  user_id?: unknown;
  /** Keep it to resume (the client does). */
  token?: string;
  /** Seconds the token stays valid. */
  token_ttl?: number;
  /** Seconds between heartbeats. */
  heartbeat?: number;
  [field: string]: unknown;
}

/** The resume reply (docs/protocol.md 5.7.5). */
export interface ResumeReply {
  session_id?: string;
  user_id?: unknown;
  token?: string;
  token_ttl?: number;
  resumed?: boolean;
  heartbeat?: number;
  [field: string]: unknown;
}

/** Options of a {@link Client}. Times are milliseconds. */
export interface ClientOptions {
  /** URL of the brokerlist (docs/protocol.md 5.9); reconnects always consult it. */
  brokerlist?: string;
  /**
   * A broker's `"host:port"` (reached by `transport`, in TLS only with `tls: true`), or its
   * URL (`ws://host:port/`, `wss://…`, `tcp://host:port`, `tls://…`): the first connection
   * goes there without asking the brokerlist (without a brokerlist, every connection does).
   */
  broker?: string;
  /**
   * `"websocket"` or `"tcp"` (Node only): which list of the brokerlist to use and how to
   * connect. Default: that of `broker` when it is a URL, else `"websocket"` where a
   * WebSocket class is available (browsers, Node >= 22, or the `WebSocket` option), else
   * `"tcp"`.
   */
  transport?: TransportName;
  /** `true`: always TLS; `false`: never; unset: as the brokerlist's `tls` list says. */
  tls?: boolean;
  /** The WebSocket class (default: the global one); e.g. `import { WebSocket } from "ws"` on Node 20. */
  WebSocket?: WebSocketConstructor;
  /** TLS over TCP (Node): the CA certificates (PEM) to trust instead of the default store. */
  ca?: string | Uint8Array | ReadonlyArray<string | Uint8Array>;
  /** TCP: the largest frame accepted from a broker (default 16 MiB). */
  maxFrame?: number;
  /** The login route (default `"sso.login"`). */
  loginRoute?: string;
  /** The account-creation route of {@link Client.register} (default `"sso.register"`). */
  registerRoute?: string;
  /** Default `"session.resume"`. */
  resumeRoute?: string;
  /** Default `"session.refresh"`. */
  refreshRoute?: string;
  /** Default `"session.logout"`. */
  logoutRoute?: string;
  /** Default deadline of a request (default 5000). */
  requestTimeout?: number;
  /** Allowed to connect, and for the brokerlist's GET (default 5000). */
  connectTimeout?: number;
  /** How long to keep trying to reconnect and resume after a drop (default 30 000). */
  resumeWindow?: number;
  /** The bound of the random pause before the first reconnect attempt (default 500). */
  backoffInitial?: number;
  /** The largest bound of the random pause between attempts (default 8000). */
  backoffMax?: number;
  /** Refresh the resume token at half its `token_ttl` (default true). */
  autoRefresh?: boolean;
  /** How to connect (default: {@link connector}: WebSocket, or TCP on Node). */
  connector?: Connector;
  /** How to GET the brokerlist (default: `fetch`). */
  fetcher?: Fetcher;
  /** Random numbers in [0, 1): tie-breaks between brokers, reconnect pauses (default `Math.random`). */
  random?: () => number;
  /** Time and timers (default: the real ones). */
  clock?: Clock;
  /** Where to log (default: warnings and errors to the console). */
  logger?: Logger;
  /** How reply and push `Value`s become JavaScript (bigints, `Double`s, `Map`s). */
  valueOptions?: DecodeOptions;
}

interface Waiter {
  online: (conn: BrokerConnection) => void;
  fail: (error: Error) => void;
  timer: unknown;
}

function isObject(v: unknown): v is Record<string, unknown> {
  return v !== null && typeof v === "object" && !Array.isArray(v) && !(v instanceof Uint8Array) && !(v instanceof Map);
}

function show(v: unknown): string {
  try {
    return JSON.stringify(v, (_k, x) => (typeof x === "bigint" ? x.toString() : x)) ?? String(v);
  } catch {
    return String(v);
  }
}

function positive(v: unknown): number | undefined {
  return typeof v === "number" && Number.isFinite(v) && v > 0 ? v : undefined;
}

/** A game client's connection and session, kept across broker failures. */
export class Client {
  /** The brokerlist URL, if any. */
  readonly brokerlist: string | undefined;
  /** The fixed broker's `"host:port"`, if any. */
  readonly broker: string | undefined;
  readonly transport: TransportName;
  readonly loginRoute: string;
  readonly registerRoute: string;
  readonly resumeRoute: string;
  readonly refreshRoute: string;
  readonly logoutRoute: string;
  requestTimeout: number;
  resumeWindow: number;
  backoffInitial: number;
  backoffMax: number;
  /** The last login (or {@link resume}) reply. */
  loginReply: LoginReply | undefined;

  private readonly options: ClientOptions;
  private readonly clock: Clock;
  private readonly logger: Logger;
  private readonly random: () => number;
  private readonly connector: Connector;
  private readonly fetcher: Fetcher;
  private readonly valueOptions: DecodeOptions;
  private readonly sessionValues: DecodeOptions;
  private readonly listeners: Listeners;
  private readonly brokerUrlOverride: string | undefined;
  private tlsAddresses: ReadonlySet<string> = new Set();
  private readonly resumedHandlers: ((reply: ResumeReply) => void)[] = [];
  private readonly closedHandlers: ((reason: DisconnectedError | null) => void)[] = [];
  private readonly stateHandlers: ((state: ClientState) => void)[] = [];
  private _state: ClientState = "closed";
  private conn: BrokerConnection | undefined;
  private address: string | undefined;
  private _sessionId: string | undefined;
  private _userId: unknown;
  private _token: string | undefined;
  private heartbeat = DEFAULT_HEARTBEAT;
  private closing = false;
  private ended = true;
  private lifetime = 0;
  private waiters: Waiter[] = [];
  private nextSeq = 1;
  private refreshTimer: unknown;
  private sleeper: { timer: unknown; wake: () => void } | undefined;
  private resuming: BrokerConnection | undefined;

  /** Describe where to connect; nothing happens until {@link connect}. */
  constructor(options: ClientOptions) {
    if (options.brokerlist === undefined && options.broker === undefined) {
      throw new TypeError("give a brokerlist URL or a broker address");
    }
    const globalWs = (globalThis as { WebSocket?: unknown }).WebSocket;
    const brokerScheme = options.broker?.includes("://") ? SCHEMES[options.broker.split("://")[0]!] : undefined;
    const transport =
      options.transport ??
      brokerScheme?.[0] ??
      (options.WebSocket !== undefined || typeof globalWs === "function" ? "websocket" : "tcp");
    if (transport !== "tcp" && transport !== "websocket") {
      throw new TypeError(`transport is "tcp" or "websocket", not ${JSON.stringify(transport)}`);
    }
    let broker = options.broker;
    if (broker !== undefined) {
      this.brokerUrlOverride = broker.includes("://") ? broker : undefined;
      let parts: { host: string; port: number };
      try {
        parts = splitUrl(broker);
      } catch (e) {
        throw new TypeError((e as Error).message);
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
  get state(): ClientState {
    return this._state;
  }

  /** `"host:port"` of the broker of the current (or last) connection. */
  get brokerAddress(): string | undefined {
    return this.address;
  }

  /** The session's id once logged in. */
  get sessionId(): string | undefined {
    return this._sessionId;
  }

  /** The user id the login returned. */
  get userId(): unknown {
    return this._userId;
  }

  /** The token that resumes the session (each resume and refresh replaces it). */
  get token(): string | undefined {
    return this._token;
  }

  /** The connection, while one is up. */
  get connection(): BrokerConnection | undefined {
    return this.conn;
  }

  // -- connecting and the session -------------------------------------------------------

  /**
   * Connect to a broker: `broker`, else the brokerlist's least loaded (the next ones if it
   * cannot be reached). Resolves with its `"host:port"`; rejects with {@link ConnectError}
   * (the state is then `"closed"` again).
   */
  async connect(): Promise<string> {
    if (this._state !== "closed") throw new MmoError(`connect: already ${this._state}`);
    this.closing = false;
    this.ended = false;
    const life = ++this.lifetime;
    this.setState("connecting");
    let conn: BrokerConnection | undefined;
    let address: string | undefined;
    try {
      const candidates = this.broker !== undefined ? [this.broker] : await this.candidates(undefined);
      let last: unknown;
      for (const candidate of candidates) {
        if (this.stale(life)) break;
        try {
          conn = await this.open(candidate);
          address = candidate;
          break;
        } catch (e) {
          last = e;
          this.logger.info?.(`cannot connect to ${candidate}: ${(e as Error).message}`);
        }
      }
      if (conn === undefined && !this.stale(life)) {
        throw last instanceof ConnectError ? last : new ConnectError(`cannot connect: ${(last as Error)?.message}`);
      }
    } catch (e) {
      if ((this._state as ClientState) === "connecting" && life === this.lifetime) {
        this.setState("closed");
        this.ended = true;
        this.failWaiters(new DisconnectedError(`connect failed: ${(e as Error).message}`));
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
  async login<R extends LoginReply = LoginReply>(
    credentials: object = {},
    opts: RequestOptions<R> = {},
  ): Promise<R> {
    const reply = await this.request<unknown>(this.loginRoute, credentials, {
      ...opts,
      valueOptions: this.sessionValues,
    } as RequestOptions<unknown>);
    if (!isObject(reply) || !reply["session_id"]) {
      throw new MmoError(`login: the broker's reply has no session_id: ${show(reply)}`);
    }
    this.sessionStarted(reply as LoginReply);
    return reply as R;
  }

  /** Create an account (`sso.register`; allowed before login; it does not log in). */
  register<T = unknown>(credentials: object = {}, opts: RequestOptions<T> = {}): Promise<T> {
    return this.request<T>(this.registerRoute, credentials, opts);
  }

  /**
   * Resume a session kept from an earlier connection (e.g. a page reload: store
   * {@link sessionId} and {@link token}), in place of a login. Rejects with a
   * {@link ResumeFailedError} if the session is gone (the connection stays up: log in).
   */
  async resume(sessionId: string, token: string, opts: RequestOptions<ResumeReply> = {}): Promise<ResumeReply> {
    const reply = await this.request<unknown>(
      this.resumeRoute,
      { session_id: sessionId, token },
      { ...opts, valueOptions: this.sessionValues } as RequestOptions<unknown>,
    );
    if (!isObject(reply)) throw new MmoError(`resume: the broker's reply is not a map: ${show(reply)}`);
    this.sessionStarted({ ...reply, session_id: String(reply["session_id"] ?? sessionId), token: (reply["token"] as string) ?? token });
    return reply as ResumeReply;
  }

  /**
   * Ask for a new resume token now (`session.refresh`; the client does it by itself at half
   * the token's lifetime). Resolves with the reply (`{ token, token_ttl }`).
   */
  async refreshToken(opts: RequestOptions<unknown> = {}): Promise<Record<string, unknown>> {
    const reply = await this.request<unknown>(this.refreshRoute, {}, { ...opts, valueOptions: this.sessionValues });
    if (!isObject(reply)) throw new MmoError(`refresh: the broker's reply is not a map: ${show(reply)}`);
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
  async logout(): Promise<void> {
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
    } catch (e) {
      if (!(e instanceof DisconnectedError)) throw e;
    } finally {
      this.forgetSession();
      await this.close();
    }
  }

  /**
   * Close the connection (the session stays resumable on the broker's side for its grace
   * period: {@link resume} it on a new connection). Stops any reconnecting; waiting
   * requests reject with {@link DisconnectedError}. Resolves once the connection is closed.
   */
  close(): Promise<void> {
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
    if (conn === undefined) return Promise.resolve();
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
  request<T = any>(route: string, body?: unknown, opts: RequestOptions<T> = {}): Promise<T> {
    const timeout = opts.timeout ?? this.requestTimeout;
    let data: Uint8Array;
    try {
      data = encodeBody(body, opts);
    } catch (e) {
      return Promise.reject(e);
    }
    const seq = this.allocateSeq();
    return this.send<T>(route, data, seq, this.clock.now() + timeout, opts);
  }

  /**
   * Send a one-way notification. While (re)connecting it is queued (in order with requests)
   * and sent once online; dropped if the session cannot be resumed. A refusal comes back as
   * an error without seq ({@link onError}). Throws {@link DisconnectedError} when closed,
   * {@link WireError} for a body that does not encode.
   */
  notify(route: string, body?: unknown, opts: NotifyOptions = {}): void {
    const data = encodeBody(body, opts);
    const conn = this.conn;
    if (this._state === "online" && conn?.isConnected) {
      conn.notifyData(route, data, opts.trace);
      return;
    }
    if (this._state === "closed") throw new DisconnectedError(`${route}: not connected`);
    this.whenOnline(
      route,
      undefined,
      (online) => {
        try {
          online.notifyData(route, data, opts.trace);
        } catch (e) {
          this.logger.warn?.(`notify ${route} dropped: ${(e as Error).message}`);
        }
      },
      (e) => this.logger.warn?.(`notify ${route} dropped: ${e.message}`),
    );
  }

  // -- events ---------------------------------------------------------------------------

  /**
   * Call `handler(body, route)` for each push on `route` (`"*"`: every push). Registrations
   * outlive reconnections. Returns a function that removes it.
   */
  on<T = any>(route: string, handler: PushHandler<T>, opts: ReplyOptions<T> = {}): () => void {
    return this.listeners.on(route, handler, opts);
  }

  /** Call `handler(error)` for each `ERROR` without seq (a refused notify, a rate limit, why the broker closes). */
  onError(handler: ErrorHandler): () => void {
    return this.listeners.onError(handler);
  }

  /** Call `handler(error)` when the broker kicks the connection (`KickedError`, `ReplacedError`, `ShutdownError`, `IdleError`). */
  onKick(handler: ErrorHandler): () => void {
    return this.listeners.onKick(handler);
  }

  /** Call `handler(reply)` after each successful automatic resume on a new connection. */
  onResumed(handler: (reply: ResumeReply) => void): () => void {
    return this.addHandler(this.resumedHandlers, handler);
  }

  /**
   * Call `handler(reason)` when the client ends up closed: `null` after {@link close} or
   * {@link logout}, else a {@link DisconnectedError} saying why: a final kick (its `cause`),
   * a drop before login, a refused resume (`cause`: {@link ResumeFailedError}), or no resume
   * within `resumeWindow`.
   */
  onClosed(handler: (reason: DisconnectedError | null) => void): () => void {
    return this.addHandler(this.closedHandlers, handler);
  }

  /** Call `handler(state)` at each change of {@link state}. */
  onStateChange(handler: (state: ClientState) => void): () => void {
    return this.addHandler(this.stateHandlers, handler);
  }

  // -- internals ------------------------------------------------------------------------

  private addHandler<H>(list: H[], handler: H): () => void {
    list.push(handler);
    return () => {
      const at = list.indexOf(handler);
      if (at >= 0) list.splice(at, 1);
    };
  }

  private call<A>(list: ((arg: A) => void)[], arg: A, what: string): void {
    for (const handler of [...list]) {
      try {
        handler(arg);
      } catch (e) {
        this.logger.error?.(`${what} handler failed`, e);
      }
    }
  }

  private setState(state: ClientState): void {
    if (this._state === state) return;
    this._state = state;
    this.call(this.stateHandlers, state, "state");
  }

  private stale(life: number): boolean {
    return this.closing || life !== this.lifetime;
  }

  private allocateSeq(): number {
    const seq = this.nextSeq;
    this.nextSeq = seq >= MAX_SEQ ? 1 : seq + 1;
    return seq;
  }

  private async list(): Promise<Record<string, number>> {
    const listing = parseBrokerList(await this.fetcher(this.brokerlist!));
    this.tlsAddresses = listing.tls;
    return brokersFor(listing, this.transport);
  }

  private async candidates(avoid: string | undefined): Promise<string[]> {
    const brokers = await this.list();
    return rankBrokers(brokers, { avoid: avoid !== undefined ? [avoid] : [], random: this.random });
  }

  private async choose(avoid: string | undefined): Promise<string> {
    if (this.brokerlist === undefined) return this.broker!;
    const brokers = await this.list();
    return pickBroker(brokers, { avoid: avoid !== undefined ? [avoid] : [], random: this.random });
  }

  /** How to reach broker `address`: as given, or as transport and TLS say. */
  private url(address: string): string {
    if (this.brokerUrlOverride !== undefined && address === this.broker) return this.brokerUrlOverride;
    const tls = this.options.tls ?? this.tlsAddresses.has(address);
    return brokerUrl(address, this.transport, tls);
  }

  private open(address: string): Promise<BrokerConnection> {
    const url = this.url(address);
    this.logger.debug?.(`connecting to ${url}`);
    return BrokerConnection.open(this.connector, url, {
      clock: this.clock,
      listeners: this.listeners,
      logger: this.logger,
      valueOptions: this.valueOptions,
    });
  }

  private adopt(conn: BrokerConnection, address: string): void {
    this.conn = conn;
    this.address = address;
    this._state = "online";
    conn.onClosed((lost) => this.lost(conn, lost));
    const waiters = this.waiters.splice(0);
    for (const waiter of waiters) {
      this.clock.clearTimeout(waiter.timer);
      waiter.online(conn);
    }
    this.call(this.stateHandlers, "online" as ClientState, "state");
  }

  private sessionStarted(reply: LoginReply): void {
    this.loginReply = reply;
    this._sessionId = String(reply.session_id);
    if (reply.user_id !== undefined) this._userId = reply.user_id;
    if (typeof reply.token === "string") this._token = reply.token;
    this.takeHeartbeat(reply);
    this.scheduleRefresh(reply.token_ttl);
    this.conn?.startHeartbeat(this.heartbeat);
  }

  private takeHeartbeat(reply: { heartbeat?: unknown }): void {
    const seconds = positive(reply.heartbeat);
    if (seconds !== undefined) this.heartbeat = seconds * 1000;
  }

  private forgetSession(): void {
    this._sessionId = undefined;
    this._token = undefined;
    this.scheduleRefresh(undefined);
  }

  /** Refresh the token at half its lifetime (seconds): a token that expires while online would not resume. */
  private scheduleRefresh(ttl: unknown): void {
    if (this.refreshTimer !== undefined) this.clock.clearTimeout(this.refreshTimer);
    this.refreshTimer = undefined;
    const seconds = positive(ttl);
    if (seconds === undefined || this.options.autoRefresh === false) return;
    this.refreshTimer = this.clock.setTimeout(() => this.refreshDue(seconds), Math.min((seconds * 1000) / 2, MAX_DELAY));
  }

  private refreshDue(ttl: number): void {
    this.refreshTimer = undefined;
    if (this._sessionId === undefined || this._state === "closed") return;
    const life = this.lifetime;
    this.refreshToken().catch((e: Error) => {
      this.logger.info?.(`token refresh failed: ${e.message}`);
      if (this._sessionId !== undefined && this._state !== "closed" && life === this.lifetime) {
        this.scheduleRefresh(ttl / 2); // try again well before the token runs out
      }
    });
  }

  private lost(conn: BrokerConnection, lost: DisconnectedError): void {
    if (conn !== this.conn) return;
    this.conn = undefined;
    if (this.closing || this._state === "closed") {
      this.setState("closed");
      return;
    }
    const kick = conn.kicked;
    if (kick !== undefined && FINAL_KICKS.has(kick.code)) {
      this.end(new DisconnectedError("session ended", kick));
    } else if (this._sessionId === undefined || this._token === undefined) {
      this.end(lost);
    } else {
      this.logger.info?.(`connection to ${this.address} lost: ${lost.message}`);
      this.setState("reconnecting");
      const life = this.lifetime;
      this.reconnect(life).catch((e: Error) => {
        if (this.stale(life)) return;
        this.logger.error?.("reconnecting failed", e);
        this.end(new DisconnectedError(`reconnecting failed: ${e.message}`));
      });
    }
  }

  private end(reason: DisconnectedError): void {
    this.logger.info?.(`client closed: ${reason.message}`);
    this.setState("closed");
    this.forgetSession();
    this.failWaiters(reason);
    this.fireClosed(reason);
  }

  /** A pause through the clock (never none: no loop in one turn), cut short by close(). */
  private sleep(ms: number): Promise<void> {
    return new Promise((resolve) => {
      const sleeper = {
        timer: undefined as unknown,
        wake: () => {
          if (this.sleeper === sleeper) this.sleeper = undefined;
          resolve();
        },
      };
      sleeper.timer = this.clock.setTimeout(sleeper.wake, Math.max(0, ms));
      this.sleeper = sleeper;
    });
  }

  /** Reconnect and resume, with backoff, until it works or the window closes. */
  private async reconnect(life: number): Promise<void> {
    const deadline = this.clock.now() + this.resumeWindow;
    const lostAddress = this.address;
    let last: unknown;
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
      if (this.stale(life)) return;
      let conn: BrokerConnection | undefined;
      try {
        const address = await this.choose(lostAddress);
        if (this.stale(life)) return;
        conn = await this.open(address);
        if (this.stale(life)) {
          void conn.close();
          return;
        }
        this.resuming = conn;
        const remaining = deadline - this.clock.now();
        const reply = await conn.request<unknown>(
          this.resumeRoute,
          { session_id: this._sessionId, token: this._token },
          {
            timeout: Math.max(Math.min(this.requestTimeout, remaining), 100),
            seq: this.allocateSeq(),
            valueOptions: this.sessionValues,
          },
        );
        if (this.resuming === conn) this.resuming = undefined;
        if (this.stale(life)) {
          void conn.close();
          return;
        }
        if (conn.isConnected && isObject(reply)) {
          this.resumedOn(conn, address, reply as ResumeReply);
          return;
        }
        void conn.close();
        last = new MmoError(`resume: bad reply or connection lost: ${show(reply)}`);
      } catch (e) {
        if (conn !== undefined) {
          if (this.resuming === conn) this.resuming = undefined;
          void conn.close();
        }
        if (this.stale(life)) return;
        if (e instanceof BrokerError && e.code === ClientError.RESUME_FAILED) {
          this.end(new DisconnectedError("session ended", e));
          return;
        }
        last = e;
      }
      this.logger.info?.(`resume failed: ${(last as Error)?.message ?? show(last)}`);
      if (deadline - this.clock.now() <= 0) break;
    }
    if (!this.stale(life)) {
      this.end(
        new DisconnectedError(
          `could not resume within ${this.resumeWindow / 1000} s: ${(last as Error)?.message ?? show(last)}`,
        ),
      );
    }
  }

  private resumedOn(conn: BrokerConnection, address: string, reply: ResumeReply): void {
    this.logger.info?.(`session ${this._sessionId} resumed on ${address}`);
    this.adopt(conn, address);
    if (typeof reply.token === "string") this._token = reply.token;
    if (reply.user_id !== undefined) this._userId = reply.user_id;
    this.scheduleRefresh(reply.token_ttl);
    // The resume reply need not repeat the interval: keep the login's then.
    this.takeHeartbeat(reply);
    conn.startHeartbeat(this.heartbeat);
    this.call(this.resumedHandlers, reply, "resumed");
  }

  /** Wait for the client to be online; returns a function that stops waiting. */
  private whenOnline(
    route: string,
    timeout: number | undefined,
    online: (conn: BrokerConnection) => void,
    fail: (error: Error) => void,
  ): () => void {
    if (this._state === "closed") {
      fail(new DisconnectedError(`${route}: not connected`));
      return () => {};
    }
    const waiter: Waiter = { online, fail, timer: undefined };
    const remove = (): boolean => {
      const at = this.waiters.indexOf(waiter);
      if (at < 0) return false;
      this.waiters.splice(at, 1);
      this.clock.clearTimeout(waiter.timer);
      return true;
    };
    if (timeout !== undefined) {
      waiter.timer = this.clock.setTimeout(() => {
        if (remove()) fail(new ClientTimeoutError(`${route}: no connection within ${timeout / 1000} s`));
      }, Math.max(0, timeout));
    }
    this.waiters.push(waiter);
    return () => void remove();
  }

  private failWaiters(error: Error): void {
    const waiters = this.waiters.splice(0);
    for (const waiter of waiters) {
      this.clock.clearTimeout(waiter.timer);
      waiter.fail(error);
    }
  }

  private fireClosed(reason: DisconnectedError | null): void {
    if (this.ended) return;
    this.ended = true;
    this.call(this.closedHandlers, reason, "closed");
  }

  private send<T>(route: string, data: Uint8Array, seq: number, deadline: number, opts: RequestOptions<T>): Promise<T> {
    const life = this.lifetime;
    const signal = opts.signal;
    return new Promise<T>((resolve, reject) => {
      let done = false;
      let cancelWait: (() => void) | undefined;
      const aborted = (): void => {
        cancelWait?.();
        fail(signal!.reason ?? new MmoError("aborted"));
      };
      const finish = (): boolean => {
        if (done) return false;
        done = true;
        signal?.removeEventListener("abort", aborted);
        return true;
      };
      const succeed = (value: T): void => {
        if (finish()) resolve(value);
      };
      const fail = (error: unknown): void => {
        if (finish()) reject(error);
      };
      if (signal !== undefined) {
        if (signal.aborted) {
          fail(signal.reason ?? new MmoError("aborted"));
          return;
        }
        signal.addEventListener("abort", aborted, { once: true });
      }
      const attempt = (conn: BrokerConnection): void => {
        cancelWait = undefined;
        if (done) return;
        const left = deadline - this.clock.now();
        if (left <= 0) {
          fail(new ClientTimeoutError(`${route}: not reconnected in time`));
          return;
        }
        conn.requestData<T>(route, data, { ...opts, timeout: left, seq }).then(succeed, (e: unknown) => {
          if (done) return;
          // The connection went while the request was out: resend it after the resume.
          const resend =
            e instanceof DisconnectedError &&
            life === this.lifetime &&
            deadline > this.clock.now() &&
            (this._state === "reconnecting" || (this._state === "online" && this.conn !== conn));
          if (resend) {
            this.logger.info?.(`request ${seq} ${route}: resending after the resume`);
            go();
          } else {
            fail(e);
          }
        });
      };
      const go = (): void => {
        // A connection that is closing (a KICK arrived, its close is under way) is not
        // used: the request waits to learn whether the session goes on elsewhere.
        const conn = this.conn;
        if (this._state === "online" && conn?.isConnected) attempt(conn);
        else cancelWait = this.whenOnline(route, deadline - this.clock.now(), attempt, fail);
      };
      go();
    });
  }
}
