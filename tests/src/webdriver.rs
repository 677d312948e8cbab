//! Headless Chromium driven through ChromeDriver's W3C WebDriver protocol: the browser a
//! person uses, with its own cookie rules, redirects, forms, CSP and rendering, for the
//! portal's end-to-end tests. Debian's `chromium` and `chromium-driver` packages.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::{Value, json};

use crate::Error;
use crate::api::Client;

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
    http: Client,
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
        let _ = self
            .http
            .call("DELETE", &format!("/session/{}", self.session), None, None);
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
        let port = crate::api::free_port()?;
        let driver = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        let http = Client::new(port);
        let profile = tempfile::tempdir()?;
        let deadline = Instant::now() + Duration::from_secs(20);
        while http.call("GET", "/status", None, None).is_err() {
            if Instant::now() > deadline {
                return Err("chromedriver did not start".into());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
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
            &format!("--user-data-dir={}", profile.path().display()),
        ];
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {"binary": CHROMIUM, "args": args},
        }}});
        let answer = http.call("POST", "/session", None, Some(&caps))?;
        let session = answer
            .json
            .get("value")
            .and_then(|v| v.get("sessionId"))
            .and_then(Value::as_str)
            .ok_or_else(|| format!("no session: {}", answer.json))?
            .to_owned();
        Ok(Self {
            driver,
            http,
            session,
            _profile: profile,
        })
    }

    fn command(&self, method: &str, path: &str, body: Option<&Value>) -> Result<Value, Error> {
        let answer = self.http.call(
            method,
            &format!("/session/{}{path}", self.session),
            None,
            body.or(Some(&json!({}))).filter(|_| method == "POST"),
        )?;
        if answer.status != 200 {
            return Err(format!(
                "webdriver {method} {path}: {} {}",
                answer.status, answer.json
            )
            .into());
        }
        Ok(answer.json.get("value").cloned().unwrap_or(Value::Null))
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
        let body = self.find("body")?;
        Ok(self
            .command("GET", &format!("/element/{}/text", body.0), None)?
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

    /// Clicks an element (a button submits its form; the driver waits for the next page).
    ///
    /// # Errors
    /// What the driver reports.
    pub fn click(&self, css: &str) -> Result<(), Error> {
        let e = self.find(css)?;
        self.command("POST", &format!("/element/{}/click", e.0), None)?;
        Ok(())
    }

    /// Waits until the page's text contains `needle`, reloading every half second (pages are
    /// server-rendered: a reload is how a person sees new data).
    ///
    /// # Errors
    /// Not within `timeout`.
    pub fn wait_for_text(&self, needle: &str, timeout: Duration) -> Result<String, Error> {
        let deadline = Instant::now() + timeout;
        loop {
            let text = self.text()?;
            if text.contains(needle) {
                return Ok(text);
            }
            if Instant::now() > deadline {
                return Err(format!("page never showed {needle:?}: {text}").into());
            }
            std::thread::sleep(Duration::from_millis(500));
            self.command("POST", "/refresh", None)?;
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
