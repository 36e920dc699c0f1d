/**
 * The errors of the SDK.
 *
 * The broker reports failures as a `ClientError` code and a message, in an `ERROR` or a
 * `KICK` packet (docs/protocol.md 5.4): each code has its own subclass of
 * {@link BrokerError}. The other classes are failures the client notices on its own side.
 *
 *     MmoError
 *     ├── WireError            a value that does not encode, bytes that do not decode
 *     ├── ConnectError         no connection: brokerlist failed or empty, connect refused
 *     ├── ClientTimeoutError   no answer before the request's deadline
 *     ├── DisconnectedError    the connection is gone (cause: the KICK / ERROR, if any)
 *     └── BrokerError          an ERROR or KICK packet: code, codeName, detail
 *         ├── BadPacketError (1) … BadRequestError (17), one per ClientError code
 */

/** The `ClientError` codes (docs/protocol.md 5.4; `enum ClientError` of mmo.thrift). */
export const ClientError = {
  BAD_PACKET: 1,
  TOO_LARGE: 2,
  NOT_LOGGED_IN: 3,
  UNKNOWN_ROUTE: 4,
  RATE_LIMITED: 5,
  LOGIN_FAILED: 6,
  LOGIN_TIMEOUT: 7,
  RESUME_FAILED: 8,
  SERVICE_ERROR: 9,
  UNAVAILABLE: 10,
  TIMEOUT: 11,
  IDLE: 12,
  KICKED: 13,
  SLOW_CONSUMER: 14,
  SHUTDOWN: 15,
  REPLACED: 16,
  BAD_REQUEST: 17,
} as const;
export type ClientErrorName = keyof typeof ClientError;
export type ClientErrorCode = (typeof ClientError)[ClientErrorName];

const CODE_NAMES = new Map<number, ClientErrorName>(
  Object.entries(ClientError).map(([name, code]) => [code, name as ClientErrorName]),
);

/** The `ClientError` name of `code` (`"UNKNOWN_ROUTE"`), `"CODE_<n>"` if unknown, `"NO_CODE"` if absent. */
export function errorName(code: number | undefined | null): string {
  if (code === undefined || code === null) return "NO_CODE";
  return CODE_NAMES.get(code) ?? `CODE_${code}`;
}

/** Base class of every error the SDK throws or rejects with. */
export class MmoError extends Error {
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = new.target.name;
  }
}

/** A value cannot be encoded, or bytes cannot be decoded (malformed, or over a limit). */
export class WireError extends MmoError {}

/** No connection could be made: the brokerlist failed or listed no broker, or connecting failed. */
export class ConnectError extends MmoError {}

/** A request got no answer before its deadline (or the connection was not back in time). */
export class ClientTimeoutError extends MmoError {}

/**
 * The connection is gone (or was never there), so the request cannot be answered.
 * `cause` is what the broker said before it closed (a `KICK` or an `ERROR` without seq), if
 * anything.
 */
export class DisconnectedError extends MmoError {
  declare readonly cause: BrokerError | undefined;

  constructor(message = "connection lost", cause?: BrokerError) {
    super(cause !== undefined ? `${message} (${cause.message})` : message, { cause });
  }
}

/**
 * The broker answered `ERROR` (or sent `KICK`): a `ClientError` code and a message.
 * `message` reads `"NAME: detail"`; `detail` is the broker's own text (for people; a service
 * error reads `"Type: message"`).
 */
export class BrokerError extends MmoError {
  /** The `ClientError` value, e.g. `ClientError.UNKNOWN_ROUTE` (4). */
  readonly code: number;
  /** Its name, e.g. `"UNKNOWN_ROUTE"` (`"CODE_<n>"` for a code this SDK does not know). */
  readonly codeName: string;
  /** What the broker said. */
  readonly detail: string;

  constructor(code: number, detail = "") {
    const codeName = errorName(code);
    super(detail ? `${codeName}: ${detail}` : codeName);
    this.code = code;
    this.codeName = codeName;
    this.detail = detail;
  }
}

/** Splits `"Type: message"` (a service's exception) into its parts. */
function splitTyped(detail: string): { errorType?: string; errorMessage: string } {
  const m = /^([A-Za-z_][A-Za-z0-9_.]*): ([\s\S]*)$/.exec(detail);
  return m ? { errorType: m[1], errorMessage: m[2] ?? "" } : { errorMessage: detail };
}

