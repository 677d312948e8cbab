//! The API as a real process, and a small blocking HTTP/1.1 client for tests and drivers.
//!
//! The client writes requests byte for byte (so tests can send malformed ones) and reads one
//! answer per connection (`Connection: close`).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::Error;

/// An `api` process on a free loopback port, with its database and signing key in a temporary
/// directory removed on drop.
pub struct ApiProcess {
    binary: PathBuf,
    dir: PathBuf,
    config: PathBuf,
    port: u16,
    child: Option<Child>,
    nofile: Option<u64>,
}

impl std::fmt::Debug for ApiProcess {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiProcess")
            .field("port", &self.port)
            .finish_non_exhaustive()
    }
}

/// The store an [`ApiProcess`] runs on.
#[derive(Debug, Clone, Default)]
pub enum Database {
    /// A SQLite file in the process's temporary directory (the embedded default).
    #[default]
    Sqlite,
    /// PostgreSQL: the lines of the config's `[database]` table.
    Postgres(String),
}

impl Database {
    /// A new database `name` on a throw-away cluster, reached as its superuser over TCP on
    /// loopback without TLS, the password in a 0600 file (as an operator would give it).
    ///
    /// # Errors
    /// If the database or the password file cannot be made.
    pub fn postgres(cluster: &pgcluster::Cluster, name: &str) -> Result<Self, Error> {
        cluster.create_database(name)?;
        let password = cluster.write_password_file()?;
        Ok(Self::Postgres(format!(
            "url = \"{}\"\nsslmode = \"disable\"\npassword_file = \"{}\"\n",
            cluster.url(name),
            password.display()
        )))
    }
}

/// A free TCP port on loopback.
///
/// # Errors
/// If no port can be bound.
pub fn free_port() -> Result<u16, Error> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Waits until `child` says in its log (from byte `offset` on) that it listens, and its port
/// answers. Judged by the child's own log line, not by the port alone: a port another process
/// took in the meantime answers too.
///
/// # Errors
/// If the child exits first (with the end of its log) or 20 s pass.
pub fn wait_listening(child: &mut Child, log: &Path, offset: u64, port: u16) -> Result<(), Error> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let text = std::fs::read(log).unwrap_or_default();
        let ours = text
            .get(usize::try_from(offset).unwrap_or(usize::MAX)..)
            .unwrap_or_default();
        let ours = String::from_utf8_lossy(ours);
        if let Some(status) = child.try_wait()? {
            let tail: Vec<&str> = ours.lines().rev().take(5).collect();
            return Err(format!("api exited at start ({status}): {}", tail.join(" | ")).into());
        }
        if ours.contains("api listening") && TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err("api did not start within 20 s".into());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

impl ApiProcess {
    /// Writes a plain-HTTP loopback config (`extra_top` goes before any table, `auth` lines
    /// into the `[auth]` table, after the signing key) and starts the API.
    ///
    /// # Errors
    /// If it does not come up within 20 s.
    pub fn start(
        binary: &Path,
        keyd_socket: &Path,
        extra_top: &str,
        auth: &str,
    ) -> Result<Self, Error> {
        Self::start_on(binary, keyd_socket, &Database::Sqlite, extra_top, auth)
    }

    /// As [`ApiProcess::start`], on the given store.
    ///
    /// # Errors
    /// If it does not come up within 20 s.
    pub fn start_on(
        binary: &Path,
        keyd_socket: &Path,
        database: &Database,
        extra_top: &str,
        auth: &str,
    ) -> Result<Self, Error> {
        // A port found free can be taken by another test's process before ours binds it;
        // ours then exits at start and is started again on another port.
        let mut attempt = 0;
        loop {
            attempt += 1;
            let port = free_port()?;
            let dir = std::env::temp_dir().join(format!("api-e2e-{port}-{}", std::process::id()));
            std::fs::create_dir_all(&dir)?;
            let config = dir.join("api.toml");
            let (top, table) = match database {
                Database::Sqlite => (
                    format!("database = \"{}\"\n", dir.join("api.db").display()),
                    String::new(),
                ),
                Database::Postgres(lines) => (String::new(), format!("[database]\n{lines}\n")),
            };
            std::fs::write(
                &config,
                format!(
                    "listen = \"127.0.0.1:{port}\"\nplain_http = true\nmetrics = true\nkeyd_socket = \"{}\"\n\
                     {top}{extra_top}\n\n{table}[platform]\ndefault_zone = \"z1\"\n\n\
                     [auth]\nsigning_key = \"{}\"\n{auth}\n",
                    keyd_socket.display(),
                    dir.join("jwt-es256.p8").display(),
                ),
            )?;
            let mut api = Self {
                binary: binary.to_owned(),
                dir,
                config,
                port,
                child: None,
                nofile: None,
            };
            match api.restart() {
                Ok(()) => return Ok(api),
                Err(e) if attempt < 5 && e.to_string().contains("in use") => {}
                Err(e) => return Err(e),
            }
        }
    }

