//! Test support for islb: real servers, real peers, real processes.
//!
//! Every integration test that needs NATS or Redis starts its own server through this
//! crate, on a free loopback port (never a fixed port, never the machine's own 4222 or
//! 6379), waits until it accepts connections, and kills it and removes its files on drop,
//! also when the test panics. A missing binary is a test failure with an install hint,
//! never a silent skip.
//!
//! - [`NatsServer`]: `nats-server -p -1 --ports_file_dir <tmp>`; the port is read from the
//!   ports file the server writes.
//! - [`RedisServer`]: `redis-server` on a port found by binding `127.0.0.1:0` (retried if
//!   another process takes the port first); can be stopped, restarted on the same port,
//!   and paused with SIGSTOP to play a store that hangs.
//! - [`gopeer`]: the project's Go interop peer built by `interop/gopeer/build.sh`.
//! - [`Proc`]: any child process (islb itself, gopeer watch...) whose output goes to a log
//!   file, killed on drop, with helpers to wait for a log line and to stop it with a signal.
//!
//! This crate is synchronous and std-only, so it fits plain and tokio tests alike.

use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

/// How long a server may take to accept connections before the test fails.
const START_TIMEOUT: Duration = Duration::from_secs(15);

/// The workspace root (the directory with the top-level `Cargo.toml`).
pub fn workspace_root() -> PathBuf {
    let here = Path::new(env!("CARGO_MANIFEST_DIR"));
    here.ancestors().nth(2).expect("crates/testkit sits two levels below the workspace root").to_path_buf()
}

/// Finds a binary on `PATH` (or at an absolute path), failing with an install hint.
fn require_binary(name: &str, hint: &str) -> PathBuf {
    for dir in ["/usr/sbin", "/usr/bin", "/usr/local/bin", "/usr/local/sbin"]
        .iter()
        .map(PathBuf::from)
        .chain(std::env::var_os("PATH").into_iter().flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>()))
    {
        let candidate = dir.join(name);
        if candidate.is_file() {
            return candidate;
        }
    }
    panic!("`{name}` is not installed; {hint} (or run scripts/test, which installs it)");
}

/// A free TCP port on 127.0.0.1 at the moment of the call (the caller must cope with a
/// race: another process may take it before it is used).
pub fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("binding 127.0.0.1:0")
}

/// Sets up a child so that it dies with the test process (Linux `PR_SET_PDEATHSIG`), even
/// when the test runner kills the test with SIGKILL and no destructor runs.
#[allow(unsafe_code)]
fn die_with_parent(cmd: &mut Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: prctl is async-signal-safe and the closure touches no Rust state.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
}

fn send_signal(child: &Child, sig: libc::c_int) {
    let pid = child.id() as libc::pid_t;
    // SAFETY: kill(2) on a pid we spawned and have not reaped yet.
    #[allow(unsafe_code)]
    unsafe {
        libc::kill(pid, sig);
    }
}

/// Calls `f` every `every` until it returns a value, or `timeout` has passed.
fn poll<T>(timeout: Duration, every: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let end = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() >= end {
            return None;
        }
        std::thread::sleep(every);
    }
}

fn wait_with_timeout(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    poll(timeout, Duration::from_millis(10), || child.try_wait().ok().flatten())
}

fn kill_and_reap(child: &mut Child) {
    if let Ok(None) = child.try_wait() {
        let _ = child.kill();
    }
    let _ = child.wait();
}

fn wait_for_tcp(addr: SocketAddr, what: &str, log: &Path) {
    let connects = || TcpStream::connect_timeout(&addr, Duration::from_millis(200)).ok();
    if poll(START_TIMEOUT, Duration::from_millis(20), connects).is_some() {
        return;
    }
    panic!(
        "{what} did not accept connections on {addr} within {START_TIMEOUT:?}; its log:\n{}",
        fs::read_to_string(log).unwrap_or_default()
    );
}

/// A real `nats-server` for one test, on a free loopback port.
pub struct NatsServer {
    child: Option<Child>,
    dir: TempDir,
    port: u16,
    cluster: Option<Cluster>,
    /// A configuration file given to the server (`-c`).
    conf: Option<PathBuf>,
}

/// A server's place in a cluster: its route port and the other servers' route ports.
#[derive(Debug, Clone, Default)]
struct Cluster {
    port: u16,
    routes: Vec<u16>,
}

