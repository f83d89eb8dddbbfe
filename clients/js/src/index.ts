// Herald's client: one connection over WebSocket, Server-Sent Events or long polling, with
// automatic fallback, reconnects with jittered backoff, token refresh, and resume of every
// subscription from its last position. See README.md.

export type TransportName = 'websocket' | 'sse' | 'longpoll';

/** Where a subscription is in its channel's stream. */
export interface Position {
  position: number;
  epoch: string;
}

/** A message of a channel, as published. */
export interface Publication extends Position {
  channel: string;
  id: string;
  ts: number;
  event?: string;
  data: unknown;
}

export interface ClientInfo {
  user: string;
  client: string;
  node: string;
}

/** A user on a channel, in `join` and `leave` events and presence answers. */
export interface Presence {
  client: string;
  user: string;
  info?: unknown;
}

export interface Published extends Position {
  channel: string;
  message_id: string;
  ts: number;
  duplicate: boolean;
}

export interface HistoryPage extends Position {
  channel: string;
  complete: boolean;
  publications: Publication[];
}

export type ConnectionState =
  | { state: 'connecting'; transport: TransportName; url: string }
  | { state: 'connected'; transport: TransportName; url: string; client?: ClientInfo }
  | { state: 'reconnecting'; transport: TransportName; url: string; delay: number; attempt: number; code: number; reason: string }
  | { state: 'disconnected'; code: number; reason: string };

export interface SubscribedEvent extends Position {
  /** `true`: everything since the last position follows; `false`: the gap could not be filled
   *  (reload your state); absent on the first subscribe. */
  recovered?: boolean;
  transport: TransportName;
}

export interface Options {
  /** Herald's base URL (`https://push.example.com`), or several nodes of one cluster. */
  url: string | string[];
  /** A client token, or a function that fetches a fresh one (called on every connect and before expiry). */
  token?: string | (() => string | Promise<string>);
  /** The tenant, for a connect proxy (no token) or to pin the token's tenant. */
  tenant?: string;
  /** Transports in the order to try (default websocket, sse, longpoll); one element forces it. */
  transports?: TransportName[];
  /** Reconnect delays: full jitter between min and min × 2^attempt, at most max (ms). */
  minReconnectDelay?: number;
  maxReconnectDelay?: number;
  /** How long a connection may take to open (ms, default 10000). */
  connectTimeout?: number;
  /** Consecutive failures of a transport before the next one is tried (default 2). */
  fallbackAfter?: number;
  /** Time on a fallback transport before the preferred one is tried again (ms, default 60000; 0: never). */
  upgradeAfter?: number;
  /** Refresh the token this long before it expires (ms, default 30000). */
  refreshBefore?: number;
  /** How long a long poll waits on the server (s, default 25). */
  pollTimeout?: number;
  /** A stream with nothing (not even a heartbeat) for this long is restarted (ms, default 45000). */
  idleTimeout?: number;
  /** For Node.js or tests: the WebSocket and fetch to use. */
  WebSocket?: typeof WebSocket;
  fetch?: typeof fetch;
}

/** An error answered by Herald (`code` as in the protocol's error table) or by this client. */
export class HeraldError extends Error {
  constructor(public code: string, message: string, public detail?: unknown) {
    super(message);
    this.name = 'HeraldError';
  }
}

type Handler<T> = (value: T) => void;

class Emitter<E> {
  private handlers: { [K in keyof E]?: Handler<E[K]>[] } = {};
  on<K extends keyof E>(event: K, fn: Handler<E[K]>): () => void {
    (this.handlers[event] ||= []).push(fn);
    return () => {
      this.handlers[event] = this.handlers[event]!.filter((f) => f !== fn);
    };
  }
  protected emit<K extends keyof E>(event: K, value: E[K]): void {
    for (const fn of this.handlers[event] || []) {
      try {
        fn(value);
      } catch (e) {
        setTimeout(() => {
          throw e;
        });
      }
    }
  }
}

export interface SubscriptionEvents {
  publication: Publication;
  subscribed: SubscribedEvent;
  error: HeraldError;
  join: Presence;
  leave: Presence;
  unsubscribed: void;
}

