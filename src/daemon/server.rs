//! The daemon side of the control socket: one thread per connection, answering only those the
//! handler admits by their uid (`SO_PEERCRED`): a daemon, its own user and root.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::Arc;

use super::protocol::{parse, Request, Response, MAX_LINE};

/// What a daemon does with a request.
pub trait Handler: Send + Sync + 'static {
    /// Answers `request` from a peer running as `peer`.
    fn handle(&self, request: Request, peer: u32) -> Response;

    /// Whether a peer running as `uid` may talk to this handler at all.
    fn admits(&self, uid: u32) -> bool {
        uid == rustix::process::geteuid().as_raw() || uid == 0
    }

    /// Events for a [`Request::Subscribe`]r, until the receiver's sender is dropped.
    fn subscribe(&self) -> std::sync::mpsc::Receiver<Response>;
}

/// Answers connections on `listener` from a thread each, until the listener is closed.
pub fn serve(listener: UnixListener, handler: Arc<dyn Handler>) {
    for stream in listener.incoming() {
        let Ok(stream) = stream else { continue };
        let handler = handler.clone();
        let _ = std::thread::Builder::new()
            .name("srcstore-control".into())
            .spawn(move || {
                if let Err(e) = converse(stream, &handler) {
                    tracing::debug!("control connection: {e}");
                }
            });
    }
}

fn converse(stream: UnixStream, handler: &Arc<dyn Handler>) -> std::io::Result<()> {
    let mut writer = stream.try_clone()?;
    let peer = rustix::net::sockopt::socket_peercred(&stream)?.uid.as_raw();
    if !handler.admits(peer) {
        // Its request is read first (for a second at most), so that the refusal is what it
        // gets, not a broken pipe while it is still writing.
        stream.set_read_timeout(Some(std::time::Duration::from_secs(1)))?;
        let _ = BufReader::new(&stream)
            .take(MAX_LINE as u64)
            .read_until(b'\n', &mut Vec::new());
        let refusal = Response::error(format!("uid {peer} may not control this daemon"));
        return write_response(&mut writer, &refusal);
    }
    let mut reader = BufReader::new(stream).take(MAX_LINE as u64 + 1);
    loop {
        let mut line = Vec::new();
        if reader.read_until(b'\n', &mut line)? == 0 {
            return Ok(());
        }
        if line.len() > MAX_LINE {
            return write_response(&mut writer, &Response::error("request too long"));
        }
        reader.set_limit(MAX_LINE as u64 + 1);
        match parse(&line) {
            Ok(Request::Subscribe) => {
                let events = handler.subscribe();
                write_response(
                    &mut writer,
                    &Response {
                        ok: true,
                        ..Default::default()
                    },
                )?;
                for event in events {
                    write_response(&mut writer, &event)?;
                }
                return Ok(());
            }
            Ok(request) => write_response(&mut writer, &handler.handle(request, peer))?,
            Err(refusal) => write_response(&mut writer, &refusal)?,
        }
    }
}

fn write_response(w: &mut UnixStream, r: &Response) -> std::io::Result<()> {
    let mut line = serde_json::to_vec(r)?;
    line.push(b'\n');
    w.write_all(&line)
}
