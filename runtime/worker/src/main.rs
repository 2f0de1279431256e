//! The `celeriac` binary: the CLI with Celery's built-in tasks registered.

use std::process::ExitCode;

/// mimalloc, not glibc's malloc: the worker decodes a claimed message on one runtime thread and
/// frees it on another, and glibc serialises those frees on its arena lock.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    celeriac::cli::main(celeriac::Registry::with_builtins())
}