/** One channel's subscription; it lasts across reconnects and transport changes. */
export class Subscription extends Emitter<SubscriptionEvents> {
  /** The last position processed (what a resume starts after). */
  position?: Position;
  /** Subscribed on the current connection. */
  active = false;
  /** Ended by `unsubscribe()` or a refusal. */
  closed = false;
  constructor(private client: Herald, public readonly channel: string) {
    super();
  }
  unsubscribe(): void {
    if (this.client.subscription(this.channel) === this) this.client.unsubscribe(this.channel);
  }
  /** @internal */ _emit<K extends keyof SubscriptionEvents>(e: K, v: SubscriptionEvents[K]): void {
    this.emit(e, v);
  }
  /** @internal Takes a publication once, in order: repeats of a position are dropped. */
  _deliver(p: Publication): void {
    const at = this.position;
    if (at && at.epoch === p.epoch && p.position <= at.position) return;
    this.position = { position: p.position, epoch: p.epoch };
    this.emit('publication', p);
  }
  /** @internal */ _subscribed(frame: Position & { recovered?: boolean }, transport: TransportName): void {
    this.active = true;
    // Replayed messages follow a recovered subscribe and advance the position themselves.
    if (!frame.recovered) this.position = { position: frame.position, epoch: frame.epoch };
    const e: SubscribedEvent = { position: frame.position, epoch: frame.epoch, transport };
    if (frame.recovered !== undefined) e.recovered = frame.recovered;
    this.emit('subscribed', e);
  }
}

export interface ClientEvents {
  state: ConnectionState;
  error: HeraldError;
}

// ---- transports ---------------------------------------------------------------------------------

interface Sink {
  open(client?: ClientInfo): void;
  frame(f: any): void;
  close(code: number, reason: string): void;
}

interface Transport {
  readonly name: TransportName;
  /** Subscriptions changed (one-way transports reopen with the new channel list). */
  sync(): void;
  close(): void;
  /** Commands (WebSocket only). */
  call?(frame: Record<string, unknown>): Promise<any>;
  /** Hands over a new token (WebSocket: `refresh`; the others use it on their next request). */
  refresh?(token: string): Promise<number | undefined>;
}

/** Codes in a problem document (SSE and long polling refusals) as close codes. */
const PROBLEM_CLOSE: Record<string, number> = {
  token_expired: 4002,
  tenant_suspended: 4003,
  token_revoked: 4004,
  disconnected: 4006,
  origin_not_allowed: 4007,
  connection_limit: 4101,
};

function problemClose(status: number, body: any): [number, string] {
  const code = body && typeof body.code === 'string' ? body.code : `http_${status}`;
  if (PROBLEM_CLOSE[code]) return [PROBLEM_CLOSE[code], code];
  if (status === 401 || status === 403) return [4001, code];
  if (status === 400 || status === 404) return [4000, code];
  return [1011, code]; // 5xx, 429 and the rest: try again later.
}

/** Channel errors worth trying again later (the subscription stays). */
const RETRYABLE = new Set(['closed', 'internal', 'cluster_unavailable', 'proxy_unavailable', 'quota_exceeded', 'auth_unavailable', 'unavailable']);

/** `path` under the base URL (which may be relative to the page, and may have a path). */
function endpoint(base: string, path: string): URL {
  const u = new URL(base, (globalThis as any).location?.href);
  u.pathname = u.pathname.replace(/\/$/, '') + path;
  return u;
}

function sinceParam(subs: Subscription[]): string {
  return subs.map((s) => (s.position ? `${s.position.position}:${s.position.epoch}` : '')).join(',');
}

