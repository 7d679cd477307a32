//! A private PostgreSQL server for tests: one per test process, started on first use on
//! `127.0.0.1` and a free port, with a fresh database for each test ([`database`]).
//!
//! It needs the server's binaries (`initdb`, `postgres`, `pg_isready`, `psql`): found in
//! `$SWITCHYARD_PG_BINDIR`, by `pg_config --bindir`, in `/usr/lib/postgresql/<version>/bin`
//! (Debian's `postgresql` package), or on `PATH`. Postgres refuses to run as root, so a test
//! run by root runs them as the `postgres` user.
//!
//! The server is made for speed, not durability (`fsync=off`, trust authentication on
//! loopback only). It lives as long as the test process: it is started under a small shell
//! whose standard input is a pipe from this process, and that shell stops the server and
//! removes its directory when the pipe closes, which the kernel does when the test process
//! exits, however it exits (a `static` is never dropped).

use std::{
    io::Read,
    net::TcpListener,
    os::unix::{fs::MetadataExt, process::CommandExt},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        Mutex, OnceLock,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

/// How long the server may take to accept connections.
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// The running server.
pub struct PgServer {
    port: u16,
    bin: PathBuf,
    /// The supervising shell: it stops the server when its stdin (ours) closes.
    child: Mutex<Option<Child>>,
}

/// The process's server, started on first use.
pub fn server() -> &'static PgServer {
    static SERVER: OnceLock<PgServer> = OnceLock::new();
    SERVER.get_or_init(|| PgServer::start().unwrap_or_else(|err| panic!("postgres: {err}")))
}

/// A fresh, empty database on the process's server (starting it if need be), as a
/// `postgres://` URL for `--db`.
pub async fn database() -> String {
    let server = tokio::task::spawn_blocking(server)
        .await
        .expect("the postgres server starts");
    server.database().await
}

/// A server of the caller's own, stopped when it is dropped: for a test that takes its
/// database away.
pub async fn own_server() -> PgServer {
    tokio::task::spawn_blocking(PgServer::start)
        .await
        .expect("the postgres server starts")
        .unwrap_or_else(|err| panic!("postgres: {err}"))
}

