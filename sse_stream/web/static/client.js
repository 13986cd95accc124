/**
 * sse-stream browser client: a subscription that survives every drop.
 *
 *     import { subscribe } from "/client.js";
 *     const sub = subscribe("/streams/orders.*?type=order.*", {
 *       token: () => getToken(),
 *       lastEventId: localStorage.getItem("orders.position") ?? undefined,
 *       onEvent: (event) => render(event),
 *       onStateChange: (state) => showState(state),
 *     });
 *
 * It reads the stream with fetch() rather than EventSource, for two reasons:
 * fetch can send `Authorization: Bearer`, and one callback receives every
 * event type (EventSource hands `event: order.created` only to listeners of
 * that exact type, so it cannot follow a type glob or a pattern).
 *
 * Order and exactly-once: the position (`lastEventId`) moves only when a
 * whole message has been parsed, at the same moment as its event is
 * delivered, and every connection after the first resumes from it with
 * `Last-Event-ID`. So a drop at any byte neither skips nor repeats an event;
 * a bounded set of delivered envelope ids also drops any event a server
 * might send again. Positions are opaque and never compared.
 *
 * No dependencies. Types: /client.d.ts.
 */

/**
 * @typedef {"connecting" | "open" | "reconnecting" | "closed"} State
 *
 * @typedef {object} Envelope  an event, as the server sends it
 * @property {number} id            the event's identity (as returned by publish)
 * @property {string} position      its position: opaque, to save and send back
 * @property {string} stream
 * @property {string} type
 * @property {unknown} data
 * @property {string} created_at    RFC 3339, UTC
 *
 * @typedef {object} Gap  what retention deleted before the client came back
 * @property {string} requested_after
 * @property {string} resumed_after
 *
 * @typedef {string | null | undefined} Token
 *
 * @typedef {object} SubscribeOptions
 * @property {Token | (() => Token | Promise<Token>)} [token]  sent as
 *   `Authorization: Bearer`; a function is asked once, then again on
 *   sse.token-expiring and on a 401 (a string cannot be renewed: its 401 stops)
 * @property {string} [lastEventId]  start after this position ("0": from the oldest
 *   retained event; absent: live only, or the URL's last_event_id)
 * @property {(event: Envelope) => void} [onEvent]  every event, in order, once
 * @property {(gap: Gap) => void} [onGap]  sse.gap: events were pruned before they were read
 * @property {(state: State) => void} [onStateChange]
 * @property {(error: SubscriptionError) => void} [onError]  each failed attempt
 *   (`fatal: false`, retried) and the refusal that stops the subscription (`fatal: true`)
 * @property {number} [idleTimeout]  ms without a byte after which the connection counts
 *   as lost (default 45000, three of the server's default keepalives; 0: never)
 */

const DEFAULT_RETRY = 2000; // ms, until the server sends `retry:`
const MAX_DELAY = 30_000; // ms: the longest wait between two attempts
const SEEN_LIMIT = 10_000; // envelope ids remembered to drop repeats
const MAX_AUTH_FAILURES = 3; // 401s in a row, each after a fresh token(), before giving up
const DEFAULT_IDLE_TIMEOUT = 45_000; // ms: three of the server's default 15 s keepalives
const RETRYABLE = new Set([408, 425, 429]); // and every 5xx

/**
 * An attempt failed (`fatal: false`, the subscription retries), or the
 * subscription stopped because of it (`fatal: true`, state "closed").
 */
export class SubscriptionError extends Error {
  /**
   * @param {string} message
   * @param {{status?: number, problem?: unknown, fatal?: boolean, cause?: unknown}} [details]
   */
  constructor(message, { status = 0, problem = null, fatal = false, cause } = {}) {
    super(message, cause === undefined ? undefined : { cause });
    this.name = "SubscriptionError";
    /** HTTP status of the refusal (0: no answer, or a broken stream). */
    this.status = status;
    /** The server's problem+json document, if it sent one. */
    this.problem = problem;
    this.fatal = fatal;
  }
}