    /// Restarts under a file-descriptor limit (soft and hard), as a unit with
    /// `LimitNOFILE=n` would run it; later restarts keep the limit.
    ///
    /// # Errors
    /// If it does not come up within 20 s.
    pub fn restart_with_nofile(&mut self, n: u64) -> Result<(), Error> {
        self.nofile = Some(n);
        self.restart()
    }

    /// Starts (again) and waits for the port.
    ///
    /// # Errors
    /// If it does not come up within 20 s.
    pub fn restart(&mut self) -> Result<(), Error> {
        self.kill();
        let offset = std::fs::metadata(self.log_path()).map_or(0, |m| m.len());
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())?;
        let mut command = match self.nofile {
            None => Command::new(&self.binary),
            Some(n) => crate::proc::with_nofile(&self.binary, n),
        };
        let child = command
            .arg("--config")
            .arg(&self.config)
            .stderr(Stdio::from(log))
            .spawn()?;
        let (log, port) = (self.log_path(), self.port);
        let child = self.child.insert(child);
        wait_listening(child, &log, offset, port)
    }

    /// Another API node beside this one: the same configuration (database, keyd, signing key,
    /// processor) on another port, with its own directory and log. On a PostgreSQL store the
    /// two share the database, as nodes behind a load balancer do.
    ///
    /// # Errors
    /// If it does not come up within 20 s.
    pub fn another_node(&self) -> Result<Self, Error> {
        self.another_node_on(None)
    }

    /// As [`ApiProcess::another_node`], talking to the keyd at `keyd_socket` (a keyd of its
    /// own host) when given.
    ///
    /// # Errors
    /// As [`ApiProcess::another_node`].
    pub fn another_node_on(&self, keyd_socket: Option<&Path>) -> Result<Self, Error> {
        let mut config = std::fs::read_to_string(&self.config)?;
        if let Some(socket) = keyd_socket {
            let line = config
                .lines()
                .find(|l| l.starts_with("keyd_socket = "))
                .ok_or("no keyd_socket line")?
                .to_owned();
            config = config.replace(&line, &format!("keyd_socket = \"{}\"", socket.display()));
        }
        let listen = format!("listen = \"127.0.0.1:{}\"", self.port);
        let mut attempt = 0;
        loop {
            attempt += 1;
            let port = free_port()?;
            let dir = std::env::temp_dir().join(format!("api-e2e-{port}-{}", std::process::id()));
            std::fs::create_dir_all(&dir)?;
            let path = dir.join("api.toml");
            std::fs::write(
                &path,
                config.replacen(&listen, &format!("listen = \"127.0.0.1:{port}\""), 1),
            )?;
            let mut node = Self {
                binary: self.binary.clone(),
                dir,
                config: path,
                port,
                child: None,
                nofile: self.nofile,
            };
            match node.restart() {
                Ok(()) => return Ok(node),
                Err(e) if attempt < 5 && e.to_string().contains("in use") => {}
                Err(e) => return Err(e),
            }
        }
    }

    /// Rewrites the configuration file with `edit` (takes the file's text, gives the new one);
    /// it applies from the next [`ApiProcess::restart`].
    ///
    /// # Errors
    /// If the file cannot be read or written.
    pub fn reconfigure(&self, edit: impl FnOnce(&str) -> String) -> Result<(), Error> {
        let text = std::fs::read_to_string(&self.config)?;
        std::fs::write(&self.config, edit(&text))?;
        Ok(())
    }

    /// Stops the process the way an operator's `systemctl restart` does (SIGTERM: it finishes
    /// the requests it has and exits); SIGKILL after 10 s.
    pub fn terminate(&mut self) {
        if let Some(child) = self.child.take() {
            crate::terminate(child);
        }
    }

    /// Kills the process (SIGKILL: nothing is flushed on the way out).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// The port.
    pub const fn port(&self) -> u16 {
        self.port
    }

    /// The process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Where the process's log lines (stderr) go, across restarts.
    pub fn log_path(&self) -> PathBuf {
        self.dir.join("api.log")
    }

    /// The temporary directory (database, signing key, config).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// An `api --config … token` for a subject and role.
    ///
    /// # Errors
    /// If the command fails.
    pub fn token(&self, sub: &str, role: &str) -> Result<String, Error> {
        let out = Command::new(&self.binary)
            .arg("--config")
            .arg(&self.config)
            .args(["token", "--sub", sub, "--role", role])
            .output()?;
        if !out.status.success() {
            return Err(format!("api token: {}", String::from_utf8_lossy(&out.stderr)).into());
        }
        Ok(String::from_utf8(out.stdout)?.trim().to_owned())
    }

    /// A client for this API.
    pub const fn client(&self) -> Client {
        Client { port: self.port }
    }
}

