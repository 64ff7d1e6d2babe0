//! The servers under load: SecureChat (this tool re-run as `serve`, or the
//! real `securechat` executable for the cold start), the bare relay, and the
//! Python and Node broadcast servers. Each runs as its own process, pinned
//! to core 0 when the machine has two cores or more (the load gets the
//! others) and in the servers' memory cgroup if there is one
//! (`memory.rs`), so its memory and CPU time can be read from /proc.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use futures_util::StreamExt;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

pub type Error = Box<dyn std::error::Error + Send + Sync>;

/// The time of one Argon2id verification with the host's own code and
/// parameters, back to back as in a storm: several are queued at once on
/// one permit and timed from the first one's end to the last one's, so the
/// first one's allocation of working memory is not counted.
pub async fn argon2_seconds() -> Result<f64, Error> {
    let passwords = securechat::auth::Passwords::new(1)?;
    let hash = passwords
        .hash(vec![7; 32])
        .await
        .map_err(|e| e.to_string())?;
    let n = 6;
    let mut done: futures_util::stream::FuturesUnordered<_> = (0..=n)
        .map(|_| passwords.verify(Some(hash.clone()), vec![7; 32]))
        .collect();
    let mut first = None;
    while let Some(ok) = done.next().await {
        if !ok.map_err(|e| e.to_string())? {
            return Err("Argon2id refused its own key".into());
        }
        first.get_or_insert_with(Instant::now);
    }
    let first = first.ok_or("no verification ran")?;
    Ok(first.elapsed().as_secs_f64() / f64::from(n))
}

/// The kinds of server the fan-out compares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    SecureChat,
    Bare,
    Python,
    Node,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::SecureChat => "securechat",
            Kind::Bare => "bare",
            Kind::Python => "python",
            Kind::Node => "node",
        }
    }
}

/// A host the tool did not start (`--url`): the SecureChat scenarios run
/// against it, and its memory and CPU are not measured.
pub static EXTERNAL: std::sync::OnceLock<String> = std::sync::OnceLock::new();

/// A server process (or, with `--url`, the external host: no process).
pub struct Server {
    child: Option<Child>,
    /// `https://127.0.0.1:PORT`
    pub url: String,
    pub pid: u32,
    /// Its data directory, removed when it stops: a host's database runs
    /// to gigabytes, whose page cache would otherwise stay counted against
    /// the servers' memory cap (see `memory.rs`) for the rest of the run.
    data: Option<PathBuf>,
}

impl Server {
    /// Resident memory, in bytes.
    pub fn rss(&self) -> u64 {
        rss_of(self.pid)
    }

    /// CPU time used so far, in seconds.
    pub fn cpu(&self) -> f64 {
        cpu_of(&self.pid.to_string())
    }

    /// Its threads' CPU time so far (none for `--url`'s host).
    pub fn threads(&self) -> Threads {
        if self.is_local() {
            Threads::of(self.pid)
        } else {
            Threads::default()
        }
    }

    /// Whether this tool started it on this machine (not `--url`'s host).
    fn is_local(&self) -> bool {
        self.child.is_some()
    }

    /// Its core's ticks so far (none for `--url`'s host, whose core is not
    /// this machine's to measure).
    pub fn core_ticks(&self) -> CoreTicks {
        if self.is_local() {
            CoreTicks::now()
        } else {
            CoreTicks::default()
        }
    }