class WsTransport implements Transport {
  readonly name = 'websocket';
  private ws: WebSocket;
  private seq = 0;
  private pending = new Map<number, [(v: any) => void, (e: HeraldError) => void]>();
  private subscribed = new Set<string>();
  private ready = false;
  private pinger?: ReturnType<typeof setInterval>;
  private lastSeen = Date.now();
  constructor(private c: Herald, private sink: Sink, url: string, token: string | undefined) {
    const u = endpoint(url, '/v1/ws');
    u.protocol = u.protocol === 'https:' || u.protocol === 'wss:' ? 'wss:' : 'ws:';
    if (c.opts.tenant) u.searchParams.set('tenant', c.opts.tenant);
    const WS = c.opts.WebSocket || WebSocket;
    this.ws = new WS(u.toString());
    this.ws.onopen = () => {
      // Without a token the tenant's connect proxy decides (and `connected` comes by itself).
      if (token) this.send({ type: 'connect', id: 0, token });
    };
    this.ws.onmessage = (m) => {
      this.lastSeen = Date.now();
      let f: any;
      try {
        f = JSON.parse(String(m.data));
      } catch {
        return;
      }
      if (f.type === 'connected') {
        this.ready = true;
        // The server pings at the WebSocket level, which scripts cannot see: a `ping`
        // command proves the connection is alive.
        const every = f.ping_interval_ms || 25000;
        this.pinger = setInterval(() => {
          if (Date.now() - this.lastSeen > every + 10000) return this.fail(4102, 'ping_timeout');
          this.call({ type: 'ping' }).catch(() => {});
        }, every);
        this.sink.open({ user: f.user, client: f.client, node: f.node });
        c._expiresAt(f.expires_at);
        this.sync();
        return;
      }
      if (f.id !== undefined && this.pending.has(f.id)) {
        const [ok, fail] = this.pending.get(f.id)!;
        this.pending.delete(f.id);
        if (f.type === 'error') fail(new HeraldError(f.code, f.message, f));
        else ok(f);
      }
      if (f.type === 'error' && f.id === undefined) c._error(new HeraldError(f.code, f.message, f));
      else if (f.type !== 'error') this.sink.frame(f);
    };
    this.ws.onclose = (e) => this.fail(e.code || 1006, e.reason || 'connection lost');
  }
  private send(f: Record<string, unknown>): void {
    if (this.ws.readyState === 1) this.ws.send(JSON.stringify(f));
  }
  private fail(code: number, reason: string): void {
    clearInterval(this.pinger);
    const pending = [...this.pending.values()];
    this.pending.clear();
    for (const [, fail] of pending) fail(new HeraldError('disconnected', 'the connection closed'));
    this.ws.onclose = this.ws.onmessage = this.ws.onopen = null;
    try {
      this.ws.close();
    } catch {}
    this.sink.close(code, reason);
  }
  call(frame: Record<string, unknown>): Promise<any> {
    if (!this.ready) return Promise.reject(new HeraldError('not_connected', 'not connected'));
    const id = ++this.seq;
    return new Promise((ok, fail) => {
      this.pending.set(id, [ok, fail]);
      this.send({ ...frame, id });
    });
  }
  sync(): void {
    if (!this.ready) return;
    for (const s of this.c.subscriptions()) {
      if (this.subscribed.has(s.channel)) continue;
      this.subscribed.add(s.channel);
      const since = s.position && { position: s.position.position, epoch: s.position.epoch };
      // The reply reaches the sink as a frame, ahead of any replayed message.
      this.call({ type: 'subscribe', channel: s.channel, ...(since ? { since } : {}) }).catch(
        (e: HeraldError) => {
          this.subscribed.delete(s.channel);
          if (e.code === 'disconnected') return;
          // A passing condition: subscribe again in a moment; anything else ends it.
          if (RETRYABLE.has(e.code)) setTimeout(() => this.sync(), 1000 + Math.random() * 1000);
          else this.c._refused(s.channel, e);
        },
      );
    }
    for (const ch of [...this.subscribed]) {
      if (!this.c.subscription(ch)) {
        this.subscribed.delete(ch);
        this.call({ type: 'unsubscribe', channel: ch }).catch(() => {});
      }
    }
  }
  async refresh(token: string): Promise<number | undefined> {
    const r = await this.call({ type: 'refresh', token });
    return r.expires_at;
  }
  close(): void {
    clearInterval(this.pinger);
    this.ready = false;
    for (const [, fail] of this.pending.values()) fail(new HeraldError('disconnected', 'the connection closed'));
    this.pending.clear();
    this.ws.onclose = this.ws.onmessage = this.ws.onopen = null;
    this.ws.close(1000);
  }
}

