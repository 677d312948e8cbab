//! The API as a real process over real HTTP and HTTPS.

#![allow(
    clippy::unwrap_used,
    clippy::indexing_slicing,
    clippy::panic,
    reason = "tests fail loudly"
)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

struct Api {
    child: Child,
    port: u16,
    dir: PathBuf,
}

impl Drop for Api {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn start(extra: &str, keyd_socket: &Path) -> Api {
    // A port found free can be taken by another test's process before ours binds it; ours then
    // exits at start and is started again on another port.
    for _ in 0..5 {
        let port = free_port();
        let dir = std::env::temp_dir().join(format!("api-test-{port}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let config = dir.join("api.toml");
        std::fs::write(
            &config,
            format!(
                "listen = \"127.0.0.1:{port}\"\nkeyd_socket = \"{}\"\ndatabase = \"{}\"\n{extra}\n\
                 [auth]\nsigning_key = \"{}\"\n",
                keyd_socket.display(),
                dir.join("api.db").display(),
                dir.join("jwt.p8").display(),
            ),
        )
        .unwrap();
        let log = dir.join("api.log");
        let mut child = Command::new(env!("CARGO_BIN_EXE_api"))
            .arg("--config")
            .arg(&config)
            .stderr(Stdio::from(std::fs::File::create(&log).unwrap()))
            .spawn()
            .unwrap();
        match e2e::api::wait_listening(&mut child, &log, 0, port) {
            Ok(()) => return Api { child, port, dir },
            Err(e) if e.to_string().contains("in use") => {
                let _ = std::fs::remove_dir_all(&dir);
            }
            Err(e) => panic!("api did not start: {e}"),
        }
    }
    panic!("no free port in five tries");
}

async fn request<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
    mut stream: S,
    method: &str,
    path: &str,
    headers: &str,
) -> (u16, String, serde_json::Value) {
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n{headers}\r\n"
    );
    stream.write_all(req.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    let _ = stream.read_to_end(&mut raw).await;
    let text = String::from_utf8(raw).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    let status = head[9..12].parse().unwrap();
    let body = if body.is_empty() {
        serde_json::Value::Null
    } else {
        serde_json::from_str(body).unwrap()
    };
    (status, head.to_lowercase(), body)
}

async fn plain(
    api: &Api,
    method: &str,
    path: &str,
    headers: &str,
) -> (u16, String, serde_json::Value) {
    let stream = tokio::net::TcpStream::connect(("127.0.0.1", api.port))
        .await
        .unwrap();
    request(stream, method, path, headers).await
}

#[tokio::test]
async fn health_request_ids_and_the_error_catalogue_over_plain_http() {
    let api = start("plain_http = true", Path::new("/nonexistent/keyd.sock"));
    let (status, head, body) =
        plain(&api, "GET", "/health/live", "X-Request-Id: abc-123\r\n").await;
    assert_eq!(status, 200);
    assert_eq!(body, serde_json::json!({"status": "ok"}));
    assert!(head.contains("x-request-id: abc-123"), "{head}");

    // A malformed id is replaced by a fresh one, which the error body repeats as trace_id.
    let (status, head, body) = plain(&api, "GET", "/nowhere", "X-Request-Id: bad id!\r\n").await;
    assert_eq!(status, 404);
    assert_eq!(body["error"]["code"], "4040");
    let id = head
        .lines()
        .find_map(|l| l.strip_prefix("x-request-id: "))
        .unwrap()
        .to_owned();
    assert!(id.starts_with("req_"), "{id}");
    assert_eq!(
        body["error"]["trace_id"].as_str().unwrap().to_lowercase(),
        id
    );

    let (status, head, body) = plain(&api, "POST", "/health/live", "Content-Length: 0\r\n").await;
    assert_eq!(status, 405);
    assert_eq!(body["error"]["code"], "4050");
    assert!(head.contains("allow: get"), "{head}");

    // keyd is not there: not ready, naming what is down.
    let (status, _, body) = plain(&api, "GET", "/health/ready", "").await;
    assert_eq!(status, 503);
    assert_eq!(body["error"]["code"], "5030");
    assert_eq!(body["error"]["details"]["checks"]["keyd"], "down");
}

#[tokio::test]
async fn ready_when_keyd_answers() {
    let keyd_bin = PathBuf::from(env!("CARGO_BIN_EXE_api")).with_file_name("keyd");
    assert!(
        keyd_bin.exists(),
        "keyd is built with the workspace: cargo test --workspace"
    );
    let mut keyd = e2e::KeydProcess::new(&keyd_bin, r#""data""#, "memory").unwrap();
    keyd.start().unwrap();
    let api = start("plain_http = true", keyd.socket());
    let (status, _, body) = plain(&api, "GET", "/health/ready", "").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body,
        serde_json::json!({"status": "ready", "checks": {"storage": "ok", "keyd": "ok"}})
    );
}

#[tokio::test]
async fn https_with_the_configured_certificate() {
    let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data");
    let api = start(
        &format!(
            "[tls]\ncert = \"{}\"\nkey = \"{}\"",
            data.join("test-cert.pem").display(),
            data.join("test-key.pem").display()
        ),
        Path::new("/nonexistent/keyd.sock"),
    );
    use rustls_pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pki_types::CertificateDer::pem_file_iter(data.join("ca-cert.pem")).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", api.port))
        .await
        .unwrap();
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    let tls = connector.connect(name, tcp).await.unwrap();
    let (status, _, body) = request(tls, "GET", "/health/live", "").await;
    assert_eq!(status, 200);
    assert_eq!(body["status"], "ok");
    // Plain HTTP on the TLS port gets nothing.
    let mut tcp = tokio::net::TcpStream::connect(("127.0.0.1", api.port))
        .await
        .unwrap();
    tcp.write_all(b"GET /health/live HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut buf)).await;
    assert!(!String::from_utf8_lossy(&buf).contains("200 OK"));
}

#[test]
fn sigterm_stops_it_cleanly() {
    let mut api = start("plain_http = true", Path::new("/nonexistent/keyd.sock"));
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(api.child.id().to_string())
        .status();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(status) = api.child.try_wait().unwrap() {
            assert!(status.success(), "{status}");
            break;
        }
        assert!(Instant::now() < deadline, "api did not stop");
        std::thread::sleep(Duration::from_millis(20));
    }
}
