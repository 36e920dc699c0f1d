/** Time and logging, injectable (fake clocks in tests). All times are milliseconds. */
/** The largest delay `setTimeout` takes (2^31-1 ms, about 24.8 days). */
export const MAX_DELAY = 2 ** 31 - 1;
/** The real clock: `performance.now()` (else `Date.now()`) and the global timers. */
export const systemClock = {
    now: () => (typeof performance !== "undefined" ? performance.now() : Date.now()),
    setTimeout: (callback, ms) => setTimeout(callback, Math.min(Math.max(0, ms), MAX_DELAY)),
    clearTimeout: (handle) => clearTimeout(handle),
};
/** The default logger: warnings and errors to the console, nothing else. */
export const consoleLogger = {
    warn: (message, ...rest) => console.warn(`[mmo] ${message}`, ...rest),
    error: (message, ...rest) => console.error(`[mmo] ${message}`, ...rest),
};
/** A logger that says nothing. */
export const silentLogger = {};