/** SSE and long polling: the channel list is part of the request; a change reopens it. */
abstract class HttpTransport implements Transport {
  abstract readonly name: TransportName;
  protected abort = new AbortController();
  protected stopped = false;
  protected opened = false;
  protected restart?: ReturnType<typeof setTimeout>;
  constructor(protected c: Herald, protected sink: Sink, protected base: string) {
    queueMicrotask(() => this.run());
  }
  protected url(path: string, subs: Subscription[] | string, extra: Record<string, string>): string {
    const u = endpoint(this.base, path);
    u.searchParams.set('channels', typeof subs === 'string' ? subs : subs.map((s) => s.channel).join(','));
    const token = this.c._token();
    if (token) u.searchParams.set('token', token);
    if (this.c.opts.tenant) u.searchParams.set('tenant', this.c.opts.tenant);
    for (const k in extra) u.searchParams.set(k, extra[k]);
    return u.toString();
  }
  protected async refused(res: Response, subs: Subscription[]): Promise<boolean> {
    let body: any = null;
    try {
      body = await res.json();
    } catch {}
    // A refused channel (not the connection): drop it and go on with the others.
    if (body && body.field === 'channels' && typeof body.channel === 'string' && subs.length && !RETRYABLE.has(body.code)) {
      this.c._refused(body.channel, new HeraldError(body.code, body.detail || body.code, body));
      return true;
    }
    const [code, reason] = problemClose(res.status, body);
    this.fail(code, reason);
    return false;
  }
  protected fail(code: number, reason: string): void {
    if (this.stopped) return;
    this.stop();
    this.sink.close(code, reason);
  }
  protected stop(): void {
    this.stopped = true;
    clearTimeout(this.restart);
    this.abort.abort();
    this.wake?.();
  }
  protected abstract run(): Promise<void>;
  private wake?: () => void;
  /** The subscriptions one request carries (at most 64; more are refused), waiting while there are none. */
  protected async channels(): Promise<Subscription[]> {
    for (;;) {
      if (this.restart) {
        // The request about to go out already has the change.
        clearTimeout(this.restart);
        this.restart = undefined;
        this.abort = new AbortController();
      }
      const all = this.c.subscriptions();
      for (const s of all.slice(64)) this.c._refused(s.channel, new HeraldError('too_many_subscriptions', 'SSE and long polling carry at most 64 channels'));
      if (all.length || this.stopped) return all.slice(0, 64);
      await new Promise<void>((ok) => (this.wake = ok));
      this.wake = undefined;
    }
  }
  sync(): void {
    if (this.wake) return this.wake();
    // Batch the changes of one moment into one new request.
    if (this.stopped || this.restart) return;
    this.restart = setTimeout(() => {
      this.restart = undefined;
      this.abort.abort();
      this.abort = new AbortController();
    }, 10);
  }
  close(): void {
    this.stop();
  }
}

class SseTransport extends HttpTransport {
  readonly name = 'sse';
  protected async run(): Promise<void> {
    const f = this.c.opts.fetch || fetch;
    while (!this.stopped) {
      const subs = await this.channels();
      if (this.stopped) return;
      const signal = this.abort.signal;
      let idle: ReturnType<typeof setTimeout> | undefined;
      const watch = () => {
        clearTimeout(idle);
        idle = setTimeout(() => this.fail(4102, 'ping_timeout'), this.c.opts.idleTimeout ?? 45000);
      };
      try {
        watch();
        const res = await f(this.url('/v1/sse', subs, { since: sinceParam(subs) }), {
          signal,
          headers: { accept: 'text/event-stream' },
          cache: 'no-store',
        });
        if (!res.ok || !res.body) {
          clearTimeout(idle);
          if (await this.refused(res, subs)) continue;
          return;
        }
        const reader = res.body.getReader();
        const decoder = new TextDecoder();
        let buf = '';
        for (;;) {
          const { value, done } = await reader.read();
          if (done) break;
          watch();
          buf += decoder.decode(value, { stream: true });
          let end: number;
          while ((end = buf.indexOf('\n\n')) >= 0) {
            const block = buf.slice(0, end);
            buf = buf.slice(end + 2);
            const data = block
              .split('\n')
              .filter((l) => l.startsWith('data:'))
              .map((l) => l.slice(5).replace(/^ /, ''))
              .join('\n');
            if (!data) continue;
            const frame = JSON.parse(data);
            if (frame.type === 'connected') {
              if (!this.opened) this.sink.open({ user: frame.user, client: frame.client, node: frame.node });
              this.opened = true;
            } else if (frame.type === 'disconnect') {
              clearTimeout(idle);
              return this.fail(frame.code, frame.reason);
            } else this.sink.frame(frame);
          }
        }
        clearTimeout(idle);
        if (!signal.aborted) return this.fail(1006, 'stream ended');
      } catch (e) {
        clearTimeout(idle);
        if (this.stopped) return;
        if (signal.aborted && signal !== this.abort.signal) continue; // Reopened for a new channel list or token.
        return this.fail(1006, String((e as Error).message || e));
      }
    }
  }
}

