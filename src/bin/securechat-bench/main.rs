//! `securechat-bench`: drives many native clients over real TLS on loopback
//! against a SecureChat host it starts itself, and the same traffic against
//! baselines (a bare relay on the same stack, Python's `websockets` and
//! Node's `ws` broadcast servers). See docs/BENCHMARKS.md.
//!
//! ```text
//! securechat-bench fanout|idle|login|files|start|all [--quick|--tiny] [--json] [--svg FILE]
//!                  [--server-memory MIB]
//! ```
//! `--quick` runs each scenario against SecureChat in under a minute (the
//! fan-out's baselines add about 50 s); `--tiny` only proves the
//! scenarios work (CI). Servers run on core 0 and the load on the others
//! (taskset) when there are two cores or more, and in a memory cgroup
//! capped at `--server-memory` MiB where the tool may create one
//! (`memory.rs`).

mod load;
mod memory;
mod servers;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use futures_util::StreamExt;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use securechat::client::Client;
use securechat::client::crypto::UserKeys;
use securechat::protocol::ClientFrame;
use serde_json::{Value, json};

use load::{Collector, Target, Template, Window};
use servers::{Certs, CoreTicks, Error, Kind, Server, Threads};

#[derive(Parser)]
#[command(
    name = "securechat-bench",
    version,
    about = "Load and benchmarks for SecureChat"
)]
struct Cli {
    #[command(subcommand)]
    scenario: Scenario,
    /// Each scenario against SecureChat in under a minute (the fan-out's
    /// baselines add about 50 s).
    #[arg(long, global = true)]
    quick: bool,
    /// Tiny counts that only prove the scenarios work (CI).
    #[arg(long, global = true, conflicts_with = "quick")]
    tiny: bool,
    /// Print one JSON object instead of tables.
    #[arg(long, global = true)]
    json: bool,
    /// Write the fan-out chart (throughput and p99 against offered load).
    #[arg(long, global = true)]
    svg: Option<PathBuf>,
    /// Only SecureChat: skip the Python and Node baselines.
    #[arg(long, global = true)]
    no_baselines: bool,
    /// Run the SecureChat scenarios against this host instead of one the
    /// tool starts (https://ADDRESS:PORT; its memory and CPU are then not
    /// measured, and its own rate limits apply). `start` still starts a
    /// local host.
    #[arg(long, global = true, requires = "ca")]
    url: Option<String>,
    /// The CA certificate (PEM) of `--url`'s host: its data folder's tls/ca.pem.
    #[arg(long, global = true, requires = "url")]
    ca: Option<PathBuf>,
    /// The layout of the load's message ids: time-ordered (v7, as
    /// SecureChat's clients send them) or random (v4, as browsers sent them
    /// up to 0.5.0).
    #[arg(long, global = true, value_enum, default_value = "v7")]
    ids: load::Ids,
    /// The memory cap, in MiB, of a cgroup the servers run in (Linux, where
    /// this tool may create one; 0: none), so that the files they write
    /// reuse the page cache instead of growing it (docs/BENCHMARKS.md).
    #[arg(long, global = true, default_value_t = 1024)]
    server_memory: u64,
}

#[derive(Subcommand, Clone, Copy, PartialEq, Eq)]
enum Scenario {
    /// Users in one group sending pre-sealed envelopes at a rising rate.
    Fanout,
    /// Authenticated idle sockets: the host's memory per socket.
    Idle,
    /// A storm of concurrent logins, and the chat latency during it.
    Login,
    /// A large file up and down, against curl from a static TLS server.
    Files,
    /// Cold start of `securechat host` to the first HTTPS 200.
    Start,
    /// Every scenario.
    All,
}

/// Counts for each mode.
#[derive(Clone, Copy)]
struct Sizes {
    users: usize,
    step: Duration,
    first_rate: f64,
    max_steps: usize,
    idle_sockets: usize,
    logins: usize,
    login_users: usize,
    login_concurrency: usize,
    /// The storm comes in this many parts, with calm windows around them.
    login_rounds: usize,
    chat_rate: f64,
    file_bytes: usize,
    starts: usize,
}

impl Sizes {
    fn of(cli: &Cli) -> Self {
        if cli.tiny {
            Self {
                users: 3,
                step: Duration::from_millis(300),
                first_rate: 20.0,
                max_steps: 2,
                idle_sockets: 10,
                logins: 4,
                login_users: 2,
                login_concurrency: 2,
                login_rounds: 1,
                chat_rate: 10.0,
                file_bytes: 1 << 20,
                starts: 1,
            }
        } else if cli.quick {
            Self {
                users: 8,
                step: Duration::from_secs(1),
                first_rate: 400.0,
                max_steps: 10,
                idle_sockets: 1000,
                logins: 48,
                login_users: 4,
                login_concurrency: 16,
                login_rounds: 3,
                chat_rate: 20.0,
                file_bytes: 64 << 20,
                starts: 5,
            }
        } else {
            Self {
                users: 16,
                step: Duration::from_secs(4),
                first_rate: 100.0,
                max_steps: 12,
                idle_sockets: 5000,
                logins: 200,
                login_users: 8,
                login_concurrency: 32,
                login_rounds: 4,
                chat_rate: 20.0,
                file_bytes: 1 << 30,
                starts: 10,
            }
        }
    }
}

/// How long a step's drain waits without a single receipt before it
/// counts the rest as never delivered: long enough that a host stalled by
/// a slow disk or a busy machine is not taken for one that lost messages
/// (it is only waited out when receipts are missing).
const DRAIN_STALLED: Duration = Duration::from_secs(10);

/// The same for a baseline: they promise no delivery, and the bare relay
/// drops frames in overload, so its drains always wait this out; a loss
/// there is only reported.
const BASELINE_DRAIN_STALLED: Duration = Duration::from_secs(2);
const PASSWORD: &str = "benchmark password, long enough";
const PLACEHOLDER: &str = "00000000-0000-4000-8000-000000000000";