impl Drop for ApiProcess {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// An answer.
#[derive(Debug, Clone)]
pub struct Answer {
    /// HTTP status.
    pub status: u16,
    /// Header lines, names lower-cased.
    pub headers: Vec<(String, String)>,
    /// The body parsed as JSON (`Null` when empty or not JSON).
    pub json: Value,
    /// The raw body.
    pub body: Vec<u8>,
}

impl Answer {
    /// A header's value.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The error code of an error body (`""` otherwise).
    pub fn code(&self) -> &str {
        self.json
            .get("error")
            .and_then(|e| e.get("code"))
            .and_then(Value::as_str)
            .unwrap_or_default()
    }
}

/// A blocking HTTP/1.1 client for one host.
#[derive(Debug, Clone, Copy)]
pub struct Client {
    port: u16,
}

impl Client {
    /// A client for a port on loopback.
    pub const fn new(port: u16) -> Self {
        Self { port }
    }

    /// A request with an optional bearer token and JSON body.
    ///
    /// # Errors
    /// Transport failures.
    pub fn call(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<&Value>,
    ) -> Result<Answer, Error> {
        let mut headers = Vec::new();
        if let Some(t) = token {
            headers.push(("Authorization".to_owned(), format!("Bearer {t}")));
        }
        let body = body.map(|b| b.to_string().into_bytes()).unwrap_or_default();
        if !body.is_empty() {
            headers.push(("Content-Type".to_owned(), "application/json".to_owned()));
        }
        self.raw(method, path, &headers, &body)
    }

    /// Sends exactly these bytes on a fresh connection and reads the answer (for requests no
    /// well-formed client would send: malformed lines, bytes outside ASCII in headers).
    ///
    /// # Errors
    /// Transport failures, or no parsable answer.
    pub fn bytes(&self, request: &[u8]) -> Result<Answer, Error> {
        let mut stream = TcpStream::connect(("127.0.0.1", self.port))?;
        stream.set_read_timeout(Some(Duration::from_secs(30)))?;
        // The server may answer and close before it has read everything (oversized heads).
        let _ = stream.write_all(request);
        let mut raw = Vec::new();
        let read = stream.read_to_end(&mut raw);
        match (parse(&raw), read) {
            (Ok(answer), _) => Ok(answer),
            (Err(_), Err(e)) => Err(e.into()),
            (Err(e), Ok(_)) => Err(e),
        }
    }

