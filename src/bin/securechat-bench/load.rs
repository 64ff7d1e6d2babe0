//! The load: WebSocket clients over real TLS that send pre-built frames at a
//! set rate and time every frame that comes back. The send time (the
//! microseconds since the run began) travels in the message id itself, so
//! receivers need no shared table and read only the id, never the envelope.
//! Ids are shaped as SecureChat's clients make them ([`Ids`]).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::{Message, protocol::WebSocketConfig};
use tokio_tungstenite::{Connector, MaybeTlsStream, WebSocketStream};

use crate::servers::{Error, Kind};

pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// When this run began; ids carry microseconds since then.
pub fn epoch() -> Instant {
    static EPOCH: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

fn now_micros() -> u64 {
    epoch().elapsed().as_micros() as u64
}

/// How the load's message ids are laid out. Where an id falls in the host's
/// index of ids decides how many pages storing a message touches.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Ids {
    /// Time-ordered, as a UUID version 7: the send time in the first 48
    /// bits, then random bits. What SecureChat's clients send since 0.6.0.
    V7,
    /// Random UUID version 4 (what the browser sent up to 0.5.0), with the
    /// send time in the last 48 bits.
    V4,
}

static IDS: std::sync::OnceLock<Ids> = std::sync::OnceLock::new();

/// Chooses the id layout for this run (once, before any message is sent).
pub fn set_ids(ids: Ids) {
    let _ = IDS.set(ids);
}

/// A fresh message id carrying the send time, in this run's layout.
pub fn message_id() -> String {
    make_id(IDS.get().copied().unwrap_or(Ids::V7))
}

fn make_id(ids: Ids) -> String {
    let ts = now_micros() & 0xffff_ffff_ffff;
    let r = uuid::Uuid::new_v4().as_u128();
    let (a, b, c) = ((r >> 64) as u32, (r >> 48) as u16, r as u64);
    match ids {
        Ids::V7 => format!(
            "{:08x}-{:04x}-7{:03x}-{:04x}-{:012x}",
            ts >> 16,
            ts & 0xffff,
            a & 0xfff,
            0x8000 | (b & 0x3fff),
            c & 0xffff_ffff_ffff
        ),
        Ids::V4 => format!(
            "{a:08x}-{:04x}-4{:03x}-{:04x}-{ts:012x}",
            b,
            (c >> 48) & 0xfff,
            0x8000 | ((c >> 32) as u16 & 0x3fff),
        ),
    }
}

/// The send time in an id this tool made (the first `"id":"` of a frame).
fn sent_at(frame: &str) -> Option<u64> {
    let start = frame.find("\"id\":\"")? + 6;
    let id = frame.get(start..start + 36)?;
    match id.as_bytes()[14] {
        b'7' => {
            let high = u64::from_str_radix(&id[..8], 16).ok()?;
            let low = u64::from_str_radix(&id[9..13], 16).ok()?;
            Some(high << 16 | low)
        }
        _ => u64::from_str_radix(&id[24..], 16).ok(),
    }
}

/// Where and how to connect.
#[derive(Clone)]
pub struct Target {
    pub url: String,
    pub tls: Arc<rustls::ClientConfig>,
    pub kind: Kind,
}

