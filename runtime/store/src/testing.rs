//! Throwaway PostgreSQL for tests (feature `testing`).
//!
//! [`TestDatabase::new`] gives each test its own database, cloned from a migrated template, on
//! one cluster shared by every test process of the run:
//!
//! - With `TEST_DATABASE_URL` set (a server where the user may `CREATE DATABASE`), that server.
//! - Otherwise a cluster started from the system's PostgreSQL binaries in
//!   `$CELERIAC_TEST_PGDIR` (default `<tmp>/celeriac-test-pg-<uid>`): `initdb` on first use,
//!   `pg_ctl start` on a free port, reused by later test processes (a file lock serialises the
//!   start) and left running for them; `scripts/test` stops it at the end of the run. Binaries
//!   come from `$CELERIAC_PG_BIN`, `pg_config --bindir`, or the newest
//!   `/usr/lib/postgresql/*/bin`. As root, the server runs as the `postgres` user, since
//!   `initdb` and `postgres` refuse to run as root.
//!
//! The template database is named after a hash of the migrations, so editing a migration builds
//! a fresh one. A test's database is dropped when its [`TestDatabase`] drops, unless the test is
//! panicking: then it is kept and its URL printed for inspection.
//!
//! [`PgCluster::start_private`] starts a cluster of the test's own, for tests that restart or
//! stop the server.
//!
//! Access to the clusters started here: TCP on 127.0.0.1 with a random password
//! (scram-sha-256, kept in `<dir>/password`, mode 600), the Unix socket in the data directory
//! (the server's owner only). A cluster directory must be new or belong to us (or to the
//! server's user) and be writable by nobody else, so that another local user cannot prepare it.

use std::{
    fs::{self, File},
    io,
    net::{TcpListener, TcpStream},
    os::unix::{fs::MetadataExt as _, process::CommandExt as _},
    path::{Path, PathBuf},
    process::Command,
    sync::OnceLock,
    time::Duration,
};

use tokio_postgres::NoTls;

use crate::{migrations_fingerprint, Store, StoreConfig};

/// A PostgreSQL cluster started from the system binaries.
#[derive(Debug)]
pub struct PgCluster {
    dir: PathBuf,
    bin: PathBuf,
    port: u16,
    owner: Option<(u32, u32)>,
    private: bool,
    password: String,
}

fn bin_dir() -> io::Result<PathBuf> {
    if let Ok(dir) = std::env::var("CELERIAC_PG_BIN") {
        return Ok(PathBuf::from(dir));
    }
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output() {
        let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if out.status.success() && dir.join("initdb").exists() {
            return Ok(dir);
        }
    }
    let mut candidates: Vec<(u32, PathBuf)> = fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let version = e.file_name().to_string_lossy().parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((version, bin))
        })
        .collect();
    candidates.sort();
    candidates.pop().map(|(_, p)| p).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::NotFound,
            "no PostgreSQL server binaries found (looked at $CELERIAC_PG_BIN, pg_config, /usr/lib/postgresql/*/bin); \
             install them with `scripts/install-postgres` or `apt-get install postgresql`, or set TEST_DATABASE_URL",
        )
    })
}

/// The uid/gid to run the server as: the `postgres` user when we are root, else ourselves.
fn server_owner() -> io::Result<Option<(u32, u32)>> {
    if fs::metadata("/proc/self")?.uid() != 0 {
        return Ok(None);
    }
    let passwd = fs::read_to_string("/etc/passwd")?;
    for line in passwd.lines() {
        let fields: Vec<&str> = line.split(':').collect();
        if fields.first() == Some(&"postgres") && fields.len() > 3 {
            let uid = fields[2].parse().map_err(|_| io::Error::other("bad uid for postgres in /etc/passwd"))?;
            let gid = fields[3].parse().map_err(|_| io::Error::other("bad gid for postgres in /etc/passwd"))?;
            return Ok(Some((uid, gid)));
        }
    }
    Err(io::Error::other(
        "running as root, but there is no `postgres` user to run the server as (initdb refuses root); \
         install Debian's postgresql package, which creates it",
    ))
}