fn main() -> std::process::ExitCode {
    // Internal commands: `serve`, the SecureChat host under load, started
    // by this tool; `argon2`, one Argon2id verification's time in seconds,
    // run pinned to the host's core.
    match std::env::args().nth(1).as_deref() {
        Some("serve") => return serve(),
        Some("argon2") => return argon2(),
        _ => {}
    }
    let cli = Cli::parse();
    load::set_ids(cli.ids);
    servers::pin_load();
    // A host given with `--url` is not this tool's to cap (`start` still
    // starts one of its own, which writes little).
    memory::confine(if cli.url.is_some() {
        0
    } else {
        cli.server_memory
    });
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("securechat-bench: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    // On a worker like every other task of the load: the scenario and the
    // connections it drives then share a thread instead of waking each
    // other across threads on the load's one core.
    let scenario = runtime.spawn(async move { run(&cli).await });
    let result = runtime.block_on(scenario).unwrap_or_else(|e| Err(e.into()));
    drop(runtime);
    memory::release();
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("securechat-bench: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// `serve`: the real server (the library's `server::start`) with the
/// benchmark's limits: rate, socket and per-address sign-in limits out of
/// the way, so the benchmark measures the server's cost and not its
/// refusals. Everything
/// else (TLS, sessions, storage with synchronous writes, fan-out) is the
/// product's own.
fn serve() -> std::process::ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let arg = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .map(PathBuf::from)
    };
    let (Some(dir), Some(cert), Some(key)) = (arg("--data-dir"), arg("--cert"), arg("--key"))
    else {
        eprintln!("usage: securechat-bench serve --data-dir DIR --cert PEM --key PEM");
        return std::process::ExitCode::FAILURE;
    };
    let mut config = securechat::config::Config::new(([127, 0, 0, 1], 0).into(), dir);
    config.tls_cert = Some(cert);
    config.tls_key = Some(key);
    config.master_key = Some(securechat::secrets::MasterKey::from_bytes(
        *b"securechat bench master key 32b!",
    ));
    config.registration = Some(securechat::config::RegistrationMode::Open);
    let l = &mut config.limits;
    l.frames_per_sec = 1e9;
    l.frame_burst = 1e9;
    l.http_per_sec = 1e9;
    l.http_burst = 1e9;
    l.max_sockets_per_user = 1_000_000;
    l.max_sockets_per_ip = 1_000_000;
    // Every simulated person signs in from 127.0.0.1, and a sign-in counts
    // against its address until it is settled: the login storm's 32 in
    // flight would lock the address as a guessing attack. Each username's
    // own lock stays as it is.
    l.ip_failures_before_lock = 1_000_000;
    l.send_queue = 4096;
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(_) => return std::process::ExitCode::FAILURE,
    };
    runtime.block_on(async {
        match securechat::server::start(config, Arc::new(securechat::clock::SystemClock)).await {
            Ok(running) => {
                println!("https://{}", running.addr);
                stopped().await;
                running.shutdown().await;
                std::process::ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("serve: {e}");
                std::process::ExitCode::FAILURE
            }
        }
    })
}