class PollTransport extends HttpTransport {
  readonly name = 'longpoll';
  private cursor?: string;
  private list = '';
  protected async run(): Promise<void> {
    const f = this.c.opts.fetch || fetch;
    const wait = this.c.opts.pollTimeout ?? 25;
    while (!this.stopped) {
      // The last channel gone: the session ends now, not when a channel comes back.
      if (!this.c.subscriptions().length) this.end();
      const subs = await this.channels();
      if (this.stopped) return;
      const channels = subs.map((s) => s.channel).join(',');
      if (channels !== this.list) {
        // A cursor names its channel list: the old list's session ends now, not when idle.
        this.end();
        this.cursor = undefined;
      }
      this.list = channels;
      const signal = this.abort.signal;
      // A new session answers at once, with its confirmations; later polls wait.
      const extra: Record<string, string> = { timeout: String(this.cursor ? wait : 0) };
      if (this.cursor) extra.cursor = this.cursor;
      else extra.since = sinceParam(subs);
      const timer = setTimeout(() => this.abort.abort(), (wait + 15) * 1000);
      try {
        const res = await f(this.url('/v1/poll', subs, extra), { signal, cache: 'no-store' });
        if (!res.ok) {
          clearTimeout(timer);
          if (await this.refused(res, subs)) continue;
          return;
        }
        const body = await res.json();
        clearTimeout(timer);
        if (!this.opened) {
          this.opened = true;
          this.sink.open();
        }
        // The first answer of a session confirms each subscription (with `recovered` when it
        // resumed); later ones name the channels whose gap could not be filled.
        for (const f of body.subscribed || []) this.sink.frame(f);
        for (const ch of body.unrecovered || []) {
          const s = this.c.subscription(ch);
          if (s && !(body.subscribed || []).some((f: any) => f.channel === ch)) {
            s._subscribed({ position: 0, epoch: '', recovered: false }, 'longpoll');
            s.position = undefined;
          }
        }
        for (const m of body.messages || []) this.sink.frame(m);
        this.cursor = body.cursor;
        if (body.retry_after_ms !== undefined) return this.fail(4200, `shutting_down retry_after_ms=${body.retry_after_ms}`);
      } catch (e) {
        clearTimeout(timer);
        if (this.stopped) return;
        if (signal.aborted && signal !== this.abort.signal) continue; // Reopened for a new channel list.
        return this.fail(1006, String((e as Error).message || e));
      }
    }
  }
  close(): void {
    this.end();
    super.close();
  }
  /** Ends the server's session of the current cursor at once (`POST /v1/poll/close`), so it
   * leaves presence now rather than when it would have gone idle. A `keepalive` request: it is
   * sent even as the page goes away. Best effort: a failure leaves the session to its idle end. */
  private end(): void {
    const cursor = this.cursor;
    if (!cursor || !this.list) return;
    this.cursor = undefined;
    const f = this.c.opts.fetch || fetch;
    try {
      f(this.url('/v1/poll/close', this.list, { cursor }), { method: 'POST', keepalive: true, cache: 'no-store' }).catch(() => {});
    } catch {}
  }
}

// ---- the client ---------------------------------------------------------------------------------

const ORDER: TransportName[] = ['websocket', 'sse', 'longpoll'];

function tokenExpiry(token: string | undefined): number | undefined {
  try {
    const part = token!.split('.')[1].replace(/-/g, '+').replace(/_/g, '/');
    return JSON.parse(atob(part)).exp;
  } catch {
    return undefined;
  }
}

/**
 * A connection to Herald. `new Herald({url, token})`, then `subscribe(channel)`; it connects
 * at the first subscription (or `connect()`) and stays connected until `disconnect()`.
 */
export class Herald extends Emitter<ClientEvents> {
  readonly opts: Options;
  private subs = new Map<string, Subscription>();
  private transport?: Transport;
  private probe?: Transport;
  private order: TransportName[];
  private urls: string[];
  private urlIndex = 0;
  private kind = 0;
  private failures = 0;
  private attempt = 0;
  private token?: string;
  private tokenAt = 0;
  private expires?: number;
  private wanted = false;
  /** Bumped by every open and disconnect: an open that was overtaken stops. */
  private generation = 0;
  private timers: { [k: string]: ReturnType<typeof setTimeout> | undefined } = {};
  private openedAt = 0;
  private waiting: { ok: () => void; fail: (e: HeraldError) => void }[] = [];
  /** The current state; also emitted as `state`. */
  state: ConnectionState = { state: 'disconnected', code: 1000, reason: 'not connected' };

