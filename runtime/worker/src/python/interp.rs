//! Which Python interpreter the pool children are, and whether it can be.
//!
//! A pool child is the interpreter itself (running `celeriac._pool_child`), so it runs with its
//! own virtualenv, standard library and `sys.executable`, whatever its version (3.9 or later):
//! the worker binary links no libpython. The task loop is in the `celeriac._native` extension of
//! the celeriac package installed in that environment, so the worker checks once, at start, that
//! the package is there and speaks its frame protocol ([`celeriac_pool::PROTOCOL`]).

use std::{path::PathBuf, process::Command};

use serde::Deserialize;

/// The oldest Python the pool runs (`major`, `minor`); the extension is built for its stable ABI.
pub const MINIMUM_PYTHON: (u32, u32) = (3, 9);

/// Reports the interpreter and its celeriac package as one JSON object. `sys.path[0]` (the
/// current directory, for `-c`) is dropped first, as the child drops it: a `celeriac` directory
/// in the working directory must not shadow the installed package.
const PROBE: &str = r"import sys
if sys.path and sys.path[0] == '': del sys.path[0]
import json
report = {'executable': sys.executable, 'version': list(sys.version_info[:3])}
try:
    import celeriac._native as native
    report['package'] = {'version': native.__version__, 'pool_protocol': native.POOL_PROTOCOL}
except Exception as e:
    report['package_error'] = '%s: %s' % (type(e).__name__, e)
print(json.dumps(report))";

/// What the probe learned about the target interpreter.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct Interpreter {
    /// The command as chosen (`--python`, …): what the probe ran, so what children run (a
    /// wrapper script that sets up an environment stays in the loop).
    #[serde(skip)]
    pub program: String,
    /// `sys.executable` (a venv's `bin/python`, not resolved further), for messages.
    pub executable: PathBuf,
    /// `major`, `minor`, `micro`.
    pub version: (u32, u32, u32),
    /// The celeriac package installed for it.
    pub package: Option<Package>,
    /// Why `celeriac._native` did not import.
    #[serde(default)]
    pub package_error: Option<String>,
}

/// The celeriac package an interpreter imports.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct Package {
    /// `celeriac._native.__version__`.
    pub version: String,
    /// `celeriac._native.POOL_PROTOCOL`.
    pub pool_protocol: u32,
}

impl Interpreter {
    /// `major.minor.micro`.
    #[must_use]
    pub fn version_text(&self) -> String {
        let (major, minor, micro) = self.version;
        format!("{major}.{minor}.{micro}")
    }
}

/// Why the interpreter cannot run the pool.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum InterpreterError {
    /// It could not be run at all.
    #[error("cannot run the Python interpreter {python:?}: {source} (use --python or activate a virtualenv)")]
    NotRunnable {
        /// The interpreter as given.
        python: String,
        /// Why.
        source: std::io::Error,
    },
    /// The probe exited with an error.
    #[error("the Python interpreter {python:?} failed ({status}): {stderr}")]
    ProbeFailed {
        /// The interpreter as given.
        python: String,
        /// How it exited.
        status: std::process::ExitStatus,
        /// Its standard error, trimmed.
        stderr: String,
    },
    /// The probe printed something else than its report.
    #[error("unexpected output from {python:?} ({source}): {stdout}")]
    UnexpectedOutput {
        /// The interpreter as given.
        python: String,
        /// Why the report did not read.
        source: serde_json::Error,
        /// What it printed.
        stdout: String,
    },
    /// Older than [`MINIMUM_PYTHON`].
    #[error("{} is Python {}; celeriac needs Python {}.{} or later", .found.executable.display(), .found.version_text(), MINIMUM_PYTHON.0, MINIMUM_PYTHON.1)]
    TooOld {
        /// What the probe found.
        found: Box<Interpreter>,
    },
    /// `celeriac._native` does not import there.
    #[error(
        "the celeriac package is not installed for {} ({error}): run `{} -m pip install celeriac=={}`",
        .executable.display(),
        .executable.display(),
        env!("CARGO_PKG_VERSION")
    )]
    NoPackage {
        /// The interpreter.
        executable: PathBuf,
        /// The import error.
        error: String,
    },
    /// The installed package is another release, with other frames.
    #[error(
        "{} has celeriac {found_version} (pool protocol {found_protocol}), this worker is celeriac {} (pool protocol {}): \
         install the same release in both places",
        .executable.display(),
        env!("CARGO_PKG_VERSION"),
        celeriac_pool::PROTOCOL
    )]
    ProtocolMismatch {
        /// The interpreter.
        executable: PathBuf,
        /// Its celeriac version.
        found_version: String,
        /// Its frame protocol.
        found_protocol: u32,
    },
}