/// `argon2`: prints [`servers::argon2_seconds`], timed where this process
/// runs (the host's core, when the load pins it there).
fn argon2() -> std::process::ExitCode {
    let timed = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(Error::from)
        .and_then(|rt| rt.block_on(servers::argon2_seconds()));
    match timed {
        Ok(seconds) => {
            println!("{seconds}");
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("argon2: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// A scratch directory for one run, removed at the end.
struct Scratch(PathBuf);

impl Scratch {
    fn new() -> std::io::Result<Self> {
        let dir = std::env::temp_dir().join(format!(
            "securechat-bench-{}",
            securechat::chatlog::opaque_id()
        ));
        securechat::secrets::create_private_dir(&dir)?;
        Ok(Self(dir))
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Ctrl-C, or SIGTERM on Unix.
async fn stopped() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}

/// Shared setup of one run.
struct Bench {
    sizes: Sizes,
    dir: Scratch,
    certs: Certs,
    anchor: CertificateDer<'static>,
    tls: Arc<rustls::ClientConfig>,
    /// One key pair for every benchmark user: the server never sees private
    /// keys, so sharing them changes nothing it does.
    keys: UserKeys,
}

async fn run(cli: &Cli) -> Result<(), Error> {
    let sizes = Sizes::of(cli);
    let dir = Scratch::new()?;
    let certs = Certs::create(dir.path())?;
    let own = CertificateDer::from_pem_file(&certs.ca)?;
    // The native client talks only to SecureChat hosts: it pins the external
    // host's CA when there is one. The load's sockets trust both CAs.
    let (anchor, mut tls) = match (&cli.url, &cli.ca) {
        (Some(url), Some(ca)) => {
            let _ = servers::EXTERNAL.set(url.clone());
            let external = CertificateDer::from_pem_file(ca)?;
            let mut roots = rustls::RootCertStore::empty();
            roots.add(own.clone())?;
            roots.add(external.clone())?;
            let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
                rustls::crypto::ring::default_provider(),
            ))
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth();
            (external, tls)
        }
        _ => (own.clone(), securechat::tls::pinned_client_config(&own)?),
    };
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    let keys = tokio::task::spawn_blocking(UserKeys::generate).await??;
    let bench = Bench {
        sizes,
        dir,
        certs,
        anchor,
        tls: Arc::new(tls),
        keys,
    };
    let mut report = serde_json::Map::new();
    report.insert(
        "machine".into(),
        json!({
            "cores": servers::cores(),
            "pinned": servers::pinning(),
            "server_memory_mib": memory::limit_mib(),
            "mode": if cli.tiny { "tiny" } else if cli.quick { "quick" } else { "full" },
        }),
    );
    let all = cli.scenario == Scenario::All;
    if all || cli.scenario == Scenario::Fanout {
        fanout_all(&bench, cli, &mut report).await?;
    }
    if all || cli.scenario == Scenario::Idle {
        idle(&bench, &mut report).await?;
    }
    if all || cli.scenario == Scenario::Login {
        login(&bench, &mut report).await?;
    }
    if all || cli.scenario == Scenario::Files {
        files(&bench, &mut report).await?;
    }
    if all || cli.scenario == Scenario::Start {
        start(&bench, &mut report).await?;
    }
    let report = Value::Object(report);
    if cli.json {
        println!("{report}");
    } else {
        print_table(&report);
    }
    Ok(())
}

/// A username unique to this run (a second run against the same `--url`
/// host must not collide with the first).
fn name(base: &str) -> String {
    static RUN: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    let run = RUN.get_or_init(|| securechat::chatlog::opaque_id()[..6].to_owned());
    format!("{base}-{run}")
}

fn say(what: &str) {
    eprintln!("· {what}");
}

/// Registers `name` and returns its client (signed in).
async fn user(bench: &Bench, url: &str, name: &str) -> Result<Client, Error> {
    let mut client = Client::new(url, &bench.anchor)?;
    client
        .register(name, PASSWORD, bench.keys.clone(), None)
        .await?;
    Ok(client)
}

/// A group of `count` users on a SecureChat host: their session tokens and
/// the `send` frame template (a real sealed envelope for all of them).
async fn group(
    bench: &Bench,
    url: &str,
    count: usize,
    tag: &str,
) -> Result<(Vec<String>, Template), Error> {
    let names: Vec<String> = (0..count).map(|i| name(&format!("{tag}{i}"))).collect();
    let mut clients = Vec::new();
    for name in &names {
        clients.push(user(bench, url, name).await?);
    }
    let others: Vec<&str> = names[1..].iter().map(String::as_str).collect();
    let chat = clients[0].create_group(&name(tag), &others).await?;
    // A realistic message: sealed once, for every member (the server's cost
    // is what is measured, not the client's RSA).
    let text = "A realistic message of a few words, like most chat messages are. 👋";
    let envelope = clients[0].seal_text(&chat, PLACEHOLDER, text).await?;
    let frame = serde_json::to_string(&ClientFrame::Send {
        id: PLACEHOLDER.to_owned(),
        chat: chat.id.clone(),
        envelope,
    })?;
    let tokens = clients
        .iter()
        .map(|c| c.session_token().map(str::to_owned).ok_or("no session"))
        .collect::<Result<Vec<_>, _>>()?;
    Ok((tokens, Template::new(&frame, PLACEHOLDER)?))
}

/// The share of the server's core stolen by the hypervisor above which a
/// half-load step's latency is flagged.
const STOLEN_WARNING: f64 = 0.05;

/// One offered load and what came of it.
#[derive(Debug, Clone, Default, serde::Serialize)]
struct Step {
    /// Receipts per second offered (sends/s × receivers).
    offered: f64,
    delivered: f64,
    p50_ms: f64,
    p95_ms: f64,
    p99_ms: f64,
    p999_ms: f64,
    max_ms: f64,
    server_cpu: f64,
    load_cpu: f64,
    /// The share of the step's time that the hypervisor gave the server's
    /// core to another guest (its "steal" time): the server had that much
    /// less of a core than the wall clock says.
    server_core_stolen: f64,
    /// Each kind of the server's threads (by name, numbers left out: see
    /// [`servers::Threads::shares_since`]) and its share of a core during
    /// the step; kinds under 0.5 % are left out, and the key too when none
    /// is left (always for `--url`'s host).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    server_threads: BTreeMap<String, f64>,
    /// The server's resident memory at the step's end, before its drain
    /// (0 for `--url`'s host).
    server_rss_bytes: u64,
    /// Sockets the server had closed by the end of the step's drain (a
    /// close the server signalled during the step may reach the load only
    /// after the frames already on their way).
    closed: u64,
    /// Frames the server refused during the step and its drain (the
    /// sender is told; SecureChat's `rate_limited` when its writer's queue
    /// has had no room for 2 s).
    refused: u64,
    /// Receipts of accepted frames lost during the step and its drain
    /// (frames dropped, or sent to closed sockets): still missing when the
    /// host stopped delivering. 0 when every accepted frame reached every
    /// receiver.
    undelivered: u64,
    /// A try that [`search`] does not count, left out of the maximum and
    /// the chart: the first of two tries at a rate whose second was
    /// delivered, or the second of two that both fell short (it only
    /// confirms the first).
    uncounted: bool,
}

/// Connected senders and receivers of one fan-out.
struct Fanout {
    rates: Vec<tokio::sync::watch::Sender<f64>>,
    collector: Arc<Collector>,
    receivers: usize,
    /// What it takes to connect the same sockets again.
    target: Target,
    tokens: Vec<Option<String>>,
    templates: Vec<Template>,
}

impl Fanout {
    /// One socket per token; socket `i` sends `templates[i]` (or the only
    /// template), and each message reaches `receivers` sockets.
    async fn connect(
        target: &Target,
        tokens: &[Option<String>],
        templates: &[Template],
        receivers: usize,
    ) -> Result<Self, Error> {
        let collector = Arc::new(Collector::default());
        let mut rates = Vec::new();
        for (i, token) in tokens.iter().enumerate() {
            let ws = load::connect(target, token.as_deref()).await?;
            let (sink, stream) = ws.split();
            load::spawn_reader(stream, target.kind, collector.clone());
            let (tx, rx) = tokio::sync::watch::channel(0.0);
            let template = templates.get(i).unwrap_or(&templates[0]).clone();
            // Senders take turns: socket i sends at i/n of each interval.
            load::spawn_sender(
                sink,
                template,
                i as f64 / tokens.len() as f64,
                rx,
                collector.clone(),
            );
            rates.push(tx);
        }
        Ok(Self {
            receivers,
            rates,
            collector,
            target: target.clone(),
            tokens: tokens.to_vec(),
            templates: templates.to_vec(),
        })
    }

    /// The same sockets, connected afresh (the old ones are closed): after
    /// an overload, in which the server closes readers that fall behind.
    async fn reconnect(&mut self) -> Result<(), Error> {
        self.rates.clear();
        *self = Self::connect(&self.target, &self.tokens, &self.templates, self.receivers).await?;
        Ok(())
    }

    fn set(&self, sends_per_s: f64) {
        let each = sends_per_s / self.rates.len() as f64;
        for r in &self.rates {
            let _ = r.send(each);
        }
    }

    /// Offers `sends_per_s` for `length` and measures.
    async fn step(&self, server: Option<&Server>, sends_per_s: f64, length: Duration) -> Step {
        let (refused0, missing0) = (
            self.collector.refused(),
            self.collector.missing(self.receivers),
        );
        self.set(sends_per_s);
        tokio::time::sleep(length / 4).await;
        let (load0, t0) = (servers::cpu_of("self"), Instant::now());
        let core0 = server.map_or_else(CoreTicks::default, Server::core_ticks);
        let threads0 = server.map_or_else(Threads::default, Server::threads);
        self.collector.start();
        tokio::time::sleep(length).await;
        let w: Window = self.collector.stop();
        let secs = t0.elapsed().as_secs_f64();
        let threads = server.map_or_else(Threads::default, Server::threads);
        let mut core = CoreTicks::default();
        core.add_since(core0);
        let mut step = Step {
            offered: sends_per_s * self.receivers as f64,
            delivered: w.receipts as f64 / secs,
            p50_ms: w.p50_ms,
            p95_ms: w.p95_ms,
            p99_ms: w.p99_ms,
            p999_ms: w.p999_ms,
            max_ms: w.max_ms,
            server_cpu: threads.cpu_seconds_since(&threads0) / secs,
            load_cpu: (servers::cpu_of("self") - load0) / secs,
            server_core_stolen: core.stolen(),
            server_threads: threads.shares_since(&threads0, secs),
            server_rss_bytes: server.map_or(0, Server::rss),
            // Filled in after the drain.
            closed: 0,
            refused: 0,
            undelivered: 0,
            uncounted: false,
        };
        self.set(0.0);
        // Every frame delivered before the next step, so that none of this
        // step's backlog is counted as the next one's delivery.
        let patience = if self.target.kind == Kind::SecureChat {
            DRAIN_STALLED
        } else {
            BASELINE_DRAIN_STALLED
        };
        let missing = self.collector.drain(self.receivers, patience).await;
        step.undelivered = missing.saturating_sub(missing0);
        step.closed = self.collector.closed();
        step.refused = self.collector.refused() - refused0;
        step
    }
}

/// The fan-out against one server: rising load until delivery saturates,
/// then latency at half the maximum.
async fn fanout(
    bench: &Bench,
    kind: Kind,
    shared: &mut Option<Template>,
) -> Result<(f64, Step, Vec<Step>), Error> {
    let s = bench.sizes;
    let server = servers::start(kind, bench.dir.path(), &bench.certs, None).await?;
    let target = Target {
        url: server.url.clone(),
        tls: bench.tls.clone(),
        kind,
    };
    // Every server gets the same bytes: SecureChat's real `send` frame
    // (SecureChat runs first and makes it).
    let (tokens, template) = if kind == Kind::SecureChat {
        let (tokens, template) = group(bench, &server.url, s.users, "fan").await?;
        *shared = Some(template.clone());
        (tokens.into_iter().map(Some).collect::<Vec<_>>(), template)
    } else {
        let template = shared.clone().ok_or("SecureChat's fan-out runs first")?;
        (vec![None; s.users], template)
    };
    let fan = Fanout::connect(&target, &tokens, &[template], s.users - 1).await?;
    let result = rising(fan, &server, kind.name(), s, kind == Kind::SecureChat).await;
    server.stop().await;
    result
}

/// A step in which the server did not keep up: less than 90 % of the
/// offered receipts arrived within the step, or its p99 passed a second.
fn falls_short(step: &Step) -> bool {
    step.delivered < 0.9 * step.offered || step.p99_ms > 1000.0
}

/// A step that fell short while the server's core was mostly idle (less
/// than half of it busy or taken by the hypervisor) and no socket was
/// closed: a stall, not a server at its limit. At their limits the
/// servers here keep their core 83–101 % busy (SecureChat's direct chats
/// the least), and an overloaded SecureChat closes readers that fall
/// behind. For a host given with `--url`, whose CPU is not measured,
/// every step that falls short with no socket closed.
fn stalled(step: &Step) -> bool {
    falls_short(step) && step.closed == 0 && step.server_cpu + step.server_core_stolen < 0.5
}

/// One offered load, measured: what [`search`] steps with.
trait Probe {
    /// Offers `sends_per_s` for one step and measures it; `again` when the
    /// step before, at the same rate, [`stalled`].
    async fn probe(&mut self, sends_per_s: f64, again: bool) -> Result<Step, Error>;
}

/// The rising search for the maximum: doubles the rate from `first_rate`
/// until a step falls short, then halves the gap between the last rate
/// delivered and the first one not, twice (to within a quarter): overload
/// costs a server more than its capacity (refusals, queues), so the
/// doubling overshoots. Returns every step, in order.
///
/// A step that [`stalled`] is measured once more at the same rate before
/// it counts: a stall of a few hundred milliseconds at the end of a step
/// (the disk, the machine's neighbours) pushes its receipts past the
/// step's window, so that one step of a server far from its limit looks
/// saturated and would end the search at a fraction of the maximum. A
/// server at its limit keeps its core busy and is not tried again, so
/// the search adds no overload to a normal run. Both tries are kept, the
/// one that does not count marked `uncounted`: the first when the second
/// is delivered, the second when it falls short too (it only confirms
/// the first).
async fn search(
    probe: &mut impl Probe,
    first_rate: f64,
    max_steps: usize,
) -> Result<Vec<Step>, Error> {
    let mut steps = Vec::new();
    let mut short = async |steps: &mut Vec<Step>, sends: f64| -> Result<bool, Error> {
        let first = probe.probe(sends, false).await?;
        let (stall, first_short) = (stalled(&first), falls_short(&first));
        steps.push(first);
        if !stall {
            return Ok(first_short);
        }
        let mut again = probe.probe(sends, true).await?;
        let short = falls_short(&again);
        if short {
            again.uncounted = true;
        } else if let Some(first) = steps.last_mut() {
            first.uncounted = true;
        }
        steps.push(again);
        Ok(short)
    };
    let mut sends = first_rate;
    let mut good = None;
    let mut over = None;
    for _ in 0..max_steps {
        if short(&mut steps, sends).await? {
            over = Some(sends);
            break;
        }
        good = Some(sends);
        sends *= 2.0;
    }
    if let (Some(mut ok), Some(mut over)) = (good, over) {
        for _ in 0..2 {
            let mid = f64::midpoint(ok, over);
            if short(&mut steps, mid).await? {
                over = mid;
            } else {
                ok = mid;
            }
        }
    }
    Ok(steps)
}

/// The most delivered per second in the steps that count.
fn maximum(steps: &[Step]) -> f64 {
    steps
        .iter()
        .filter(|s| !s.uncounted)
        .map(|s| s.delivered)
        .fold(0.0, f64::max)
}

/// The steps of one server's fan-out, reported as they are measured.
struct Rising<'a> {
    fan: Fanout,
    server: &'a Server,
    what: &'a str,
    length: Duration,
    /// A receipt lost while no socket was closed is an error: the server
    /// promises that every frame it accepts reaches every member.
    keeps_all: bool,
    /// Whether the step before closed sockets.
    closed_before: bool,
}

impl Rising<'_> {
    /// One step, on fresh sockets when the step before closed some (in
    /// overload the server closes readers that fall behind).
    async fn measure(&mut self, sends_per_s: f64, label: &str) -> Result<Step, Error> {
        if self.closed_before {
            self.fan.reconnect().await?;
        }
        let step = self
            .fan
            .step(Some(self.server), sends_per_s, self.length)
            .await;
        self.closed_before = step.closed > 0;
        let what = self.what;
        say(&format!(
            "{what}{label}: offered {:.0}/s, delivered {:.0}/s, p99 {:.1} ms, p99.9 {:.1} ms, max {:.1} ms, server CPU {:.0} %{}, load CPU {:.0} %, server's core stolen {:.0} %, server RSS {:.1} MiB, sockets closed {}, refused {}, lost {}",
            step.offered,
            step.delivered,
            step.p99_ms,
            step.p999_ms,
            step.max_ms,
            step.server_cpu * 100.0,
            threads_text(&step.server_threads),
            step.load_cpu * 100.0,
            step.server_core_stolen * 100.0,
            step.server_rss_bytes as f64 / f64::from(1 << 20),
            step.closed,
            step.refused,
            step.undelivered
        ));
        if self.keeps_all && step.closed == 0 && step.undelivered > 0 {
            return Err(format!(
                "{what}: {} receipts of accepted messages never arrived: {step:?}",
                step.undelivered
            )
            .into());
        }
        Ok(step)
    }
}

/// The server's threads' shares of a core, busiest first: " (tokio-rt-worker
/// 80 %, db-checkpoint 5 %)", or nothing when they were not measured.
fn threads_text(threads: &BTreeMap<String, f64>) -> String {
    if threads.is_empty() {
        return String::new();
    }
    let mut busiest: Vec<(&String, &f64)> = threads.iter().collect();
    busiest.sort_by(|a, b| b.1.total_cmp(a.1).then(a.0.cmp(b.0)));
    let parts: Vec<String> = busiest
        .iter()
        .map(|(kind, share)| format!("{kind} {:.0} %", *share * 100.0))
        .collect();
    format!(" ({})", parts.join(", "))
}

impl Probe for Rising<'_> {
    async fn probe(&mut self, sends_per_s: f64, again: bool) -> Result<Step, Error> {
        let label = if again {
            " (once more, as the step before stalled)"
        } else {
            ""
        };
        self.measure(sends_per_s, label).await
    }
}