fn free_port() -> io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

impl PgCluster {
    fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new(self.bin.join(program));
        if let Some((uid, gid)) = self.owner {
            cmd.uid(uid).gid(gid);
        }
        cmd.env_remove("PGDATA").env("LC_ALL", "C");
        cmd
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.join("data")
    }

    fn run(&self, cmd: &mut Command, what: &str) -> io::Result<()> {
        let out = cmd.output()?;
        if out.status.success() {
            Ok(())
        } else {
            let log = fs::read_to_string(self.dir.join("postgres.log")).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(20).collect();
            Err(io::Error::other(format!(
                "{what} failed ({}): {}{}\nserver log tail:\n{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr),
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            )))
        }
    }

    fn prepare(dir: &Path, private: bool) -> io::Result<PgCluster> {
        use std::os::unix::fs::{DirBuilderExt as _, PermissionsExt as _};
        let owner = server_owner()?;
        if let Some(parent) = dir.parent() {
            fs::create_dir_all(parent)?;
        }
        match fs::DirBuilder::new().mode(0o700).create(dir) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                let meta = fs::symlink_metadata(dir)?;
                let me = fs::metadata("/proc/self")?.uid();
                let ours = meta.uid() == me || owner.is_some_and(|(uid, _)| uid == meta.uid());
                if !meta.is_dir() || !ours || meta.permissions().mode() & 0o022 != 0 {
                    return Err(io::Error::other(format!(
                        "refusing {}: a test cluster directory must belong to us (or to the server's user) and be \
                         writable by nobody else",
                        dir.display()
                    )));
                }
            }
            Err(e) => return Err(e),
        }
        if let Some((uid, gid)) = owner {
            std::os::unix::fs::chown(dir, Some(uid), Some(gid))?;
        }
        let password = fs::read_to_string(dir.join("password")).map(|p| p.trim().to_owned()).unwrap_or_default();
        Ok(PgCluster { dir: dir.to_path_buf(), bin: bin_dir()?, port: 0, owner, private, password })
    }

    fn init_and_start(&mut self) -> io::Result<()> {
        if !self.data_dir().join("PG_VERSION").exists() || self.password.is_empty() {
            let _ = fs::remove_dir_all(self.data_dir());
            let data = self.data_dir();
            self.password = uuid::Uuid::new_v4().simple().to_string();
            let password_file = self.dir.join("password");
            {
                use std::{io::Write as _, os::unix::fs::OpenOptionsExt as _};
                let _ = fs::remove_file(&password_file);
                let mut file = fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&password_file)?;
                file.write_all(self.password.as_bytes())?;
            }
            // initdb reads it as the server's user.
            if let Some((uid, gid)) = self.owner {
                std::os::unix::fs::chown(&password_file, Some(uid), Some(gid))?;
            }
            let pwfile = format!("--pwfile={}", password_file.display());
            self.run(
                self.command("initdb").arg("-D").arg(&data).args([
                    "-U",
                    "postgres",
                    "--auth-local=trust",
                    "--auth-host=scram-sha-256",
                    &pwfile,
                    "--no-sync",
                    "-E",
                    "UTF8",
                    "--locale=C",
                ]),
                "initdb",
            )?;
        }
        let mut last_err = None;
        for _ in 0..3 {
            self.port = free_port()?;
            match self.pg_ctl_start() {
                Ok(()) => {
                    fs::write(self.dir.join("port"), self.port.to_string())?;
                    return Ok(());
                }
                Err(e) => last_err = Some(e),
            }
        }
        Err(last_err.unwrap_or_else(|| io::Error::other("could not start PostgreSQL")))
    }

    fn pg_ctl_start(&self) -> io::Result<()> {
        let data = self.data_dir();
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off -c full_page_writes=off \
             -c max_connections=400 -c shared_buffers=128MB",
            self.port,
            data.display()
        );
        self.run(
            self.command("pg_ctl")
                .arg("-D")
                .arg(&data)
                .arg("-l")
                .arg(self.dir.join("postgres.log"))
                .args(["-w", "-t", "60", "-o", &options, "start"]),
            "pg_ctl start",
        )
    }

    /// Starts a cluster of the caller's own in a new temporary directory; it is stopped and
    /// removed on drop. For tests that restart or stop the server.
    ///
    /// # Errors
    /// Missing binaries, `initdb` or `pg_ctl` failures (the error includes the server log).
    pub fn start_private() -> io::Result<PgCluster> {
        let dir = std::env::temp_dir().join(format!("celeriac-pg-{}", uuid::Uuid::new_v4().simple()));
        let mut cluster = PgCluster::prepare(&dir, true)?;
        cluster.init_and_start()?;
        Ok(cluster)
    }

    /// The shared cluster of this test run (see the module docs), started if needed.
    ///
    /// # Errors
    /// As [`PgCluster::start_private`].
    pub fn shared() -> io::Result<PgCluster> {
        let dir = std::env::var_os("CELERIAC_TEST_PGDIR").map_or_else(
            || {
                std::env::temp_dir()
                    .join(format!("celeriac-test-pg-{}", fs::metadata("/proc/self").map(|m| m.uid()).unwrap_or(0)))
            },
            PathBuf::from,
        );
        let mut cluster = PgCluster::prepare(&dir, false)?;
        let lock = File::create(dir.join("start.lock"))?;
        lock.lock()?;
        if let Some(port) = fs::read_to_string(dir.join("port")).ok().and_then(|p| p.trim().parse().ok()) {
            if dir.join("data/postmaster.pid").exists() && TcpStream::connect(("127.0.0.1", port)).is_ok() {
                cluster.port = port;
                return Ok(cluster);
            }
        }
        cluster.init_and_start()?;
        Ok(cluster)
    }

    /// The TCP port.
    #[must_use]
    pub fn port(&self) -> u16 {
        self.port
    }

    /// URL of database `db` on this cluster.
    #[must_use]
    pub fn url(&self, db: &str) -> String {
        format!("postgresql://postgres:{}@127.0.0.1:{}/{db}", self.password, self.port)
    }

    /// Stops the server (fast shutdown: connections are closed).
    ///
    /// # Errors
    /// `pg_ctl` failures.
    pub fn stop(&self) -> io::Result<()> {
        self.run(
            self.command("pg_ctl").arg("-D").arg(self.data_dir()).args(["-w", "-m", "fast", "stop"]),
            "pg_ctl stop",
        )
    }

    /// Starts the server again on the same port after [`PgCluster::stop`].
    ///
    /// # Errors
    /// `pg_ctl` failures.
    pub fn start_again(&self) -> io::Result<()> {
        self.pg_ctl_start()
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        if self.private {
            let _ =
                self.command("pg_ctl").arg("-D").arg(self.data_dir()).args(["-w", "-m", "immediate", "stop"]).output();
            let _ = fs::remove_dir_all(&self.dir);
        }
    }
}

