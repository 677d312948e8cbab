//! Headless Chromium driven through ChromeDriver's W3C WebDriver protocol: the browser a
//! person uses, with its own cookie rules, redirects, forms, CSP and rendering, for the
//! portal's end-to-end tests. Debian's `chromium` and `chromium-driver` packages.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::{Value, json};

use crate::Error;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;

/// Where Debian puts the browser and its driver.
pub const CHROMIUM: &str = "/usr/bin/chromium";
/// See [`CHROMIUM`].
pub const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

/// Whether both are installed.
pub fn available() -> bool {
    Path::new(CHROMIUM).exists() && Path::new(CHROMEDRIVER).exists()
}

/// A running ChromeDriver with one browser session.
pub struct Browser {
    driver: Child,
    port: u16,
    session: String,
    _profile: tempfile::TempDir,
}

impl std::fmt::Debug for Browser {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Browser")
            .field("session", &self.session)
            .finish_non_exhaustive()
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = call(
            self.port,
            "DELETE",
            &format!("/session/{}", self.session),
            None,
        );
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

/// An element reference.
#[derive(Debug, Clone)]
pub struct Element(String);

impl Browser {
    /// Starts ChromeDriver and a headless Chromium with a fresh profile. Names under
    /// `.localhost` resolve to loopback, as Chromium does on its own.
    ///
    /// # Errors
    /// If either is missing or does not come up.
    pub fn start() -> Result<Self, Error> {
        Self::start_with(&[])
    }

