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

import { type Clock, type Logger, consoleLogger, systemClock } from "./clock.js";
import {
  type BrokerError,
  ClientTimeoutError,
  DisconnectedError,
  MmoError,
  WireError,
  brokerError,
} from "./errors.js";
import { type Packet, PacketKind, decodePacket, encodePacket } from "./packet.js";
import type { PacketSink, Transport, Connector } from "./transports.js";
import { type DecodeOptions, decodeValue, encodeValue } from "./value.js";

/** Register a push handler under this route to receive every push. */
export const ANY_ROUTE = "*";
/** Requests without a timeout get this many milliseconds. */
export const DEFAULT_TIMEOUT = 5000;
/** Heartbeat interval when the broker did not say (milliseconds). */
export const DEFAULT_HEARTBEAT = 10_000;
/** The largest seq: it is an i32 on the wire. */
export const MAX_SEQ = 2 ** 31 - 1;

/** `handler(body, route)` for pushes. */
export type PushHandler<T = any> = (body: T, route: string) => void;
/** `handler(error)` for an `ERROR` without seq, or a `KICK`. */
export type ErrorHandler = (error: BrokerError) => void;

/** What the SDK needs of an `AbortSignal` (the DOM's and Node's fit). */
export interface AbortSignalLike {
  readonly aborted: boolean;
  readonly reason?: unknown;
  addEventListener(type: "abort", listener: () => void, options?: { once?: boolean }): void;
  removeEventListener(type: "abort", listener: () => void): void;
}

/** How a body is turned into bytes. */
export interface BodyOptions {
  /** The body is bytes (`Uint8Array`) sent as they are; the reply is returned as bytes. */
  raw?: boolean;
  /** Your own encoder (e.g. `MyStruct.encode`); the default sends a `Value`. */
  encode?: (body: any) => Uint8Array;
}

/** How a reply or push body is turned into a value. */
export interface ReplyOptions<T = unknown> {
  /** Return the bytes as they are (a `Uint8Array`; empty if the packet had no body). */
  raw?: boolean;
  /** Your own decoder (e.g. `MyStruct.decode`); the default reads a `Value`. */
  decode?: (data: Uint8Array) => T;
  /** How `Value`s become JavaScript (bigints, `Double`s, `Map`s). */
  valueOptions?: DecodeOptions;
}

/** Options of a request. */
export interface RequestOptions<T = unknown> extends BodyOptions, ReplyOptions<T> {
  /** Milliseconds until the promise rejects with {@link ClientTimeoutError} (default 5000). */
  timeout?: number;
  /** A trace id of your own (1-64 of `[0-9A-Za-z_-]`): the request is traced under it (`mmo trace ID`). */
  trace?: string;
  /** Forget the request when this signal aborts (the promise rejects with its reason). */
  signal?: AbortSignalLike;
  /** The packet's seq (default: the next free one of this connection). */
  seq?: number;
}

/** Options of a notify. */
export interface NotifyOptions extends BodyOptions {
  /** A trace id of your own. */
  trace?: string;
}

/** The bytes of a body; a {@link WireError} if it cannot be encoded. */
export function encodeBody(body: unknown, opts: BodyOptions = {}): Uint8Array {
  if (opts.encode !== undefined) return opts.encode(body);
  if (opts.raw) {
    if (body instanceof Uint8Array) return body;
    if (body instanceof ArrayBuffer) return new Uint8Array(body);
    if (ArrayBuffer.isView(body)) return new Uint8Array(body.buffer, body.byteOffset, body.byteLength);
    throw new WireError(`a raw body must be bytes, not ${body === null ? "null" : typeof body}`);
  }
  return encodeValue(body === undefined || body === null ? {} : body);
}

/** A body's value (an absent or empty body is `null` for a `Value`); a {@link WireError} if malformed. */
export function decodeBody<T = unknown>(data: Uint8Array | undefined, opts: ReplyOptions<T> = {}): T {
  if (opts.decode !== undefined) return opts.decode(data ?? new Uint8Array(0));
  if (opts.raw) return (data ?? new Uint8Array(0)) as T;
  if (data === undefined || data.length === 0) return null as T;
  return decodeValue(data, opts.valueOptions) as T;
}

