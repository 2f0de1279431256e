//! Celery's daemon options of `worker` and `beat` (`-f/--logfile`, `--pidfile`, `--uid`,
//! `--gid`, `--umask`, `-D/--detach`), applied before anything else runs: detach, umask,
//! drop privileges (Celery's order), then the pid file and the log file.
//!
//! The one module of this crate that uses `unsafe`: each use is a plain libc call (`umask`,
//! `dup2`, `setsid`, `initgroups`, `setgid`, `setuid`, `getpwnam`, `getgrnam`, `kill(pid, 0)`)
//! that the standard library does not offer.
#![allow(unsafe_code)]

use std::{
    fs::OpenOptions,
    io::Write as _,
    os::unix::{fs::OpenOptionsExt as _, io::AsRawFd as _, process::CommandExt as _},
    path::{Path, PathBuf},
};

use clap::Args;

use super::CliError;

/// The daemon options (named as `celery worker`'s and `celery beat`'s).
#[derive(Debug, Clone, Default, Args)]
pub struct DaemonArgs {
    /// Log to this file (appended to) instead of stderr; the pool's children write there too.
    /// Expands Celery's %p (node name), %n (its name), %h (its host), %d (the host's domain),
    /// %i (0) and %I (empty).
    #[arg(short = 'f', long, value_name = "PATH")]
    pub logfile: Option<PathBuf>,
    /// Write the process id to this file; refuse to start while it names a running process (a
    /// stale one is replaced). Removed at exit. Expands as --logfile.
    #[arg(long, value_name = "PATH")]
    pub pidfile: Option<PathBuf>,
    /// Drop privileges to this user (name or numeric id) before doing anything else.
    #[arg(long, value_name = "USER")]
    pub uid: Option<String>,
    /// Drop privileges to this group (name or numeric id); with --uid alone, that user's group.
    #[arg(long, value_name = "GROUP")]
    pub gid: Option<String>,
    /// Create files with this umask (octal, e.g. 022).
    #[arg(long, value_name = "MASK")]
    pub umask: Option<String>,
    /// Run in the background: the command starts itself again in a new session, without a
    /// terminal (output to --logfile, else nowhere), and returns at once.
    #[arg(short = 'D', long)]
    pub detach: bool,
}

/// Why the daemon options could not be applied.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DaemonError {
    /// The pid file names a running process.
    #[error("Pidfile ({}) already exists.\nSeems we're already running? (pid: {pid})", .path.display())]
    AlreadyRunning {
        /// The pid file.
        path: PathBuf,
        /// The process it names.
        pid: i32,
    },
    /// A file could not be created, read or written.
    #[error("{}: {source}", .path.display())]
    File {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// No such user or group, or not a number.
    #[error("no such {kind}: {name:?}")]
    NoSuch {
        /// `user` or `group`.
        kind: &'static str,
        /// What was given.
        name: String,
    },
    /// `--umask` is not octal.
    #[error("--umask must be an octal number, e.g. 022: {0:?}")]
    BadUmask(String),
    /// A system call failed.
    #[error("{what}: {source}")]
    Os {
        /// What was attempted.
        what: &'static str,
        /// Why.
        source: std::io::Error,
    },
}

/// Removes the pid file when the process ends normally.
#[derive(Debug)]
pub struct PidFile {
    path: PathBuf,
}