static SHARED_ADMIN_URL: OnceLock<Result<String, String>> = OnceLock::new();

fn shared_admin_url() -> String {
    SHARED_ADMIN_URL
        .get_or_init(|| match std::env::var("TEST_DATABASE_URL") {
            Ok(url) if !url.is_empty() => Ok(url),
            _ => PgCluster::shared().map(|c| c.url("postgres")).map_err(|e| e.to_string()),
        })
        .clone()
        .unwrap_or_else(|e| panic!("test PostgreSQL unavailable: {e}"))
}

async fn admin_connect(url: &str) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(url, NoTls)
        .await
        .unwrap_or_else(|e| panic!("cannot connect to test server {url}: {e}"));
    tokio::spawn(connection);
    client
}

fn with_db(url: &str, db: &str) -> String {
    let mut config: tokio_postgres::Config = url.parse().unwrap_or_else(|e| panic!("bad TEST_DATABASE_URL {url}: {e}"));
    config.dbname(db);
    let user = config.get_user().unwrap_or("postgres").to_owned();
    let password = config.get_password().map(|p| format!(":{}", String::from_utf8_lossy(p))).unwrap_or_default();
    let host = match config.get_hosts().first() {
        Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
        _ => "127.0.0.1".to_owned(),
    };
    let port = config.get_ports().first().copied().unwrap_or(5432);
    format!("postgresql://{user}{password}@{host}:{port}/{db}")
}

