//! The control socket: `openhcl-vpci inspect` connects, sends [`Message::Inspect`] and gets
//! [`Message::InspectReply`], as often as it likes on one connection. The service answers
//! from its event loop, so a reply is one consistent snapshot.

use crate::control::{self, ControlError, Message};
use crate::service::Event;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::sync::mpsc;
use std::time::Duration;

/// Listens on `path` and serves each client on a thread of its own.
pub fn listen(path: &Path, events: mpsc::Sender<Event>) -> std::io::Result<()> {
    let _ = std::fs::remove_file(path);
    let listener = UnixListener::bind(path)?;
    std::thread::Builder::new()
        .name("control-listener".into())
        .spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                let events = events.clone();
                let _ = std::thread::Builder::new()
                    .name("control-client".into())
                    .spawn(move || {
                        if let Err(e) = serve(&stream, &events) {
                            tracing::debug!(error = %e, "control client dropped");
                        }
                    });
            }
        })?;
    Ok(())
}

fn serve(stream: &UnixStream, events: &mpsc::Sender<Event>) -> Result<(), ControlError> {
    while let Some((message, _)) = control::recv(stream)? {
        let Message::Inspect { path, json } = message else {
            return Err(ControlError::Unexpected(format!("{message:?}")));
        };
        let (tx, rx) = mpsc::channel();
        if events.send(Event::Inspect(path, json, tx)).is_err() {
            return Ok(());
        }
        let result = rx
            .recv_timeout(Duration::from_secs(10))
            .unwrap_or_else(|_| Err("the service did not answer".into()));
        control::send(stream, &Message::InspectReply { result }, None)?;
    }
    Ok(())
}

/// A client's query: connects to `socket`, asks for `path`, returns the rendered subtree.
pub fn query(stream: &UnixStream, path: &str, json: bool) -> anyhow::Result<String> {
    control::send(
        stream,
        &Message::Inspect {
            path: path.to_owned(),
            json,
        },
        None,
    )?;
    match control::recv(stream)? {
        Some((Message::InspectReply { result }, _)) => result.map_err(anyhow::Error::msg),
        Some((other, _)) => anyhow::bail!("unexpected answer {other:?}"),
        None => anyhow::bail!("the service closed the connection"),
    }
}
