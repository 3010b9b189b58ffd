//! The client side of the control socket. A client believes an answer only from a daemon
//! running as exactly the user it expects, checked with `SO_PEERCRED` before it writes
//! anything, and gives the whole exchange a deadline: a socket that never accepts, an answer
//! that never ends or comes a byte at a time, keeps no client (the root hook least of all)
//! waiting or growing.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use rustix::net::{AddressFamily, SocketAddrUnix, SocketFlags, SocketType};

use super::protocol::{Envelope, Request, Response, MAX_LINE, PROTOCOL_VERSION};

/// A connection to a daemon.
pub struct Client {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
    timeout: Duration,
}

fn timed_out(what: &str) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::TimedOut, format!("{what} timed out"))
}

impl Client {
    /// Connects to the daemon at `socket`, which must run as `daemon_uid` (an answer from
    /// anyone else is never believed, and nothing is sent to them), giving up on a connection,
    /// and on each exchange, that takes longer than `timeout`.
    pub fn connect_within(
        socket: &Path,
        daemon_uid: u32,
        timeout: Duration,
    ) -> std::io::Result<Client> {
        let stream = connect_by(socket, Instant::now() + timeout)?;
        let peer = rustix::net::sockopt::socket_peercred(&stream)?;
        if peer.uid.as_raw() != daemon_uid {
            return Err(std::io::Error::new(
                std::io::ErrorKind::PermissionDenied,
                format!(
                    "the process answering at {} runs as uid {}, not uid {daemon_uid}: it is not that user's srcstore daemon",
                    socket.display(),
                    peer.uid.as_raw()
                ),
            ));
        }
        stream.set_write_timeout(Some(timeout))?;
        Ok(Client {
            reader: BufReader::new(stream.try_clone()?),
            writer: stream,
            timeout,
        })
    }

    pub fn request(&mut self, body: Request) -> std::io::Result<Response> {
        let mut line = serde_json::to_vec(&Envelope {
            v: PROTOCOL_VERSION,
            body,
        })?;
        line.push(b'\n');
        self.writer.write_all(&line)?;
        let answer = self.read_line(Some(Instant::now() + self.timeout))?;
        if answer.is_empty() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "daemon closed the connection",
            ));
        }
        serde_json::from_slice(&answer).map_err(std::io::Error::other)
    }

    /// One line of at most [`MAX_LINE`] bytes, by `deadline` (if any); empty at the end.
    fn read_line(&mut self, deadline: Option<Instant>) -> std::io::Result<Vec<u8>> {
        let mut line = Vec::new();
        loop {
            let left = match deadline {
                Some(d) => Some(
                    d.checked_duration_since(Instant::now())
                        .filter(|l| !l.is_zero())
                        .ok_or_else(|| timed_out("the daemon's answer"))?,
                ),
                None => None,
            };
            self.reader.get_ref().set_read_timeout(left)?;
            let buf = match self.reader.fill_buf() {
                Ok(b) => b,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    return Err(timed_out("the daemon's answer"))
                }
                Err(e) => return Err(e),
            };
            if buf.is_empty() {
                return Ok(line);
            }
            let (used, done) = match buf.iter().position(|&b| b == b'\n') {
                Some(i) => (i + 1, true),
                None => (buf.len(), false),
            };
            line.extend_from_slice(&buf[..used]);
            self.reader.consume(used);
            if line.len() > MAX_LINE {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    "the daemon's answer is longer than any answer can be",
                ));
            }
            if done {
                return Ok(line);
            }
        }
    }

    /// Turns this connection into a stream of events (each line bounded, no deadline: events
    /// come when they come).
    pub fn subscribe(mut self) -> std::io::Result<impl Iterator<Item = Response>> {
        let ack = self.request(Request::Subscribe)?;
        if !ack.ok {
            return Err(std::io::Error::other(ack.error.unwrap_or_default()));
        }
        Ok(std::iter::from_fn(move || match self.read_line(None) {
            Ok(line) if !line.is_empty() => serde_json::from_slice(&line).ok(),
            _ => None,
        }))
    }
}

/// A connection to `socket` by `deadline`: a Unix socket whose backlog is full blocks a plain
/// connect for as long as nobody accepts, so this one does not block and tries again.
fn connect_by(socket: &Path, deadline: Instant) -> std::io::Result<UnixStream> {
    let addr = SocketAddrUnix::new(socket)?;
    let fd = rustix::net::socket_with(
        AddressFamily::UNIX,
        SocketType::STREAM,
        SocketFlags::NONBLOCK | SocketFlags::CLOEXEC,
        None,
    )?;
    loop {
        match rustix::net::connect(&fd, &addr) {
            Ok(()) => break,
            Err(rustix::io::Errno::AGAIN) | Err(rustix::io::Errno::INTR) => {
                if Instant::now() >= deadline {
                    return Err(timed_out(&format!("connecting to {}", socket.display())));
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) => return Err(e.into()),
        }
    }
    let stream = UnixStream::from(fd);
    stream.set_nonblocking(false)?;
    Ok(stream)
}
