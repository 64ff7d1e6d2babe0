// The live connection (docs/PROTOCOL.md §5): wss:// to /ws, `hello` with the
// last sequence number of every chat, automatic reconnect with exponential
// backoff and jitter, an app-level heartbeat that also notices a socket gone
// stale after sleep, and an outbox that resends unacknowledged messages with
// their original ids, so nothing is lost or doubled.

/**
 * @typedef {{onFrame: (frame: any) => void, onState: (state: 'connecting'|'online'|'reconnecting'|'signed-out') => void, since: () => Record<string, number>}} Handlers
 */

const PING_EVERY_MS = 10000;
/** How long a ping may wait for its answer before the socket counts as dead. */
const PONG_WAIT_MS = 15000;
/** The same after the computer slept or the page came back, when a dead socket is likely. */
const PONG_WAIT_AFTER_SLEEP_MS = 3000;
/**
 * At most this many sends (of as many chats) wait for their answer at a time. A reconnect
 * with many messages written offline would otherwise send them all at
 * once, past the host's rate limit, whose refusals in a row (50) close
 * the socket, and so on at every reconnect (docs/PROTOCOL.md §5.8).
 */
const SENDS_IN_FLIGHT = 5;
/**
 * The gap between sends once the host refused one for its rate: its
 * sustained rate is 5 frames a second (docs/PROTOCOL.md §5.8). The wait a
 * refusal gives is only until the host's next token, so sends that far
 * apart would be refused every other time.
 */
const SEND_PACE_MS = 200;

export class Connection {
  /** @param {Handlers} handlers */
  constructor(handlers) {
    this.handlers = handlers;
    /** @type {WebSocket|null} */
    this.ws = null;
    /** Unacknowledged sends by message id, in order. @type {Map<string, any>} */
    this.outbox = new Map();
    /** Sends of the outbox written on this socket and not yet answered. @type {Set<string>} */
    this.inFlight = new Set();
    /**
     * Sends of the outbox the host refused, until the app queues them again
     * (after the wait the host asked for) or drops them. They keep their
     * place in the window: the next ones would only be refused as well.
     * @type {Set<string>}
     */
    this.parked = new Set();
    /**
     * After the host refused a frame for its rate (`rate_limited`), sends go
     * one at a time, `pace` ms apart, until the outbox is empty: all at
     * once, most would be refused again. A refusal while paced slows the
     * pace by the wait it gives (a host with a lower rate, or other frames
     * of the user's taking their share). 0: no pace.
     */
    this.pace = 0;
    /** When the next paced send may go. */
    this.nextAt = 0;
    /** Sends written while paced: a refusal of one of them slows the pace. @type {Set<string>} */
    this.pacedSent = new Set();
    this.attempt = 0;
    this.synced = false;
    this.stopped = false;
    this.lastHeard = Date.now();
    this.lastTick = Date.now();
    /** The ping that asks whether the socket still holds: when it went, how long it may wait, and whether it was given a second more. @type {{at: number, wait: number, late?: boolean}|null} */
    this.probe = null;
    this.timer = setInterval(() => this.tick(), 2000);
    this.onWake = () => this.tick(true);
    document.addEventListener('visibilitychange', this.onWake);
    window.addEventListener('online', this.onWake);
  }

  start() {
    this.stopped = false;
    this.open();
  }

  open() {
    if (this.stopped) return;
    this.handlers.onState(this.attempt === 0 ? 'connecting' : 'reconnecting');
    const url = `${location.protocol === 'https:' ? 'wss' : 'ws'}://${location.host}/ws`;
    const ws = new WebSocket(url);
    this.ws = ws;
    this.synced = false;
    this.probe = null;
    let opened = false;
    ws.onopen = () => {
      opened = true;
      this.lastHeard = Date.now();
      ws.send(JSON.stringify({ type: 'hello', since: this.handlers.since() }));
    };
    ws.onmessage = (event) => {
      this.lastHeard = Date.now();
      let frame;
      try {
        frame = JSON.parse(event.data);
      } catch {
        return;
      }
      if (frame.type === 'welcome') this.attempt = 0;
      if (frame.type === 'synced') {
        this.synced = true;
        this.handlers.onState('online');
        // Everything unacknowledged goes again, refused ones included.
        this.inFlight.clear();
        this.parked.clear();
      }
      if (frame.type === 'ack') {
        this.outbox.delete(frame.id);
        // Taken: the pace eases back towards the host's rate.
        if (this.pace) this.pace = Math.max(SEND_PACE_MS, this.pace - 100);
      }
      if (frame.type === 'error' && frame.code === 'rate_limited') {
        const wait = Math.max(1, Number(frame.retry_after_ms) || SEND_PACE_MS);
        if (!this.pace) this.pace = Math.max(SEND_PACE_MS, wait);
        else if (this.pacedSent.has(frame.id)) this.pace = Math.min(5000, this.pace + wait);
        this.nextAt = Math.max(this.nextAt, Date.now() + wait);
      }
      if ((frame.type === 'ack' || frame.type === 'error') && typeof frame.id === 'string' && this.inFlight.delete(frame.id)) {
        // Refused: it waits until the app queues it again (or drops it).
        if (frame.type === 'error') this.parked.add(frame.id);
      }
      this.handlers.onFrame(frame);
      this.pump();
    };
    ws.onclose = (event) => {
      if (this.ws !== ws) return;
      this.ws = null;
      this.synced = false;
      if (event.code === 4001) {
        this.stopped = true;
        this.handlers.onState('signed-out');
        return;
      }
      if (!opened) {
        this.checkSession();
        return;
      }
      this.retry();
    };
  }