    /// Like [`Browser::start`] with more command-line switches for Chromium (a test realm's
    /// certificate it cannot check, say: `--ignore-certificate-errors`).
    ///
    /// # Errors
    /// If either is missing or does not come up.
    pub fn start_with(extra: &[&str]) -> Result<Self, Error> {
        let port = crate::api::free_port()?;
        let driver = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        let profile = tempfile::tempdir()?;
        let deadline = Instant::now() + Duration::from_secs(20);
        while call(port, "GET", "/status", None).is_err() {
            if Instant::now() > deadline {
                return Err("chromedriver did not start".into());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let profile_arg = format!("--user-data-dir={}", profile.path().display());
        let args = [
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-dev-shm-usage",
            "--window-size=1280,900",
            &profile_arg,
        ]
        .into_iter()
        .chain(extra.iter().copied())
        .collect::<Vec<_>>();
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {"binary": CHROMIUM, "args": args},
        }}});
        let (_, answer) = call(port, "POST", "/session", Some(&caps))?;
        let session = answer
            .get("value")
            .and_then(|v| v.get("sessionId"))
            .and_then(Value::as_str)
            .ok_or_else(|| format!("no session: {answer}"))?
            .to_owned();
        Ok(Self {
            driver,
            port,
            session,
            _profile: profile,
        })
    }

    fn command(&self, method: &str, path: &str, body: Option<&Value>) -> Result<Value, Error> {
        let empty = json!({});
        let body = (method == "POST").then(|| body.unwrap_or(&empty));
        let (status, answer) = call(
            self.port,
            method,
            &format!("/session/{}{path}", self.session),
            body,
        )?;
        if status != 200 {
            return Err(format!("webdriver {method} {path}: {status} {answer}").into());
        }
        Ok(answer.get("value").cloned().unwrap_or(Value::Null))
    }

    /// Opens an address and waits for the page to load.
    ///
    /// # Errors
    /// What the driver reports.
    pub fn open(&self, url: &str) -> Result<(), Error> {
        self.command("POST", "/url", Some(&json!({"url": url})))?;
        Ok(())
    }

    /// The address shown.
    ///
    /// # Errors
    /// What the driver reports.
    pub fn url(&self) -> Result<String, Error> {
        Ok(self
            .command("GET", "/url", None)?
            .as_str()
            .unwrap_or_default()
            .to_owned())
    }

    /// The page's visible text.
    ///
    /// # Errors
    /// What the driver reports.
    pub fn text(&self) -> Result<String, Error> {
        self.element_text("body")
    }

    /// The visible text of the first element matching a CSS selector.
    ///
    /// # Errors
    /// None matches, or what the driver reports.
    pub fn element_text(&self, css: &str) -> Result<String, Error> {
        let e = self.find(css)?;
        Ok(self
            .command("GET", &format!("/element/{}/text", e.0), None)?
            .as_str()
            .unwrap_or_default()
            .to_owned())
    }

    /// The first element matching a CSS selector.
    ///
    /// # Errors
    /// None matches, or what the driver reports.
    pub fn find(&self, css: &str) -> Result<Element, Error> {
        let v = self.command(
            "POST",
            "/element",
            Some(&json!({"using": "css selector", "value": css})),
        )?;
        v.as_object()
            .and_then(|o| o.values().next())
            .and_then(Value::as_str)
            .map(|id| Element(id.to_owned()))
            .ok_or_else(|| format!("no element {css}").into())
    }

    /// Types into a field (after clearing it).
    ///
    /// # Errors
    /// What the driver reports.
    pub fn fill(&self, css: &str, text: &str) -> Result<(), Error> {
        let e = self.find(css)?;
        self.command("POST", &format!("/element/{}/clear", e.0), None)?;
        self.command(
            "POST",
            &format!("/element/{}/value", e.0),
            Some(&json!({"text": text})),
        )?;
        Ok(())
    }

    /// Clicks a link or a form's button and waits for the page it leads to. The driver's
    /// click returns once the click is dispatched, not when the navigation it starts ends, so
    /// this waits until the old document is gone and the new one has a body.
    ///
    /// # Errors
    /// What the driver reports, or no new page within 30 s.
    pub fn click(&self, css: &str) -> Result<(), Error> {
        let old = self.find("html")?;
        let e = self.find(css)?;
        self.command("POST", &format!("/element/{}/click", e.0), None)?;
        let deadline = Instant::now() + Duration::from_secs(30);
        // The old document's element goes stale when the new document replaces it.
        while self
            .command("GET", &format!("/element/{}/name", old.0), None)
            .is_ok()
        {
            if Instant::now() > deadline {
                return Err(format!("clicking {css} led nowhere").into());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        while self.find("body").is_err() {
            if Instant::now() > deadline {
                return Err(format!("the page after {css} never loaded").into());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }

    /// Waits until the page's text contains `needle` (a navigation under way, such as the
    /// redirects after a form, ends first).
    ///
    /// # Errors
    /// Not within `timeout`.
    pub fn wait_for_text(&self, needle: &str, timeout: Duration) -> Result<String, Error> {
        self.poll_text(needle, timeout, false)
    }

    /// Like [`Browser::wait_for_text`], reloading the page every half second: pages are
    /// server-rendered, and a reload is how a person sees new data. Only for pages opened
    /// with `GET` (a reload repeats the request).
    ///
    /// # Errors
    /// Not within `timeout`.
    pub fn reload_until_text(&self, needle: &str, timeout: Duration) -> Result<String, Error> {
        self.poll_text(needle, timeout, true)
    }

    fn poll_text(&self, needle: &str, timeout: Duration, reload: bool) -> Result<String, Error> {
        let deadline = Instant::now() + timeout;
        loop {
            let text = self.text()?;
            if text.contains(needle) {
                return Ok(text);
            }
            if Instant::now() > deadline {
                return Err(format!("page never showed {needle:?}: {text}").into());
            }
            std::thread::sleep(Duration::from_millis(if reload { 500 } else { 100 }));
            if reload {
                self.command("POST", "/refresh", None)?;
            }
        }
    }

    /// Saves a screenshot of the window as PNG.
    ///
    /// # Errors
    /// What the driver reports, or the file cannot be written.
    pub fn screenshot(&self, to: &Path) -> Result<PathBuf, Error> {
        let b64 = self.command("GET", "/screenshot", None)?;
        let png =
            base64::engine::general_purpose::STANDARD.decode(b64.as_str().unwrap_or_default())?;
        std::fs::write(to, png)?;
        Ok(to.to_owned())
    }
}

/// One request to the driver. Its answers carry a `Content-Length` and it may keep the
/// connection open, so the answer is read to its length, not to the end of the stream.
fn call(port: u16, method: &str, path: &str, body: Option<&Value>) -> Result<(u16, Value), Error> {
    let mut stream = TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(Duration::from_secs(120)))?;
    let body = body.map(Value::to_string).unwrap_or_default();
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )?;
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let status: u16 = line
        .get(9..12)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("no status line: {line:?}"))?;
    let mut length = 0usize;
    loop {
        line.clear();
        reader.read_line(&mut line)?;
        let header = line.trim_end();
        if header.is_empty() {
            break;
        }
        if let Some((name, value)) = header.split_once(':')
            && name.eq_ignore_ascii_case("content-length")
        {
            length = value.trim().parse()?;
        }
    }
    let mut raw = vec![0; length];
    reader.read_exact(&mut raw)?;
    Ok((status, serde_json::from_slice(&raw).unwrap_or(Value::Null)))
}