    /// The time of one Argon2id verification with the host's own code and
    /// parameters, on the host's core: this tool re-run as `argon2` and
    /// pinned there (in this process without pinning, and for `--url`'s
    /// host, whose machine is not this one).
    pub async fn argon2_seconds(&self) -> Result<f64, Error> {
        if !self.is_local() || !pinning() {
            return argon2_seconds().await;
        }
        let out = command(&std::env::current_exe()?)
            .arg("argon2")
            .stderr(Stdio::piped())
            .output()
            .await?;
        let text = String::from_utf8_lossy(&out.stdout);
        match text.trim().parse::<f64>() {
            Ok(seconds) if out.status.success() && seconds > 0.0 => Ok(seconds),
            _ => Err(format!(
                "timing Argon2id on the host's core failed: {} {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            )
            .into()),
        }
    }

    /// Asks the server to stop (SIGTERM, so a profiler wrapping it writes
    /// its output, and a wrapper that forked it ends with it), and kills it
    /// after ten seconds.
    pub async fn stop(self) {
        let Some(mut child) = self.child else {
            return;
        };
        let signal = |signal: &'static str| {
            let pid = self.pid.to_string();
            async move {
                let _ = Command::new("kill").args([signal, &pid]).status().await;
            }
        };
        signal("-TERM").await;
        if tokio::time::timeout(Duration::from_secs(10), child.wait())
            .await
            .is_err()
        {
            signal("-KILL").await;
            let _ = child.kill().await;
        }
        // Off the load's runtime thread: a database of gigabytes takes a
        // while to unlink.
        if let Some(data) = self.data {
            let _ = tokio::fs::remove_dir_all(data).await;
        }
    }
}

/// The CPU ticks (user + system, 1/100 s on Linux) of each thread of a
/// process so far, by thread id, with the thread's name.
#[derive(Debug, Default, Clone)]
pub struct Threads {
    ticks: HashMap<u32, (String, u64)>,
    /// The whole process's ticks, ended threads' included.
    process: u64,
}

impl Threads {
    /// The threads of `pid` now (none where `/proc` cannot be read).
    pub fn of(pid: u32) -> Self {
        let process = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|stat| parse_stat(&stat).map(|(_, ticks)| ticks))
            .unwrap_or(0);
        let ticks = std::fs::read_dir(format!("/proc/{pid}/task"))
            .into_iter()
            .flatten()
            .filter_map(|entry| {
                let tid: u32 = entry.ok()?.file_name().to_str()?.parse().ok()?;
                let stat = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/stat")).ok()?;
                let (name, ticks) = parse_stat(&stat)?;
                Some((tid, (name.to_owned(), ticks)))
            })
            .collect();
        Self { ticks, process }
    }

    /// The whole process's CPU seconds from `start` to these ticks.
    pub fn cpu_seconds_since(&self, start: &Self) -> f64 {
        self.process.saturating_sub(start.process) as f64 / 100.0
    }

    /// Each kind of thread's share of a core from `start` to these ticks,
    /// `secs` apart: threads named alike but for a number (`argon2-0`,
    /// `argon2-1`) count as one kind (`argon2`), and the time of threads
    /// that ended meanwhile as `(ended)`. Shares under 0.5 % are left out.
    pub fn shares_since(&self, start: &Self, secs: f64) -> BTreeMap<String, f64> {
        if secs <= 0.0 || self.ticks.is_empty() {
            return BTreeMap::new();
        }
        let mut by_kind: BTreeMap<String, u64> = BTreeMap::new();
        for (tid, (name, end)) in &self.ticks {
            let begun = start.ticks.get(tid).map_or(0, |(_, t)| *t);
            *by_kind.entry(kind_of_thread(name).to_owned()).or_default() +=
                end.saturating_sub(begun);
        }
        let counted: u64 = by_kind.values().sum();
        let ended = self
            .process
            .saturating_sub(start.process)
            .saturating_sub(counted);
        if ended > 0 {
            by_kind.insert("(ended)".to_owned(), ended);
        }
        by_kind
            .into_iter()
            .map(|(kind, ticks)| (kind, ticks as f64 / 100.0 / secs))
            .filter(|(_, share)| *share >= 0.005)
            .collect()
    }
}

/// The name and CPU ticks (user + system) of a `/proc/…/stat` line. The
/// name, in parentheses, may itself hold spaces and parentheses.
fn parse_stat(stat: &str) -> Option<(&str, u64)> {
    let (head, rest) = stat.rsplit_once(')')?;
    let (_, name) = head.split_once('(')?;
    // After the name: the state, then 10 fields, then utime and stime.
    let mut fields = rest.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some((name, utime + stime))
}