  /**
   * After a socket refused before it opened. A browser reports a refused
   * upgrade (401: the session ended or expired while the page was away,
   * asleep or offline) like any network failure, so ask the host whether
   * the session still holds: if not, the page is signed out instead of
   * reconnecting for good.
   */
  async checkSession() {
    let status = 0;
    try {
      status = (await fetch('/api/me', { cache: 'no-store' })).status;
    } catch {
      // The host is unreachable: reconnect as usual.
    }
    if (this.stopped) return;
    if (status === 401) {
      this.stopped = true;
      this.handlers.onState('signed-out');
      return;
    }
    this.retry();
  }

  retry() {
    if (this.stopped) return;
    this.handlers.onState('reconnecting');
    const base = Math.min(30000, 500 * 2 ** this.attempt);
    this.attempt += 1;
    const delay = base / 2 + Math.random() * (base / 2);
    clearTimeout(this.retryTimer);
    this.retryTimer = setTimeout(() => this.open(), delay);
  }

  /**
   * Heartbeat and stale-socket detection; `wake` when the page comes back
   * or the network changes. A ping goes after 10 s without a frame, and
   * at once after a long gap between ticks; if nothing answers in time,
   * the socket went stale (sleep, lost network) and the connection starts
   * over. A long gap alone proves nothing: a hidden tab's timers may run
   * only once a minute, while its socket is alive.
   */
  tick(wake = false) {
    const now = Date.now();
    const slept = now - this.lastTick > 20000;
    this.lastTick = now;
    const ws = this.ws;
    if (!ws || ws.readyState !== WebSocket.OPEN) return;
    // Any frame since the ping answers it.
    if (this.probe && this.lastHeard >= this.probe.at) this.probe = null;
    if (this.probe && now - this.probe.at >= this.probe.wait) {
      // Noticed late (the page was busy, or its timers throttled): the
      // answer may be waiting behind this very check, so once, a second more.
      if (!this.probe.late && now - this.probe.at > this.probe.wait + 1000) {
        this.probe.late = true;
        this.probe.wait = now - this.probe.at + 1000;
        clearTimeout(this.probeTimer);
        this.probeTimer = setTimeout(() => this.tick(), 1000);
        return;
      }
      this.ws = null;
      this.synced = false;
      ws.onclose = null;
      ws.close();
      this.retry();
      return;
    }
    if (!this.probe && (wake || slept || now - this.lastHeard > PING_EVERY_MS)) {
      const wait = wake || slept ? PONG_WAIT_AFTER_SLEEP_MS : PONG_WAIT_MS;
      this.probe = { at: now, wait };
      this.raw({ type: 'ping', nonce: String(now) });
      clearTimeout(this.probeTimer);
      this.probeTimer = setTimeout(() => this.tick(), wait);
    }
  }

  /** @param {any} frame */
  raw(frame) {
    if (this.ws && this.ws.readyState === WebSocket.OPEN) this.ws.send(JSON.stringify(frame));
  }

  /** Sends a frame now if the connection is synced (typing, read); drops it otherwise. */
  send(frame) {
    if (this.synced) this.raw(frame);
  }

  /** Queues a message send: sent as soon as possible, and again after every reconnect until acknowledged. */
  sendMessage(frame) {
    this.outbox.set(frame.id, frame);
    this.parked.delete(frame.id);
    this.pump();
  }

  /** Replaces a queued send (after resealing for new members) or drops it. */
  replace(id, frame) {
    if (frame) this.outbox.set(id, frame);
    else {
      this.outbox.delete(id);
      this.inFlight.delete(id);
      this.parked.delete(id);
    }
    this.pump();
  }

  /**
   * Writes queued sends, in order, while fewer than SENDS_IN_FLIGHT wait
   * for an answer or a retry, and one per chat at a time; one at a time,
   * `pace` ms apart, after the host refused one for its rate.
   */
  pump() {
    if (!this.outbox.size) {
      this.pace = 0;
      this.pacedSent.clear();
    }
    if (!this.synced) return;
    // One send per chat at a time: a chat's later sends wait until the one
    // before is answered, and while it waits to go again (resealed, or
    // after a pause), so that each chat's messages are stored in the order
    // they were written even when the host refuses one for a moment.
    const waiting = new Set();
    for (const [id, frame] of this.outbox) {
      if (this.inFlight.size + this.parked.size >= SENDS_IN_FLIGHT) return;
      if (waiting.has(frame.chat)) continue;
      waiting.add(frame.chat);
      if (this.inFlight.has(id) || this.parked.has(id)) continue;
      if (this.pace) {
        const wait = this.nextAt - Date.now();
        if (wait > 0) {
          clearTimeout(this.paceTimer);
          this.paceTimer = setTimeout(() => this.pump(), wait);
          return;
        }
        this.nextAt = Date.now() + this.pace;
        this.pacedSent.add(id);
      }
      this.inFlight.add(id);
      this.raw(frame);
    }
  }

  stop() {
    this.stopped = true;
    clearInterval(this.timer);
    clearTimeout(this.retryTimer);
    clearTimeout(this.paceTimer);
    clearTimeout(this.probeTimer);
    document.removeEventListener('visibilitychange', this.onWake);
    window.removeEventListener('online', this.onWake);
    if (this.ws) {
      this.ws.onclose = null;
      this.ws.close(1000);
    }
    this.ws = null;
  }
}
