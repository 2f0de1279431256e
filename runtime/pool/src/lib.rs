//! What a celeriac worker and its Python pool children share.
//!
//! A worker that runs a Celery app's tasks (`celeriac worker -A proj`) never starts Python
//! itself. Its pool children are the app's own interpreter running `celeriac._pool_child`,
//! whose task loop is Rust in the `celeriac._native` extension module. The two sides are built
//! separately (the worker binary, the abi3 extension) and talk over a Unix socket pair in the
//! [`frame`]s defined here, versioned by [`PROTOCOL`]. [`process`] holds the few system calls
//! both sides need. See `docs/embedded-python.md`.

pub mod frame;
pub mod process;

/// The version of the frames and of the child's command line. A worker refuses an interpreter
/// whose `celeriac._native.POOL_PROTOCOL` differs (another celeriac release is installed
/// there), and a child refuses a worker that passes another `--protocol`.
pub const PROTOCOL: u32 = 2;

/// What a pool child runs: `python -c CHILD_BOOTSTRAP --protocol … --index …`. Not `-m`, which
/// would import the `celeriac` package with the working directory first on `sys.path` (a
/// `celeriac` directory there would shadow the installed package); `-c` puts an empty entry
/// there, which the bootstrap drops before importing anything (with `-P`/`PYTHONSAFEPATH` there
/// is none). `celery worker` itself runs without the working directory on `sys.path` too:
/// Celery's `find_app` imports the app from it.
pub const CHILD_BOOTSTRAP: &str =
    "import sys\nif sys.path[:1] == ['']: del sys.path[0]\nfrom celeriac._pool_child import run\nrun()";

/// Exit code of a child whose app failed to load (after its `InitError` frame).
pub const EXIT_INIT_FAILED: u8 = 3;

/// Set (to `1`) in a child's environment when its first frame is [`frame::ToChild::BrokerUrl`]:
/// the broker's full URL, with the password that `CELERY_BROKER_URL` leaves out. The child
/// registers it with the transport in-process (`celeriac.transport.register_url`), so the
/// password reaches neither a task's `os.environ` nor any process a task starts.
pub const BROKER_URL_FRAME_ENV: &str = "CELERIAC_BROKER_URL_FRAME";

/// The worker's pid, in a child's environment: the child checks it is still its parent after
/// asking to die with it.
pub const PARENT_PID_ENV: &str = "CELERIAC_PARENT_PID";