/// A thread's name without a trailing `-NUMBER` (`argon2-3` → `argon2`).
fn kind_of_thread(name: &str) -> &str {
    match name.rsplit_once('-') {
        Some((kind, n))
            if !kind.is_empty() && !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()) =>
        {
            kind
        }
        _ => name,
    }
}

pub fn rss_of(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}

/// The process that a wrapper started as `pid` runs the program in: its
/// only child, that child's only child, and so on (`strace -f` forks the
/// program; valgrind and taskset run it in their own process, which is then
/// `pid` itself). The tool measures and stops that process, not the
/// wrapper.
fn wrapped(mut pid: u32) -> u32 {
    while let [only] = children_of(pid)[..] {
        pid = only;
    }
    pid
}

/// The processes whose parent is `pid`.
fn children_of(pid: u32) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|entry| {
            let child: u32 = entry.ok()?.file_name().to_str()?.parse().ok()?;
            let stat = std::fs::read_to_string(format!("/proc/{child}/stat")).ok()?;
            // After the command's name: the state, then the parent's pid.
            let ppid: u32 = stat
                .rsplit_once(')')?
                .1
                .split_whitespace()
                .nth(1)?
                .parse()
                .ok()?;
            (ppid == pid).then_some(child)
        })
        .collect()
}

/// CPU seconds (user + system) of a process (`self` or a pid).
pub fn cpu_of(pid: &str) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| parse_stat(&stat).map(|(_, ticks)| ticks as f64 / 100.0))
        .unwrap_or(0.0)
}

/// Clock ticks of the core the servers run on (of the whole machine when
/// they are not pinned), from `/proc/stat`, over one or more windows: all of
/// them, and those "stolen", when the hypervisor ran another guest on that
/// core while it had work. A server with a stolen share had that much less
/// of a core than the wall clock says.
#[derive(Debug, Default, Clone, Copy)]
pub struct CoreTicks {
    all: u64,
    stolen: u64,
}

impl CoreTicks {
    /// The ticks since boot (none where `/proc/stat` cannot be read).
    pub fn now() -> Self {
        let line = if pinning() {
            format!("cpu{SERVER_CORE}")
        } else {
            "cpu".to_owned()
        };
        std::fs::read_to_string("/proc/stat")
            .ok()
            .and_then(|stat| parse_ticks(&stat, &line))
            .map_or_else(Self::default, |(all, stolen)| Self { all, stolen })
    }

    /// Adds the window from `start` (a [`CoreTicks::now`]) to now; nothing
    /// if `start` was not measured.
    pub fn add_since(&mut self, start: Self) {
        if start.all == 0 {
            return;
        }
        let end = Self::now();
        self.all += end.all.saturating_sub(start.all);
        self.stolen += end.stolen.saturating_sub(start.stolen);
    }

    /// The stolen share of the windows added, 0 to 1.
    pub fn stolen(self) -> f64 {
        if self.all == 0 {
            0.0
        } else {
            self.stolen as f64 / self.all as f64
        }
    }
}

/// The (all, stolen) ticks of `/proc/stat`'s line `name` (`cpu`, `cpu0`).
fn parse_ticks(stat: &str, name: &str) -> Option<(u64, u64)> {
    let line = stat
        .lines()
        .find(|l| l.split_whitespace().next() == Some(name))?;
    // user nice system idle iowait irq softirq steal (guest time is
    // already counted in user and nice).
    let ticks: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .take(8)
        .map(str::parse)
        .collect::<Result<_, _>>()
        .ok()?;
    let steal = *ticks.get(7)?;
    Some((ticks.iter().sum(), steal))
}

/// The core the servers run on when [`pinning`].
pub const SERVER_CORE: usize = 0;