/**
 * The text/event-stream parser of the HTML standard ("Interpreting an event
 * stream"), fed decoded text in chunks that may end anywhere: lines end in
 * CRLF, LF or CR (a CR at the end of a chunk may be half of a CRLF); a
 * leading BOM is dropped; `:` lines are comments; `data` lines join with LF;
 * an `id` containing NUL is ignored; `retry` must be digits only.
 *
 * `onMessage` is called at every blank line with `{event, data, lastEventId}`:
 * `data` is null when the message had no data line (a browser dispatches
 * nothing then, but the message still moves `lastEventId`; the server's bare
 * `id:` lines use this to move a filtered stream past what it skipped).
 */
export class SseParser {
  #onMessage;
  #buffer = "";
  #started = false;
  #skipLF = false;
  #event = "";
  /** @type {string | null} */
  #data = null;
  #id;

  /**
   * @param {(message: {event: string, data: string | null, lastEventId: string}) => void} onMessage
   * @param {string} [lastEventId] the position so far (a new connection keeps it)
   */
  constructor(onMessage, lastEventId = "") {
    this.#onMessage = onMessage;
    this.#id = lastEventId;
    /** The last event id of the last complete message. */
    this.lastEventId = lastEventId;
    /** @type {number | null} The last valid `retry:` value (ms). */
    this.retry = null;
  }

  /** @param {string} text the next decoded chunk */
  feed(text) {
    if (!text) return;
    if (!this.#started) {
      this.#started = true;
      if (text.charCodeAt(0) === 0xfeff) text = text.slice(1);
    }
    if (this.#skipLF) {
      this.#skipLF = false;
      if (text[0] === "\n") text = text.slice(1);
    }
    // What is left in the buffer holds no line end: scan only the new text.
    const lineEnd = /\r\n|\r|\n/g;
    lineEnd.lastIndex = this.#buffer.length;
    const buffer = this.#buffer + text;
    let start = 0;
    for (let match; (match = lineEnd.exec(buffer)) !== null; ) {
      const next = match.index + match[0].length;
      if (match[0] === "\r" && next === buffer.length) this.#skipLF = true;
      this.#line(buffer.slice(start, match.index));
      start = next;
    }
    this.#buffer = buffer.slice(start);
  }

  /** @param {string} line */
  #line(line) {
    if (line === "") {
      this.lastEventId = this.#id;
      const message = { event: this.#event || "message", data: this.#data, lastEventId: this.#id };
      this.#event = "";
      this.#data = null;
      this.#onMessage(message);
      return;
    }
    if (line[0] === ":") return;
    const colon = line.indexOf(":");
    const field = colon < 0 ? line : line.slice(0, colon);
    let value = colon < 0 ? "" : line.slice(colon + 1);
    if (value[0] === " ") value = value.slice(1);
    if (field === "data") this.#data = this.#data === null ? value : this.#data + "\n" + value;
    else if (field === "event") this.#event = value;
    else if (field === "id") { if (!value.includes("\0")) this.#id = value; }
    else if (field === "retry") { if (/^[0-9]+$/.test(value)) this.retry = Number(value); }
  }
}

/**
 * Subscribe to `url` (e.g. "/streams/orders.*?type=order.*") and keep the
 * subscription going until close() or a refusal that retrying cannot fix.
 *
 * @param {string | URL} url
 * @param {SubscribeOptions} [options]
 * @returns {Subscription}
 */
export function subscribe(url, options = {}) {
  return new Subscription(url, options);
}

/** One subscription; made by subscribe(). */
class Subscription {
  #url;
  #options;
  #position;
  /** @type {"" | "connecting" | "open" | "reconnecting" | "closed"} */
  #state = "";
  #closed = false;
  #opened = false;
  /** @type {AbortController | null} */
  #controller = null;
  /** @type {(() => void) | null} */
  #wake = null;
  #retry = DEFAULT_RETRY;
  #failures = 0;
  #authFailures = 0;
  /** @type {string | undefined} the token in use; undefined: ask token() */
  #token = undefined;
  #renew = false;
  #renewedAt = 0;
  #seen = new Set();