function abortReason(signal: AbortSignalLike): unknown {
  return signal.reason ?? new MmoError("aborted");
}

function safely(logger: Logger, what: string, fn: () => void): void {
  try {
    fn();
  } catch (e) {
    logger.error?.(`${what} failed`, e);
  }
}

interface Registration {
  handler: PushHandler;
  opts: ReplyOptions<unknown>;
}

/**
 * Handlers for what the broker sends unasked: pushes, errors without seq, kicks. One
 * instance may be shared by successive connections (a {@link Client} does), so that
 * registrations survive reconnecting. A handler that throws is logged and disturbs
 * neither the others nor the connection.
 */
export class Listeners {
  private readonly pushes = new Map<string, Registration[]>();
  private readonly errors: ErrorHandler[] = [];
  private readonly kicks: ErrorHandler[] = [];

  constructor(
    private readonly logger: Logger = consoleLogger,
    private readonly valueOptions: DecodeOptions = {},
  ) {}

  /**
   * Call `handler(body, route)` for each push on `route` (`"*"`: every push). The body is
   * decoded as `opts` say (a `Value` by default); a body that does not decode is logged and
   * this handler skipped. Returns a function that removes the registration.
   */
  on<T = any>(route: string, handler: PushHandler<T>, opts: ReplyOptions<T> = {}): () => void {
    const registration: Registration = { handler: handler as PushHandler, opts: opts as ReplyOptions<unknown> };
    const list = this.pushes.get(route) ?? [];
    list.push(registration);
    this.pushes.set(route, list);
    return () => {
      const current = this.pushes.get(route);
      const at = current?.indexOf(registration) ?? -1;
      if (current !== undefined && at >= 0) {
        current.splice(at, 1);
        if (current.length === 0) this.pushes.delete(route);
      }
    };
  }

  /** Call `handler(error)` for each `ERROR` without seq (a refused notify, or why the broker closes). */
  onError(handler: ErrorHandler): () => void {
    return this.add(this.errors, handler);
  }

  /** Call `handler(error)` when the broker sends `KICK` (it then closes the connection). */
  onKick(handler: ErrorHandler): () => void {
    return this.add(this.kicks, handler);
  }

  private add(list: ErrorHandler[], handler: ErrorHandler): () => void {
    list.push(handler);
    return () => {
      const at = list.indexOf(handler);
      if (at >= 0) list.splice(at, 1);
    };
  }

  /** Dispatch a push to the handlers of its route, then to the catch-all ones; returns how many were called. */
  push(route: string, data: Uint8Array | undefined): number {
    const registrations = [...(this.pushes.get(route) ?? []), ...(route === ANY_ROUTE ? [] : (this.pushes.get(ANY_ROUTE) ?? []))];
    if (registrations.length === 0) this.logger.debug?.(`push on ${route} with no handler`);
    const decoded = new Map<unknown, { value?: unknown; failed?: boolean }>();
    let called = 0;
    for (const { handler, opts } of registrations) {
      const key = opts.decode ?? (opts.raw ? "raw" : (opts.valueOptions ?? "value"));
      let entry = decoded.get(key);
      if (entry === undefined) {
        try {
          entry = { value: decodeBody(data, { valueOptions: this.valueOptions, ...opts }) };
        } catch (e) {
          this.logger.warn?.(`push on ${route}: undecodable body: ${(e as Error).message}`);
          entry = { failed: true };
        }
        decoded.set(key, entry);
      }
      if (entry.failed) continue;
      called++;
      safely(this.logger, `push handler for ${route}`, () => handler(entry!.value, route));
    }
    return called;
  }

  /** Dispatch an `ERROR` without seq. */
  error(error: BrokerError): void {
    this.logger.info?.(`broker error: ${error.message}`);
    for (const handler of [...this.errors]) safely(this.logger, "error handler", () => handler(error));
  }

