//! Throw-away PostgreSQL clusters for tests and load drivers.
//!
//! [`Cluster::start`] runs Debian's `initdb` on a temporary directory, starts the server with
//! `pg_ctl` on a free loopback port (and a Unix socket in the same directory), and stops it and
//! removes everything when dropped: the `softhsm` crate's idea, for the database. Nothing is
//! mocked: the tests that use it talk to a real server over the real protocol.
//!
//! The binaries are found in `/usr/lib/postgresql/<version>/bin` (the newest version; Debian
//! keeps them off `PATH`), then on `PATH`. `initdb` refuses to run as root, so as root the
//! cluster belongs to the unprivileged `postgres` user (Debian's package creates it) and every
//! server command runs as that user.
//!
//! Authentication: trust over the Unix socket (the harness's own `createdb`/`psql`), and
//! SCRAM-SHA-256 with a random password over TCP, so a client under test goes through the same
//! password exchange as in production.
//!
//! Tests that need PostgreSQL call [`Cluster::for_tests`]: with PostgreSQL missing it fails when
//! `CI` is set (CI must run them; `scripts/test-all` installs the package) and otherwise prints
//! that the test is skipped.

use std::io::Write as _;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::{fmt, fs, io};

/// A running cluster in a temporary directory.
pub struct Cluster {
    dir: tempfile::TempDir,
    bin: PathBuf,
    port: u16,
    password: String,
    owner: Option<(u32, u32)>,
    durable: bool,
    tls: bool,
    running: bool,
}

impl fmt::Debug for Cluster {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Cluster")
            .field("dir", &self.dir.path())
            .field("port", &self.port)
            .finish_non_exhaustive()
    }
}

/// Why a cluster could not be made.
#[derive(Debug)]
pub enum Error {
    /// `initdb` / `pg_ctl` not found.
    NotInstalled,
    /// Running as root without a `postgres` user to run the server as.
    NoUser,
    /// A directory or file could not be made.
    Io(io::Error),
    /// A command failed; which, and its output (or the server log's end).
    Command(String, String),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NotInstalled => write!(
                f,
                "PostgreSQL not found (initdb, pg_ctl in /usr/lib/postgresql/*/bin or PATH): \
                 install it (apt-get install postgresql)"
            ),
            Self::NoUser => write!(
                f,
                "running as root, and there is no `postgres` user to run the server as \
                 (initdb refuses root; Debian's postgresql package creates the user)"
            ),
            Self::Io(e) => write!(f, "cannot prepare the cluster directory: {e}"),
            Self::Command(what, out) => write!(f, "{what} failed: {out}"),
        }
    }
}

impl std::error::Error for Error {}

impl From<io::Error> for Error {
    fn from(e: io::Error) -> Self {
        Self::Io(e)
    }
}

/// The superuser every cluster has (its password: [`Cluster::password`]).
pub const SUPERUSER: &str = "postgres";

impl Cluster {
    /// A cluster for tests: `fsync` off (the data is thrown away; durability is not what the
    /// tests measure), so many small transactions stay fast on a shared machine.
    ///
    /// # Errors
    /// [`Error`] if PostgreSQL is missing or the cluster does not start.
    pub fn start() -> Result<Self, Error> {
        Self::start_with(false, None)
    }

    /// A cluster with PostgreSQL's durable defaults (`fsync`, `synchronous_commit`, full page
    /// writes): what a benchmark compares with SQLite's `synchronous=FULL`.
    ///
    /// # Errors
    /// As [`Cluster::start`].
    pub fn start_durable() -> Result<Self, Error> {
        Self::start_with(true, None)
    }

    /// A cluster for the test `name`, or `None` (with a line on stderr saying the test is
    /// skipped) when PostgreSQL is not installed and `CI` is not set.
    ///
    /// # Errors
    /// [`Error::NotInstalled`] under `CI` (there the tests must run), or any other failure.
    pub fn for_tests(name: &str) -> Result<Option<Self>, Error> {
        Self::skip_if_missing(name, Self::start())
    }

    /// As [`Cluster::for_tests`], with TLS on (`ssl = on`) with the given certificate chain and
    /// key (PEM); clients may still connect without it.
    ///
    /// # Errors
    /// As [`Cluster::for_tests`].
    pub fn for_tests_with_tls(name: &str, cert: &Path, key: &Path) -> Result<Option<Self>, Error> {
        Self::skip_if_missing(name, Self::start_with(false, Some((cert, key))))
    }

    fn skip_if_missing(name: &str, started: Result<Self, Error>) -> Result<Option<Self>, Error> {
        match started {
            Err(Error::NotInstalled) if std::env::var_os("CI").is_none() => {
                // Straight to stderr: the test harness captures `eprintln!`, and a skip must
                // be seen.
                let _ = writeln!(
                    io::stderr(),
                    "SKIPPED {name}: PostgreSQL is not installed (apt-get install postgresql; \
                     scripts/test-all does it as root)"
                );
                Ok(None)
            }
            other => other.map(Some),
        }
    }