/// The interpreter to probe: `explicit` (`--python` or `$CELERIAC_PYTHON`, which the `celeriac`
/// command of the Python package sets to its own interpreter), else `$VIRTUAL_ENV/bin/python`,
/// else `python3` on `PATH`.
#[must_use]
pub fn choose(explicit: Option<&str>) -> String {
    if let Some(p) = explicit.filter(|p| !p.is_empty()) {
        return p.to_owned();
    }
    if let Some(venv) = std::env::var_os("VIRTUAL_ENV").filter(|v| !v.is_empty()) {
        let python = PathBuf::from(venv).join("bin/python");
        if python.exists() {
            return python.to_string_lossy().into_owned();
        }
    }
    "python3".to_owned()
}

/// Runs `python` once and reads its version and its celeriac package.
///
/// # Errors
/// [`InterpreterError`]: not runnable, too old, no celeriac package, or another release's.
pub fn probe(python: &str) -> Result<Interpreter, InterpreterError> {
    let out = Command::new(python)
        .args(["-c", PROBE])
        .output()
        .map_err(|source| InterpreterError::NotRunnable { python: python.to_owned(), source })?;
    if !out.status.success() {
        return Err(InterpreterError::ProbeFailed {
            python: python.to_owned(),
            status: out.status,
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        });
    }
    let mut found: Interpreter =
        serde_json::from_slice(&out.stdout).map_err(|source| InterpreterError::UnexpectedOutput {
            python: python.to_owned(),
            source,
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        })?;
    python.clone_into(&mut found.program);
    check(found)
}

/// The probe's verdict on what it found.
fn check(found: Interpreter) -> Result<Interpreter, InterpreterError> {
    if (found.version.0, found.version.1) < MINIMUM_PYTHON {
        return Err(InterpreterError::TooOld { found: Box::new(found) });
    }
    match &found.package {
        None => Err(InterpreterError::NoPackage {
            executable: found.executable.clone(),
            error: found.package_error.clone().unwrap_or_else(|| "not found".to_owned()),
        }),
        Some(package) if package.pool_protocol != celeriac_pool::PROTOCOL => Err(InterpreterError::ProtocolMismatch {
            executable: found.executable.clone(),
            found_version: package.version.clone(),
            found_protocol: package.pool_protocol,
        }),
        Some(_) => Ok(found),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn found(version: (u32, u32, u32), package: Option<Package>) -> Interpreter {
        Interpreter {
            program: "python3".into(),
            executable: "/srv/app/.venv/bin/python".into(),
            version,
            package,
            package_error: Some("ModuleNotFoundError: No module named 'celeriac'".into()),
        }
    }

    fn package(pool_protocol: u32) -> Option<Package> {
        Some(Package { version: "0.0.9".into(), pool_protocol })
    }

    #[test]
    fn check_accepts_any_python_from_3_9_with_the_same_protocol() {
        for minor in [9, 10, 11, 12, 13, 14] {
            let ok = check(found((3, minor, 0), package(celeriac_pool::PROTOCOL))).unwrap();
            assert_eq!(ok.version_text(), format!("3.{minor}.0"));
        }
    }

    #[test]
    fn check_refuses_old_pythons_missing_packages_and_other_releases() {
        let err = check(found((3, 8, 18), package(celeriac_pool::PROTOCOL))).unwrap_err();
        assert_eq!(err.to_string(), "/srv/app/.venv/bin/python is Python 3.8.18; celeriac needs Python 3.9 or later");
        let err = check(found((3, 12, 1), None)).unwrap_err();
        assert!(
            err.to_string().starts_with("the celeriac package is not installed for /srv/app/.venv/bin/python"),
            "{err}"
        );
        assert!(err.to_string().contains("No module named 'celeriac'"), "{err}");
        let err = check(found((3, 12, 1), package(celeriac_pool::PROTOCOL + 1))).unwrap_err();
        assert!(
            matches!(err, InterpreterError::ProtocolMismatch { found_protocol, .. } if found_protocol == celeriac_pool::PROTOCOL + 1)
        );
    }

    #[test]
    fn probe_reports_a_missing_interpreter() {
        let err = probe("/nonexistent/python3").unwrap_err();
        assert!(matches!(err, InterpreterError::NotRunnable { .. }), "{err:?}");
        assert!(err.to_string().starts_with("cannot run the Python interpreter \"/nonexistent/python3\": "), "{err}");
    }
}