/// Opens a socket (with the session cookie for SecureChat, and its `hello`
/// answered up to `synced`).
pub async fn connect(target: &Target, cookie: Option<&str>) -> Result<Ws, Error> {
    let url = format!("{}/ws", target.url.replacen("https://", "wss://", 1));
    let mut request = url.into_client_request()?;
    let headers = request.headers_mut();
    headers.insert("Origin", target.url.parse()?);
    if let Some(token) = cookie {
        headers.insert(
            "Cookie",
            format!("{}={token}", securechat::auth::SESSION_COOKIE).parse()?,
        );
    }
    let config = WebSocketConfig::default().max_message_size(Some(1 << 20));
    let (mut ws, _) = tokio_tungstenite::connect_async_tls_with_config(
        request,
        Some(config),
        true,
        Some(Connector::Rustls(target.tls.clone())),
    )
    .await?;
    if target.kind == Kind::SecureChat {
        ws.send(Message::text(r#"{"type":"hello","since":{}}"#))
            .await?;
        loop {
            match tokio::time::timeout(Duration::from_secs(30), ws.next()).await? {
                Some(Ok(Message::Text(t))) if t.as_str().starts_with(r#"{"type":"synced""#) => {
                    break;
                }
                Some(Ok(_)) => {}
                other => return Err(format!("socket ended before synced: {other:?}").into()),
            }
        }
    }
    Ok(ws)
}

/// Receipts and their latencies while a measurement is active.
#[derive(Default)]
pub struct Collector {
    active: AtomicBool,
    /// Sockets whose reading ended (the server closed them, as it does a
    /// reader that falls too far behind).
    closed: AtomicU64,
    /// Every message frame received, measured or not.
    seen: AtomicU64,
    /// Every frame the senders have begun to write.
    sent: AtomicU64,
    /// Frames the server refused (SecureChat's `error` answers to a `send`,
    /// such as `rate_limited` when its writer's queue has had no room for
    /// 2 s): the sender
    /// is told, and the frame is owed to no one.
    refused: AtomicU64,
    latencies_us: Mutex<Vec<u32>>,
}

/// One measurement window.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct Window {
    pub receipts: u64,
    /// Sockets closed so far (not only in this window).
    pub closed: u64,
    pub p50_ms: f64,
    pub p95_ms: f64,
    pub p99_ms: f64,
    /// The tail: one message in a thousand, and the slowest.
    pub p999_ms: f64,
    pub max_ms: f64,
}

impl Window {
    /// The quantiles of `latencies_us` (microseconds, in any order), one
    /// per message received.
    pub fn of(mut latencies_us: Vec<u32>, closed: u64) -> Self {
        latencies_us.sort_unstable();
        let q = |p: f64| -> f64 {
            if latencies_us.is_empty() {
                return 0.0;
            }
            let i = ((latencies_us.len() as f64 - 1.0) * p).round() as usize;
            f64::from(latencies_us[i]) / 1000.0
        };
        Self {
            receipts: latencies_us.len() as u64,
            closed,
            p50_ms: q(0.50),
            p95_ms: q(0.95),
            p99_ms: q(0.99),
            p999_ms: q(0.999),
            max_ms: q(1.0),
        }
    }
}

impl Collector {
    pub fn start(&self) {
        self.latencies_us
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
        self.active.store(true, Ordering::Release);
    }

    /// Ends the measurement and returns its latencies (microseconds,
    /// unsorted), for windows pooled with [`Window::of`].
    pub fn take(&self) -> Vec<u32> {
        self.active.store(false, Ordering::Release);
        std::mem::take(&mut *self.latencies_us.lock().unwrap_or_else(|p| p.into_inner()))
    }

    pub fn stop(&self) -> Window {
        let lat = self.take();
        Window::of(lat, self.closed())
    }

    /// Sockets whose reading has ended so far.
    pub fn closed(&self) -> u64 {
        self.closed.load(Ordering::Relaxed)
    }

    /// Waits until every frame sent so far has reached its `receivers`
    /// sockets, so that no backlog spills into the next measurement. Gives
    /// up only when nothing has arrived for `stalled` (a server that
    /// dropped frames, or closed sockets), and returns the receipts still
    /// missing then, since the collector began (0 when the host drained).
    pub async fn drain(&self, receivers: usize, stalled: Duration) -> u64 {
        let mut last = (
            self.seen.load(Ordering::Relaxed),
            tokio::time::Instant::now(),
        );
        loop {
            let missing = self.missing(receivers);
            if missing == 0 {
                return 0;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
            let seen = self.seen.load(Ordering::Relaxed);
            if seen != last.0 {
                last = (seen, tokio::time::Instant::now());
            } else if last.1.elapsed() >= stalled {
                return self.missing(receivers);
            }
        }
    }

    /// Receipts owed for the frames sent and not refused so far, when each
    /// frame reaches `receivers` sockets.
    pub fn missing(&self, receivers: usize) -> u64 {
        let accepted = self
            .sent
            .load(Ordering::Relaxed)
            .saturating_sub(self.refused());
        let owed = accepted * receivers as u64;
        owed.saturating_sub(self.seen.load(Ordering::Relaxed))
    }

    /// Frames refused so far.
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }

    fn record(&self, frame: &str) {
        self.seen.fetch_add(1, Ordering::Relaxed);
        if !self.active.load(Ordering::Acquire) {
            return;
        }
        if let Some(sent) = sent_at(frame) {
            let lat = now_micros().saturating_sub(sent).min(u64::from(u32::MAX)) as u32;
            self.latencies_us
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(lat);
        }
    }
}

/// Reads a socket until it closes, recording every delivered message.
pub fn spawn_reader(mut stream: SplitStream<Ws>, kind: Kind, collector: Arc<Collector>) {
    tokio::spawn(async move {
        while let Some(Ok(message)) = stream.next().await {
            if let Message::Text(text) = message {
                let text = text.as_str();
                // SecureChat also sends acks, presence and typing notices,
                // and refusals.
                if kind != Kind::SecureChat || text.starts_with(r#"{"type":"message""#) {
                    collector.record(text);
                } else if text.starts_with(r#"{"type":"error""#) {
                    collector.refused.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        collector.closed.fetch_add(1, Ordering::Relaxed);
    });
}

/// A frame with its id left out: `prefix + id + suffix`.
#[derive(Clone)]
pub struct Template {
    pub prefix: String,
    pub suffix: String,
}

impl Template {
    /// Splits `frame` at the placeholder id.
    pub fn new(frame: &str, placeholder: &str) -> Result<Self, Error> {
        let (prefix, suffix) = frame
            .split_once(placeholder)
            .ok_or("the frame has no placeholder id")?;
        Ok(Self {
            prefix: prefix.to_owned(),
            suffix: suffix.to_owned(),
        })
    }
}

/// When a sender's next frame is due. Each sender keeps its own phase of
/// the interval, so that the senders of a load take turns instead of all
/// sending at the same instant (which would measure the burst's queue, not
/// the server's latency at that rate).
#[derive(Debug, Clone, Copy)]
struct Schedule {
    /// Where in each interval this sender sends, in `[0, 1)`.
    phase: f64,
    /// The last frame's due time and the interval it was due at; `None`
    /// (re)starts at the phase.
    last: Option<(tokio::time::Instant, Duration)>,
}

impl Schedule {
    /// How late a sender may fall (the server pushing back) before it skips
    /// the frames it missed instead of sending them in a burst.
    const SLACK: Duration = Duration::from_millis(500);

    fn new(phase: f64) -> Self {
        Self {
            phase: phase.rem_euclid(1.0),
            last: None,
        }
    }

    /// Starts afresh at the phase.
    fn restart(&mut self) {
        self.last = None;
    }

    /// The next frame's due time at one frame every `gap`: a new rate
    /// starts at the phase from `now`; a sender more than [`Self::SLACK`]
    /// behind skips to the first due time of its own that is not past.
    fn next(&mut self, gap: Duration, now: tokio::time::Instant) -> tokio::time::Instant {
        let due = match self.last {
            Some((last, was)) if was == gap => {
                let due = last + gap;
                if due + Self::SLACK < now {
                    let missed = (now - last).as_secs_f64() / gap.as_secs_f64();
                    last + gap.mul_f64(missed.ceil())
                } else {
                    due
                }
            }
            _ => now + gap.mul_f64(self.phase),
        };
        self.last = Some((due, gap));
        due
    }
}

/// Sends `template` with fresh ids at the rate `rate` holds (frames/s; 0
/// pauses), at `phase` (in `[0, 1)`) of each interval, counting each frame
/// in `collector` before it is written. When the rate channel closes,
/// closes the socket.
pub fn spawn_sender(
    mut sink: SplitSink<Ws, Message>,
    template: Template,
    phase: f64,
    mut rate: tokio::sync::watch::Receiver<f64>,
    collector: Arc<Collector>,
) {
    tokio::spawn(async move {
        let mut schedule = Schedule::new(phase);
        loop {
            let r = *rate.borrow_and_update();
            if r <= 0.0 {
                schedule.restart();
                if rate.changed().await.is_err() {
                    break;
                }
                continue;
            }
            // A new rate restarts the schedule at the phase, however it is
            // seen (here or while waiting below).
            let due = schedule.next(
                Duration::from_secs_f64(1.0 / r),
                tokio::time::Instant::now(),
            );
            tokio::select! {
                _ = tokio::time::sleep_until(due) => {}
                changed = rate.changed() => {
                    if changed.is_err() { break; }
                    schedule.restart();
                    continue;
                }
            }
            let frame = format!("{}{}{}", template.prefix, message_id(), template.suffix);
            // Counted first: a receiver may see the frame before this
            // task runs again.
            collector.sent.fetch_add(1, Ordering::Relaxed);
            if sink.send(Message::text(frame)).await.is_err() {
                return;
            }
        }
        let _ = sink.close().await;
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn senders_keep_their_phase_and_do_not_burst_to_catch_up() {
        let t0 = tokio::time::Instant::now();
        let ms = Duration::from_millis;
        let (mut a, mut b) = (Schedule::new(0.0), Schedule::new(0.5));
        // 10 frames/s: a at 0, 100, 200 ms; b halfway between.
        assert_eq!(a.next(ms(100), t0), t0);
        assert_eq!(b.next(ms(100), t0), t0 + ms(50));
        assert_eq!(a.next(ms(100), t0 + ms(1)), t0 + ms(100));
        assert_eq!(b.next(ms(100), t0 + ms(51)), t0 + ms(150));
        // A new rate starts again at the phase, from when it is set, with
        // or without an explicit restart.
        b.restart();
        assert_eq!(b.next(ms(10), t0 + ms(300)), t0 + ms(305));
        assert_eq!(b.next(ms(10), t0 + ms(306)), t0 + ms(315));
        assert_eq!(b.next(ms(20), t0 + ms(316)), t0 + ms(326));
        // Up to half a second late: catch up frame by frame.
        assert_eq!(a.next(ms(100), t0 + ms(700)), t0 + ms(200));
        assert_eq!(a.next(ms(100), t0 + ms(800)), t0 + ms(300));
        // Later than that: skip to the first own due time not past.
        assert_eq!(a.next(ms(100), t0 + ms(901)), t0 + ms(1000));
        assert_eq!(a.next(ms(100), t0 + ms(1001)), t0 + ms(1100));
        // ...at the sender's own phase: b's frames stay halfway between a's.
        let mut b = Schedule::new(0.5);
        assert_eq!(b.next(ms(100), t0), t0 + ms(50));
        assert_eq!(b.next(ms(100), t0 + ms(900)), t0 + ms(950));
        assert_eq!(b.next(ms(100), t0 + ms(951)), t0 + ms(1050));
        assert_eq!(Schedule::new(1.25).phase, 0.25);
    }

    #[test]
    fn windows_pool_their_latencies_before_taking_quantiles() {
        // 1..=1000 µs in a scrambled order (7919 is prime to 1000), split
        // into two windows taken in turns.
        let all: Vec<u32> = (0..1000u32).map(|i| i * 7919 % 1000 + 1).collect();
        let (first, second) = all.split_at(500);
        let pooled = Window::of([first, second].concat(), 2);
        assert_eq!((pooled.receipts, pooled.closed), (1000, 2));
        assert_eq!(pooled.p50_ms, 0.501);
        assert_eq!(pooled.p95_ms, 0.95);
        assert_eq!(pooled.p99_ms, 0.99);
        assert_eq!(pooled.p999_ms, 0.999);
        assert_eq!(pooled.max_ms, 1.0);
        let alone = Window::of(second.to_vec(), 0);
        assert_ne!(alone.p99_ms, pooled.p99_ms);
        assert_eq!(Window::of(Vec::new(), 0).p99_ms, 0.0);
    }

    #[test]
    fn a_collector_keeps_only_what_arrives_between_start_and_take() {
        let frame = || {
            format!(
                r#"{{"type":"message","message":{{"id":"{}","chat":"x"}}}}"#,
                make_id(Ids::V7)
            )
        };
        let collector = Collector::default();
        collector.record(&frame());
        collector.start();
        collector.record(&frame());
        collector.record(&frame());
        assert_eq!(collector.take().len(), 2);
        // Taken: no longer measuring.
        collector.record(&frame());
        assert!(collector.take().is_empty());
        // A new start forgets what an unfinished window held.
        collector.start();
        collector.record(&frame());
        collector.start();
        collector.record(&frame());
        assert_eq!(collector.take().len(), 1);
        assert_eq!(collector.seen.load(Ordering::Relaxed), 6);
    }

    #[tokio::test]
    async fn a_drain_waits_for_every_receipt_owed_and_reports_what_never_came() {
        let collector = Arc::new(Collector::default());
        let frame = r#"{"type":"message","message":{"id":"x","chat":"x"}}"#;
        // Two frames sent, each owed to two sockets; three receipts so far.
        collector.sent.fetch_add(2, Ordering::Relaxed);
        for _ in 0..3 {
            collector.record(frame);
        }
        assert_eq!(collector.drain(2, Duration::from_millis(50)).await, 1);
        // A refused frame is owed to no one.
        collector.sent.fetch_add(1, Ordering::Relaxed);
        collector.refused.fetch_add(1, Ordering::Relaxed);
        assert_eq!(collector.missing(2), 1);
        // The last receipt arrives while the drain waits: nothing missing.
        let late = collector.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(30)).await;
            late.record(frame);
        });
        assert_eq!(collector.drain(2, Duration::from_secs(60)).await, 0);
        assert_eq!(collector.drain(2, Duration::ZERO).await, 0);
    }

    #[test]
    fn ids_are_uuids_of_either_layout_and_carry_the_send_time() {
        for (ids, version) in [(Ids::V7, 7), (Ids::V4, 4)] {
            let before = now_micros();
            let id = make_id(ids);
            let parsed = uuid::Uuid::parse_str(&id).unwrap();
            assert_eq!(parsed.get_version_num(), version, "{id}");
            assert_eq!(parsed.get_variant(), uuid::Variant::RFC4122, "{id}");
            assert_eq!(id, id.to_lowercase());
            let frame = format!(r#"{{"type":"message","message":{{"id":"{id}","chat":"x"}}}}"#);
            let sent = sent_at(&frame).unwrap();
            assert!(
                before <= sent && sent <= now_micros(),
                "{id}: {before} {sent}"
            );
            assert_ne!(make_id(ids), make_id(ids));
        }
    }
}