    fn start_with(durable: bool, tls: Option<(&Path, &Path)>) -> Result<Self, Error> {
        let bin = binaries()?;
        let owner = server_owner()?;
        let dir = tempfile::Builder::new().prefix("pgcluster-").tempdir()?;
        if let Some((uid, gid)) = owner {
            std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid))?;
        }
        let password = random_password()?;
        let pwfile = dir.path().join("initdb.pw");
        write_private(&pwfile, &password)?;
        if let Some((uid, gid)) = owner {
            std::os::unix::fs::chown(&pwfile, Some(uid), Some(gid))?;
        }
        let mut cluster = Self {
            dir,
            bin,
            port: 0,
            password,
            owner,
            durable,
            tls: tls.is_some(),
            running: false,
        };
        if let Some((cert, key)) = tls {
            // The server insists on a key only its owner can read.
            for (from, to) in [(cert, "server.crt"), (key, "server.key")] {
                let to = cluster.dir.path().join(to);
                write_private(&to, &fs::read_to_string(from)?)?;
                if let Some((uid, gid)) = owner {
                    std::os::unix::fs::chown(&to, Some(uid), Some(gid))?;
                }
            }
        }
        let data = cluster.data_dir();
        let init = cluster
            .server_command("initdb")
            .arg("-D")
            .arg(&data)
            .args(["--no-sync", "--encoding=UTF8", "--locale=C", "--username"])
            .arg(SUPERUSER)
            .arg(format!("--pwfile={}", pwfile.display()))
            .args(["--auth-local=trust", "--auth-host=scram-sha-256"])
            .output()?;
        check("initdb", &init)?;
        fs::remove_file(&pwfile)?;
        // A port found free can be taken by another process before the server binds it: the
        // start then fails and is tried again on another port.
        let mut attempt = 0;
        loop {
            attempt += 1;
            cluster.port = free_port()?;
            match cluster.start_server() {
                Ok(()) => return Ok(cluster),
                Err(e) if attempt < 5 => drop(e),
                Err(e) => return Err(e),
            }
        }
    }

    /// Starts the server again after [`Cluster::stop`] (same data, same port).
    ///
    /// # Errors
    /// If `pg_ctl start` fails.
    pub fn start_server(&mut self) -> Result<(), Error> {
        let mut options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c max_connections=200",
            self.port,
            self.dir.path().display()
        );
        if !self.durable {
            options.push_str(" -c fsync=off -c synchronous_commit=off -c full_page_writes=off");
        }
        if self.tls {
            let dir = self.dir.path().display();
            options.push_str(&format!(
                " -c ssl=on -c ssl_cert_file={dir}/server.crt -c ssl_key_file={dir}/server.key"
            ));
        }
        let out = self
            .server_command("pg_ctl")
            .arg("-D")
            .arg(self.data_dir())
            .arg("-l")
            .arg(self.log_path())
            .args(["-w", "-t", "30", "-o", &options, "start"])
            .output()?;
        if !out.status.success() {
            let log = fs::read_to_string(self.log_path()).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(5).collect();
            return Err(Error::Command("pg_ctl start".into(), tail.join(" | ")));
        }
        self.running = true;
        Ok(())
    }

    /// Stops the server (fast shutdown: clients are disconnected), keeping the data.
    ///
    /// # Errors
    /// If `pg_ctl stop` fails.
    pub fn stop(&mut self) -> Result<(), Error> {
        self.running = false;
        let out = self
            .server_command("pg_ctl")
            .arg("-D")
            .arg(self.data_dir())
            .args(["-w", "-m", "fast", "stop"])
            .output()?;
        check("pg_ctl stop", &out)
    }

    /// Creates database `name` (owned by the superuser).
    ///
    /// # Errors
    /// If `createdb` fails.
    pub fn create_database(&self, name: &str) -> Result<(), Error> {
        let out = self.client_command("createdb").arg(name).output()?;
        check("createdb", &out)
    }

    /// Runs SQL in database `db` with `psql` (as the superuser, over the socket); returns the
    /// unaligned, tuples-only output.
    ///
    /// # Errors
    /// If `psql` fails or the SQL raises an error.
    pub fn psql(&self, db: &str, sql: &str) -> Result<String, Error> {
        let out = self
            .client_command("psql")
            .args([
                "-X",
                "-A",
                "-t",
                "-v",
                "ON_ERROR_STOP=1",
                "-d",
                db,
                "-c",
                sql,
            ])
            .output()?;
        check("psql", &out)?;
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    }

    /// A `postgres://` URL for database `db` as the superuser over TCP on loopback (no
    /// password in it: give [`Cluster::password`] separately).
    pub fn url(&self, db: &str) -> String {
        format!("postgres://{SUPERUSER}@127.0.0.1:{}/{db}", self.port)
    }

    /// The TCP port on 127.0.0.1.
    pub const fn port(&self) -> u16 {
        self.port
    }

    /// The directory holding the Unix socket (`.s.PGSQL.<port>`).
    pub fn socket_dir(&self) -> &Path {
        self.dir.path()
    }

    /// The superuser's password (random per cluster; test use only).
    pub fn password(&self) -> &str {
        &self.password
    }

    /// Writes the superuser's password to a file readable only by its owner (as a
    /// `password_file` of the API's config) and returns its path.
    ///
    /// # Errors
    /// I/O errors.
    pub fn write_password_file(&self) -> Result<PathBuf, Error> {
        let path = self
            .dir
            .path()
            .join(format!("password-{}", random_password()?));
        write_private(&path, &format!("{}\n", self.password))?;
        Ok(path)
    }

    /// The server's log file.
    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("server.log")
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// A server program, run as the cluster's owner.
    fn server_command(&self, program: &str) -> Command {
        let mut command = Command::new(self.bin.join(program));
        if let Some((uid, gid)) = self.owner {
            command.uid(uid).gid(gid);
            // `postgres` cannot read root's home or working directory.
            command.current_dir(self.dir.path());
        }
        command.env("LC_ALL", "C");
        command
    }

    /// A client program, connecting over the socket as the superuser.
    fn client_command(&self, program: &str) -> Command {
        let mut command = Command::new(self.bin.join(program));
        command
            .arg("-h")
            .arg(self.dir.path())
            .arg("-p")
            .arg(self.port.to_string())
            .arg("-U")
            .arg(SUPERUSER);
        command
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if self.running {
            // Immediate: the data is about to be removed, nothing needs a clean shutdown.
            let _ = self
                .server_command("pg_ctl")
                .arg("-D")
                .arg(self.data_dir())
                .args(["-w", "-m", "immediate", "stop"])
                .output();
        }
    }
}