impl NatsServer {
    /// Starts a server on a port the server itself picks (`-p -1`), and waits until it
    /// accepts connections.
    pub fn start() -> Self {
        let dir = tempfile::Builder::new().prefix("islb-nats-").tempdir().expect("temp dir");
        let mut server = NatsServer { child: None, dir, port: 0, cluster: None, conf: None };
        server.spawn(None);
        server
    }

    /// Starts a server with `conf` as its configuration file (authorization, accounts,
    /// TLS blocks...; the port, log and ports file still come from the command line).
    /// `{dir}` in `conf` stands for the server's own directory (see
    /// [`NatsServer::file`]).
    pub fn start_with_config(conf: &str) -> Self {
        let dir = tempfile::Builder::new().prefix("islb-nats-").tempdir().expect("temp dir");
        Self::with_config_in(dir, conf)
    }

    fn with_config_in(dir: TempDir, conf: &str) -> Self {
        let path = dir.path().join("nats.conf");
        fs::write(&path, conf.replace("{dir}", &dir.path().display().to_string())).expect("nats.conf");
        let mut server = NatsServer { child: None, dir, port: 0, cluster: None, conf: Some(path) };
        server.spawn(None);
        server
    }

    /// Starts a server with JetStream enabled (its store in the server's directory, so it
    /// survives [`NatsServer::restart`]).
    pub fn start_jetstream() -> Self {
        Self::start_with_config("jetstream { store_dir: \"{dir}/js\" }\n")
    }

    /// Starts `n` JetStream servers routed to each other (a JetStream cluster on loopback:
    /// route ports chosen beforehand, as JetStream's clustering requires every member to
    /// know the others from the start; fixed server names `n1`, `n2`...), and waits until
    /// the routes are up and the cluster has elected its metadata leader. A member stopped
    /// and restarted comes back with its name, ports and store, and rejoins.
    pub fn jetstream_cluster(n: usize) -> Vec<Self> {
        let ports: Vec<u16> = (0..n).map(|_| free_port()).collect();
        let routes: Vec<String> = ports.iter().map(|p| format!("nats://127.0.0.1:{p}")).collect();
        let servers: Vec<NatsServer> = (0..n)
            .map(|i| {
                let dir = tempfile::Builder::new().prefix("islb-nats-js-").tempdir().expect("temp dir");
                let conf = format!(
                    "server_name: n{}\njetstream {{ store_dir: \"{{dir}}/js\" }}\ncluster {{\n  name: islb-js\n  listen: 127.0.0.1:{}\n  routes: [{}]\n}}\n",
                    i + 1,
                    ports[i],
                    routes.join(", ")
                );
                Self::with_config_in(dir, &conf)
            })
            .collect();
        for s in &servers {
            s.wait_for_routes(n - 1);
        }
        let elected = || {
            servers
                .iter()
                .any(|s| {
                    fs::read_to_string(s.log_path())
                        .unwrap_or_default()
                        .contains("JetStream cluster new metadata leader")
                })
                .then_some(())
        };
        if poll(Duration::from_secs(30), Duration::from_millis(50), elected).is_none() {
            panic!(
                "the JetStream cluster elected no metadata leader within 30s; first log:\n{}",
                fs::read_to_string(servers[0].log_path()).unwrap_or_default()
            );
        }
        servers
    }

    /// Starts a server that requires TLS, with a certificate for 127.0.0.1 from a private CA
    /// ([`make_certs`]: `ca.crt`, `client.crt` and `client.key` are in [`NatsServer::file`]);
    /// with `verify_clients`, clients must present a certificate from that CA too. `extra`
    /// is added to its configuration.
    pub fn start_tls(verify_clients: bool, extra: &str) -> Self {
        let dir = tempfile::Builder::new().prefix("islb-nats-tls-").tempdir().expect("temp dir");
        make_certs(dir.path());
        let conf = format!(
            "tls {{\n  cert_file: \"{{dir}}/server.crt\"\n  key_file: \"{{dir}}/server.key\"\n  ca_file: \"{{dir}}/ca.crt\"\n  verify: {verify_clients}\n}}\n{extra}"
        );
        Self::with_config_in(dir, &conf)
    }