/// Raises the offered load until delivery saturates ([`search`]), then
/// measures at half the maximum: (maximum delivered/s, the half-load step,
/// every step). With `keeps_all`, a receipt lost while no socket was
/// closed is an error.
async fn rising(
    fan: Fanout,
    server: &Server,
    what: &str,
    s: Sizes,
    keeps_all: bool,
) -> Result<(f64, Step, Vec<Step>), Error> {
    let mut rising = Rising {
        fan,
        server,
        what,
        length: s.step,
        keeps_all,
        closed_before: false,
    };
    let steps = search(&mut rising, s.first_rate, s.max_steps).await?;
    let max = maximum(&steps);
    if !steps.iter().any(|s| !s.uncounted && falls_short(s)) {
        say(&format!(
            "{what}: warning: every step was delivered, up to {max:.0}/s; the maximum is at least that, and half of it is not half load"
        ));
    }
    let receivers = rising.fan.receivers as f64;
    let half = rising
        .measure(0.5 * max / receivers, " at half the maximum")
        .await?;
    if half.closed > 0 {
        return Err(format!("{what}: sockets were closed at half the maximum: {half:?}").into());
    }
    if half.refused > 0 || half.undelivered > 0 {
        say(&format!(
            "{what}: warning: at half the maximum, {} frames were refused and {} receipts lost",
            half.refused, half.undelivered
        ));
    }
    if half.server_core_stolen > STOLEN_WARNING {
        say(&format!(
            "{what}: warning: the hypervisor took {:.0} % of the server's core from it at half the maximum; that latency measures the machine's neighbours too",
            half.server_core_stolen * 100.0
        ));
    }
    if half.delivered < 0.9 * half.offered {
        say(&format!(
            "{what}: warning: less than 90 % of half the maximum was delivered; its latency is not a half-load figure"
        ));
    }
    Ok((max, half, steps))
}