/// A migrated database of the test's own.
#[derive(Debug)]
pub struct TestDatabase {
    /// Database name.
    pub name: String,
    /// URL to reach it.
    pub url: String,
    admin_url: String,
}

impl TestDatabase {
    /// Creates a fresh database from the migrated template on the shared cluster.
    ///
    /// # Panics
    /// When no server can be had; the message says why (a test helper has no better recourse).
    pub async fn new() -> TestDatabase {
        TestDatabase::on_server(&shared_admin_url()).await
    }

    /// Creates a fresh migrated database on the server at `admin_url` (a database URL on which
    /// the user may `CREATE DATABASE`).
    ///
    /// # Panics
    /// When the server refuses.
    pub async fn on_server(admin_url: &str) -> TestDatabase {
        let admin = admin_connect(admin_url).await;
        let template = format!("celeriac_tmpl_{:016x}", migrations_fingerprint());
        admin.execute("select pg_advisory_lock(7245017)", &[]).await.expect("advisory lock");
        let exists = admin
            .query_opt("select 1 from pg_database where datname = $1", &[&template])
            .await
            .expect("query pg_database")
            .is_some();
        if !exists {
            let building = format!("{template}_building");
            admin.batch_execute(&format!("drop database if exists {building}")).await.expect("drop stale template");
            admin.batch_execute(&format!("create database {building}")).await.expect("create template");
            let store = Store::new(&StoreConfig::new(with_db(admin_url, &building))).expect("store config");
            store.migrate().await.expect("migrate template database");
            drop(store);
            admin
                .batch_execute(&format!("alter database {building} with allow_connections true; alter database {building} rename to {template}"))
                .await
                .expect("rename template");
        }
        admin.execute("select pg_advisory_unlock(7245017)", &[]).await.expect("advisory unlock");
        let name = format!("celeriac_test_{}", uuid::Uuid::new_v4().simple());
        admin
            .batch_execute(&format!("create database {name} template {template}"))
            .await
            .expect("create test database");
        TestDatabase { url: with_db(admin_url, &name), name, admin_url: admin_url.to_owned() }
    }

    /// A [`Store`] on this database.
    ///
    /// # Panics
    /// Never for a URL this harness built.
    #[must_use]
    pub fn store(&self) -> Store {
        Store::new(&StoreConfig { max_connections: 8, ..StoreConfig::new(&self.url) }).expect("store for test database")
    }

    /// A plain client on this database, for assertions a test makes in SQL.
    pub async fn client(&self) -> tokio_postgres::Client {
        admin_connect(&self.url).await
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("test failed; keeping its database: {}", self.url);
            return;
        }
        let admin_url = self.admin_url.clone();
        let name = self.name.clone();
        // Drop runs inside the test's runtime; use a thread with a runtime of its own.
        let _ = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread().enable_all().build() else { return };
            rt.block_on(async move {
                if let Ok((client, conn)) = tokio_postgres::connect(&admin_url, NoTls).await {
                    tokio::spawn(conn);
                    let _ = tokio::time::timeout(
                        Duration::from_secs(30),
                        client.batch_execute(&format!("drop database if exists {name} with (force)")),
                    )
                    .await;
                }
            });
        })
        .join();
    }
}
