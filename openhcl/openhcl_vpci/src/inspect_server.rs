//! The control socket: `openhcl-vpci inspect` connects, sends [`Message::Inspect`] and gets
//! [`Message::InspectReply`], as often as it likes on one connection. The service answers
//! from its event loop, so a reply is one consistent snapshot.

use crate::control::{self, ControlError, Message};
use crate::service::threads::{Pause, spawn_listener};
use crate::service::{Event, UpdateRequest};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::Duration;

/// Serves control clients from `listener`, each on a thread of its own, until `pause` is
/// set: the listener thread then returns the listener (for a successor).
pub(crate) fn listen(
    listener: UnixListener,
    pause: Pause,
    events: mpsc::Sender<Event>,
) -> std::io::Result<JoinHandle<Option<UnixListener>>> {
    spawn_listener("control-listener", listener, pause, move |stream| {
        serve_client(stream, events.clone());
        true
    })
}

/// Serves one control client on a thread of its own.
pub(crate) fn serve_client(stream: UnixStream, events: mpsc::Sender<Event>) {
    let _ = std::thread::Builder::new()
        .name("control-client".into())
        .spawn(move || {
            if let Err(e) = serve(&stream, &events) {
                tracing::debug!(error = %e, "control client dropped");
            }
        });
}

fn serve(stream: &UnixStream, events: &mpsc::Sender<Event>) -> Result<(), ControlError> {
    while let Some((message, _)) = control::recv(stream)? {
        let (tx, rx) = mpsc::channel();
        let (event, wait) = match message {
            Message::Inspect { path, json } => {
                (Event::Inspect(path, json, tx), Duration::from_secs(10))
            }
            Message::Update { binary } => (
                Event::Update(UpdateRequest {
                    binary: binary.map(PathBuf::from),
                    requester: stream.try_clone().ok(),
                    reply: tx,
                }),
                UPDATE_WAIT,
            ),
            other => return Err(ControlError::Unexpected(format!("{other:?}"))),
        };
        let update = matches!(event, Event::Update(_));
        if events.send(event).is_err() {
            return Ok(());
        }
        let result = rx
            .recv_timeout(wait)
            .unwrap_or_else(|_| Err("the service did not answer".into()));
        let reply = if update {
            Message::UpdateReply { result }
        } else {
            Message::InspectReply { result }
        };
        control::send(stream, &reply, None)?;
    }
    Ok(())
}

/// How long a control client waits for an update to be refused or to fail (a successful one
/// is answered by the new image on the same connection).
const UPDATE_WAIT: Duration = Duration::from_secs(60);

/// A client's update request: asks the service on `stream` to replace itself with `binary`
/// (its own binary if `None`) and waits for the answer, which the new image gives.
pub fn update(stream: &UnixStream, binary: Option<&Path>) -> anyhow::Result<String> {
    control::send(
        stream,
        &Message::Update {
            binary: binary.map(|b| b.to_string_lossy().into_owned()),
        },
        None,
    )?;
    let _ = stream.set_read_timeout(Some(UPDATE_WAIT + Duration::from_secs(10)));
    match control::recv(stream)? {
        Some((Message::UpdateReply { result }, _)) => result.map_err(anyhow::Error::msg),
        Some((other, _)) => anyhow::bail!("unexpected answer {other:?}"),
        None => anyhow::bail!("the service closed the connection during the update"),
    }
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