/// The machine's cores, as read before the load pinned itself.
pub fn cores() -> usize {
    static CORES: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *CORES.get_or_init(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}

/// Whether server and load get cores of their own.
pub fn pinning() -> bool {
    static PINNING: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *PINNING.get_or_init(|| {
        cores() >= 2
            && std::process::Command::new("taskset")
                .arg("-V")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
    })
}

/// Moves this process (the load) off core 0.
pub fn pin_load() {
    if !pinning() {
        return;
    }
    let cores = cores();
    let _ = std::process::Command::new("taskset")
        .args(["-a", "-cp", &format!("1-{}", cores - 1)])
        .arg(std::process::id().to_string())
        .stdout(Stdio::null())
        .status();
}

fn command(program: &Path) -> Command {
    let mut cmd = if pinning() {
        let mut c = Command::new("taskset");
        c.args(["-c", &SERVER_CORE.to_string()]).arg(program);
        c
    } else {
        Command::new(program)
    };
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true);
    cmd
}

/// An executable next to this one (`securechat`, `bare-relay`).
pub fn sibling(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap_or_default();
    exe.with_file_name(format!("{name}{}", std::env::consts::EXE_SUFFIX))
}

/// The baselines' scripts (`bench/baselines/` of the source tree).
pub fn baselines_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("bench/baselines")
}

/// Starts `cmd` and waits for the first `https://` line of its output.
async fn started(mut cmd: Command, what: &str) -> Result<Server, Error> {
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("cannot start {what}: {e}"))?;
    crate::memory::admit(child.id())?;
    let pid = child.id().unwrap_or(0);
    let mut lines = BufReader::new(child.stdout.take().ok_or("no stdout")?).lines();
    let url = tokio::time::timeout(Duration::from_secs(60), async {
        while let Ok(Some(line)) = lines.next_line().await {
            if let Some(rest) = line.trim().strip_prefix("https://") {
                return Some(format!("https://{}", rest.trim_end_matches('/')));
            }
        }
        None
    })
    .await
    .ok()
    .flatten()
    .ok_or_else(|| format!("{what} did not print its address"))?;
    // Keep reading (and dropping) its output so it never blocks on a pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    // With taskset in front, the server is taskset's child (taskset execs,
    // so the pid is the same).
    Ok(Server {
        child: Some(child),
        url,
        pid,
        data: None,
    })
}

/// The TLS files every server under test uses: a throwaway CA and a leaf
/// for 127.0.0.1.
pub struct Certs {
    pub ca: PathBuf,
    pub chain: PathBuf,
    pub key: PathBuf,
}

impl Certs {
    pub fn create(dir: &Path) -> Result<Self, Error> {
        let (ca, chain, key) =
            securechat::tls::throwaway_pem(&["127.0.0.1".to_owned(), "localhost".to_owned()])?;
        let certs = Self {
            ca: dir.join("ca.pem"),
            chain: dir.join("chain.pem"),
            key: dir.join("key.pem"),
        };
        std::fs::write(&certs.ca, ca)?;
        std::fs::write(&certs.chain, chain)?;
        std::fs::write(&certs.key, key)?;
        Ok(certs)
    }
}

