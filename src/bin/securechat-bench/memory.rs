//! A memory cgroup for the servers under load (Linux): a cap on the memory
//! they and the file pages they write may hold, so that the kernel reuses
//! the page cache of files already written instead of growing it.
//!
//! Why: on a virtual machine whose host hands it memory on first touch
//! and takes freed memory back (a balloon with free page reporting, as on
//! the machine of docs/BENCHMARKS.md), every page the page cache grows
//! into costs the guest a fault in its host. There, writing a new file
//! took 0.55 ms per MB while the page cache reused memory the guest had
//! touched lately, and 6–7 ms per MB once it grew past that; a host
//! storing 50 MB of messages a second crossed that line within a minute,
//! and its checkpoint's copies into the database file then took a quarter
//! of its core. Capped, the same writes stayed at 0.6–0.8 ms per MB
//! however much was written (docs/BENCHMARKS.md, "Page cache on this
//! machine"). A server in use should write far less a second, on memory
//! it has long touched (not measured); the cap gives the benchmark that
//! steady state.

use std::path::{Path, PathBuf};

/// The servers' cgroup, created by [`confine`]; `None` without one.
static CGROUP: std::sync::OnceLock<Option<Cgroup>> = std::sync::OnceLock::new();

/// A cgroup of this tool's own, below the one it runs in.
#[derive(Debug)]
struct Cgroup {
    dir: PathBuf,
    version: Version,
    limit_mib: u64,
}

impl Cgroup {
    fn set_limit(&self, mib: u64) -> Result<(), String> {
        std::fs::write(
            self.dir.join(self.version.limit_file()),
            mib.saturating_mul(1 << 20).to_string(),
        )
        .map_err(|e| format!("setting the limit of {}: {e}", self.dir.display()))
    }
}

/// Which cgroup file system holds the memory controller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Version {
    /// A hierarchy of its own (`memory.limit_in_bytes`).
    V1,
    /// The unified hierarchy (`memory.max`).
    V2,
}

impl Version {
    fn limit_file(self) -> &'static str {
        match self {
            Version::V1 => "memory.limit_in_bytes",
            Version::V2 => "memory.max",
        }
    }
}

/// Creates the servers' cgroup with a limit of `limit_mib` MiB (none if 0),
/// below this process's own memory cgroup. Says on stderr why not, if it
/// cannot (no cgroup file system, or not allowed to write it): the servers
/// then run without a cap, and the JSON says so.
pub fn confine(limit_mib: u64) {
    let cgroup = (limit_mib > 0)
        .then(|| match create(limit_mib) {
            Ok(cgroup) => Some(cgroup),
            Err(e) => {
                eprintln!("securechat-bench: the servers run without a memory cap: {e}");
                None
            }
        })
        .flatten();
    let _ = CGROUP.set(cgroup);
}

/// The servers' memory cap in MiB, if they have one.
pub fn limit_mib() -> Option<u64> {
    CGROUP.get()?.as_ref().map(|c| c.limit_mib)
}

/// Moves process `pid` (a server just started) into the servers' cgroup.
/// What it took before the move stays counted where it was (its start).
pub fn admit(pid: Option<u32>) -> Result<(), String> {
    let Some(Some(cgroup)) = CGROUP.get() else {
        return Ok(());
    };
    // Pid 0 in `cgroup.procs` would be this tool itself.
    let pid = pid
        .filter(|&p| p != 0)
        .ok_or("a server ended before it could be moved into its cgroup")?;
    std::fs::write(cgroup.dir.join("cgroup.procs"), pid.to_string())
        .map_err(|e| format!("moving server {pid} into {}: {e}", cgroup.dir.display()))
}