    /// A file in the server's directory (its certificates, for one).
    pub fn file(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Starts `n` servers routed to each other (a NATS cluster on loopback, every port
    /// picked by the servers), and waits until every route is up. A server stopped and
    /// restarted ([`NatsServer::restart`]) comes back on its ports and rejoins.
    pub fn cluster(n: usize) -> Vec<Self> {
        let mut servers: Vec<NatsServer> = Vec::with_capacity(n);
        for _ in 0..n {
            let dir = tempfile::Builder::new().prefix("islb-nats-").tempdir().expect("temp dir");
            let routes = servers.iter().filter_map(|s| s.cluster.as_ref().map(|c| c.port)).collect();
            let mut server =
                NatsServer { child: None, dir, port: 0, cluster: Some(Cluster { port: 0, routes }), conf: None };
            server.spawn(None);
            servers.push(server);
        }
        // From now on each server routes to every other (for its restarts).
        let ports: Vec<u16> = servers.iter().filter_map(|s| s.cluster.as_ref().map(|c| c.port)).collect();
        for s in &mut servers {
            let c = s.cluster.as_mut().expect("a cluster member");
            c.routes = ports.iter().copied().filter(|p| *p != c.port).collect();
        }
        for s in &servers {
            s.wait_for_routes(n - 1);
        }
        servers
    }

    /// Waits until the server's log shows `n` routes up (each side logs its own).
    fn wait_for_routes(&self, n: usize) {
        let routes = || {
            let log = fs::read_to_string(self.log_path()).unwrap_or_default();
            let up = log.matches("Route connection created").count();
            let down = log.matches("Route connection closed").count();
            (up.saturating_sub(down) >= n).then_some(())
        };
        if poll(START_TIMEOUT, Duration::from_millis(20), routes).is_none() {
            panic!(
                "nats-server on {} did not route to {n} others within {START_TIMEOUT:?}; its log:\n{}",
                self.port,
                fs::read_to_string(self.log_path()).unwrap_or_default()
            );
        }
    }

    fn spawn(&mut self, port: Option<u16>) {
        let bin = require_binary("nats-server", "install it with `apt-get install nats-server`");
        let ports_dir = self.dir.path().join("ports");
        let _ = fs::remove_dir_all(&ports_dir);
        fs::create_dir_all(&ports_dir).expect("ports dir");
        let log = self.log_path();
        let mut cmd = Command::new(bin);
        cmd.args(["-a", "127.0.0.1", "-p"])
            .arg(port.map(|p| p.to_string()).unwrap_or_else(|| "-1".into()))
            .arg("--ports_file_dir")
            .arg(&ports_dir)
            .arg("-l")
            .arg(&log);
        if let Some(conf) = &self.conf {
            cmd.arg("-c").arg(conf);
        }
        if let Some(c) = &self.cluster {
            let listen = if c.port == 0 { "-1".to_owned() } else { c.port.to_string() };
            cmd.args(["--cluster_name", "islb-test", "--cluster", &format!("nats://127.0.0.1:{listen}")]);
            if !c.routes.is_empty() {
                let routes: Vec<String> = c.routes.iter().map(|p| format!("nats://127.0.0.1:{p}")).collect();
                cmd.args(["--routes", &routes.join(",")]);
            }
        }
        cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null());
        die_with_parent(&mut cmd);
        let child = cmd.spawn().expect("spawning nats-server");
        let port = poll(START_TIMEOUT, Duration::from_millis(10), || read_ports_file(&ports_dir, "nats"))
            .unwrap_or_else(|| {
                panic!(
                    "nats-server wrote no ports file within {START_TIMEOUT:?}; its log:\n{}",
                    fs::read_to_string(&log).unwrap_or_default()
                )
            });
        self.port = port;
        if let Some(c) = self.cluster.as_mut().filter(|c| c.port == 0) {
            c.port = read_ports_file(&ports_dir, "cluster").expect("a cluster port in the ports file");
        }
        self.child = Some(child);
        wait_for_tcp(SocketAddr::from((Ipv4Addr::LOCALHOST, port)), "nats-server", &log);
    }

    /// `nats://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// The port the server listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The server's log file.
    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("nats.log")
    }