/// SecureChat only: U users in U/2 direct chats, each message to one
/// receiver (the broadcast baselines have no such routing).
async fn direct(bench: &Bench) -> Result<(f64, Step, Vec<Step>), Error> {
    let s = bench.sizes;
    let server = servers::start(Kind::SecureChat, bench.dir.path(), &bench.certs, None).await?;
    let pairs = (s.users / 2).max(1);
    let mut clients = Vec::new();
    for i in 0..pairs * 2 {
        clients.push(user(bench, &server.url, &name(&format!("pair{i}"))).await?);
    }
    let text = "A realistic message of a few words, like most chat messages are. 👋";
    let mut templates = Vec::new();
    for i in 0..pairs * 2 {
        let peer = clients[i ^ 1].username().unwrap_or_default().to_owned();
        let chat = clients[i].open_direct(&peer).await?;
        let envelope = clients[i].seal_text(&chat, PLACEHOLDER, text).await?;
        let frame = serde_json::to_string(&ClientFrame::Send {
            id: PLACEHOLDER.to_owned(),
            chat: chat.id.clone(),
            envelope,
        })?;
        templates.push(Template::new(&frame, PLACEHOLDER)?);
    }
    let tokens: Vec<Option<String>> = clients
        .iter()
        .map(|c| c.session_token().map(str::to_owned))
        .collect();
    let target = Target {
        url: server.url.clone(),
        tls: bench.tls.clone(),
        kind: Kind::SecureChat,
    };
    let fan = Fanout::connect(&target, &tokens, &templates, 1).await?;
    let result = rising(fan, &server, "securechat direct", s, true).await;
    server.stop().await;
    result
}

async fn fanout_all(
    bench: &Bench,
    cli: &Cli,
    report: &mut serde_json::Map<String, Value>,
) -> Result<(), Error> {
    let (python_ok, node_ok) = servers::baselines_available();
    let mut kinds = vec![Kind::SecureChat, Kind::Bare];
    if !cli.no_baselines {
        if !python_ok {
            return Err("the Python baseline needs `websockets` (bench/run.sh installs it; or --no-baselines)".into());
        }
        if !node_ok {
            return Err("the Node baseline needs `ws` in bench/baselines/node (bench/run.sh installs it; or --no-baselines)".into());
        }
        kinds.extend([Kind::Python, Kind::Node]);
    }
    let mut max = std::collections::BTreeMap::new();
    let mut curves = serde_json::Map::new();
    let mut half_load = None;
    let mut template = None;
    for kind in kinds {
        let (m, half, steps) = fanout(bench, kind, &mut template).await?;
        max.insert(kind.name(), m);
        curves.insert(
            kind.name().into(),
            json!({ "max": m, "half_load": half, "steps": steps }),
        );
        if kind == Kind::SecureChat {
            half_load = Some(half);
        }
    }
    let sc = max["securechat"];
    let ratio = |k: &str| max.get(k).map(|m| if *m > 0.0 { sc / m } else { 0.0 });
    let half = half_load.unwrap_or_default();
    report.insert("fanout_users".into(), json!(bench.sizes.users));
    report.insert("fanout_msgs_per_s".into(), json!(sc));
    report.insert("fanout_ratio_vs_bare".into(), json!(ratio("bare")));
    report.insert("fanout_ratio_vs_python".into(), json!(ratio("python")));
    report.insert("fanout_ratio_vs_node".into(), json!(ratio("node")));
    report.insert("fanout_p50_ms".into(), json!(half.p50_ms));
    report.insert("fanout_p95_ms".into(), json!(half.p95_ms));
    report.insert("fanout_p99_ms".into(), json!(half.p99_ms));
    report.insert("fanout_p999_ms".into(), json!(half.p999_ms));
    report.insert("fanout_max_ms".into(), json!(half.max_ms));
    report.insert("fanout_stolen".into(), json!(half.server_core_stolen));
    if let Some(path) = &cli.svg {
        std::fs::write(path, chart(&curves))?;
    }
    let (direct_max, direct_half, direct_steps) = direct(bench).await?;
    report.insert("fanout_direct_msgs_per_s".into(), json!(direct_max));
    report.insert("fanout_direct_p99_ms".into(), json!(direct_half.p99_ms));
    report.insert(
        "fanout_direct_stolen".into(),
        json!(direct_half.server_core_stolen),
    );
    curves.insert(
        "securechat_direct".into(),
        json!({ "max": direct_max, "half_load": direct_half, "steps": direct_steps }),
    );
    report.insert("fanout".into(), Value::Object(curves));
    Ok(())
}