  constructor(opts: Options) {
    super();
    this.opts = opts;
    this.urls = Array.isArray(opts.url) ? opts.url : [opts.url];
    this.order = opts.transports && opts.transports.length ? opts.transports : ORDER;
  }

  /** The transport in use (or being tried). */
  get transportName(): TransportName {
    return this.order[this.kind];
  }

  /**
   * Subscribes to `channel` (or returns the existing subscription) and connects if needed.
   * `since`: a position kept from before (e.g. across a page reload) to resume after.
   */
  subscribe(channel: string, onPublication?: Handler<Publication>, o: { since?: Position } = {}): Subscription {
    let s = this.subs.get(channel);
    if (!s) {
      s = new Subscription(this, channel);
      if (o.since) s.position = { position: o.since.position, epoch: o.since.epoch };
      this.subs.set(channel, s);
      this.transport?.sync();
    }
    if (onPublication) s.on('publication', onPublication);
    this.connect();
    return s;
  }

  unsubscribe(channel: string): void {
    const s = this.subs.get(channel);
    if (!s) return;
    this.subs.delete(channel);
    s.active = false;
    s.closed = true;
    this.transport?.sync();
    s._emit('unsubscribed', undefined);
  }

  subscription(channel: string): Subscription | undefined {
    return this.subs.get(channel);
  }

  subscriptions(): Subscription[] {
    return [...this.subs.values()];
  }

  connect(): void {
    if (this.wanted) return;
    this.wanted = true;
    this.attempt = 0;
    this.open();
  }

  disconnect(): void {
    this.wanted = false;
    this.generation++;
    for (const k in this.timers) clearTimeout(this.timers[k]);
    this.transport?.close();
    this.probe?.close();
    this.transport = this.probe = undefined;
    this.kind = this.failures = 0;
    for (const s of this.subs.values()) s.active = false;
    for (const w of this.waiting.splice(0)) w.fail(new HeraldError('disconnected', 'disconnected by the client'));
    this.setState({ state: 'disconnected', code: 1000, reason: 'disconnected by the client' });
  }

  /** Publishes through the connection (WebSocket only: SSE and long polling only receive). */
  publish(channel: string, data: unknown, o: { event?: string; idempotencyKey?: string } = {}): Promise<Published> {
    const f: Record<string, unknown> = { type: 'publish', channel, data };
    if (o.event) f.event = o.event;
    if (o.idempotencyKey) f.idempotency_key = o.idempotencyKey;
    return this.command(f);
  }

  history(channel: string, o: { since?: Position; limit?: number } = {}): Promise<HistoryPage> {
    const f: Record<string, unknown> = { type: 'history', channel };
    if (o.since) f.since = { position: o.since.position, epoch: o.since.epoch };
    if (o.limit) f.limit = o.limit;
    return this.command(f);
  }

  presence(channel: string): Promise<Presence[]> {
    return this.command({ type: 'presence', channel }).then((r) => r.clients);
  }

  private async command(frame: Record<string, unknown>): Promise<any> {
    this.connect();
    if (this.state.state !== 'connected') {
      await new Promise<void>((ok, fail) => {
        const w = {
          ok: () => {
            clearTimeout(t);
            ok();
          },
          fail,
        };
        const t = setTimeout(() => {
          this.waiting = this.waiting.filter((x) => x !== w);
          fail(new HeraldError('not_connected', 'not connected in time'));
        }, this.opts.connectTimeout ?? 10000);
        this.waiting.push(w);
      });
    }
    const t = this.transport;
    if (!t || !t.call) throw new HeraldError('not_supported', `${this.transportName} only receives; commands need the WebSocket`);
    return t.call(frame);
  }

  // ---- internals ----

  /** @internal */ _token(): string | undefined {
    return this.token;
  }

  /** @internal */ _error(e: HeraldError): void {
    this.emit('error', e);
  }

  /** @internal A channel the server refused: the subscription ends with the error. */
  _refused(channel: string, e: HeraldError): void {
    const s = this.subs.get(channel);
    if (!s) return;
    this.subs.delete(channel);
    s.active = false;
    s.closed = true;
    s._emit('error', e);
    this.transport?.sync();
  }