    /// Stops the server (clients see the connection drop).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            kill_and_reap(&mut c);
        }
    }

    /// Publishes one message with the plain NATS text protocol and returns once the
    /// server has processed it (a `PING` after the `PUB` is answered with `PONG` only
    /// after the `PUB` was routed to every subscriber).
    pub fn publish(&self, subject: &str, payload: &[u8]) {
        let stream = TcpStream::connect((Ipv4Addr::LOCALHOST, self.port)).expect("connecting to nats-server");
        stream.set_read_timeout(Some(START_TIMEOUT)).expect("read timeout");
        let mut reader = BufReader::new(stream.try_clone().expect("stream clone"));
        let mut line = String::new();
        reader.read_line(&mut line).expect("nats INFO line");
        assert!(line.starts_with("INFO "), "nats-server greeted with {line:?}");
        let mut w = stream;
        write!(w, "CONNECT {{\"verbose\":false,\"pedantic\":false}}\r\nPUB {subject} {}\r\n", payload.len())
            .and_then(|_| w.write_all(payload))
            .and_then(|_| w.write_all(b"\r\nPING\r\n"))
            .expect("publishing to nats-server");
        loop {
            line.clear();
            assert!(reader.read_line(&mut line).expect("reading from nats-server") > 0, "nats-server hung up");
            match line.trim_end() {
                "PONG" => return,
                l if l.starts_with("-ERR") => panic!("nats-server refused a publish to {subject}: {l}"),
                _ => {}
            }
        }
    }

    /// Starts the server again on the same port after [`NatsServer::stop`].
    pub fn restart(&mut self) {
        self.stop();
        let port = self.port;
        self.spawn(Some(port));
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The port of `kind` (`nats`, `cluster`) in the ports file nats-server wrote to `dir`.
fn read_ports_file(dir: &Path, kind: &str) -> Option<u16> {
    let entry = fs::read_dir(dir).ok()?.flatten().find(|e| e.file_name().to_string_lossy().ends_with(".ports"))?;
    let text = fs::read_to_string(entry.path()).ok()?;
    let json: serde_json::Value = serde_json::from_str(&text).ok()?;
    let url = json.get(kind)?.as_array()?.first()?.as_str()?;
    url.rsplit(':').next()?.parse().ok()
}

/// Signing key pairs made by openssl in `dir`, as PEM files: (`rsa`, `ec256`, `ec384`,
/// `ed25519`), each with its private key (PKCS#8) and public key paths.
pub fn make_signing_keys(dir: &Path) -> Vec<(&'static str, PathBuf, PathBuf)> {
    let openssl = require_binary("openssl", "install it with `apt-get install openssl`");
    let run = |args: &[&str]| {
        let out = Command::new(&openssl).args(args).current_dir(dir).output().expect("running openssl");
        assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    };
    let kinds: [(&str, &[&str]); 4] = [
        ("rsa", &["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"]),
        ("ec256", &["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"]),
        ("ec384", &["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-384"]),
        ("ed25519", &["-algorithm", "ED25519"]),
    ];
    kinds
        .iter()
        .map(|(name, how)| {
            let (private, public) = (format!("{name}.key"), format!("{name}.pub"));
            run(&[&["genpkey"], *how, &["-out", &private]].concat());
            run(&["pkey", "-in", &private, "-pubout", "-out", &public]);
            (*name, dir.join(private), dir.join(public))
        })
        .collect()
}

/// Test certificates in `dir` (openssl): a CA (`ca.crt`, `ca.key`), a server certificate
/// for 127.0.0.1 (`server.crt`, `server.key`) and a client certificate (`client.crt`,
/// `client.key`), both signed by the CA.
pub fn make_certs(dir: &Path) {
    let openssl = require_binary("openssl", "install it with `apt-get install openssl`");
    let run = |args: &[&str]| {
        let out = Command::new(&openssl).args(args).current_dir(dir).output().expect("running openssl");
        assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    };
    run(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "2",
        "-subj",
        "/CN=islb test CA",
        "-keyout",
        "ca.key",
        "-out",
        "ca.crt",
    ]);
    // Each an X.509 v3 certificate (rustls refuses v1) signed by the CA.
    let issue = |name: &str, subject: &str, extensions: &str| {
        let (key, csr, crt, ext) =
            (format!("{name}.key"), format!("{name}.csr"), format!("{name}.crt"), format!("{name}.ext"));
        std::fs::write(dir.join(&ext), extensions).expect("extensions file");
        run(&["req", "-newkey", "rsa:2048", "-nodes", "-subj", subject, "-keyout", &key, "-out", &csr]);
        run(&[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            &ext,
            "-out",
            &crt,
        ]);
    };
    issue("server", "/CN=127.0.0.1", "subjectAltName=IP:127.0.0.1\n");
    issue("client", "/CN=islb test client", "extendedKeyUsage=clientAuth\n");
}

/// A real `redis-server` for one test, on a free loopback port, keeping nothing on disk.
pub struct RedisServer {
    child: Option<Child>,
    dir: TempDir,
    port: u16,
    password: Option<String>,
    tls: bool,
    /// With TLS: clients must present a certificate from the test CA.
    verify_clients: bool,
}

