//! Which Python the pool children embed, and the environment that makes the embedded
//! interpreter the user's (its virtualenv, its standard library, its libpython).
//!
//! The binary links one libpython (`major.minor` fixed at build time), but an embedded CPython
//! finds its prefix from the program name, so without help it would run the system Python's
//! packages, or mix one build's library with another's standard library. The worker therefore
//! probes the target interpreter once and starts each child with `PYTHONEXECUTABLE` (its
//! `sys.executable`: a virtualenv's `bin/python` keeps the venv) and `LD_LIBRARY_PATH` led by
//! its `LIBDIR` (the matching libpython). The child checks the result and restores both
//! variables in `os.environ`, so processes a task starts see the worker's environment.

use std::{path::PathBuf, process::Command};

use serde::Deserialize;

/// The `major.minor` of the Python this binary was built against.
pub const BUILD_PYTHON_VERSION: &str = env!("CELERIAC_BUILD_PYTHON");

const PROBE: &str = "import json, sys, sysconfig; print(json.dumps({'executable': sys.executable, \
'version': '%d.%d.%d' % sys.version_info[:3], 'prefix': sys.prefix, 'base_prefix': sys.base_prefix, \
'shared': bool(sysconfig.get_config_var('Py_ENABLE_SHARED')), 'libdir': sysconfig.get_config_var('LIBDIR') or ''}))";

/// What the probe learned about the target interpreter.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct Interpreter {
    /// `sys.executable` (a venv's `bin/python`, not resolved further).
    pub executable: PathBuf,
    /// `major.minor.micro`.
    pub version: String,
    /// `sys.prefix` (the venv).
    pub prefix: PathBuf,
    /// `sys.base_prefix` (the installation).
    pub base_prefix: PathBuf,
    /// Whether libpython is a shared library.
    pub shared: bool,
    /// Where libpython lives.
    pub libdir: String,
}

impl Interpreter {
    /// `major.minor`.
    #[must_use]
    pub fn minor_version(&self) -> &str {
        match self.version.match_indices('.').nth(1) {
            Some((i, _)) => &self.version[..i],
            None => &self.version,
        }
    }
}

/// Why the interpreter cannot be the pool's.
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
    /// Another `major.minor` than the one this binary embeds.
    #[error(
        "{} is Python {}, but this celeriac binary embeds Python {BUILD_PYTHON_VERSION}: use --python with a \
         {BUILD_PYTHON_VERSION} interpreter, or build celeriac against Python {}",
        .found.executable.display(),
        .found.version,
        .found.minor_version()
    )]
    WrongVersion {
        /// What the probe found.
        found: Box<Interpreter>,
    },
}

/// The interpreter to probe: `explicit` (`--python`), else `$VIRTUAL_ENV/bin/python`, else
/// `python3` on `PATH`.
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

/// Runs `python` once and reads its paths and version; refuses another `major.minor` than the
/// build's.
///
/// # Errors
/// [`InterpreterError`]: not found, not runnable, or the wrong version.
pub fn probe(python: &str) -> Result<Interpreter, InterpreterError> {
    let out = Command::new(python)
        .args(["-I", "-c", PROBE])
        .output()
        .map_err(|source| InterpreterError::NotRunnable { python: python.to_owned(), source })?;
    if !out.status.success() {
        return Err(InterpreterError::ProbeFailed {
            python: python.to_owned(),
            status: out.status,
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        });
    }
    let found: Interpreter =
        serde_json::from_slice(&out.stdout).map_err(|source| InterpreterError::UnexpectedOutput {
            python: python.to_owned(),
            source,
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        })?;
    if found.minor_version() != BUILD_PYTHON_VERSION {
        return Err(InterpreterError::WrongVersion { found: Box::new(found) });
    }
    Ok(found)
}

/// The environment variables a pool child starts with (on top of the worker's).
#[must_use]
pub fn child_env(interp: &Interpreter) -> Vec<(String, String)> {
    let mut env = vec![("PYTHONEXECUTABLE".to_owned(), interp.executable.to_string_lossy().into_owned())];
    let inherited = std::env::var("LD_LIBRARY_PATH").ok();
    env.push(("CELERIAC_INHERITED_LD_LIBRARY_PATH".to_owned(), inherited.clone().unwrap_or_default()));
    env.push(("CELERIAC_EXPECT_PYTHON".to_owned(), format!("{}:{}", interp.version, interp.prefix.display())));
    if interp.shared && !interp.libdir.is_empty() {
        let path = match inherited.filter(|p| !p.is_empty()) {
            Some(p) => format!("{}:{p}", interp.libdir),
            None => interp.libdir.clone(),
        };
        env.push(("LD_LIBRARY_PATH".to_owned(), path));
    }
    env
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minor_version_and_child_env() {
        let interp = Interpreter {
            executable: "/srv/app/.venv/bin/python".into(),
            version: "3.11.7".into(),
            prefix: "/srv/app/.venv".into(),
            base_prefix: "/opt/python".into(),
            shared: true,
            libdir: "/opt/python/lib".into(),
        };
        assert_eq!(interp.minor_version(), "3.11");
        let env = child_env(&interp);
        let get = |k: &str| env.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
        assert_eq!(get("PYTHONEXECUTABLE").as_deref(), Some("/srv/app/.venv/bin/python"));
        assert!(get("LD_LIBRARY_PATH").unwrap().starts_with("/opt/python/lib"));
        assert_eq!(get("CELERIAC_EXPECT_PYTHON").as_deref(), Some("3.11.7:/srv/app/.venv"));
    }

    #[test]
    fn probe_reports_a_missing_interpreter() {
        let err = probe("/nonexistent/python3").unwrap_err();
        assert!(matches!(err, InterpreterError::NotRunnable { .. }), "{err:?}");
        assert!(err.to_string().starts_with("cannot run the Python interpreter \"/nonexistent/python3\": "), "{err}");
    }
}
