//! The `celeriac` binary: the CLI with Celery's built-in tasks registered.

use std::process::ExitCode;

fn main() -> ExitCode {
    celeriac::cli::main(celeriac::Registry::with_builtins())
}