    /// A request with exactly these headers and body bytes (`Content-Length` is added).
    ///
    /// # Errors
    /// Transport failures.
    pub fn raw(
        &self,
        method: &str,
        path: &str,
        headers: &[(String, String)],
        body: &[u8],
    ) -> Result<Answer, Error> {
        let mut stream = TcpStream::connect(("127.0.0.1", self.port))?;
        stream.set_read_timeout(Some(Duration::from_secs(60)))?;
        let mut req =
            format!("{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n");
        for (name, value) in headers {
            req.push_str(&format!("{name}: {value}\r\n"));
        }
        req.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
        // A server may answer before it has read the whole body (too large) and close; the
        // answer is still there to read, so a failed write is not the end.
        let sent = stream
            .write_all(req.as_bytes())
            .and_then(|()| stream.write_all(body));
        let mut raw = Vec::new();
        let read = stream.read_to_end(&mut raw);
        match (parse(&raw), sent, read) {
            (Ok(answer), _, _) => Ok(answer),
            (Err(_), Err(e), _) | (Err(_), Ok(()), Err(e)) => Err(e.into()),
            (Err(e), Ok(()), Ok(_)) => Err(e),
        }
    }
}

pub(crate) fn parse(raw: &[u8]) -> Result<Answer, Error> {
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or("no end of headers")?;
    let head = std::str::from_utf8(raw.get(..split).ok_or("short")?)?;
    let body = raw.get(split + 4..).unwrap_or_default().to_vec();
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.get(9..12))
        .and_then(|s| s.parse().ok())
        .ok_or("no status")?;
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let json = serde_json::from_slice(&body).unwrap_or(Value::Null);
    Ok(Answer {
        status,
        headers,
        json,
        body,
    })
}

/// A whole platform for tests and drivers: keyd on its own SoftHSM token (zone `z1`), the API
/// beside it, and a platform admin with an initiated session.
pub struct Platform {
    /// The key service (kept alive for the platform's life).
    pub keyd: crate::KeydProcess,
    /// The API process.
    pub api: ApiProcess,
    /// A client for it.
    pub http: Client,
    /// A platform admin's bearer token (session initiated).
    pub admin: String,
}

impl std::fmt::Debug for Platform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Platform")
            .field("api", &self.api)
            .finish_non_exhaustive()
    }
}

/// Config lines made from the ids of the published test keys in keyd: `(zpk, pvk, zak)`.
pub type KeyLines<'a> = dyn Fn(&str, &str, &str) -> String + 'a;

impl Platform {
    /// Starts keyd (next to `api_binary`) and the API; `auth` lines go into the API's `[auth]`
    /// table (further tables may follow them).
    ///
    /// # Errors
    /// If a process does not start or the admin session cannot be initiated.
    pub fn start(api_binary: &Path, auth: &str) -> Result<Self, Error> {
        Self::start_on(api_binary, auth, &Database::Sqlite)
    }

    /// As [`Platform::start`], with the API on the given store.
    ///
    /// # Errors
    /// As [`Platform::start`].
    pub fn start_on(api_binary: &Path, auth: &str, database: &Database) -> Result<Self, Error> {
        Self::start_with(api_binary, auth, database, None)
    }

    /// Like [`Platform::start`], with the simulator acting as issuer for PINs: the published
    /// test keys stored in keyd (`keyd simulator-keys`) and named in a `[processor]` table
    /// that also holds `processor` (lines of that table, e.g. `timeout_ms = 300`). `auth` must
    /// then not open a `[processor]` table of its own.
    ///
    /// # Errors
    /// As [`Platform::start`], and if the keys cannot be stored.
    pub fn start_with_issuer(
        api_binary: &Path,
        auth: &str,
        processor: &str,
    ) -> Result<Self, Error> {
        Self::start_with(
            api_binary,
            &format!("{auth}\n[processor]\n{processor}\n"),
            &Database::Sqlite,
            Some(&|zpk, pvk, _| format!("pin_zpk = \"{zpk}\"\npin_pvk = \"{pvk}\"\n")),
        )
    }