  /** @internal The token's expiry as the server reported it: refresh before it. */
  _expiresAt(exp: number | undefined): void {
    this.expires = exp ?? this.expires;
    this.scheduleRefresh();
  }

  private setState(s: ConnectionState): void {
    this.state = s;
    this.emit('state', s);
  }

  private async fetchToken(): Promise<string | undefined> {
    const t = this.opts.token;
    const token = typeof t === 'function' ? await t() : t;
    this.tokenAt = Date.now();
    return token;
  }

  private async open(): Promise<void> {
    clearTimeout(this.timers.retry);
    const generation = ++this.generation;
    const url = this.urls[this.urlIndex % this.urls.length];
    const kind = this.kind;
    this.setState({ state: 'connecting', transport: this.order[kind], url });
    try {
      this.token = await this.fetchToken();
    } catch (e) {
      if (generation !== this.generation) return;
      this.emit('error', new HeraldError('token', `the token callback failed: ${e}`));
      return this.closed(1011, 'token callback failed', false, false);
    }
    if (!this.wanted || generation !== this.generation) return;
    this.expires = tokenExpiry(this.token);
    let opened = false;
    const sink: Sink = {
      open: (client) => {
        opened = true;
        clearTimeout(this.timers.connect);
        this.connectedOn(kind, url, client);
      },
      frame: (f) => this.frame(f),
      close: (code, reason) => {
        if (this.transport !== t) return;
        this.transport = undefined;
        this.closed(code, reason, opened);
      },
    };
    let t: Transport;
    try {
      t = this.create(this.order[kind], sink, url);
    } catch (e) {
      // A URL the browser will not open (mixed content, no WebSocket here): the next one.
      this.emit('error', new HeraldError('transport', String((e as Error).message || e)));
      return this.closed(1006, String(e), false);
    }
    this.transport = t;
    this.timers.connect = setTimeout(() => {
      if (!opened && this.transport === t) {
        t.close();
        this.transport = undefined;
        this.closed(1006, 'connect timeout', false);
      }
    }, this.opts.connectTimeout ?? 10000);
  }

  /** A transport opened: the connection is up. */
  private connectedOn(kind: number, url: string, client?: ClientInfo): void {
    clearTimeout(this.timers.retry);
    this.kind = kind;
    this.openedAt = Date.now();
    this.failures = 0;
    this.setState({ state: 'connected', transport: this.order[kind], url, client });
    this.scheduleRefresh();
    this.scheduleUpgrade();
    for (const w of this.waiting.splice(0)) w.ok();
  }

  private create(name: TransportName, sink: Sink, url: string): Transport {
    if (name === 'websocket') return new WsTransport(this, sink, url, this.token);
    if (name === 'sse') return new SseTransport(this, sink, url);
    return new PollTransport(this, sink, url);
  }

  private frame(f: any): void {
    const s = f.channel !== undefined ? this.subs.get(f.channel) : undefined;
    if (!s) return;
    if (f.type === 'pub') s._deliver(f);
    else if (f.type === 'subscribed') s._subscribed(f, this.transportName);
    else if (f.type === 'join' || f.type === 'leave') s._emit(f.type, { client: f.client, user: f.user, info: f.info });
  }

  /**
   * What to do after a connection ended: stop, reconnect at once, after a drain delay, or
   * after a backoff. `transportFault`: whether it may count against the transport (a token
   * callback that failed does not).
   */
  private closed(code: number, reason: string, opened: boolean, transportFault = true): void {
    clearTimeout(this.timers.connect);
    clearTimeout(this.timers.refresh);
    clearTimeout(this.timers.upgrade);
    this.probe?.close();
    this.probe = undefined;
    for (const s of this.subs.values()) s.active = false;
    if (!this.wanted) return;
    const refreshable = typeof this.opts.token === 'function';
    if (code >= 4000 && code < 4100 && !(code === 4002 && refreshable)) {
      this.wanted = false;
      return this.setState({ state: 'disconnected', code, reason });
    }
    // Only a connection that lasted counts as a success: a flapping one keeps backing off.
    if (opened && Date.now() - this.openedAt >= 10000) this.attempt = 0;
    // A transport that cannot connect, or drops at once at the network level, gives way to the
    // next one (the server's own close codes say nothing against the transport).
    const quick = !opened || Date.now() - this.openedAt < 5000;
    if (transportFault && code < 4000 && quick) {
      if (++this.failures >= (this.opts.fallbackAfter ?? 2) && this.order.length > 1) {
        this.failures = 0;
        this.kind = (this.kind + 1) % this.order.length;
      }
    }
    let delay: number;
    const drain = /retry_after_ms=(\d+)/.exec(reason);
    if (code === 4002 && this.attempt === 0) delay = (this.attempt++, 0); // A fresh token, at once (once).
    else if (code >= 4200 && code < 4300) delay = Math.min(drain ? +drain[1] : 0, this.max());
    else delay = this.backoff(++this.attempt);
    if (code >= 4200 || !opened || code === 1006) this.urlIndex++; // Try another node.
    const url = this.urls[this.urlIndex % this.urls.length];
    this.setState({ state: 'reconnecting', transport: this.transportName, url, delay, attempt: this.attempt, code, reason });
    this.timers.retry = setTimeout(() => this.open(), delay);
  }