/// `idle`: the host's memory per authenticated, idle socket.
async fn idle(bench: &Bench, report: &mut serde_json::Map<String, Value>) -> Result<(), Error> {
    let k = bench.sizes.idle_sockets;
    check_file_limit(k)?;
    let server = servers::start(Kind::SecureChat, bench.dir.path(), &bench.certs, None).await?;
    let client = user(bench, &server.url, &name("idle")).await?;
    let token = client.session_token().map(str::to_owned);
    let target = Target {
        url: server.url.clone(),
        tls: bench.tls.clone(),
        kind: Kind::SecureChat,
    };
    // One socket first, so one-time allocations are not counted per socket.
    let warm = load::connect(&target, token.as_deref()).await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = server.rss();
    let sockets: Vec<_> = futures_util::stream::iter(0..k)
        .map(|_| load::connect(&target, token.as_deref()))
        .buffer_unordered(32)
        .collect()
        .await;
    let mut open = 0;
    for ws in sockets {
        let mut ws = ws?;
        open += 1;
        // Keep answering the server's pings.
        tokio::spawn(async move { while let Some(Ok(_)) = ws.next().await {} });
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after = server.rss();
    let per = after.saturating_sub(before) as f64 / open as f64;
    say(&format!(
        "idle: {open} sockets, host RSS {:.1} → {:.1} MiB, {per:.0} bytes per socket",
        before as f64 / 1048576.0,
        after as f64 / 1048576.0
    ));
    drop(warm);
    server.stop().await;
    report.insert("idle_sockets".into(), json!(open));
    report.insert("idle_rss_before".into(), json!(before));
    report.insert("idle_rss_after".into(), json!(after));
    report.insert("idle_bytes_per_socket".into(), json!(per));
    Ok(())
}

fn check_file_limit(sockets: usize) -> Result<(), Error> {
    let limits = std::fs::read_to_string("/proc/self/limits").unwrap_or_default();
    let soft = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .and_then(|l| l.split_whitespace().nth(3))
        .and_then(|v| v.parse::<usize>().ok());
    match soft {
        Some(n) if n < sockets + 256 => Err(format!(
            "{sockets} sockets need more open files than the limit of {n}: run `ulimit -n {}` first (bench/run.sh does)",
            sockets * 2 + 1024
        )
        .into()),
        _ => Ok(()),
    }
}

/// The pause after each part of the login storm before the next calm
/// window opens.
const LOGIN_SETTLE: Duration = Duration::from_millis(200);

/// Signs in users `part` (taken in turn from `keys`), `concurrency` at a
/// time, each as a fresh client with its own TLS connection, as a real
/// user's would be.
async fn sign_ins(
    part: std::ops::Range<usize>,
    keys: Arc<[(String, [u8; 32])]>,
    in_flight: Arc<[Arc<tokio::sync::Semaphore>]>,
    url: String,
    anchor: CertificateDer<'static>,
    concurrency: usize,
) -> Vec<Result<(), String>> {
    let (url, anchor) = (&url, &anchor);
    futures_util::stream::iter(part)
        .map(|i| {
            let (name, key) = &keys[i % keys.len()];
            let user_slots = in_flight[i % keys.len()].clone();
            async move {
                let _slot = user_slots
                    .acquire_owned()
                    .await
                    .map_err(|e| e.to_string())?;
                let mut c = Client::new(url, anchor).map_err(|e| e.to_string())?;
                match c.login_attempt(name, key).await {
                    Ok((status, _, _)) if status.is_success() => Ok(()),
                    Ok((status, _, _)) => Err(format!("HTTP {status}")),
                    Err(e) => Err(e.to_string()),
                }
            }
        })
        .buffer_unordered(concurrency)
        .collect()
        .await
}

/// `login`: a storm of concurrent logins, and chat latency during it.
async fn login(bench: &Bench, report: &mut serde_json::Map<String, Value>) -> Result<(), Error> {
    let s = bench.sizes;
    let server = servers::start(Kind::SecureChat, bench.dir.path(), &bench.certs, None).await?;
    let mut keys = Vec::new();
    for i in 0..s.login_users {
        let name = name(&format!("storm{i}"));
        let mut c = user(bench, &server.url, &name).await?;
        // Derived once: the client's PBKDF2 is not the server's cost.
        keys.push((name.clone(), c.auth_key(&name, PASSWORD).await?));
    }
    let (tokens, template) = group(bench, &server.url, 3, "calm").await?;
    let target = Target {
        url: server.url.clone(),
        tls: bench.tls.clone(),
        kind: Kind::SecureChat,
    };
    let tokens: Vec<Option<String>> = tokens.into_iter().map(Some).collect();
    let fan = Fanout::connect(&target, &tokens, &[template], tokens.len() - 1).await?;
    // The chat's latency without and with the storm, in turns: calm, a
    // part of the storm, calm, ..., calm. The p99 of a few hundred messages
    // is decided by a few slow ones, and how slow they are changes from
    // minute to minute with the machine's neighbours (its disk above all);
    // windows in turns see the same minutes. Each side's p99 is over all
    // of its windows.
    let rounds = s.login_rounds;
    let calm_window = s.step * 2 / (rounds as u32 + 1);
    fan.set(s.chat_rate);
    tokio::time::sleep(s.step / 2).await;
    // A sign-in is counted as a failure until it succeeds, and a user's
    // fifth pending one locks the account (brute-force protection): each
    // user has at most four in flight.
    let in_flight: Arc<[Arc<tokio::sync::Semaphore>]> = keys
        .iter()
        .map(|_| Arc::new(tokio::sync::Semaphore::new(4)))
        .collect();
    let keys: Arc<[(String, [u8; 32])]> = keys.into();
    // The storm's clients run on a thread of their own. On the load's
    // runtime, their TLS handshakes would delay the chat's readers (32 new
    // connections at once keep a thread busy for milliseconds), and the
    // chat's latency would measure the load instead of the host.
    let storm_clients = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("login-storm")
        .enable_all()
        .build()?;
    let (mut calm, mut storm) = (Vec::new(), Vec::new());
    let (mut elapsed, mut server_cpu, mut load_cpu) = (0.0, 0.0, 0.0);
    let mut core = CoreTicks::default();
    let mut results = Vec::with_capacity(s.logins);
    // Argon2id is bound by memory bandwidth, which this machine's neighbours
    // share, and its time moves by a fifth from minute to minute: it is
    // taken on the host's core before each part of the storm and after the
    // last one, and the limit uses the mean.
    let mut argon = Vec::with_capacity(rounds + 1);
    for round in 0..=rounds {
        fan.collector.start();
        tokio::time::sleep(calm_window).await;
        calm.extend(fan.collector.take());
        argon.push(server.argon2_seconds().await?);
        if round == rounds {
            break;
        }
        let part = (round * s.logins / rounds)..((round + 1) * s.logins / rounds);
        let (cpu0, load0, t0) = (server.cpu(), servers::cpu_of("self"), Instant::now());
        let core0 = server.core_ticks();
        fan.collector.start();
        let part = storm_clients.spawn(sign_ins(
            part,
            keys.clone(),
            in_flight.clone(),
            server.url.clone(),
            bench.anchor.clone(),
            s.login_concurrency,
        ));
        // Not `?`: the storm's runtime must not be dropped on this one.
        results.extend(part.await.unwrap_or_else(|e| vec![Err(e.to_string())]));
        storm.extend(fan.collector.take());
        elapsed += t0.elapsed().as_secs_f64();
        server_cpu += server.cpu() - cpu0;
        load_cpu += servers::cpu_of("self") - load0;
        core.add_since(core0);
        // Messages sent during the storm and still on their way are
        // counted on neither side.
        tokio::time::sleep(LOGIN_SETTLE).await;
    }
    fan.set(0.0);
    storm_clients.shutdown_background();
    let closed = fan.collector.closed();
    if closed > 0 {
        return Err(format!(
            "the host closed {closed} of the chat's sockets during the login scenario"
        )
        .into());
    }
    let (server_cpu, load_cpu) = (server_cpu / elapsed, load_cpu / elapsed);
    let (calm, storm) = (Window::of(calm, closed), Window::of(storm, closed));
    let ok = results.iter().filter(|r| r.is_ok()).count();
    if let Some(Err(first)) = results.iter().find(|r| r.is_err()) {
        return Err(format!(
            "{} of {} logins failed, first: {first}",
            s.logins - ok,
            s.logins
        )
        .into());
    }
    let per_s = ok as f64 / elapsed;
    let (argon_before, argon_after) = (argon[0], argon[rounds]);
    let argon = argon.iter().sum::<f64>() / argon.len() as f64;
    let cores = if servers::pinning() {
        1.0
    } else {
        servers::cores() as f64
    };
    let limit = cores / argon;
    let p99_ratio = if calm.p99_ms > 0.0 {
        storm.p99_ms / calm.p99_ms
    } else {
        0.0
    };
    say(&format!(
        "login: {per_s:.1}/s (limit {limit:.1}/s: {cores} core(s) ÷ {:.1} ms per Argon2id, {:.1} before the first part and {:.1} after the last), server CPU {:.0} %, server's core stolen {:.0} %, chat p99 {:.1} → {:.1} ms",
        argon * 1000.0,
        argon_before * 1000.0,
        argon_after * 1000.0,
        server_cpu * 100.0,
        core.stolen() * 100.0,
        calm.p99_ms,
        storm.p99_ms
    ));
    drop(fan);
    server.stop().await;
    report.insert("login_per_s".into(), json!(per_s));
    report.insert("login_limit_per_s".into(), json!(limit));
    report.insert("login_argon2_ms".into(), json!(argon * 1000.0));
    report.insert(
        "login_argon2_ms_before".into(),
        json!(argon_before * 1000.0),
    );
    report.insert("login_argon2_ms_after".into(), json!(argon_after * 1000.0));
    report.insert("login_ratio_vs_limit".into(), json!(per_s / limit));
    report.insert("login_chat_p99_ms_calm".into(), json!(calm.p99_ms));
    report.insert("login_chat_p99_ms_storm".into(), json!(storm.p99_ms));
    report.insert("login_chat_p99_ratio".into(), json!(p99_ratio));
    report.insert("login_server_cpu".into(), json!(server_cpu));
    report.insert("login_load_cpu".into(), json!(load_cpu));
    report.insert("login_stolen".into(), json!(core.stolen()));
    report.insert("login_chat_samples_calm".into(), json!(calm.receipts));
    report.insert("login_chat_samples_storm".into(), json!(storm.receipts));
    Ok(())
}

/// `files`: upload and download through the native client, against curl
/// fetching the same number of bytes from the bare relay's static file.
async fn files(bench: &Bench, report: &mut serde_json::Map<String, Value>) -> Result<(), Error> {
    let size = bench.sizes.file_bytes;
    let data = securechat::client::crypto::random_bytes_vec(size)?;
    // The host keeps the file it stores in its page cache as the tool
    // keeps the one curl fetches: capped at less, a download reads it all
    // back from the disk (the cache evicts what comes next).
    let _room = memory::raise_by((size as u64).div_ceil(1 << 20));
    let server = servers::start(Kind::SecureChat, bench.dir.path(), &bench.certs, None).await?;
    let (a, b) = (name("files-a"), name("files-b"));
    let mut sender = user(bench, &server.url, &a).await?;
    let mut receiver = user(bench, &server.url, &b).await?;
    let chat = sender.open_direct(&b).await?;
    let before = server.rss();
    let peak = Arc::new(std::sync::atomic::AtomicU64::new(before));
    let sampling = {
        let (peak, pid) = (peak.clone(), server.pid);
        tokio::spawn(async move {
            loop {
                peak.fetch_max(servers::rss_of(pid), std::sync::atomic::Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    let t0 = Instant::now();
    let file = sender
        .upload_file(&chat.id, "bench.bin", "application/octet-stream", &data)
        .await?;
    let up = t0.elapsed().as_secs_f64();
    let t0 = Instant::now();
    // Into a sink, as curl writes to /dev/null. The client checks every
    // chunk's tag and the SHA-256 of the whole against the uploader's, so a
    // download that succeeds gave back the same bytes.
    receiver
        .download_file_to(&file, &mut tokio::io::sink())
        .await?;
    let down = t0.elapsed().as_secs_f64();
    sampling.abort();
    let peak = peak.load(std::sync::atomic::Ordering::Relaxed);
    server.stop().await;

    let path = bench.dir.path().join("static.bin");
    std::fs::write(&path, &data)?;
    drop(data);
    let bare = servers::start(Kind::Bare, bench.dir.path(), &bench.certs, Some(&path)).await?;
    let curl = curl_seconds(&format!("{}/file", bare.url), &bench.certs.ca).await?;
    bare.stop().await;
    let _ = std::fs::remove_file(&path);
    let mib = size as f64 / 1048576.0;
    say(&format!(
        "files: {mib:.0} MiB up {:.0} MiB/s, down {:.0} MiB/s; curl {:.0} MiB/s; host RSS {:.1} → peak {:.1} MiB",
        mib / up,
        mib / down,
        mib / curl,
        before as f64 / 1048576.0,
        peak as f64 / 1048576.0
    ));
    report.insert("files_mib".into(), json!(mib));
    report.insert("files_up_mib_per_s".into(), json!(mib / up));
    report.insert("files_down_mib_per_s".into(), json!(mib / down));
    report.insert("files_curl_mib_per_s".into(), json!(mib / curl));
    report.insert("files_ratio_vs_curl".into(), json!(curl / down));
    report.insert("files_ratio_up_vs_curl".into(), json!(curl / up));
    report.insert("files_rss_before".into(), json!(before));
    report.insert("files_rss_peak".into(), json!(peak));
    Ok(())
}

async fn curl_seconds(url: &str, ca: &Path) -> Result<f64, Error> {
    let out = tokio::process::Command::new("curl")
        .args([
            "-sS",
            "--fail",
            "-o",
            "/dev/null",
            "-w",
            "%{time_total}",
            "--cacert",
        ])
        .arg(ca)
        .arg(url)
        .output()
        .await
        .map_err(|e| format!("curl: {e}"))?;
    if !out.status.success() {
        return Err(format!("curl failed: {}", String::from_utf8_lossy(&out.stderr)).into());
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().parse()?)
}

/// `start`: `securechat host` on an existing data directory, from spawn to
/// the first HTTPS 200.
async fn start(bench: &Bench, report: &mut serde_json::Map<String, Value>) -> Result<(), Error> {
    use base64::Engine as _;
    let key = base64::engine::general_purpose::STANDARD.encode(b"securechat bench master key 32b!");
    let data = bench.dir.path().join("start-data");
    // The first start makes the data directory (CA, database).
    let (first, _) = servers::start_host(&data, &key).await?;
    wait_ok(&first.url, &data).await?;
    first.stop().await;
    let mut times = Vec::new();
    for _ in 0..bench.sizes.starts {
        let (server, t0) = servers::start_host(&data, &key).await?;
        wait_ok(&server.url, &data).await?;
        times.push(t0.elapsed().as_secs_f64() * 1000.0);
        server.stop().await;
    }
    times.sort_by(f64::total_cmp);
    let median = times[times.len() / 2];
    say(&format!(
        "start: median {median:.0} ms over {} starts",
        times.len()
    ));
    report.insert("start_ms".into(), json!(median));
    report.insert("start_ms_all".into(), json!(times));
    Ok(())
}

async fn wait_ok(url: &str, data: &Path) -> Result<(), Error> {
    let anchor = CertificateDer::from_pem_file(data.join("tls/ca.pem"))?;
    let mut tls = securechat::tls::pinned_client_config(&anchor)?;
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    let http = reqwest::Client::builder()
        .tls_backend_preconfigured(tls)
        .no_proxy()
        .build()?;
    let url = url.replace("127.0.0.1", "localhost");
    for _ in 0..5000 {
        if let Ok(r) = http.get(&url).send().await
            && r.status().is_success()
        {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    Err(format!("{url} never answered 200").into())
}

fn print_table(report: &Value) {
    let Some(map) = report.as_object() else {
        return;
    };
    for (k, v) in map {
        if v.is_number() {
            let n = v.as_f64().unwrap_or(0.0);
            println!("{k:<28} {n:>12.2}");
        }
    }
}

/// The fan-out chart: delivered messages/s and p99 latency against offered
/// load, one line per server.
fn chart(curves: &serde_json::Map<String, Value>) -> String {
    let colors = [
        ("securechat", "#2f6fde"),
        ("bare", "#444444"),
        ("python", "#d9822b"),
        ("node", "#3c9a5f"),
    ];
    let points = |name: &str, y: &str| -> Vec<(f64, f64)> {
        curves[name]["steps"]
            .as_array()
            .map(|steps| {
                let mut points: Vec<(f64, f64)> = steps
                    .iter()
                    .filter(|s| s["uncounted"] != true)
                    .map(|s| {
                        (
                            s["offered"].as_f64().unwrap_or(0.0),
                            s[y].as_f64().unwrap_or(0.0),
                        )
                    })
                    .collect();
                // The search steps back down after it overshoots.
                points.sort_by(|a, b| a.0.total_cmp(&b.0));
                points
            })
            .unwrap_or_default()
    };
    let names: Vec<&str> = colors
        .iter()
        .map(|c| c.0)
        .filter(|n| curves.contains_key(*n))
        .collect();
    let max_x = names
        .iter()
        .flat_map(|n| points(n, "delivered"))
        .map(|p| p.0)
        .fold(1.0, f64::max);
    let panel = |title: &str, y: &str, y_label: &str, x0: f64| -> String {
        let all: Vec<(f64, f64)> = names.iter().flat_map(|n| points(n, y)).collect();
        let max_y = all.iter().map(|p| p.1).fold(1.0, f64::max) * 1.1;
        let (w, h, left, top) = (380.0, 240.0, x0 + 60.0, 40.0);
        let px = |x: f64| left + x / max_x * w;
        let py = |v: f64| top + h - v / max_y * h;
        let mut out = format!(
            r##"<text x="{}" y="24" font-size="14" font-weight="bold">{title}</text><rect x="{left}" y="{top}" width="{w}" height="{h}" fill="none" stroke="#999"/>"##,
            left
        );
        out += &format!(
            r#"<text x="{left}" y="{}" font-size="11">0</text><text x="{}" y="{}" font-size="11" text-anchor="end">{max_x:.0} offered/s</text><text x="{}" y="{}" font-size="11" text-anchor="end">{max_y:.0}</text><text x="{}" y="{}" font-size="11" transform="rotate(-90 {} {})">{y_label}</text>"#,
            top + h + 14.0,
            left + w,
            top + h + 14.0,
            left - 4.0,
            top + 10.0,
            x0 + 14.0,
            top + h / 2.0 + 30.0,
            x0 + 14.0,
            top + h / 2.0 + 30.0
        );
        for (i, name) in names.iter().enumerate() {
            let color = colors.iter().find(|c| c.0 == *name).map_or("#000", |c| c.1);
            let pts: Vec<String> = points(name, y)
                .iter()
                .map(|(a, b)| format!("{:.1},{:.1}", px(*a), py(*b)))
                .collect();
            out += &format!(
                r#"<polyline fill="none" stroke="{color}" stroke-width="2" points="{}"/><text x="{}" y="{}" font-size="11" fill="{color}">{name}</text>"#,
                pts.join(" "),
                left + 8.0,
                top + 14.0 + 14.0 * i as f64
            );
        }
        out
    };
    format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="940" height="310" font-family="sans-serif">{}{}</svg>
"#,
        panel("Delivered messages/s", "delivered", "delivered/s", 0.0),
        panel("p99 latency (ms)", "p99_ms", "p99 ms", 470.0)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A server that delivers up to `capacity` receipts/s to 2 receivers,
    /// with its core busy in proportion up to `busy_at_limit`, and stalls
    /// (its core idle) once for each entry of `stalls` at that rate.
    struct Fake {
        capacity: f64,
        busy_at_limit: f64,
        stalls: Vec<f64>,
        probed: Vec<(f64, bool)>,
    }

    impl Probe for Fake {
        async fn probe(&mut self, sends_per_s: f64, again: bool) -> Result<Step, Error> {
            self.probed.push((sends_per_s, again));
            let offered = 2.0 * sends_per_s;
            let (delivered, server_cpu) = match self.stalls.iter().position(|r| *r == sends_per_s) {
                Some(i) => {
                    self.stalls.remove(i);
                    (0.5 * offered, 0.1)
                }
                None => (
                    offered.min(self.capacity),
                    self.busy_at_limit * (offered / self.capacity).min(1.0),
                ),
            };
            Ok(Step {
                offered,
                delivered,
                server_cpu,
                ..Step::default()
            })
        }
    }

    /// What a search from 100/s did.
    struct Outcome {
        /// The rates probed, in order.
        rates: Vec<f64>,
        /// The probes told that they were a second try.
        again: Vec<bool>,
        /// Each step's `uncounted`.
        uncounted: Vec<bool>,
        max: f64,
        steps: Vec<Step>,
    }

    async fn search_with(
        capacity: f64,
        busy_at_limit: f64,
        stalls: &[f64],
        max_steps: usize,
    ) -> Outcome {
        let mut fake = Fake {
            capacity,
            busy_at_limit,
            stalls: stalls.to_vec(),
            probed: Vec::new(),
        };
        let steps = search(&mut fake, 100.0, max_steps).await.unwrap();
        Outcome {
            rates: fake.probed.iter().map(|p| p.0).collect(),
            again: fake.probed.iter().map(|p| p.1).collect(),
            uncounted: steps.iter().map(|s| s.uncounted).collect(),
            max: maximum(&steps),
            steps,
        }
    }

    #[tokio::test]
    async fn a_stalled_step_is_measured_again_and_a_saturated_one_stops_the_search() {
        let o = search_with(1000.0, 1.0, &[400.0], 12).await;
        // 400/s stalls once and is delivered on the second try; 800/s and
        // 600/s fall short with the core busy (the server's limit), once
        // each; 500/s is delivered.
        assert_eq!(o.rates, [100.0, 200.0, 400.0, 400.0, 800.0, 600.0, 500.0]);
        assert_eq!(o.again, [false, false, false, true, false, false, false]);
        assert_eq!(
            o.uncounted,
            [false, false, true, false, false, false, false]
        );
        assert_eq!(o.max, 1000.0);
    }

    #[tokio::test]
    async fn a_rate_that_stalls_twice_counts_as_short() {
        let o = search_with(1000.0, 1.0, &[400.0, 400.0], 12).await;
        assert_eq!(o.rates, [100.0, 200.0, 400.0, 400.0, 300.0, 350.0]);
        assert_eq!(o.uncounted, [false, false, false, true, false, false]);
        assert_eq!(o.max, 700.0);
    }

    #[tokio::test]
    async fn a_stall_while_narrowing_is_measured_again() {
        let o = search_with(1000.0, 1.0, &[600.0], 12).await;
        // 600/s stalls, then falls short at the limit: it only confirms.
        assert_eq!(o.rates, [100.0, 200.0, 400.0, 800.0, 600.0, 600.0, 500.0]);
        assert_eq!(
            o.uncounted,
            [false, false, false, false, false, true, false]
        );
        assert_eq!(o.max, 1000.0);
    }

    #[tokio::test]
    async fn a_server_at_its_limit_with_some_core_to_spare_is_not_tried_again() {
        // SecureChat's direct chats fall short with the core 83–87 % busy.
        let o = search_with(1000.0, 0.83, &[], 12).await;
        assert_eq!(o.rates, [100.0, 200.0, 400.0, 800.0, 600.0, 500.0]);
    }

    #[test]
    fn a_step_is_a_stall_only_with_the_core_mostly_idle_and_no_socket_closed() {
        let short = Step {
            offered: 1000.0,
            delivered: 500.0,
            server_cpu: 0.2,
            ..Step::default()
        };
        assert!(stalled(&short));
        assert!(!stalled(&Step {
            server_core_stolen: 0.4,
            ..short.clone()
        }));
        assert!(!stalled(&Step {
            closed: 1,
            ..short.clone()
        }));
        assert!(!stalled(&Step {
            delivered: 950.0,
            ..short.clone()
        }));
        assert!(stalled(&Step {
            delivered: 950.0,
            p99_ms: 1500.0,
            ..short.clone()
        }));
    }

    #[test]
    fn the_maximum_leaves_out_uncounted_steps() {
        let step = |delivered, uncounted| Step {
            delivered,
            uncounted,
            ..Step::default()
        };
        assert_eq!(maximum(&[step(500.0, false), step(900.0, true)]), 500.0);
    }

    #[tokio::test]
    async fn the_search_stops_at_its_last_step_when_nothing_falls_short() {
        let o = search_with(f64::INFINITY, 1.0, &[], 3).await;
        assert_eq!(o.rates, [100.0, 200.0, 400.0]);
        assert!(o.steps.iter().all(|s| !s.uncounted && !falls_short(s)));
    }
}