    /// Like [`Platform::start`], with a `[processor]` table whose lines `processor` makes from
    /// the ids of the published test keys once keyd stores them (`keyd simulator-keys`: ZPK,
    /// PVK, ZAK, the keys `acqsim` uses by default): an `iso8583` processor pointed at an
    /// acquirer host simulator, say. `auth` must then not open a `[processor]` table of its own.
    ///
    /// # Errors
    /// As [`Platform::start`], and if the keys cannot be stored.
    pub fn start_with_processor(
        api_binary: &Path,
        auth: &str,
        processor: &KeyLines<'_>,
    ) -> Result<Self, Error> {
        Self::start_with(
            api_binary,
            &format!("{auth}\n[processor]\n"),
            &Database::Sqlite,
            Some(processor),
        )
    }

    /// Starts keyd and the API on `database`; with `keys`, the published test keys are stored
    /// in keyd and `keys(zpk, pvk, zak)` gives lines appended to the config (inside the table
    /// `auth` ends with).
    fn start_with(
        api_binary: &Path,
        auth: &str,
        database: &Database,
        keys: Option<&KeyLines<'_>>,
    ) -> Result<Self, Error> {
        let mut keyd = crate::KeydProcess::new(
            &api_binary.with_file_name("keyd"),
            r#""data", "devices""#,
            "memory",
        )?;
        keyd.start()?;
        let auth = match keys {
            Some(lines) => {
                let (zpk, pvk, zak) = keyd.simulator_keys()?;
                format!("{auth}{}", lines(&zpk, &pvk, &zak))
            }
            None => auth.to_owned(),
        };
        let api = ApiProcess::start_on(api_binary, keyd.socket(), database, "", &auth)?;
        let http = api.client();
        let admin = api.token("ops", "platform_admin")?;
        let platform = Self {
            keyd,
            api,
            http,
            admin,
        };
        platform.login_token(&platform.admin)?;
        Ok(platform)
    }

    /// Initiates a session for a token on the platform host.
    ///
    /// # Errors
    /// If the API refuses.
    pub fn login_token(&self, token: &str) -> Result<(), Error> {
        let body = serde_json::json!({"host": "localhost"});
        let a = self
            .http
            .call("POST", "/session/initiate", Some(token), Some(&body))?;
        if a.status != 200 {
            return Err(format!("session/initiate: {} {}", a.status, a.json).into());
        }
        Ok(())
    }

    /// A token for `sub` with `role`, its session initiated.
    ///
    /// # Errors
    /// If minting or the session fails.
    pub fn login(&self, sub: &str, role: &str) -> Result<String, Error> {
        let token = self.api.token(sub, role)?;
        self.login_token(&token)?;
        Ok(token)
    }

    /// A call as the platform admin.
    ///
    /// # Errors
    /// Transport failures.
    pub fn call(&self, method: &str, path: &str, body: Option<&Value>) -> Result<Answer, Error> {
        self.http.call(method, path, Some(&self.admin), body)
    }

    /// A call as the platform admin that must succeed (2xx); its JSON.
    ///
    /// # Errors
    /// Transport failures or another status.
    pub fn ok(&self, method: &str, path: &str, body: Option<&Value>) -> Result<Value, Error> {
        let a = self.call(method, path, body)?;
        if a.status >= 300 {
            return Err(format!("{method} {path}: {} {}", a.status, a.json).into());
        }
        Ok(a.json)
    }

    /// A portal user with a password under `owner` (`/merchants/{id}` or `/resellers/{id}`):
    /// its id. The answer to setting the password must not show it.
    ///
    /// # Errors
    /// Any step the API refuses, or transport failures.
    pub fn user_with_password(
        &self,
        owner: &str,
        email: &str,
        role: &str,
        password: &str,
    ) -> Result<String, Error> {
        let u = self.ok(
            "POST",
            &format!("{owner}/users"),
            Some(&serde_json::json!({"email": email, "role": role})),
        )?;
        let uid = u
            .get("id")
            .and_then(Value::as_str)
            .ok_or("a user without an id")?
            .to_owned();
        let set = self.ok(
            "PUT",
            &format!("{owner}/users/{uid}/password"),
            Some(&serde_json::json!({"password": password})),
        )?;
        if set.to_string().contains(password) {
            return Err("setting a password answered with it".into());
        }
        Ok(uid)
    }