impl RedisServer {
    /// Starts a server without authentication.
    pub fn start() -> Self {
        Self::start_with_password(None)
    }

    /// Starts a server that requires `AUTH <password>` when `password` is given.
    pub fn start_with_password(password: Option<&str>) -> Self {
        let dir = tempfile::Builder::new().prefix("islb-redis-").tempdir().expect("temp dir");
        let mut server = RedisServer {
            child: None,
            dir,
            port: 0,
            password: password.map(str::to_owned),
            tls: false,
            verify_clients: false,
        };
        server.start_on_a_free_port();
        server
    }

    /// Starts a server that only speaks TLS, with a certificate for 127.0.0.1 signed by a
    /// fresh CA ([`RedisServer::ca_file`]); made with the `openssl` command.
    pub fn start_tls() -> Self {
        Self::start_tls_with(false)
    }

    /// [`RedisServer::start_tls`] whose clients must present a certificate from the test
    /// CA (`client.crt` and `client.key`, see [`RedisServer::file`]).
    pub fn start_mutual_tls() -> Self {
        Self::start_tls_with(true)
    }

    fn start_tls_with(verify_clients: bool) -> Self {
        let dir = tempfile::Builder::new().prefix("islb-redis-tls-").tempdir().expect("temp dir");
        make_certs(dir.path());
        let mut server = RedisServer { child: None, dir, port: 0, password: None, tls: true, verify_clients };
        server.start_on_a_free_port();
        server
    }