/// Starts a server of `kind`. SecureChat gets a fresh data directory under
/// `dir` and the benchmark's limits (see `serve`).
pub async fn start(
    kind: Kind,
    dir: &Path,
    certs: &Certs,
    file: Option<&Path>,
) -> Result<Server, Error> {
    if kind == Kind::SecureChat
        && let Some(url) = EXTERNAL.get()
    {
        return Ok(Server {
            child: None,
            url: url.trim_end_matches('/').to_owned(),
            pid: 0,
            data: None,
        });
    }
    let base = baselines_dir();
    let mut wrapper = false;
    let data = (kind == Kind::SecureChat)
        .then(|| dir.join(format!("securechat-{}", securechat::chatlog::opaque_id())));
    let cmd = match kind {
        Kind::SecureChat => {
            // SECURECHAT_BENCH_WRAP runs the host under a profiler, e.g.
            // "valgrind --tool=callgrind --callgrind-out-file=/tmp/cg.out".
            let wrap = std::env::var("SECURECHAT_BENCH_WRAP").unwrap_or_default();
            if !wrap.trim().is_empty() {
                wrapper = true;
            }
            let mut words = wrap.split_whitespace();
            let mut c = match words.next() {
                Some(program) => {
                    let mut c = command(Path::new(program));
                    c.args(words).arg(std::env::current_exe()?);
                    c
                }
                None => command(&std::env::current_exe()?),
            };
            c.arg("serve")
                .arg("--data-dir")
                .args(&data)
                .arg("--cert")
                .arg(&certs.chain)
                .arg("--key")
                .arg(&certs.key)
                .env("SECURECHAT_LOG", "warn");
            c
        }
        Kind::Bare => {
            let mut c = command(&sibling("bare-relay"));
            c.arg("--cert")
                .arg(&certs.chain)
                .arg("--key")
                .arg(&certs.key);
            if let Some(f) = file {
                c.arg("--file").arg(f);
            }
            c
        }
        Kind::Python => {
            let mut c = command(Path::new("python3"));
            c.arg(base.join("python_broadcast.py"))
                .arg(&certs.chain)
                .arg(&certs.key);
            c
        }
        Kind::Node => {
            let mut c = command(Path::new("node"));
            c.arg(base.join("node/broadcast.js"))
                .arg(&certs.chain)
                .arg(&certs.key);
            c
        }
    };
    let mut server = started(cmd, kind.name()).await?;
    if wrapper {
        server.pid = wrapped(server.pid);
    }
    server.data = data;
    Ok(server)
}

/// The real `securechat host --headless` on an existing data directory
/// (for the cold start).
pub async fn start_host(data: &Path, key_b64: &str) -> Result<(Server, std::time::Instant), Error> {
    let mut cmd = command(&sibling("securechat"));
    cmd.args([
        "host",
        "--headless",
        "--no-browser",
        "--bind",
        "127.0.0.1:0",
        "--data-dir",
    ])
    .arg(data)
    .env("SECURECHAT_MASTER_KEY", key_b64)
    .env("SECURECHAT_LOG", "warn")
    .stderr(Stdio::null());
    let t0 = std::time::Instant::now();
    let server = started(cmd, "securechat host").await?;
    Ok((server, t0))
}

