// Types of the sse-stream browser client, served at /client.d.ts next to /client.js.

/** The connection's state, as reported to `onStateChange`. */
export type State = "connecting" | "open" | "reconnecting" | "closed";

/** An event, as the server sends it (the `data:` line of the stream). */
export interface Envelope<T = unknown> {
  /** The event's identity, as returned by publish. */
  id: number;
  /** Its position: opaque; save it and send it back as `lastEventId`. */
  position: string;
  stream: string;
  type: string;
  data: T;
  /** RFC 3339, UTC. */
  created_at: string;
}

/** `sse.gap`: retention deleted events after `requested_after`; the stream goes on after `resumed_after`. */
export interface Gap {
  requested_after: string;
  resumed_after: string;
}

export type Token = string | null | undefined;

export interface SubscribeOptions<T = unknown> {
  /**
   * Sent as `Authorization: Bearer`. A function is asked once, then again on
   * `sse.token-expiring` and on a 401; a string cannot be renewed (its 401 stops).
   */
  token?: Token | (() => Token | Promise<Token>);
  /** Start after this position ("0": from the oldest retained event; absent: live only). */
  lastEventId?: string;
  /** Every event, in stream order, once. */
  onEvent?: (event: Envelope<T>) => void;
  /** Events were pruned before this client read them. */
  onGap?: (gap: Gap) => void;
  onStateChange?: (state: State) => void;
  /** Each failed attempt (`fatal: false`, retried) and the refusal that stops the subscription (`fatal: true`). */
  onError?: (error: SubscriptionError) => void;
  /** Milliseconds without a byte after which the connection counts as lost (default 45000; 0: never). */
  idleTimeout?: number;
}

export interface Subscription {
  /** The position after the last event delivered or skipped: save it to resume later. */
  readonly lastEventId: string;
  readonly state: State;
  /** Stop for good: abort the request and deliver nothing more. */
  close(): void;
}

export declare class SubscriptionError extends Error {
  constructor(message: string, details?: { status?: number; problem?: unknown; fatal?: boolean; cause?: unknown });
  /** HTTP status of the refusal (0: no answer, or a broken stream). */
  readonly status: number;
  /** The server's problem+json document, if it sent one. */
  readonly problem: unknown;
  fatal: boolean;
}

export interface SseMessage {
  event: string;
  /** null: a message without data lines, which only moves `lastEventId`. */
  data: string | null;
  lastEventId: string;
}

/** The HTML standard's text/event-stream parser, fed decoded text in chunks of any size. */
export declare class SseParser {
  constructor(onMessage: (message: SseMessage) => void, lastEventId?: string);
  lastEventId: string;
  /** The last valid `retry:` value (ms), or null. */
  retry: number | null;
  feed(text: string): void;
}

/** Subscribe to `url` (e.g. "/streams/orders.*?type=order.*") until `close()` or a refusal retrying cannot fix. */
export declare function subscribe<T = unknown>(url: string | URL, options?: SubscribeOptions<T>): Subscription;
