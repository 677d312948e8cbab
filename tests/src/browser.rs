//! A browser's HTTP behaviour, for testing the portal without one: a cookie jar that honours
//! `Set-Cookie` (including removals), the `Host` the page is at, and the `Origin` a browser
//! sends with every form it posts. Redirects are returned, not followed, so a test sees each
//! step of a sign-in.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use crate::Error;
use crate::api::Answer;

/// One browser profile at one host of a local server.
#[derive(Debug, Clone)]
pub struct Browser {
    port: u16,
    host: String,
    /// Cookies by name.
    pub cookies: BTreeMap<String, String>,
}

impl Browser {
    /// A fresh profile visiting `host` (sent as `Host: host:port`) on loopback `port`.
    pub fn new(port: u16, host: &str) -> Self {
        Self {
            port,
            host: host.to_owned(),
            cookies: BTreeMap::new(),
        }
    }

    /// The origin the browser is at.
    pub fn origin(&self) -> String {
        format!("http://{}:{}", self.host, self.port)
    }

    /// `GET` a path (or an absolute address at this origin).
    ///
    /// # Errors
    /// Transport failures.
    pub fn get(&mut self, target: &str) -> Result<Answer, Error> {
        self.send("GET", target, None, &[])
    }

    /// Posts a form as a page of this origin does.
    ///
    /// # Errors
    /// Transport failures.
    pub fn post(&mut self, target: &str, fields: &[(&str, &str)]) -> Result<Answer, Error> {
        let origin = self.origin();
        self.post_from(target, fields, Some(&origin))
    }

    /// Posts a form with the given `Origin` (`None`: none at all), as another site would.
    ///
    /// # Errors
    /// Transport failures.
    pub fn post_from(
        &mut self,
        target: &str,
        fields: &[(&str, &str)],
        origin: Option<&str>,
    ) -> Result<Answer, Error> {
        let body = form_urlencoded::Serializer::new(String::new())
            .extend_pairs(fields)
            .finish();
        self.send("POST", target, Some(body), &[("Origin", origin)])
    }

    /// Follows a redirect's `Location`.
    ///
    /// # Errors
    /// No `Location`, or transport failures.
    pub fn follow(&mut self, answer: &Answer) -> Result<Answer, Error> {
        let to = answer.header("location").ok_or("no Location")?.to_owned();
        self.get(&to)
    }

    fn send(
        &mut self,
        method: &str,
        target: &str,
        body: Option<String>,
        extra: &[(&str, Option<&str>)],
    ) -> Result<Answer, Error> {
        let path = target
            .strip_prefix(&self.origin())
            .unwrap_or(target)
            .to_owned();
        if !path.starts_with('/') {
            return Err(format!("not at this origin: {target}").into());
        }
        let mut stream = TcpStream::connect(("127.0.0.1", self.port))?;
        stream.set_read_timeout(Some(Duration::from_secs(60)))?;
        let mut req = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}:{}\r\nConnection: close\r\n",
            self.host, self.port
        );
        if !self.cookies.is_empty() {
            let jar: Vec<String> = self
                .cookies
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            req.push_str(&format!("Cookie: {}\r\n", jar.join("; ")));
        }
        for (name, value) in extra {
            if let Some(v) = value {
                req.push_str(&format!("{name}: {v}\r\n"));
            }
        }
        let body = body.unwrap_or_default();
        if method == "POST" {
            req.push_str("Content-Type: application/x-www-form-urlencoded\r\n");
        }
        req.push_str(&format!("Content-Length: {}\r\n\r\n{body}", body.len()));
        stream.write_all(req.as_bytes())?;
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw)?;
        let answer = crate::api::parse(&raw)?;
        for (name, value) in &answer.headers {
            if name != "set-cookie" {
                continue;
            }
            let first = value.split(';').next().unwrap_or_default();
            let Some((k, v)) = first.split_once('=') else {
                continue;
            };
            let removed = value
                .split(';')
                .any(|a| a.trim().eq_ignore_ascii_case("max-age=0"));
            if removed || v.is_empty() {
                self.cookies.remove(k.trim());
            } else {
                self.cookies.insert(k.trim().to_owned(), v.to_owned());
            }
        }
        Ok(answer)
    }

    /// Starts a portal sign-in (`/portal/login`, then the provider's login page) and submits
    /// the login form as a person would: the login page and the form's answer (a redirect to
    /// the portal's callback when the password was right).
    ///
    /// # Errors
    /// Transport failures, or a sign-in that does not lead to a login page.
    pub fn submit_login(&mut self, email: &str, password: &str) -> Result<(Answer, Answer), Error> {
        let login = self.get("/portal/login")?;
        let form = self.follow(&login)?;
        if form.status != 200 {
            return Err(format!("no login page: {}", form.status).into());
        }
        let mut fields: Vec<(String, String)> = [
            "client_id",
            "redirect_uri",
            "response_type",
            "scope",
            "state",
            "nonce",
            "code_challenge",
            "code_challenge_method",
            "form_token",
        ]
        .iter()
        .map(|n| ((*n).to_owned(), Self::hidden(&form, n).unwrap_or_default()))
        .collect();
        fields.push(("email".into(), email.into()));
        fields.push(("password".into(), password.into()));
        let pairs: Vec<(&str, &str)> = fields
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let answer = self.post("/oauth/authorize", &pairs)?;
        Ok((form, answer))
    }

    /// The page's text.
    pub fn text(answer: &Answer) -> String {
        String::from_utf8_lossy(&answer.body).into_owned()
    }

    /// The value of a hidden input named `name` in a page.
    pub fn hidden(answer: &Answer, name: &str) -> Option<String> {
        let page = Self::text(answer);
        let marker = format!(r#"name="{name}" value=""#);
        let start = page.find(&marker)? + marker.len();
        let end = page.get(start..)?.find('"')? + start;
        page.get(start..end)
            .map(|v| v.replace("&amp;", "&").replace("&quot;", "\""))
    }
}