    /// A file in the server's directory (its certificates, for one).
    pub fn file(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// The CA certificate (PEM) of a TLS server.
    pub fn ca_file(&self) -> PathBuf {
        self.dir.path().join("ca.crt")
    }

    fn start_on_a_free_port(&mut self) {
        let server = self;
        for attempt in 0.. {
            let port = free_port();
            match server.spawn(port) {
                Ok(()) => break,
                Err(log) if attempt < 5 => {
                    eprintln!("redis-server could not start on port {port} (retrying): {log}");
                }
                Err(log) => panic!("redis-server did not start; its log:\n{log}"),
            }
        }
    }

    fn spawn(&mut self, port: u16) -> Result<(), String> {
        let bin = require_binary("redis-server", "install it with `apt-get install redis-server`");
        let log = self.dir.path().join("redis.log");
        let mut cmd = Command::new(bin);
        if self.tls {
            let d = self.dir.path();
            let verify = if self.verify_clients { "yes" } else { "no" };
            cmd.args(["--port", "0", "--tls-port", &port.to_string(), "--tls-auth-clients", verify])
                .arg("--tls-cert-file")
                .arg(d.join("server.crt"))
                .arg("--tls-key-file")
                .arg(d.join("server.key"))
                .arg("--tls-ca-cert-file")
                .arg(d.join("ca.crt"));
        } else {
            cmd.arg("--port").arg(port.to_string());
        }
        cmd.args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(self.dir.path())
            .arg("--logfile")
            .arg(&log);
        if let Some(pw) = &self.password {
            cmd.arg("--requirepass").arg(pw);
        }
        cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null());
        die_with_parent(&mut cmd);
        let mut child = cmd.spawn().expect("spawning redis-server");
        let end = Instant::now() + START_TIMEOUT;
        loop {
            if let Ok(Some(_)) = child.try_wait() {
                return Err(fs::read_to_string(&log).unwrap_or_default());
            }
            let up = if self.tls {
                TcpStream::connect_timeout(&SocketAddr::from((Ipv4Addr::LOCALHOST, port)), Duration::from_millis(200))
                    .is_ok()
            } else {
                redis_ping(port, self.password.as_deref())
            };
            if up {
                self.port = port;
                self.child = Some(child);
                return Ok(());
            }
            if Instant::now() >= end {
                kill_and_reap(&mut child);
                return Err(fs::read_to_string(&log).unwrap_or_default());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `redis://127.0.0.1:<port>` (with the password when one is set; `rediss://` for TLS).
    pub fn url(&self) -> String {
        let scheme = if self.tls { "rediss" } else { "redis" };
        match &self.password {
            Some(pw) => format!("{scheme}://:{}@127.0.0.1:{}", percent_encode(pw), self.port),
            None => format!("{scheme}://127.0.0.1:{}", self.port),
        }
    }

    /// `127.0.0.1:<port>`, as ion's `[redis] addrs` expects.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The port the server listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Stops the server; its data is gone (it keeps nothing on disk).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            send_signal(&c, libc::SIGCONT);
            kill_and_reap(&mut c);
        }
    }

    /// Starts the server again on the same port after [`RedisServer::stop`].
    pub fn restart(&mut self) {
        self.stop();
        let port = self.port;
        if let Err(log) = self.spawn(port) {
            panic!("redis-server did not restart on port {port}; its log:\n{log}");
        }
    }

    /// Freezes the server with SIGSTOP: connections stay open but nothing is answered.
    pub fn pause(&self) {
        if let Some(c) = &self.child {
            send_signal(c, libc::SIGSTOP);
        }
    }

    /// Thaws a server frozen by [`RedisServer::pause`].
    pub fn resume(&self) {
        if let Some(c) = &self.child {
            send_signal(c, libc::SIGCONT);
        }
    }

    /// Runs one command with the RESP protocol and returns the raw reply (for tests that
    /// inspect the key layout without a Redis client library).
    pub fn command(&self, args: &[&str]) -> String {
        let mut s = TcpStream::connect(("127.0.0.1", self.port)).expect("connecting to redis-server");
        s.set_read_timeout(Some(Duration::from_secs(5))).ok();
        s.write_all(&request(self.password.as_deref(), args)).expect("writing to redis-server");
        let mut reader = BufReader::new(s);
        if self.password.is_some() {
            read_resp(&mut reader);
        }
        read_resp(&mut reader)
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// `args` as one RESP command, after an `AUTH` when there is a password.
fn request(password: Option<&str>, args: &[&str]) -> Vec<u8> {
    let mut req = password.map(|pw| resp(&["AUTH", pw])).unwrap_or_default();
    req.extend(resp(args));
    req
}

fn resp(args: &[&str]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for a in args {
        out.extend(format!("${}\r\n{a}\r\n", a.len()).into_bytes());
    }
    out
}

/// Reads one RESP reply and renders it as text: bulk strings as is, arrays one item per
/// line, nil as `(nil)`, errors as `ERR ...`.
fn read_resp(r: &mut impl BufRead) -> String {
    let mut line = String::new();
    r.read_line(&mut line).expect("reading from redis-server");
    let line = line.trim_end();
    let (kind, rest) = line.split_at(1);
    match kind {
        "+" | ":" => rest.to_owned(),
        "-" => format!("ERR {rest}"),
        "$" => {
            let n: i64 = rest.parse().expect("bulk length");
            if n < 0 {
                return "(nil)".into();
            }
            let mut buf = vec![0; n as usize + 2];
            r.read_exact(&mut buf).expect("bulk body");
            String::from_utf8_lossy(&buf[..n as usize]).into_owned()
        }
        "*" => {
            let n: i64 = rest.parse().expect("array length");
            (0..n.max(0)).map(|_| read_resp(r)).collect::<Vec<_>>().join("\n")
        }
        other => panic!("unexpected RESP reply kind {other:?}"),
    }
}

fn redis_ping(port: u16, password: Option<&str>) -> bool {
    let Ok(mut s) =
        TcpStream::connect_timeout(&SocketAddr::from((Ipv4Addr::LOCALHOST, port)), Duration::from_millis(200))
    else {
        return false;
    };
    s.set_read_timeout(Some(Duration::from_millis(500))).ok();
    if s.write_all(&request(password, &["PING"])).is_err() {
        return false;
    }
    let mut reader = BufReader::new(s);
    if password.is_some() && read_resp_safe(&mut reader).as_deref() != Some("OK") {
        return false;
    }
    read_resp_safe(&mut reader).as_deref() == Some("PONG")
}

fn read_resp_safe(r: &mut impl BufRead) -> Option<String> {
    let mut line = String::new();
    r.read_line(&mut line).ok()?;
    line.strip_prefix('+').map(|s| s.trim_end().to_owned())
}

/// Every byte but ASCII letters and digits as `%XX` (a password in a URL).
fn percent_encode(s: &str) -> String {
    s.bytes().map(|b| if b.is_ascii_alphanumeric() { (b as char).to_string() } else { format!("%{b:02X}") }).collect()
}

/// The path of the project's Go interop peer, `target/gopeer`, or the `GOPEER` environment
/// variable. Fails with the build command when it is missing.
pub fn gopeer() -> PathBuf {
    let path = std::env::var_os("GOPEER").map(PathBuf::from).unwrap_or_else(|| workspace_root().join("target/gopeer"));
    if !path.is_file() {
        panic!(
            "gopeer is missing at {}; build it with `bash interop/gopeer/build.sh` \
             from the workspace root (scripts/test does this)",
            path.display()
        );
    }
    path
}

/// Runs `gopeer ARGS` to completion, feeding `stdin`, and returns its output.
pub fn gopeer_run(args: &[&str], stdin: &[u8]) -> Output {
    let mut cmd = Command::new(gopeer());
    cmd.args(args).stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
    die_with_parent(&mut cmd);
    let mut child = cmd.spawn().expect("spawning gopeer");
    let mut input = child.stdin.take().expect("gopeer stdin");
    let data = stdin.to_vec();
    let feeder = std::thread::spawn(move || {
        let _ = input.write_all(&data);
    });
    let out = child.wait_with_output().expect("waiting for gopeer");
    let _ = feeder.join();
    out
}

/// Starts `gopeer watch` (Go's view of node events, one JSON line each) for `service`
/// (`"*"` for all) and returns once it is subscribed: probe messages are published until
/// the watcher prints one, so no event sent after this returns can be missed. The probes
/// print as lines without an `Action`.
pub fn go_watcher(nats: &NatsServer, service: &str) -> Proc {
    let mut cmd = Command::new(gopeer());
    cmd.args(["watch", "-url", &nats.url(), "-service", service]);
    let mut watcher = Proc::spawn("gopeer-watch", cmd);
    let svc = if service == "*" { "probe" } else { service };
    let subject = format!("node.discovery.{svc}.islb-test-probe");
    let end = Instant::now() + START_TIMEOUT;
    while !watcher.output().contains(&subject) {
        assert!(watcher.is_running(), "gopeer watch exited before subscribing:\n{}", watcher.output());
        assert!(Instant::now() < end, "gopeer watch did not subscribe within {START_TIMEOUT:?}");
        nats.publish(&subject, b"probe");
        std::thread::sleep(Duration::from_millis(50));
    }
    watcher
}

/// A child process whose stdout and stderr go to a log file, killed on drop.
pub struct Proc {
    child: Child,
    log: PathBuf,
    _dir: TempDir,
    name: String,
}

impl Proc {
    /// Spawns `cmd` with its output redirected to a fresh log file.
    pub fn spawn(name: &str, mut cmd: Command) -> Self {
        let dir = tempfile::Builder::new().prefix("islb-proc-").tempdir().expect("temp dir");
        let log = dir.path().join(format!("{name}.log"));
        let out = fs::File::create(&log).expect("log file");
        let err = out.try_clone().expect("log file");
        cmd.stdin(Stdio::null()).stdout(out).stderr(err);
        die_with_parent(&mut cmd);
        let child = cmd.spawn().unwrap_or_else(|e| panic!("spawning {name}: {e}"));
        Proc { child, log, _dir: dir, name: name.to_owned() }
    }

    /// Everything the process has written so far.
    pub fn output(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until the output contains `needle`; returns the first line containing it.
    /// Fails the test (with the output) after `timeout` or if the process exits first.
    pub fn wait_for(&mut self, needle: &str, timeout: Duration) -> String {
        let end = Instant::now() + timeout;
        loop {
            let out = self.output();
            if let Some(line) = out.lines().find(|l| l.contains(needle)) {
                return line.to_owned();
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("{} exited ({status}) before printing {needle:?}; output:\n{out}", self.name);
            }
            if Instant::now() >= end {
                panic!("{} did not print {needle:?} within {timeout:?}; output:\n{out}", self.name);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Sends a signal (e.g. `libc::SIGTERM`).
    pub fn signal(&self, sig: i32) {
        send_signal(&self.child, sig);
    }

    /// Waits for the process to exit, failing the test after `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        match wait_with_timeout(&mut self.child, timeout) {
            Some(s) => s,
            None => panic!("{} did not exit within {timeout:?}; output:\n{}", self.name, self.output()),
        }
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Kills the process with SIGKILL and reaps it.
    pub fn kill(&mut self) {
        kill_and_reap(&mut self.child);
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        kill_and_reap(&mut self.child);
        if std::thread::panicking() {
            eprintln!("--- output of {} ---\n{}\n--- end of {} ---", self.name, self.output(), self.name);
        } else if self.name.starts_with("islb") {
            assert_no_secret(&self.name, &self.output());
        }
    }
}

/// The secrets the test registered with [`secret`].
static SECRETS: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());

/// Registers `value` as a secret (a password, token, seed or key the test gives islb) and
/// returns it. From then on, everything an islb process of this test prints (a [`Proc`]
/// whose name starts with `islb`, checked when it is dropped) and whatever is passed to
/// [`assert_no_secret`] must not contain it.
pub fn secret(value: impl Into<String>) -> String {
    let value = value.into();
    assert!(value.len() >= 6, "a secret short enough to appear by chance: {value:?}");
    SECRETS.lock().unwrap_or_else(|e| e.into_inner()).push(value.clone());
    value
}

/// Fails the test if `text` (the output of `source`) contains a registered [`secret`];
/// the message names the source and the line, with the secret itself masked.
pub fn assert_no_secret(source: &str, text: &str) {
    let secrets = SECRETS.lock().unwrap_or_else(|e| e.into_inner()).clone();
    for line in text.lines() {
        if let Some(s) = secrets.iter().find(|s| line.contains(s.as_str())) {
            panic!("{source} printed a secret: {}", line.replace(s.as_str(), "<SECRET>"));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn a_registered_secret_in_an_islb_process_output_fails_the_test_without_showing_it() {
        assert_no_secret("islb", "hunter22 is not registered yet");
        secret("hunter22");
        let caught = std::panic::catch_unwind(|| assert_no_secret("islb serve", "ok\nuser pw=hunter22 here\n"));
        let message = *caught.unwrap_err().downcast::<String>().unwrap();
        assert_eq!(message, "islb serve printed a secret: user pw=<SECRET> here");
        // And from a process's output when it is dropped.
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "echo leaking hunter22"]);
        let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let mut p = Proc::spawn("islb-leak", cmd);
            p.wait_for("leaking", Duration::from_secs(5));
        }));
        assert!(caught.is_err(), "dropping an islb process that printed a secret fails");
    }

    #[test]
    fn nats_server_starts_on_a_free_port_and_stops() {
        let mut nats = NatsServer::start();
        assert_ne!(nats.port(), 4222, "never the machine's own NATS port");
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, nats.port()));
        let mut s = TcpStream::connect(addr).expect("nats accepts connections");
        let mut info = [0u8; 4];
        s.read_exact(&mut info).unwrap();
        assert_eq!(&info, b"INFO");
        nats.stop();
        assert!(TcpStream::connect(addr).is_err(), "stopped server must not accept");
        nats.restart();
        assert!(TcpStream::connect(addr).is_ok(), "restarted on the same port");
    }