/// The servers' cap raised by `mib` MiB until the guard is dropped: for a
/// server that must keep a file of that size in its page cache, as the
/// file curl fetches is kept in the tool's.
pub struct Raised(Option<&'static Cgroup>);

pub fn raise_by(mib: u64) -> Raised {
    let cgroup = CGROUP.get().and_then(Option::as_ref);
    if let Some(c) = cgroup
        && let Err(e) = c.set_limit(c.limit_mib.saturating_add(mib))
    {
        eprintln!("securechat-bench: {e}");
    }
    Raised(cgroup)
}

impl Drop for Raised {
    fn drop(&mut self) {
        if let Some(c) = self.0
            && let Err(e) = c.set_limit(c.limit_mib)
        {
            eprintln!("securechat-bench: {e}");
        }
    }
}

/// Removes the servers' cgroup once its processes have ended (it waits up
/// to two seconds for the last to go).
pub fn release() {
    let Some(Some(cgroup)) = CGROUP.get() else {
        return;
    };
    for _ in 0..40 {
        if std::fs::remove_dir(&cgroup.dir).is_ok() || !cgroup.dir.exists() {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    eprintln!(
        "securechat-bench: could not remove the cgroup {}",
        cgroup.dir.display()
    );
}

fn create(limit_mib: u64) -> Result<Cgroup, String> {
    let read = |path: &str| std::fs::read_to_string(path).map_err(|e| format!("{path}: {e}"));
    let (own, version) =
        own_memory_cgroup(&read("/proc/self/mountinfo")?, &read("/proc/self/cgroup")?)
            .ok_or("no memory cgroup found in /proc/self/mountinfo and /proc/self/cgroup")?;
    if version == Version::V2 {
        memory_enabled_below(&own)?;
    }
    remove_stale(&own);
    let dir = own.join(format!("{PREFIX}{}", std::process::id()));
    std::fs::create_dir(&dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    let cgroup = Cgroup {
        dir,
        version,
        limit_mib,
    };
    if let Err(e) = cgroup.set_limit(limit_mib) {
        let _ = std::fs::remove_dir(&cgroup.dir);
        return Err(e);
    }
    Ok(cgroup)
}

/// How the servers' cgroup is named, before the tool's pid.
const PREFIX: &str = "securechat-bench-";

/// Removes the servers' cgroups that runs of this tool stopped by a signal
/// left behind (empty, their tool gone); a cgroup still in use is not
/// removed (the kernel refuses).
fn remove_stale(own: &Path) {
    let Ok(entries) = std::fs::read_dir(own) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let gone = name
            .to_str()
            .and_then(|n| n.strip_prefix(PREFIX))
            .and_then(|pid| pid.parse::<u32>().ok())
            .is_some_and(|pid| !Path::new(&format!("/proc/{pid}")).exists());
        if gone {
            let _ = std::fs::remove_dir(entry.path());
        }
    }
}

/// On the unified hierarchy, a cgroup's children get the memory controller
/// only if the cgroup lists it for them, which a cgroup with processes of
/// its own cannot, the root's aside: so there the tool caps its servers
/// only when it runs in the root cgroup (of the machine or a container's
/// namespace) with the controller on. It does not turn it on (that would
/// change the machine's setup beyond its own cgroup).
fn memory_enabled_below(dir: &Path) -> Result<(), String> {
    let subtree = dir.join("cgroup.subtree_control");
    let enabled = std::fs::read_to_string(&subtree).unwrap_or_default();
    if enabled.split_whitespace().any(|c| c == "memory") {
        Ok(())
    } else {
        Err(format!(
            "the memory controller is not enabled in {}",
            subtree.display()
        ))
    }
}

/// The directory of this process's memory cgroup, from the text of
/// `/proc/self/mountinfo` and `/proc/self/cgroup`: a hierarchy of its own
/// (v1) if one is mounted, else the unified one (v2).
fn own_memory_cgroup(mountinfo: &str, cgroups: &str) -> Option<(PathBuf, Version)> {
    // mountinfo: ID PARENT MAJ:MIN ROOT MOUNTPOINT OPTIONS [TAGS...] - FSTYPE SOURCE SUPER
    let mounts = mountinfo.lines().filter_map(|line| {
        let (head, tail) = line.split_once(" - ")?;
        let head: Vec<&str> = head.split_whitespace().collect();
        let tail: Vec<&str> = tail.split_whitespace().collect();
        Some((*head.get(3)?, *head.get(4)?, *tail.first()?, *tail.get(2)?))
    });
    // /proc/self/cgroup: HIERARCHY:CONTROLLERS:PATH
    let path_of = |wanted: &dyn Fn(&str) -> bool| {
        cgroups.lines().find_map(|line| {
            let mut fields = line.splitn(3, ':');
            let (_, controllers, path) = (fields.next()?, fields.next()?, fields.next()?);
            wanted(controllers).then(|| path.to_owned())
        })
    };
    let mut v2 = None;
    for (root, mountpoint, fstype, options) in mounts {
        let (version, path) = match fstype {
            "cgroup" if options.split(',').any(|o| o == "memory") => (
                Version::V1,
                path_of(&|c| c.split(',').any(|c| c == "memory")),
            ),
            "cgroup2" => (Version::V2, path_of(&str::is_empty)),
            _ => continue,
        };
        let Some(path) = path else { continue };
        // The mount shows the hierarchy from `root` down.
        let Ok(below) = Path::new(&path).strip_prefix(root) else {
            continue;
        };
        let dir = Path::new(mountpoint).join(below);
        match version {
            Version::V1 => return Some((dir, version)),
            Version::V2 => v2 = v2.or(Some((dir, version))),
        }
    }
    v2
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_memory_cgroup_is_found_on_either_hierarchy() {
        // This machine's kind: v1 hierarchies beside a unified one, the
        // process in a cgroup of its own for memory only.
        // The unified hierarchy's line comes first: the v1 one still wins.
        let mountinfo = "\
            30 25 0:26 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755\n\
            40 30 0:36 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw\n\
            31 30 0:27 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu\n\
            35 30 0:31 / /sys/fs/cgroup/memory rw,relatime shared:9 - cgroup cgroup rw,memory\n";
        let cgroups = "9:name=systemd:/\n4:memory:/jobs/abc\n1:cpu:/\n0::/\n";
        assert_eq!(
            own_memory_cgroup(mountinfo, cgroups),
            Some((PathBuf::from("/sys/fs/cgroup/memory/jobs/abc"), Version::V1))
        );
        // Controllers mounted together, and a container that sees its own
        // cgroup as the mount's root.
        let mountinfo =
            "35 30 0:31 /ctr /sys/fs/cgroup/memory rw - cgroup cgroup rw,cpuacct,memory\n";
        let cgroups = "4:cpuacct,memory:/ctr/job\n";
        assert_eq!(
            own_memory_cgroup(mountinfo, cgroups),
            Some((PathBuf::from("/sys/fs/cgroup/memory/job"), Version::V1))
        );
        // Only the unified hierarchy.
        let mountinfo = "28 22 0:25 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw,nsdelegate\n";
        let cgroups = "0::/user.slice/session-1.scope\n";
        assert_eq!(
            own_memory_cgroup(mountinfo, cgroups),
            Some((
                PathBuf::from("/sys/fs/cgroup/user.slice/session-1.scope"),
                Version::V2
            ))
        );
        // A container's unified hierarchy, seen from its own cgroup.
        let inner = "28 22 0:25 /ctr /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n";
        assert_eq!(
            own_memory_cgroup(inner, "0::/ctr/job\n"),
            Some((PathBuf::from("/sys/fs/cgroup/job"), Version::V2))
        );
        // No cgroup file system, or no line for it.
        assert_eq!(
            own_memory_cgroup("1 0 0:1 / / rw - ext4 /dev/vda rw\n", "0::/\n"),
            None
        );
        assert_eq!(own_memory_cgroup(mountinfo, "4:memory:/x\n"), None);
    }
}