impl PgServer {
    /// A fresh, empty database on this server, as a `postgres://` URL.
    pub async fn database(&self) -> String {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let name = format!("t_{}", NEXT.fetch_add(1, Ordering::Relaxed));
        let out = tokio::process::Command::new(tool(&self.bin, "psql"))
            .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1", "-U"])
            .args(["postgres", "-d", "postgres", "-p"])
            .arg(self.port.to_string())
            .arg("-c")
            .arg(format!("CREATE DATABASE {name}"))
            .output()
            .await
            .expect("psql runs");
        assert!(
            out.status.success(),
            "CREATE DATABASE {name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        self.url(&name)
    }

    /// A URL to database `name` on this server.
    pub fn url(&self, name: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{name}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Starts a server, trying again on another port if the one it picked was taken before
    /// the server bound it.
    fn start() -> Result<PgServer, String> {
        let mut failed = Vec::new();
        for _ in 0..3 {
            match PgServer::start_once() {
                Ok(server) => return Ok(server),
                Err(err) => failed.push(err),
            }
        }
        Err(failed.join("; then: "))
    }

    fn start_once() -> Result<PgServer, String> {
        let bin = bindir()?;
        let user = run_as()?;
        let dir = tempfile::Builder::new()
            .prefix("switchyard-pg-")
            .tempdir()
            .map_err(|e| format!("temporary directory: {e}"))?
            // The supervising shell removes it once the server has stopped.
            .keep();
        let data = dir.join("data");
        if let Some((uid, gid)) = user {
            std::os::unix::fs::chown(&dir, Some(uid), Some(gid))
                .map_err(|e| format!("chown {}: {e}", dir.display()))?;
        }
        let out = as_user(Command::new(bin.join("initdb")), user)
            .args(["-U", "postgres", "-A", "trust", "-E", "UTF8", "--locale=C"])
            .args(["--no-sync", "--no-instructions", "-D"])
            .arg(&data)
            .output()
            .map_err(|e| format!("initdb: {e}"))?;
        if !out.status.success() {
            let _ = std::fs::remove_dir_all(&dir);
            return Err(format!(
                "initdb failed: {}",
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        let port = free_port()?;
        let log = dir.join("postgres.log");
        // `exec` is not used for the server: the shell outlives it to clean up. `cat` returns
        // at end of input, that is when this process is gone (or the handle dropped); `-m
        // immediate` stops the server at once (nothing of it needs to last).
        let script = r#"
            "$1/postgres" -D "$2/data" -k "$2" -h 127.0.0.1 -p "$3" \
                -c fsync=off -c synchronous_commit=off -c full_page_writes=off \
                -c max_connections=300 -c shared_buffers=64MB >"$2/postgres.log" 2>&1 &
            cat >/dev/null
            "$1/pg_ctl" -D "$2/data" -m immediate -w stop >/dev/null 2>&1 || kill -9 $! 2>/dev/null
            wait
            rm -rf "$2"
        "#;
        let child = as_user(Command::new("sh"), user)
            .arg("-c")
            .arg(script)
            .arg("switchyard-pg")
            .arg(&bin)
            .arg(&dir)
            .arg(port.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("starting postgres: {e}"))?;
        // From here on, a failure drops the server, which stops it and removes its directory.
        let server = PgServer {
            port,
            bin,
            child: Mutex::new(Some(child)),
        };
        // Ready when pg_isready says so: it asks the server itself, and returns at once.
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            let ready = Command::new(tool(&server.bin, "pg_isready"))
                .args(["-q", "-h", "127.0.0.1", "-t", "1", "-p"])
                .arg(port.to_string())
                .status()
                .map_err(|e| format!("pg_isready: {e}"))?;
            if ready.success() {
                return Ok(server);
            }
            // Say, the port was taken meanwhile ("could not create any TCP/IP sockets").
            let log = read(&log);
            if log.contains("FATAL") {
                return Err(format!("the server did not start: {log}"));
            }
            if Instant::now() > deadline {
                return Err(format!("not ready after {START_TIMEOUT:?}: {log}"));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for PgServer {
    /// Closes the shell's input: it stops the server and removes its directory.
    fn drop(&mut self) {
        if let Ok(mut child) = self.child.lock()
            && let Some(mut child) = child.take()
        {
            drop(child.stdin.take());
            let _ = child.wait();
        }
    }
}

/// The directory of the server's binaries.
fn bindir() -> Result<PathBuf, String> {
    let has_initdb = |dir: &Path| dir.join("initdb").exists();
    if let Some(dir) = std::env::var_os("SWITCHYARD_PG_BINDIR") {
        return Ok(PathBuf::from(dir));
    }
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output()
        && out.status.success()
    {
        let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if has_initdb(&dir) {
            return Ok(dir);
        }
    }
    // Debian: /usr/lib/postgresql/<major>/bin, the newest first.
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let major = entry.file_name().to_str()?.parse().ok()?;
            Some((major, entry.path().join("bin")))
        })
        .filter(|(_, dir)| has_initdb(dir))
        .collect();
    versions.sort();
    if let Some((_, dir)) = versions.pop() {
        return Ok(dir);
    }
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .find(|dir| has_initdb(dir) && dir.join("postgres").exists())
        .ok_or_else(|| {
            "no PostgreSQL server binaries (initdb, postgres): install the `postgresql` \
             package or set SWITCHYARD_PG_BINDIR"
                .to_owned()
        })
}

/// Whom to run the server as: the `postgres` user (uid, gid) when this process is root,
/// `None` (this process's user) otherwise.
fn run_as() -> Result<Option<(u32, u32)>, String> {
    // /proc/self belongs to this process's effective user.
    let root = std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0);
    if !root {
        return Ok(None);
    }
    let passwd = std::fs::read_to_string("/etc/passwd").map_err(|e| format!("/etc/passwd: {e}"))?;
    passwd
        .lines()
        .find_map(|line| {
            let fields: Vec<&str> = line.split(':').collect();
            match fields.as_slice() {
                ["postgres", _, uid, gid, ..] => Some((uid.parse().ok()?, gid.parse().ok()?)),
                _ => None,
            }
        })
        .map(Some)
        .ok_or_else(|| {
            "running as root, and there is no `postgres` user to run the server as".to_owned()
        })
}

/// A client program: beside the server's binaries, or else on `PATH` (Debian's
/// `postgresql-client` puts `psql` and `pg_isready` in /usr/bin too).
fn tool(bin: &Path, name: &str) -> PathBuf {
    let beside = bin.join(name);
    if beside.exists() {
        beside
    } else {
        PathBuf::from(name)
    }
}

fn as_user(mut command: Command, user: Option<(u32, u32)>) -> Command {
    if let Some((uid, gid)) = user {
        command.uid(uid).gid(gid).env("HOME", "/tmp");
    }
    command
}

fn free_port() -> Result<u16, String> {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| format!("a free port: {e}"))
}

fn read(path: &Path) -> String {
    let mut text = String::new();
    let _ = std::fs::File::open(path).and_then(|mut f| f.read_to_string(&mut text));
    text
}