  /** Dispatch a `KICK`. */
  kick(error: BrokerError): void {
    this.logger.info?.(`kicked: ${error.message}`);
    for (const handler of [...this.kicks]) safely(this.logger, "kick handler", () => handler(error));
  }
}

/** Options of a {@link BrokerConnection}. */
export interface ConnectionOptions {
  /** Time and timers (default: the real ones). */
  clock?: Clock;
  /** Shared handlers (default: a new {@link Listeners}). */
  listeners?: Listeners;
  /** Where to log (default: warnings and errors to the console). */
  logger?: Logger;
  /** How reply and push `Value`s become JavaScript. */
  valueOptions?: DecodeOptions;
  /** Milliseconds a graceful close may take before the connection is aborted (default 2000). */
  closeGrace?: number;
}

interface Pending {
  route: string;
  resolve: (value: unknown) => void;
  reject: (error: unknown) => void;
  timer: unknown;
  reply: ReplyOptions<unknown>;
  cleanup?: () => void;
}

/** The client side of one broker connection (the Python SDK's `ClientProtocol`). */
export class BrokerConnection {
  /** The connection is dropped when nothing arrived for this many heartbeat intervals. */
  static readonly DEAD_AFTER_BEATS = 3;

  /** Where pushes, errors without seq and kicks go. */
  readonly listeners: Listeners;
  /** Where the transport delivers packets: pass it to a {@link Connector}. */
  readonly sink: PacketSink;
  /** The `KICK` the broker sent, if any. */
  kicked: BrokerError | undefined;
  /** The last `ERROR` without seq (often why the broker closed). */
  lastError: BrokerError | undefined;
  /** Milliseconds between heartbeats once started. */
  heartbeatInterval: number | undefined;
  /** When the last packet arrived ({@link Clock} time). */
  lastReceived: number;

  private readonly clock: Clock;
  private readonly logger: Logger;
  private readonly valueOptions: DecodeOptions;
  private readonly closeGrace: number;
  private transport: Transport | undefined;
  private readonly pending = new Map<number, Pending>();
  private nextSeq = 1;
  private heartbeatTimer: unknown;
  private graceTimer: unknown;
  private connected = false;
  private closing = false;
  private lost: DisconnectedError | undefined;
  private lostText = "";
  private readonly closedHandlers: ((lost: DisconnectedError) => void)[] = [];

