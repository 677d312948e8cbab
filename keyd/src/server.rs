//! The Unix socket: peers identified by `SO_PEERCRED`, many requests in flight per connection.

use std::future::Future;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::Path;
use std::sync::Arc;

use keyd_proto::Status;
use keyd_proto::frame::{self, Kind, MAX_BODY};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::mpsc;

use crate::config::Config;
use crate::{Error, Service, dispatch};

/// Binds the socket: the directory is created 0750 if missing, a stale socket file is replaced,
/// and the socket is made 0660 before anyone is told it exists.
///
/// # Errors
/// [`Error::Io`], or [`Error::Config`] if the path holds something other than a socket.
pub fn bind(path: &Path) -> Result<UnixListener, Error> {
    if let Some(dir) = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty() && !d.exists())
    {
        std::fs::create_dir_all(dir)?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o750))?;
    }
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => std::fs::remove_file(path)?,
        Ok(_) => {
            return Err(Error::Config(format!(
                "{} exists and is not a socket",
                path.display()
            )));
        }
        Err(_) => {}
    }
    let listener = UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))?;
    Ok(listener)
}

/// Accepts connections until `shutdown` completes.
pub async fn serve(
    listener: UnixListener,
    service: Arc<Service>,
    config: Arc<Config>,
    shutdown: impl Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    tokio::spawn(connection(stream, Arc::clone(&service), Arc::clone(&config)));
                }
                Err(e) => tracing::warn!(error = %e, "accept failed"),
            },
        }
    }
}

async fn connection(stream: UnixStream, service: Arc<Service>, config: Arc<Config>) {
    let groups = match stream.peer_cred() {
        Ok(cred) => config.groups_for(cred.uid(), cred.gid()),
        Err(e) => {
            tracing::warn!(error = %e, "no peer credentials; closing");
            return;
        }
    };
    let (mut read, mut write) = stream.into_split();
    let (tx, mut rx) = mpsc::channel::<Vec<u8>>(4096);
    let writer = tokio::spawn(async move {
        let mut batch = Vec::with_capacity(64 * 1024);
        while let Some(frame) = rx.recv().await {
            batch.clear();
            batch.extend_from_slice(&frame);
            // Answers that are ready together go out in one write.
            while batch.len() < 256 * 1024 {
                match rx.try_recv() {
                    Ok(more) => batch.extend_from_slice(&more),
                    Err(_) => break,
                }
            }
            if write.write_all(&batch).await.is_err() {
                break;
            }
        }
    });

    let mut buf: Vec<u8> = Vec::with_capacity(64 * 1024);
    let mut chunk = vec![0u8; 64 * 1024];
    'read: loop {
        let n = match read.read(&mut chunk).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        buf.extend_from_slice(chunk.get(..n).unwrap_or_default());
        let mut used = 0;
        loop {
            let frame = match frame::decode(buf.get(used..).unwrap_or_default(), MAX_BODY) {
                Ok(Some((f, len))) => {
                    used += len;
                    f
                }
                Ok(None) => break,
                Err(e) => {
                    // A broken stream closes this connection only.
                    tracing::debug!(error = %e, "malformed frame; closing the connection");
                    break 'read;
                }
            };
            if frame.header.kind != Kind::Request {
                break 'read;
            }
            let (opcode, id) = (frame.header.opcode, frame.header.request_id);
            if dispatch::is_slow(opcode) {
                let body = frame.body.to_vec();
                let service = Arc::clone(&service);
                let tx = tx.clone();
                tokio::spawn(async move {
                    let answer = tokio::task::spawn_blocking(move || {
                        dispatch::handle(&service, groups, opcode, &body)
                    })
                    .await
                    .unwrap_or((Status::INTERNAL, Vec::new()));
                    let _ = tx.send(response(opcode, id, answer)).await;
                });
            } else {
                let answer = dispatch::handle(&service, groups, opcode, frame.body);
                if tx.send(response(opcode, id, answer)).await.is_err() {
                    break 'read;
                }
            }
        }
        buf.drain(..used);
    }
    drop(tx);
    let _ = writer.await;
}

fn response(opcode: keyd_proto::Opcode, id: u64, (status, body): (Status, Vec<u8>)) -> Vec<u8> {
    let mut out = Vec::with_capacity(frame::HEADER_LEN + body.len());
    frame::encode(Kind::Response, opcode, status, id, &body, &mut out);
    out
}
