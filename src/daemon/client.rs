//! The client side of the control socket. A client believes an answer only from a daemon
//! running as the user it expects (or root), checked with `SO_PEERCRED` before it writes
//! anything.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use super::protocol::{Envelope, Request, Response, PROTOCOL_VERSION};

/// A connection to a daemon.
pub struct Client {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

impl Client {
    /// Connects to the daemon at `socket`, which must run as `daemon_uid` or as root: an answer
    /// from anyone else is never believed, and nothing is sent to them.
    pub fn connect(socket: &Path, daemon_uid: u32) -> std::io::Result<Client> {
        Client::connect_within(socket, daemon_uid, Duration::from_secs(60))
    }

    /// [`Client::connect`], giving up on any answer that takes longer than `timeout`.
    pub fn connect_within(
        socket: &Path,
        daemon_uid: u32,
        timeout: Duration,
    ) -> std::io::Result<Client> {
        let stream = UnixStream::connect(socket)?;
        let peer = rustix::net::sockopt::socket_peercred(&stream)?;
        if peer.uid.as_raw() != daemon_uid && !peer.uid.is_root() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::PermissionDenied,
                format!(
                    "the process answering at {} runs as uid {}, not uid {daemon_uid}: it is not this user's srcstore daemon",
                    socket.display(),
                    peer.uid.as_raw()
                ),
            ));
        }
        stream.set_read_timeout(Some(timeout))?;
        stream.set_write_timeout(Some(timeout))?;
        Ok(Client {
            reader: BufReader::new(stream.try_clone()?),
            writer: stream,
        })
    }

    pub fn request(&mut self, body: Request) -> std::io::Result<Response> {
        let mut line = serde_json::to_vec(&Envelope {
            v: PROTOCOL_VERSION,
            body,
        })?;
        line.push(b'\n');
        self.writer.write_all(&line)?;
        let mut answer = String::new();
        if self.reader.read_line(&mut answer)? == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "daemon closed the connection",
            ));
        }
        serde_json::from_str(&answer).map_err(std::io::Error::other)
    }
}

impl Client {
    /// Turns this connection into a stream of events.
    pub fn subscribe(mut self) -> std::io::Result<impl Iterator<Item = Response>> {
        let ack = self.request(Request::Subscribe)?;
        if !ack.ok {
            return Err(std::io::Error::other(ack.error.unwrap_or_default()));
        }
        let mut reader = self.reader;
        Ok(std::iter::from_fn(move || {
            let mut line = String::new();
            match reader.read_line(&mut line) {
                Ok(n) if n > 0 => serde_json::from_str(&line).ok(),
                _ => None,
            }
        }))
    }
}