  constructor(opts: ConnectionOptions = {}) {
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
  static async open(connector: Connector, url: string, opts: ConnectionOptions = {}): Promise<BrokerConnection> {
    const conn = new BrokerConnection(opts);
    conn.attach(await connector(url, conn.sink));
    return conn;
  }

  /** Send through `transport` from now on (what {@link open} does once the connector resolved). */
  attach(transport: Transport): void {
    this.transport = transport;
    this.lastReceived = this.clock.now();
    if (this.lost === undefined) this.connected = true;
  }

  /** Whether the connection is up (open, and neither lost nor closing). */
  get isConnected(): boolean {
    return this.connected && !this.closing && this.lost === undefined;
  }

  /** How many requests await their answer. */
  get inFlight(): number {
    return this.pending.size;
  }

  /**
   * Send a `REQUEST` and wait for its `RESPONSE`. Rejects with a {@link BrokerError}
   * subclass (the broker's `ERROR`), {@link ClientTimeoutError}, {@link DisconnectedError} or
   * {@link WireError} (a body that does not encode, a reply that does not decode).
   */
  request<T = unknown>(route: string, body?: unknown, opts: RequestOptions<T> = {}): Promise<T> {
    let data: Uint8Array;
    try {
      data = encodeBody(body, opts);
    } catch (e) {
      return Promise.reject(e);
    }
    return this.requestData<T>(route, data, opts);
  }

  /** {@link request} with a body already encoded. */
  requestData<T = unknown>(route: string, data: Uint8Array, opts: RequestOptions<T> = {}): Promise<T> {
    if (!this.isConnected) return Promise.reject(this.disconnected(route));
    const signal = opts.signal;
    if (signal?.aborted) return Promise.reject(abortReason(signal));
    const seq = opts.seq ?? this.allocateSeq();
    const timeout = opts.timeout ?? DEFAULT_TIMEOUT;
    return new Promise<T>((resolve, reject) => {
      const entry: Pending = {
        route,
        resolve: resolve as (value: unknown) => void,
        reject,
        timer: this.clock.setTimeout(() => this.expire(seq, entry, timeout), Math.max(0, timeout)),
        reply: opts as ReplyOptions<unknown>,
      };
      if (signal !== undefined) {
        const aborted = (): void => {
          if (this.pending.get(seq) !== entry) return;
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
      const packet: Packet = { kind: PacketKind.REQUEST, seq, route, body: data };
      if (opts.trace !== undefined) packet.trace = opts.trace;
      try {
        this.sendPacket(packet);
      } catch (e) {
        this.pending.delete(seq);
        this.settle(entry);
        reject(e);
      }
    });
  }

  /** Send a one-way `NOTIFY` (a refusal comes back as an error without seq: {@link Listeners.onError}). */
  notify(route: string, body?: unknown, opts: NotifyOptions = {}): void {
    this.notifyData(route, encodeBody(body, opts), opts.trace);
  }

  /** {@link notify} with a body already encoded. */
  notifyData(route: string, data: Uint8Array, trace?: string): void {
    if (!this.isConnected) throw this.disconnected(route);
    const packet: Packet = { kind: PacketKind.NOTIFY, route, body: data };
    if (trace !== undefined) packet.trace = trace;
    this.sendPacket(packet);
  }

  /** Register a push handler; see {@link Listeners.on}. */
  on<T = any>(route: string, handler: PushHandler<T>, opts: ReplyOptions<T> = {}): () => void {
    return this.listeners.on(route, handler, opts);
  }

  /** Register a handler of errors without seq; see {@link Listeners.onError}. */
  onError(handler: ErrorHandler): () => void {
    return this.listeners.onError(handler);
  }

  /**
   * Send `HEARTBEAT` every `interval` ms from now on (restarts if running; default 10 000).
   * Start it once logged in. When nothing at all arrived for {@link DEAD_AFTER_BEATS}
   * intervals, the broker is taken for dead and the connection aborted.
   */
  startHeartbeat(interval?: number): void {
    this.stopHeartbeat();
    this.heartbeatInterval = interval !== undefined && interval > 0 ? interval : DEFAULT_HEARTBEAT;
    this.scheduleBeat();
  }

  /** Stop sending heartbeats. */
  stopHeartbeat(): void {
    if (this.heartbeatTimer !== undefined) this.clock.clearTimeout(this.heartbeatTimer);
    this.heartbeatTimer = undefined;
  }

  /** Send one `HEARTBEAT` now (if connected). */
  sendHeartbeat(): void {
    if (this.isConnected) this.sendPacket({ kind: PacketKind.HEARTBEAT });
  }

  /** Encode and send one packet. */
  sendPacket(packet: Packet): void {
    if (this.transport === undefined || this.lost !== undefined) throw this.disconnected(packet.route ?? "send");
    this.transport.send(encodePacket(packet));
  }

  /**
   * Close the connection gracefully (aborted after `closeGrace` ms if it lingers); resolves
   * once it is closed, with the {@link DisconnectedError} of its end.
   */
  close(): Promise<DisconnectedError> {
    const closed = this.whenClosed();
    if (this.transport !== undefined && this.lost === undefined && !this.closing) {
      this.closing = true;
      this.stopHeartbeat();
      this.graceTimer = this.clock.setTimeout(() => this.abort(), this.closeGrace);
      try {
        this.transport.close();
      } catch (e) {
        this.logger.debug?.("close failed", e);
        this.abort();
      }
    }
    return closed;
  }

  /** Drop the connection at once. */
  abort(): void {
    this.closing = true;
    this.stopHeartbeat();
    if (this.transport === undefined || this.lost !== undefined) return;
    try {
      this.transport.abort();
    } catch (e) {
      this.logger.debug?.("abort failed", e);
    }
  }

  /** Resolves (never rejects) with the {@link DisconnectedError} of the connection's end. */
  whenClosed(): Promise<DisconnectedError> {
    if (this.lost !== undefined) return Promise.resolve(this.lost);
    return new Promise((resolve) => this.closedHandlers.push(resolve));
  }

  /** Call `handler(lost)` synchronously when the connection ends, before its requests fail. */
  onClosed(handler: (lost: DisconnectedError) => void): void {
    if (this.lost !== undefined) handler(this.lost);
    else this.closedHandlers.push(handler);
  }

  // -- what the transport delivers ---------------------------------------------------

  private received(data: Uint8Array): void {
    if (this.lost !== undefined) return;
    this.lastReceived = this.clock.now();
    let packet: Packet;
    try {
      packet = decodePacket(data);
    } catch (e) {
      // A broker never sends this: the stream can no longer be trusted.
      this.logger.warn?.(`undecodable packet from the broker: ${(e as Error).message}`);
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
        } else {
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

  private connectionLost(error?: Error): void {
    if (this.lost !== undefined) return;
    this.connected = false;
    this.stopHeartbeat();
    if (this.graceTimer !== undefined) this.clock.clearTimeout(this.graceTimer);
    this.graceTimer = undefined;
    const cause = this.kicked ?? this.lastError;
    this.lostText = `connection lost: ${error?.message ?? "closed"}`;
    const lost = new DisconnectedError(this.lostText, cause);
    this.lost = lost;
    // Whoever watches the connection (a Client) learns of the loss before the requests
    // fail, so that a request retried on failure sees the new state.
    const handlers = this.closedHandlers.splice(0);
    for (const handler of handlers) safely(this.logger, "close handler", () => handler(lost));
    const pending = [...this.pending.entries()].sort(([a], [b]) => a - b);
    this.pending.clear();
    for (const [seq, entry] of pending) {
      this.settle(entry);
      this.logger.debug?.(`request ${seq} ${entry.route}: connection lost`);
      entry.reject(new DisconnectedError(`${entry.route}: ${this.lostText}`, cause));
    }
  }

  // -- internals ----------------------------------------------------------------------

  private settle(entry: Pending): void {
    this.clock.clearTimeout(entry.timer);
    entry.cleanup?.();
  }

  private answer(packet: Packet, error: BrokerError | undefined): void {
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
    let reply: unknown;
    try {
      reply = decodeBody(packet.body, { valueOptions: this.valueOptions, ...entry.reply });
    } catch (e) {
      entry.reject(e instanceof WireError ? e : new WireError(`${entry.route}: ${(e as Error).message}`, { cause: e }));
      return;
    }
    entry.resolve(reply);
  }

  private expire(seq: number, entry: Pending, timeout: number): void {
    if (this.pending.get(seq) !== entry) return;
    this.pending.delete(seq);
    entry.cleanup?.();
    entry.reject(new ClientTimeoutError(`${entry.route}: no answer within ${timeout / 1000} s (seq ${seq})`));
  }

  private allocateSeq(): number {
    for (;;) {
      const seq = this.nextSeq;
      this.nextSeq = seq >= MAX_SEQ ? 1 : seq + 1;
      if (!this.pending.has(seq)) return seq;
    }
  }

  private scheduleBeat(): void {
    this.heartbeatTimer = this.clock.setTimeout(() => this.beat(), this.heartbeatInterval ?? DEFAULT_HEARTBEAT);
  }

  private beat(): void {
    this.heartbeatTimer = undefined;
    if (!this.isConnected) return;
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

  private disconnected(route: string): DisconnectedError {
    if (this.lost !== undefined) return new DisconnectedError(`${route}: ${this.lostText}`, this.lost.cause);
    return new DisconnectedError(`${route}: not connected`);
  }
}