    /// A new reseller and merchant (EUR) with one terminal taken through its whole
    /// lifecycle (registration, pairing, claim, attestation, keys, activation):
    /// `(merchant id, terminal)`, ready to charge.
    ///
    /// # Errors
    /// Any step the API refuses, or transport failures.
    pub fn activated_terminal(
        &self,
        device_id: &str,
    ) -> Result<(String, crate::pos::Terminal), Error> {
        let r = self.ok(
            "POST",
            "/resellers",
            Some(&serde_json::json!({"name": format!("R-{device_id}")})),
        )?;
        let m = self.ok(
            "POST",
            "/merchants",
            Some(
                &serde_json::json!({"reseller_id": r.get("id"), "name": format!("Shop {device_id}"),
                                     "mcc": "5812", "country": "DE", "currency": "EUR"}),
            ),
        )?;
        let mid = m
            .get("id")
            .and_then(Value::as_str)
            .ok_or("merchant without id")?
            .to_owned();
        let d = self.ok(
            "POST",
            &format!("/merchants/{mid}/devices"),
            Some(
                &serde_json::json!({"device_id": device_id, "model": "A920", "serial": device_id}),
            ),
        )?;
        let key = |k: &str| {
            d.get("identity_key")
                .and_then(|i| i.get(k))
                .and_then(Value::as_str)
                .ok_or_else(|| format!("registration without identity_key.{k}"))
        };
        let mut t = crate::pos::Terminal::new(
            self.http,
            device_id,
            key("key_id")?,
            key("secret")?,
            &crate::hex(crate::ZMK_HEX),
        )?;
        let step = |what: &str, a: &Answer| -> Result<(), Error> {
            if a.status == 200 {
                Ok(())
            } else {
                Err(format!("{what}: {} {}", a.status, a.json).into())
            }
        };
        step("bootstrap", &t.bootstrap()?)?;
        let code = t.pairing_code()?;
        step("pairing code", &code)?;
        let claim = self.call(
            "POST",
            "/pos/claim",
            Some(&serde_json::json!({"pairing_code": code.json.get("pairing_code"), "device_id": device_id})),
        )?;
        step("claim", &claim)?;
        t.set_terminal_id(
            claim
                .json
                .get("terminal_id")
                .and_then(Value::as_str)
                .ok_or("no terminal id")?,
        );
        step("attest", &t.attest()?)?;
        step("keys", &t.keys()?)?;
        step("activate", &t.activate()?.0)?;
        Ok((mid, t))
    }

    /// Every stored charge of a merchant (all pages), in the API's order.
    ///
    /// # Errors
    /// Transport failures or an unsuccessful page.
    pub fn charges(&self, merchant_id: &str) -> Result<Vec<Value>, Error> {
        merchant_charges(self.http, &self.admin, merchant_id)
    }
}

/// Every stored charge of a merchant (all pages), in the API's order, read with `token`.
///
/// # Errors
/// Transport failures or an unsuccessful page.
pub fn merchant_charges(http: Client, token: &str, merchant_id: &str) -> Result<Vec<Value>, Error> {
    let mut all = Vec::new();
    each_charge(http, token, merchant_id, |c| all.push(c))?;
    Ok(all)
}

/// Walks a merchant's charges page by page, handing each to `visit` and keeping none: a soak
/// run's millions of charges are checked in the memory of one page.
///
/// # Errors
/// Transport failures or a refused page.
pub fn each_charge(
    http: Client,
    token: &str,
    merchant_id: &str,
    mut visit: impl FnMut(Value),
) -> Result<(), Error> {
    let mut after = String::new();
    loop {
        let path = format!("/charges?merchant_id={merchant_id}&limit=100{after}");
        let mut page = http.call("GET", &path, Some(token), None)?;
        if page.status != 200 {
            return Err(format!("GET {path}: {} {}", page.status, page.json).into());
        }
        let more = page.json.get("has_more") == Some(&Value::Bool(true));
        let cursor = page
            .json
            .get("next_cursor")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        if let Some(Value::Array(data)) = page.json.get_mut("data").map(Value::take) {
            data.into_iter().for_each(&mut visit);
        }
        if !more {
            return Ok(());
        }
        after = format!("&starting_after={cursor}");
    }
}