    #[test]
    fn a_go_watcher_is_subscribed_when_it_returns() {
        let nats = NatsServer::start();
        let mut watcher = go_watcher(&nats, "rtc");
        nats.publish("node.discovery.signal.sig-1", b"x"); // another service: not printed
        nats.publish("node.discovery.rtc.sfu-1", b"x");
        let line = watcher.wait_for("node.discovery.rtc.sfu-1", Duration::from_secs(5));
        assert!(line.contains("\"error\""), "not gob, so Go reports an error: {line}");
        assert!(!watcher.output().contains("node.discovery.signal"), "{}", watcher.output());
    }

    #[test]
    fn redis_server_starts_answers_and_pauses() {
        let redis = RedisServer::start();
        assert_ne!(redis.port(), 6379, "never the machine's own Redis port");
        assert_eq!(redis.command(&["SET", "k", "v"]), "OK");
        assert_eq!(redis.command(&["GET", "k"]), "v");
        redis.pause();
        assert!(!redis_ping(redis.port(), None), "a paused server answers nothing");
        redis.resume();
        assert!(answers_soon(redis.port(), None), "a resumed server answers again");
    }

    /// A PING answered within 10 s (a thawed or busy server may need a moment).
    fn answers_soon(port: u16, password: Option<&str>) -> bool {
        poll(Duration::from_secs(10), Duration::from_millis(50), || redis_ping(port, password).then_some(())).is_some()
    }

    #[test]
    fn redis_server_with_password_requires_auth() {
        let redis = RedisServer::start_with_password(Some("s3cret"));
        assert!(!redis_ping(redis.port(), None));
        assert!(answers_soon(redis.port(), Some("s3cret")));
        assert!(redis.url().contains(":s3cret@"));
    }

    #[test]
    fn proc_captures_output_and_reports_exit() {
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "echo hello-from-child; sleep 0.1; echo done"]);
        let mut p = Proc::spawn("sh", cmd);
        assert_eq!(p.wait_for("hello", Duration::from_secs(5)), "hello-from-child");
        assert!(p.wait_exit(Duration::from_secs(5)).success());
        assert!(p.output().contains("done"));
    }
}
