//! Background threads at a lower priority. On Linux a thread whose work can
//! wait (Argon2id for a sign-in) runs at nice [`NICE`], so that the kernel
//! hands the core sooner to the host's other threads when they wake up (the
//! chat's socket tasks, the store's commits), while the background work
//! still gets about a tenth of a core that something else keeps busy. A
//! thread cannot take its priority back without privileges, so only threads
//! of their own are lowered, never those of a shared pool. A thread that
//! holds a lock others need must not be lowered: the store's checkpointer
//! was, until a busy core starved it while it held the copy's lock and the
//! commits' own copies found it taken. Elsewhere the threads keep the
//! host's priority.

/// The nice value of background threads, on Linux. At 10 a thread gets
/// about a tenth of a core beside a busy thread of the default 0: a sign-in
/// on a host whose cores are all busy takes a few tenths of a second.
/// (`SCHED_IDLE`, tried first for the hashes, let one take 8–16 s there.)
#[cfg(target_os = "linux")]
pub const NICE: libc::c_int = 10;

/// Sets the calling thread's nice value to [`NICE`]. On Linux the nice
/// value belongs to each thread, and `who = 0` names the caller.
#[cfg(target_os = "linux")]
#[allow(unsafe_code)]
pub fn lower() -> std::io::Result<()> {
    // SAFETY: a plain system call on the calling thread with constant
    // arguments; no memory is passed.
    if unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, NICE) } == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Does nothing: elsewhere, background threads keep the host's priority.
#[cfg(not(target_os = "linux"))]
pub fn lower() -> std::io::Result<()> {
    Ok(())
}

/// For tests: the nice value of the calling thread, or of this process's
/// thread named `name` (the first found).
#[cfg(all(test, target_os = "linux"))]
pub fn nice_of(name: Option<&str>) -> Option<i32> {
    let stat = match name {
        None => std::fs::read_to_string("/proc/thread-self/stat").ok()?,
        Some(name) => std::fs::read_dir("/proc/self/task")
            .ok()?
            .flatten()
            .find(|task| {
                std::fs::read_to_string(task.path().join("comm"))
                    .is_ok_and(|comm| comm.trim_end() == name)
            })
            .and_then(|task| std::fs::read_to_string(task.path().join("stat")).ok())?,
    };
    let after_name = &stat[stat.rfind(')')? + 1..];
    // Fields from the third (the state) on; the nice value is the 19th.
    after_name.split_whitespace().nth(19 - 3)?.parse().ok()
}
