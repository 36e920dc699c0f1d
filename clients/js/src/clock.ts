/** Time and logging, injectable (fake clocks in tests). All times are milliseconds. */

/** What the SDK needs of time: a clock and timers (milliseconds). */
export interface Clock {
  /** Milliseconds since some fixed point (monotonic if possible). */
  now(): number;
  setTimeout(callback: () => void, ms: number): unknown;
  clearTimeout(handle: unknown): void;
}

/** The largest delay `setTimeout` takes (2^31-1 ms, about 24.8 days). */
export const MAX_DELAY = 2 ** 31 - 1;

/** The real clock: `performance.now()` (else `Date.now()`) and the global timers. */
export const systemClock: Clock = {
  now: () => (typeof performance !== "undefined" ? performance.now() : Date.now()),
  setTimeout: (callback, ms) => setTimeout(callback, Math.min(Math.max(0, ms), MAX_DELAY)),
  clearTimeout: (handle) => clearTimeout(handle as ReturnType<typeof setTimeout>),
};

/** Where the SDK logs (every method optional). */
export interface Logger {
  debug?(message: string, ...rest: unknown[]): void;
  info?(message: string, ...rest: unknown[]): void;
  warn?(message: string, ...rest: unknown[]): void;
  error?(message: string, ...rest: unknown[]): void;
}

/** The default logger: warnings and errors to the console, nothing else. */
export const consoleLogger: Logger = {
  warn: (message, ...rest) => console.warn(`[mmo] ${message}`, ...rest),
  error: (message, ...rest) => console.error(`[mmo] ${message}`, ...rest),
};

/** A logger that says nothing. */
export const silentLogger: Logger = {};