  private max(): number {
    return this.opts.maxReconnectDelay ?? 20000;
  }

  /** Full jitter: uniform between the minimum and min × 2^attempt, capped at the maximum. */
  private backoff(attempt: number): number {
    const min = this.opts.minReconnectDelay ?? 500;
    const cap = Math.max(min, Math.min(this.max(), min * 2 ** Math.min(attempt, 30)));
    return Math.round(min + Math.random() * (cap - min));
  }

  private scheduleRefresh(): void {
    clearTimeout(this.timers.refresh);
    if (typeof this.opts.token !== 'function' || !this.expires || this.state.state !== 'connected') return;
    const exp = this.expires * 1000;
    // Ahead of the expiry by `refreshBefore`, or by half the token's life if it is short.
    const lead = Math.min(this.opts.refreshBefore ?? 30000, Math.max(0, (exp - this.tokenAt) / 2));
    const wait = Math.max(1000, exp - Date.now() - lead);
    this.timers.refresh = setTimeout(() => this.refresh(), Math.min(wait, 2 ** 31 - 1));
  }

  private async refresh(): Promise<void> {
    const t = this.transport;
    try {
      const token = await this.fetchToken();
      if (!token || !t || t !== this.transport) return;
      this.token = token;
      this.expires = (t.refresh ? await t.refresh(token) : undefined) ?? tokenExpiry(token);
      // SSE carries the token in its URL: reopen with the new one (resuming, nothing lost).
      if (t.name === 'sse') t.sync();
      this.scheduleRefresh();
    } catch (e) {
      if (t !== this.transport) return; // The connection went meanwhile; the reconnect takes a new token.
      this.emit('error', e instanceof HeraldError ? e : new HeraldError('token', String(e)));
      this.timers.refresh = setTimeout(() => this.refresh(), 5000);
    }
  }

  /** On a fallback transport, try the preferred one again now and then; switch when it connects. */
  private scheduleUpgrade(): void {
    clearTimeout(this.timers.upgrade);
    const after = this.opts.upgradeAfter ?? 60000;
    if (this.kind === 0 || !after) return;
    this.timers.upgrade = setTimeout(() => {
      if (this.probe || this.state.state !== 'connected') return;
      const url = this.urls[this.urlIndex % this.urls.length];
      const giveUp = () => {
        clearTimeout(this.timers.probe);
        if (this.probe === probe) {
          this.probe = undefined;
          probe.close();
          if (this.state.state === 'connected') this.scheduleUpgrade();
        }
      };
      const sink: Sink = {
        open: (client) => {
          clearTimeout(this.timers.probe);
          if (this.probe !== probe || !this.wanted || !this.transport || this.state.state !== 'connected') {
            return giveUp();
          }
          const old = this.transport;
          this.transport = probe;
          this.probe = undefined;
          old.close();
          this.connectedOn(0, url, client);
          probe.sync();
        },
        frame: (f) => {
          if (this.transport === probe) this.frame(f);
        },
        close: (code, reason) => {
          if (this.probe === probe) giveUp();
          else if (this.transport === probe) {
            this.transport = undefined;
            this.closed(code, reason, true);
          }
        },
      };
      let probe: Transport;
      try {
        probe = this.create(this.order[0], sink, url);
      } catch {
        return this.scheduleUpgrade();
      }
      this.probe = probe;
      this.timers.probe = setTimeout(giveUp, this.opts.connectTimeout ?? 10000);
    }, after);
  }
}