/** 1 `BAD_PACKET`: the broker could not decode a packet (or a WebSocket text message). */
export class BadPacketError extends BrokerError {
  constructor(detail = "") {
    super(ClientError.BAD_PACKET, detail);
  }
}
/** 2 `TOO_LARGE`: a frame over the broker's `max-frame` (the connection is closed). */
export class TooLargeError extends BrokerError {
  constructor(detail = "") {
    super(ClientError.TOO_LARGE, detail);
  }
}
/** 3 `NOT_LOGGED_IN`: anything but a login, resume or anonymous route before login. */
export class NotLoggedInError extends BrokerError {
  constructor(detail = "") {
    super(ClientError.NOT_LOGGED_IN, detail);
  }
}
/** 4 `UNKNOWN_ROUTE`: no service serves the route for players. */
export class UnknownRouteError extends BrokerError {
  constructor(detail = "") {
    super(ClientError.UNKNOWN_ROUTE, detail);
  }
}
/** 5 `RATE_LIMITED`: over the session's rate; packets are dropped. */
export class RateLimitedError extends BrokerError {
  constructor(detail = "") {
    super(ClientError.RATE_LIMITED, detail);
  }
}
/** 6 `LOGIN_FAILED`: the auth (or session) service refused the login; `errorType` e.g. `"BadCredentials"`. */
export class LoginFailedError extends BrokerError {
  readonly errorType: string | undefined;
  readonly errorMessage: string;
  constructor(detail = "") {
    super(ClientError.LOGIN_FAILED, detail);
    ({ errorType: this.errorType, errorMessage: this.errorMessage } = splitTyped(detail));
  }
}
/** 7 `LOGIN_TIMEOUT`: no login within the broker's `login-timeout` (closed). */
export class LoginTimeoutError extends BrokerError {
  constructor(detail = "") {
    super(ClientError.LOGIN_TIMEOUT, detail);
  }
}
/** 8 `RESUME_FAILED`: unknown or expired session, or a wrong token. */
export class ResumeFailedError extends BrokerError {
  constructor(detail = "") {
    super(ClientError.RESUME_FAILED, detail);
  }
}
/** 9 `SERVICE_ERROR`: the service raised; `errorType` e.g. `"AccountExists"`, `errorMessage` the rest. */
export class ServiceError extends BrokerError {
  readonly errorType: string | undefined;
  readonly errorMessage: string;
  constructor(detail = "") {
    super(ClientError.SERVICE_ERROR, detail);
    ({ errorType: this.errorType, errorMessage: this.errorMessage } = splitTyped(detail));
  }
}
/** 10 `UNAVAILABLE`: no live instance of the service (or the broker is full or stopping). */
export class UnavailableError extends BrokerError {
  constructor(detail = "") {
    super(ClientError.UNAVAILABLE, detail);
  }
}
/** 11 `TIMEOUT`: the *service* did not answer within the broker's `request-timeout`. */
export class ServiceTimeoutError extends BrokerError {
  constructor(detail = "") {
    super(ClientError.TIMEOUT, detail);
  }
}
/** 12 `IDLE` (a KICK): no packet within the idle timeout; the session may be resumed. */
export class IdleError extends BrokerError {
  constructor(detail = "") {
    super(ClientError.IDLE, detail);
  }
}
/** 13 `KICKED` (a KICK): logic ended the session, or a newer login replaced it. */
export class KickedError extends BrokerError {
  constructor(detail = "") {
    super(ClientError.KICKED, detail);
  }
}
/** 14 `SLOW_CONSUMER`: reserved (never sent: the broker aborts the connection). */
export class SlowConsumerError extends BrokerError {
  constructor(detail = "") {
    super(ClientError.SLOW_CONSUMER, detail);
  }
}
/** 15 `SHUTDOWN` (a KICK): the broker is stopping; resume elsewhere. */
export class ShutdownError extends BrokerError {
  constructor(detail = "") {
    super(ClientError.SHUTDOWN, detail);
  }
}
/** 16 `REPLACED` (a KICK): the session was resumed on another connection; do not resume. */
export class ReplacedError extends BrokerError {
  constructor(detail = "") {
    super(ClientError.REPLACED, detail);
  }
}
/** 17 `BAD_REQUEST`: the service refused the arguments. */
export class BadRequestError extends BrokerError {
  constructor(detail = "") {
    super(ClientError.BAD_REQUEST, detail);
  }
}

/** The {@link BrokerError} subclass of each `ClientError` code. */
export const ERROR_CLASSES: Readonly<Record<ClientErrorCode, new (detail?: string) => BrokerError>> =
  Object.freeze({
    1: BadPacketError,
    2: TooLargeError,
    3: NotLoggedInError,
    4: UnknownRouteError,
    5: RateLimitedError,
    6: LoginFailedError,
    7: LoginTimeoutError,
    8: ResumeFailedError,
    9: ServiceError,
    10: UnavailableError,
    11: ServiceTimeoutError,
    12: IdleError,
    13: KickedError,
    14: SlowConsumerError,
    15: ShutdownError,
    16: ReplacedError,
    17: BadRequestError,
  });

/** The error for an `ERROR` or `KICK` packet: the code's own class, else a plain {@link BrokerError}. */
export function brokerError(code: number | undefined, detail = ""): BrokerError {
  const cls = ERROR_CLASSES[code as ClientErrorCode];
  return cls !== undefined ? new cls(detail) : new BrokerError(code ?? 0, detail);
}