fn check(what: &str, out: &Output) -> Result<(), Error> {
    if out.status.success() {
        return Ok(());
    }
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Err(Error::Command(what.into(), text.trim().to_owned()))
}

/// The directory of `initdb` and `pg_ctl`: the newest `/usr/lib/postgresql/<version>/bin`,
/// else the one on `PATH`.
fn binaries() -> Result<PathBuf, Error> {
    let mut versions: Vec<(u32, PathBuf)> = fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let version = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((version, bin))
        })
        .collect();
    versions.sort();
    if let Some((_, bin)) = versions.pop() {
        return Ok(bin);
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .find(|dir| dir.join("initdb").exists() && dir.join("pg_ctl").exists())
        .ok_or(Error::NotInstalled)
}

/// `(uid, gid)` of the `postgres` user when running as root (the server must not), else
/// `None` (the server runs as whoever runs the tests).
fn server_owner() -> Result<Option<(u32, u32)>, Error> {
    let me = fs::metadata("/proc/self").map(|m| std::os::unix::fs::MetadataExt::uid(&m))?;
    if me != 0 {
        return Ok(None);
    }
    let passwd = fs::read_to_string("/etc/passwd")?;
    passwd
        .lines()
        .find_map(|line| {
            let mut f = line.split(':');
            if f.next()? != "postgres" {
                return None;
            }
            let uid = f.nth(1)?.parse().ok()?;
            let gid = f.next()?.parse().ok()?;
            Some(Some((uid, gid)))
        })
        .ok_or(Error::NoUser)
}

fn free_port() -> Result<u16, Error> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

fn write_private(path: &Path, text: &str) -> Result<(), Error> {
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(text.as_bytes())?;
    fs::set_permissions(path, fs::Permissions::from_mode(0o600))?;
    Ok(())
}

/// 24 hex digits from the OS random source.
fn random_password() -> Result<String, Error> {
    let mut bytes = [0u8; 12];
    io::Read::read_exact(&mut fs::File::open("/dev/urandom")?, &mut bytes)?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests fail loudly")]
    use super::*;

    #[test]
    fn a_cluster_is_made_used_and_removed() {
        let Some(mut cluster) = Cluster::for_tests("a_cluster_is_made_used_and_removed").unwrap()
        else {
            return;
        };
        cluster.create_database("t").unwrap();
        assert_eq!(cluster.psql("t", "SELECT 1 + 1").unwrap(), "2");
        assert!(cluster.psql("t", "SELECT nonsense").is_err());
        assert_eq!(cluster.psql("t", "SHOW server_encoding").unwrap(), "UTF8");
        cluster.stop().unwrap();
        assert!(cluster.psql("t", "SELECT 1").is_err());
        cluster.start_server().unwrap();
        assert_eq!(cluster.psql("t", "SELECT 2").unwrap(), "2");
        let pw = cluster.write_password_file().unwrap();
        assert_eq!(
            fs::metadata(&pw).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let dir = cluster.socket_dir().to_owned();
        drop(cluster);
        assert!(!dir.exists());
    }
}