/// Whether a baseline can run here: (python websockets, node ws).
pub fn baselines_available() -> (bool, bool) {
    let python = std::process::Command::new("python3")
        .args(["-c", "import websockets"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    let node = baselines_dir().join("node/node_modules/ws").is_dir()
        && std::process::Command::new("node")
            .arg("--version")
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
    (python, node)
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    /// `program args` started, with what [`wrapped`] finds below it once
    /// it differs from the start, or after two seconds.
    fn found_below(program: &str, args: &[&str]) -> (u32, String) {
        let mut child = std::process::Command::new(program)
            .args(args)
            .spawn()
            .unwrap();
        let started = child.id();
        let mut found = started;
        for _ in 0..200 {
            found = wrapped(started);
            if found != started {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let comm = std::fs::read_to_string(format!("/proc/{found}/comm")).unwrap_or_default();
        if found != started {
            let _ = std::process::Command::new("kill")
                .arg(found.to_string())
                .status();
        }
        let _ = child.kill();
        let _ = child.wait();
        (found, comm.trim().to_owned())
    }

    #[test]
    fn a_wrapped_program_is_found_below_its_wrapper() {
        // `sh` forks `sleep` (the command after it keeps `sh` waiting), as
        // `strace -f` forks the host.
        let (_, comm) = found_below("sh", &["-c", "sleep 30; true"]);
        assert_eq!(comm, "sleep");
        // A program that forks nothing is its own.
        let (_, comm) = found_below("sleep", &["30"]);
        assert_eq!(comm, "sleep");
    }

    #[test]
    fn threads_are_counted_by_kind_and_ended_ones_together() {
        let stat = "42 (odd ) name) S 1 2 3 4 5 6 7 8 9 10 250 50 0 0 20 0\n";
        assert_eq!(parse_stat(stat), Some(("odd ) name", 300)));
        assert_eq!(parse_stat("42 (short) S 1 2"), None);
        assert_eq!(kind_of_thread("argon2-12"), "argon2");
        assert_eq!(kind_of_thread("tokio-rt-worker"), "tokio-rt-worker");
        assert_eq!(kind_of_thread("-7"), "-7");
        assert_eq!(kind_of_thread("db-"), "db-");
        let snapshot = |threads: &[(u32, &str, u64)], process| Threads {
            ticks: threads
                .iter()
                .map(|&(tid, name, t)| (tid, (name.to_owned(), t)))
                .collect(),
            process,
        };
        // Thread 2 ended after 10 ticks of the window, 4 began; 5 did
        // almost nothing.
        let start = snapshot(
            &[
                (1, "worker", 100),
                (2, "argon2-0", 40),
                (3, "argon2-1", 0),
                (5, "idle", 7),
            ],
            147,
        );
        let end = snapshot(
            &[
                (1, "worker", 180),
                (3, "argon2-1", 30),
                (4, "argon2-2", 20),
                (5, "idle", 7),
            ],
            147 + 80 + 10 + 30 + 20,
        );
        let shares = end.shares_since(&start, 2.0);
        let expected = [("(ended)", 0.05), ("argon2", 0.25), ("worker", 0.4)];
        assert_eq!(shares.len(), expected.len(), "{shares:?}");
        for (kind, share) in expected {
            assert!((shares[kind] - share).abs() < 1e-9, "{shares:?}");
        }
        assert!((end.cpu_seconds_since(&start) - 1.4).abs() < 1e-9);
        assert!(end.shares_since(&start, 0.0).is_empty());
        assert!(Threads::default().shares_since(&start, 1.0).is_empty());
        // This process's own threads, where there is a `/proc`.
        if std::path::Path::new("/proc/self/task").exists() {
            let me = Threads::of(std::process::id());
            assert!(!me.ticks.is_empty());
        }
    }

    #[test]
    fn a_cores_stolen_time_is_read_from_its_own_line() {
        let stat = "cpu  10 0 10 100 0 0 0 30 0 0\n\
                    cpu0 1 2 3 4 5 6 7 8 9 10\n\
                    cpu1 10 20 30 40 50 60 70 80 0 0\n\
                    cpu10 100 0 0 0 0 0 0 1 0 0\n\
                    intr 1 2 3\n";
        assert_eq!(parse_ticks(stat, "cpu"), Some((150, 30)));
        assert_eq!(parse_ticks(stat, "cpu0"), Some((36, 8)));
        assert_eq!(parse_ticks(stat, "cpu1"), Some((360, 80)));
        assert_eq!(parse_ticks(stat, "cpu10"), Some((101, 1)));
        assert_eq!(parse_ticks(stat, "cpu2"), None);
        // A kernel too old to count stolen time has no such column.
        assert_eq!(parse_ticks("cpu0 1 2 3 4 5 6 7\n", "cpu0"), None);
        // Windows add up; the real file, where there is one, has the
        // servers' core.
        let mut windows = CoreTicks::default();
        assert_eq!(windows.stolen(), 0.0);
        // A window whose start was not measured adds nothing.
        windows.add_since(CoreTicks::default());
        assert_eq!((windows.all, windows.stolen), (0, 0));
        if std::path::Path::new("/proc/stat").exists() {
            let start = CoreTicks::now();
            // About 10 ticks of 1/100 s pass on any core meanwhile.
            std::thread::sleep(Duration::from_millis(100));
            windows.add_since(start);
            assert!(windows.all > 0 && windows.stolen <= windows.all);
            let share = windows.stolen();
            assert!((0.0..=1.0).contains(&share), "{share}");
        }
    }
}