  /**
   * @param {string | URL} url
   * @param {SubscribeOptions} options
   */
  constructor(url, options) {
    this.#url = String(url);
    this.#options = options;
    this.#position = options.lastEventId == null ? "" : String(options.lastEventId);
    // Start after subscribe() has returned, so that callbacks can use `sub`.
    queueMicrotask(() => this.#run().catch((error) => this.#fail(error)));
  }

  /** The position after the last event delivered (or skipped): save it to resume later. */
  get lastEventId() {
    return this.#position;
  }

  /** "connecting" | "open" | "reconnecting" | "closed" */
  get state() {
    return this.#state || "connecting";
  }

  /** Stop for good: abort the request, cancel any wait, deliver nothing more. */
  close() {
    if (this.#closed) return;
    this.#closed = true;
    this.#controller?.abort();
    this.#wake?.();
    this.#setState("closed");
  }

  async #run() {
    while (!this.#closed) {
      this.#setState(this.#opened ? "reconnecting" : "connecting");
      let delay;
      try {
        delay = await this.#connect();
      } catch (error) {
        if (this.#closed) return;
        this.#failures += 1;
        this.#report(error instanceof SubscriptionError ? error
          : new SubscriptionError(`connection failed: ${error instanceof Error ? error.message : error}`,
            { cause: error }));
        delay = this.#backoff();
      }
      if (this.#closed) return;
      this.#setState(this.#opened ? "reconnecting" : "connecting");
      if (delay > 0) await new Promise(/** @param {(value?: unknown) => void} resolve */ (resolve) => {
        const timer = setTimeout(resolve, delay);
        this.#wake = () => { clearTimeout(timer); resolve(); };
      });
      this.#wake = null;
    }
  }

  /** One attempt: connect, then read until the stream ends. Returns the ms to wait before the next. */
  async #connect() {
    const controller = (this.#controller = new AbortController());
    this.#renew = false;
    const token = await this.#currentToken();
    if (this.#closed) return 0;
    /** @type {Record<string, string>} */
    const headers = { Accept: "text/event-stream" };
    if (token) headers.Authorization = `Bearer ${token}`;
    // The header wins over a last_event_id in the URL, as the server promises.
    if (this.#position) headers["Last-Event-ID"] = this.#position;
    const idle = this.#options.idleTimeout ?? DEFAULT_IDLE_TIMEOUT;
    /** @type {ReturnType<typeof setTimeout> | undefined} */
    let timer;
    // A dead network often ends nothing: only silence beyond the server's
    // keepalive interval tells that the connection is gone.
    const arm = () => {
      clearTimeout(timer);
      if (idle > 0) timer = setTimeout(() => controller.abort(
        new SubscriptionError(`no data for ${idle} ms`)), idle);
    };
    try {
      arm();
      const response = await fetch(this.#url, { headers, signal: controller.signal, cache: "no-store" });
      if (!response.ok) return await this.#refused(response);
      const type = response.headers.get("Content-Type") || "";
      if (!/^text\/event-stream/i.test(type) || !response.body) {
        this.#fail(new SubscriptionError(`not an event stream (Content-Type: ${type})`,
          { status: response.status }));
        return 0;
      }
      this.#opened = true;
      this.#failures = 0;
      this.#authFailures = 0;
      this.#setState("open");
      await this.#read(response.body, arm);
    } catch (error) {
      throw controller.signal.reason instanceof SubscriptionError ? controller.signal.reason : error;
    } finally {
      clearTimeout(timer);
      controller.abort(); // releases the connection when we stop early
    }
    // After a clean end (a server restart): the server's retry, jittered. On
    // sse.token-expiring: at once, with a fresh token, from the position;
    // but once per retry interval at most, so that a token() that returns
    // tokens already inside the server's warning margin cannot spin.
    if (!this.#renew) return this.#backoff();
    const now = Date.now();
    const again = now - this.#renewedAt < this.#retry;
    this.#renewedAt = now;
    return again ? this.#backoff() : 0;
  }

  /**
   * Parse the body until it ends, close() or a token renewal.
   * @param {ReadableStream<Uint8Array>} body
   * @param {() => void} arm restarts the idle timer
   */
  async #read(body, arm) {
    const reader = body.getReader();
    const decoder = new TextDecoder();
    const parser = new SseParser((message) => this.#dispatch(message), this.#position);
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      arm();
      parser.feed(decoder.decode(value, { stream: true }));
      if (parser.retry !== null) this.#retry = parser.retry;
      if (this.#closed || this.#renew) return;
    }
  }

  /** @param {{event: string, data: string | null, lastEventId: string}} message */
  #dispatch({ event, data, lastEventId }) {
    if (this.#closed) return;
    this.#position = lastEventId;
    if (data === null) return;
    if (event === "sse.token-expiring") {
      // Reconnect now with a fresh token from the position reached; the
      // old stream is dropped without waiting for its end at exp.
      if (typeof this.#options.token === "function") {
        this.#token = undefined;
        this.#renew = true;
      }
      return;
    }
    let value;
    try {
      value = JSON.parse(data);
    } catch (error) {
      this.#report(new SubscriptionError(`${event}: data is not JSON`, { cause: error }));
      return;
    }
    if (event === "sse.gap") {
      this.#call(this.#options.onGap, value);
    } else if (!event.startsWith("sse.")) { // other control events: none that a client must act on
      if (value !== null && typeof value === "object" && "id" in value) {
        if (this.#seen.has(value.id)) return;
        this.#seen.add(value.id);
        // A Set iterates in insertion order: the first one is the oldest.
        if (this.#seen.size > SEEN_LIMIT) this.#seen.delete(this.#seen.values().next().value);
      }
      this.#call(this.#options.onEvent, value);
    }
  }

  /** @param {Response} response a refusal: retry, renew the token, or stop */
  async #refused(response) {
    let problem = null;
    try { problem = await response.json(); } catch { /* not problem+json */ }
    const { status } = response;
    const detail = problem && typeof problem === "object"
      ? [problem.param, problem.detail ?? problem.title].filter(Boolean).join(": ")
      : response.statusText;
    const error = new SubscriptionError(`${status} ${detail}`.trim(), { status, problem });
    if (status === 401 && typeof this.#options.token === "function"
        && ++this.#authFailures <= MAX_AUTH_FAILURES) {
      this.#report(error);
      this.#token = undefined; // ask token() again
      return this.#authFailures === 1 ? 0 : this.#backoff();
    }
    if (RETRYABLE.has(status) || status >= 500) {
      this.#failures += 1;
      this.#report(error);
      const after = Number(response.headers.get("Retry-After"));
      return Math.max(this.#backoff(), Number.isFinite(after) ? after * 1000 : 0);
    }
    this.#fail(error);
    return 0;
  }

  /** @returns {Promise<string>} */
  async #currentToken() {
    const source = this.#options.token;
    if (typeof source !== "function") return source || "";
    if (this.#token === undefined) this.#token = (await source()) || "";
    return this.#token;
  }

  /** The server's retry, doubled per failure in a row up to MAX_DELAY, with jitter
   * (so that the clients of a restarted server do not all come back at once). */
  #backoff() {
    const base = Math.min(this.#retry * 2 ** Math.min(this.#failures, 5), MAX_DELAY);
    return base * (0.5 + Math.random() / 2);
  }

  /** @param {"connecting" | "open" | "reconnecting" | "closed"} state */
  #setState(state) {
    if (state === this.#state) return;
    this.#state = state;
    this.#call(this.#options.onStateChange, state);
  }

  /** @param {any} error */
  #fail(error) {
    if (this.#closed) return;
    const failure = error instanceof SubscriptionError ? error
      : new SubscriptionError(String(error?.message ?? error), { cause: error });
    failure.fatal = true;
    this.#report(failure);
    this.close();
  }

  /** @param {SubscriptionError} error */
  #report(error) {
    if (this.#options.onError) this.#call(this.#options.onError, error);
    else if (error.fatal) console.error("sse-stream:", error.message);
  }

  /**
   * A callback's exception is reported like an uncaught one, and the
   * subscription goes on.
   * @param {((value: any) => void) | undefined} callback
   * @param {unknown} value
   */
  #call(callback, value) {
    if (!callback) return;
    try {
      callback(value);
    } catch (error) {
      setTimeout(() => { throw error; });
    }
  }
}