impl Drop for PidFile {
    fn drop(&mut self) {
        // Only our own: a file a newer process wrote after ours was removed stays.
        if read_pid(&self.path).is_some_and(|pid| u32::try_from(pid).ok() == Some(std::process::id())) {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// What applying the options leaves to the caller.
#[derive(Debug, Default)]
pub struct Daemon {
    /// Held while the process runs.
    pub pidfile: Option<PidFile>,
    /// Whether the logs go to a file (no colours).
    pub logs_to_file: bool,
}

impl DaemonArgs {
    /// Applies the options for a process named `nodename` (`name@host`), started in
    /// `launched_from` (before `--workdir`). With `--detach` in the parent, starts the
    /// detached copy and returns `None`: the parent exits.
    ///
    /// # Errors
    /// [`DaemonError`] (through [`CliError`]).
    pub fn apply(&self, nodename: &str, launched_from: Option<&Path>) -> Result<Option<Daemon>, CliError> {
        if self.detach && std::env::var_os(DETACHED_ENV).is_none() {
            // Refused now, on the terminal, rather than in the background.
            if let Some(path) = &self.pidfile {
                check_pidfile(&node_format(path, nodename))?;
            }
            // The copy opens the log file itself once it dropped privileges (a file the
            // parent created as root would not be writable by it); until then its output is
            // the log file only when no privileges are dropped.
            let output = self
                .logfile
                .as_deref()
                .filter(|_| self.uid.is_none() && self.gid.is_none())
                .map(|p| node_format(p, nodename));
            detach(output, launched_from)?;
            return Ok(None);
        }
        if let Some(mask) = &self.umask {
            let mask = u32::from_str_radix(mask.trim_start_matches("0o"), 8)
                .ok()
                .filter(|m| *m <= 0o777)
                .ok_or_else(|| DaemonError::BadUmask(mask.clone()))?;
            // SAFETY: umask only sets the process's file mode creation mask.
            unsafe { libc::umask(mask as libc::mode_t) };
        }
        drop_privileges(self.uid.as_deref(), self.gid.as_deref())?;
        let mut daemon = Daemon::default();
        // The pid file first: refusing to start is said on the terminal, not in the log file.
        if let Some(path) = &self.pidfile {
            daemon.pidfile = Some(create_pidfile(&node_format(path, nodename))?);
        }
        if let Some(path) = &self.logfile {
            let path = node_format(path, nodename);
            let file = OpenOptions::new()
                .create(true)
                .append(true)
                .mode(0o644)
                .open(&path)
                .map_err(|source| DaemonError::File { path: path.clone(), source })?;
            // Everything written to stderr from now on (our logs, the pool's children, which
            // inherit it) goes to the file.
            // SAFETY: dup2 onto fd 2 of a file descriptor we own; the file stays open as fd 2.
            if unsafe { libc::dup2(file.as_raw_fd(), 2) } < 0 {
                return Err(os("dup2 of the log file onto stderr").into());
            }
            daemon.logs_to_file = true;
        }
        Ok(Some(daemon))
    }
}

/// Celery's `node_format`: `%p` the node name, `%n` its name, `%h` its host, `%d` the host's
/// domain, `%i` 0 and `%I` empty (the main process), `%%` a percent sign.
#[must_use]
pub fn node_format(template: &Path, nodename: &str) -> PathBuf {
    let host_now = crate::hostname();
    let (name, host) = match nodename.split_once('@') {
        Some((name, host)) => (name, host),
        None => ("celery", nodename),
    };
    let host = if host.is_empty() { host_now.as_str() } else { host };
    let domain = host.split_once('.').map_or("", |(_, d)| d);
    let text = template.to_string_lossy();
    let mut out = String::with_capacity(text.len() + 16);
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('p') => out.push_str(nodename),
            Some('n') => out.push_str(name),
            Some('h') => out.push_str(host),
            Some('d') => out.push_str(domain),
            Some('i') => out.push('0'),
            Some('I') => {}
            Some('%') => out.push('%'),
            Some(other) => {
                out.push('%');
                out.push(other);
            }
            None => out.push('%'),
        }
    }
    PathBuf::from(out)
}

fn os(what: &'static str) -> DaemonError {
    DaemonError::Os { what, source: std::io::Error::last_os_error() }
}

/// Set in the detached copy: it does not detach again (whatever form `-D` took on the
/// command line, e.g. `-BD`).
const DETACHED_ENV: &str = "CELERIAC_DETACHED";

/// Starts this command again in a new session, with no terminal (stdin from /dev/null; stdout
/// and stderr to `logfile`, else /dev/null), in the directory it was started in (the copy
/// applies `--workdir` itself).
fn detach(logfile: Option<PathBuf>, launched_from: Option<&Path>) -> Result<(), DaemonError> {
    let exe = std::env::current_exe().map_err(|source| DaemonError::Os { what: "finding this program", source })?;
    let args: Vec<std::ffi::OsString> = std::env::args_os().skip(1).collect();
    let output = |path: &Option<PathBuf>| -> Result<std::process::Stdio, DaemonError> {
        Ok(match path {
            Some(path) => OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .map_err(|source| DaemonError::File { path: path.clone(), source })?
                .into(),
            None => std::process::Stdio::null(),
        })
    };
    let mut command = std::process::Command::new(exe);
    command
        .args(args)
        .env(DETACHED_ENV, "1")
        .stdin(std::process::Stdio::null())
        .stdout(output(&logfile)?)
        .stderr(output(&logfile)?);
    if let Some(dir) = launched_from {
        command.current_dir(dir);
    }
    // SAFETY: setsid is async-signal-safe; it only detaches the child from our session.
    unsafe {
        command.pre_exec(|| {
            if libc::setsid() < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    command.spawn().map_err(|source| DaemonError::Os { what: "starting the detached process", source })?;
    Ok(())
}

/// `setgid` then `setuid` (and the supplementary groups of the user), as Celery's
/// `maybe_drop_privileges`.
fn drop_privileges(uid: Option<&str>, gid: Option<&str>) -> Result<(), DaemonError> {
    let user = uid.map(lookup_user).transpose()?;
    let group = match gid {
        Some(gid) => Some(lookup_group(gid)?),
        None => user.as_ref().map(|(_, gid, _)| *gid),
    };
    if let Some(gid) = group {
        // SAFETY: plain system calls on ids; the name is a valid C string.
        unsafe {
            if let Some((_, _, Some(name))) = &user {
                if libc::initgroups(name.as_ptr(), gid) < 0 {
                    return Err(os("initgroups"));
                }
            }
            if libc::setgid(gid) < 0 {
                return Err(os("setgid"));
            }
        }
    }
    if let Some((uid, _, _)) = user {
        // SAFETY: a plain system call.
        if unsafe { libc::setuid(uid) } < 0 {
            return Err(os("setuid"));
        }
        // Celery checks that root cannot be regained.
        // SAFETY: a plain system call.
        if uid != 0 && unsafe { libc::setuid(0) } == 0 {
            return Err(DaemonError::Os {
                what: "dropping privileges (root could be regained)",
                source: std::io::Error::from(std::io::ErrorKind::PermissionDenied),
            });
        }
    }
    Ok(())
}

/// A user's id, group id and name (for `initgroups`), by name or number.
fn lookup_user(user: &str) -> Result<(libc::uid_t, libc::gid_t, Option<std::ffi::CString>), DaemonError> {
    let no_such = || DaemonError::NoSuch { kind: "user", name: user.to_owned() };
    let name = std::ffi::CString::new(user).map_err(|_| no_such())?;
    // SAFETY: getpwnam/getpwuid return a pointer to static storage or null; read at once.
    unsafe {
        let entry = match user.parse::<libc::uid_t>() {
            Ok(id) => libc::getpwuid(id),
            Err(_) => libc::getpwnam(name.as_ptr()),
        };
        if entry.is_null() {
            return match user.parse::<libc::uid_t>() {
                // A numeric id with no passwd entry: allowed, keeping the current group.
                Ok(id) => Ok((id, libc::getgid(), None)),
                Err(_) => Err(no_such()),
            };
        }
        let name = std::ffi::CStr::from_ptr((*entry).pw_name).to_owned();
        Ok(((*entry).pw_uid, (*entry).pw_gid, Some(name)))
    }
}

/// A group's id, by name or number.
fn lookup_group(group: &str) -> Result<libc::gid_t, DaemonError> {
    if let Ok(id) = group.parse::<libc::gid_t>() {
        return Ok(id);
    }
    let no_such = || DaemonError::NoSuch { kind: "group", name: group.to_owned() };
    let name = std::ffi::CString::new(group).map_err(|_| no_such())?;
    // SAFETY: getgrnam returns a pointer to static storage or null; read at once.
    unsafe {
        let entry = libc::getgrnam(name.as_ptr());
        if entry.is_null() {
            return Err(no_such());
        }
        Ok((*entry).gr_gid)
    }
}

fn read_pid(path: &Path) -> Option<i32> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// Whether the pid file names a live process other than this one.
fn running_pid(path: &Path) -> Option<i32> {
    let pid = read_pid(path)?;
    // SAFETY: signal 0 only checks that the process exists.
    let alive = pid > 0
        && (unsafe { libc::kill(pid, 0) } == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM));
    (alive && u32::try_from(pid).ok() != Some(std::process::id())).then_some(pid)
}

/// Refuses a start the pid file would refuse, without creating it.
fn check_pidfile(path: &Path) -> Result<(), DaemonError> {
    match running_pid(path) {
        Some(pid) => Err(DaemonError::AlreadyRunning { path: path.to_owned(), pid }),
        None => Ok(()),
    }
}

/// Celery's `create_pidlock`: a pid file naming a live process refuses the start; a stale
/// or unreadable one is replaced.
fn create_pidfile(path: &Path) -> Result<PidFile, DaemonError> {
    let file_error = |source| DaemonError::File { path: path.to_owned(), source };
    for _ in 0..2 {
        match OpenOptions::new().write(true).create_new(true).mode(0o644).open(path) {
            Ok(mut file) => {
                writeln!(file, "{}", std::process::id()).map_err(file_error)?;
                file.sync_all().map_err(file_error)?;
                return Ok(PidFile { path: path.to_owned() });
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                check_pidfile(path)?;
                // Stale: Celery removes it and goes on.
                std::fs::remove_file(path).map_err(file_error)?;
            }
            Err(e) => return Err(file_error(e)),
        }
    }
    Err(file_error(std::io::Error::from(std::io::ErrorKind::AlreadyExists)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_expand_celerys_node_placeholders() {
        let p = node_format(Path::new("/var/log/%n%I-%i@%h.%d|%p %% %x.log"), "w1@box.example.com");
        assert_eq!(p, PathBuf::from("/var/log/w1-0@box.example.com.example.com|w1@box.example.com % %x.log"));
    }

    #[test]
    fn a_pid_file_of_a_running_process_refuses_and_a_stale_one_is_replaced() {
        let dir = std::env::temp_dir().join(format!("celeriac-pidfile-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("w.pid");
        // A running process that is not us: our parent.
        let parent = std::os::unix::process::parent_id();
        std::fs::write(&path, format!("{parent}\n")).unwrap();
        let err = create_pidfile(&path).unwrap_err();
        assert!(err.to_string().contains("Seems we're already running?"), "{err}");
        // A process that cannot exist.
        std::fs::write(&path, "2147483646\n").unwrap();
        let held = create_pidfile(&path).unwrap();
        assert_eq!(read_pid(&path), i32::try_from(std::process::id()).ok());
        drop(held);
        assert!(!path.exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
