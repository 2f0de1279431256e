//! The few system calls the worker and its pool children need that the standard library does
//! not offer. This is the only module of the crate that uses `unsafe`; each call is a plain libc
//! call on integers.
#![allow(unsafe_code)]

use std::io;

/// Asks the kernel to SIGKILL this process when the thread that started it exits (the worker's
/// supervisor), and returns whether that parent is still `expected_parent` (if it died before
/// the call, the signal will never come).
pub fn die_with_parent(expected_parent: Option<u32>) -> io::Result<bool> {
    // SAFETY: prctl(PR_SET_PDEATHSIG) takes a signal number and touches no memory.
    let rc = unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong, 0, 0, 0) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: getppid has no arguments and cannot fail.
    let parent = unsafe { libc::getppid() };
    Ok(expected_parent.is_none_or(|p| i64::from(parent) == i64::from(p)))
}

/// The signal that arms the stop signals (see [`ignore_stop_signals`]).
pub const ARM_STOP_SIGNALS: i32 = libc::SIGUSR2;

extern "C" fn on_arm_signal(_: libc::c_int) {
    for sig in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: signal is async-signal-safe; the default action ends the process with the
        // signal that follows, as billiard's `terminate_job` would.
        unsafe { libc::signal(sig, libc::SIG_DFL) };
    }
}

/// Makes SIGINT and SIGTERM ignored: a pool child is stopped by its parent, not by the terminal
/// or a service manager signalling the whole group (and what a task executes inherits that). The
/// worker restores their default action with [`ARM_STOP_SIGNALS`] just before it terminates a
/// task with one of them.
pub fn ignore_stop_signals() {
    for sig in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: installing SIG_IGN for a valid signal number has no memory effects.
        unsafe { libc::signal(sig, libc::SIG_IGN) };
    }
    let arm = on_arm_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
    // SAFETY: the handler only calls an async-signal-safe function.
    unsafe { libc::signal(ARM_STOP_SIGNALS, arm) };
}

/// Points file descriptor 0 at `/dev/null` (after the channel to the parent was taken off it).
pub fn stdin_to_dev_null() -> io::Result<()> {
    use std::os::fd::AsRawFd as _;
    let null = std::fs::File::open("/dev/null")?;
    // SAFETY: dup2 on two valid descriptors; fd 0 is replaced atomically.
    if unsafe { libc::dup2(null.as_raw_fd(), 0) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Sends `signal` to the thread `pid` of process `pid` (a process's main thread has its pid as
/// thread id): the soft time limit must reach the thread that runs the task.
pub fn signal_main_thread(pid: u32, signal: i32) -> io::Result<()> {
    let pid = libc::pid_t::try_from(pid).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: tgkill takes integers; a stale pid at worst signals nothing (ESRCH).
    let rc = unsafe { libc::syscall(libc::SYS_tgkill, pid, pid, signal) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Sends `signal` to the process `pid` (billiard's `terminate_job`: a revoke with
/// `terminate=True` kills the child that runs the task).
pub fn signal_process(pid: u32, signal: i32) -> io::Result<()> {
    let pid = libc::pid_t::try_from(pid).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: kill takes integers; a stale pid at worst signals nothing (ESRCH).
    if unsafe { libc::kill(pid, signal) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// This process's resource usage (`getrusage(RUSAGE_SELF)`), as Python's `resource.getrusage`
/// reports it: `(name, value)` pairs in its order, times in seconds, the rest as counts.
#[must_use]
pub fn rusage() -> Vec<(&'static str, f64)> {
    // SAFETY: a zeroed rusage is a valid value of the plain C struct getrusage fills.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: RUSAGE_SELF is always valid and `u` is a live, writable rusage.
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &raw mut u) } != 0 {
        return Vec::new();
    }
    #[allow(clippy::cast_precision_loss)]
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    #[allow(clippy::cast_precision_loss)]
    let n = |v: libc::c_long| v as f64;
    vec![
        ("utime", secs(u.ru_utime)),
        ("stime", secs(u.ru_stime)),
        ("maxrss", n(u.ru_maxrss)),
        ("ixrss", n(u.ru_ixrss)),
        ("idrss", n(u.ru_idrss)),
        ("isrss", n(u.ru_isrss)),
        ("minflt", n(u.ru_minflt)),
        ("majflt", n(u.ru_majflt)),
        ("nswap", n(u.ru_nswap)),
        ("inblock", n(u.ru_inblock)),
        ("oublock", n(u.ru_oublock)),
        ("msgsnd", n(u.ru_msgsnd)),
        ("msgrcv", n(u.ru_msgrcv)),
        ("nsignals", n(u.ru_nsignals)),
        ("nvcsw", n(u.ru_nvcsw)),
        ("nivcsw", n(u.ru_nivcsw)),
    ]
}

/// SIGKILLs the process group `pgid` (a pool child and whatever its task started).
pub fn kill_group(pgid: u32) -> io::Result<()> {
    let pgid = libc::pid_t::try_from(pgid).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: killpg takes integers.
    if unsafe { libc::killpg(pgid, libc::SIGKILL) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Peak resident set size of this process in KiB (`ru_maxrss`, what billiard compares with
/// `max_memory_per_child`).
#[must_use]
pub fn max_rss_kib() -> u64 {
    // SAFETY: getrusage writes into the zeroed struct we own.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: as above; RUSAGE_SELF is valid.
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) } != 0 {
        return 0;
    }
    u64::try_from(usage.ru_maxrss).unwrap_or(0)
}

/// SIGUSR1, the soft time limit signal (as billiard uses).
pub const SOFT_LIMIT_SIGNAL: i32 = libc::SIGUSR1;
