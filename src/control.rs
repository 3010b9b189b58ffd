//! The daemon's control socket: how `srcstore path`, `status` and the Nix hook find and ask the
//! daemon serving a project.
//!
//! One Unix socket per project, `<runtime>/<key>.sock`, where `<runtime>` is `/run/srcstore` for
//! root, `$XDG_RUNTIME_DIR/srcstore` for a user who has one, and `/tmp/srcstore-<uid>`
//! otherwise (whatever `TMPDIR` says, so that the root hook, which never sees a user's
//! environment, knows every default place). `<key>` is derived from the project's absolute
//! path. The protocol is one JSON object per line each way; every request carries `"v": 1` and
//! a daemon answers a version it does not speak with an error, never a guess.
//!
//! Trust runs both ways and is checked with `SO_PEERCRED`: only the daemon's own user and root
//! may talk to a daemon, and a client believes an answer only from a daemon running as the
//! user it expects (or root). A runtime directory is used only when it is a directory of its
//! user's, closed to everyone else: in a shared `/tmp`, another user could otherwise have made
//! it first and put a socket of their own in it.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub const PROTOCOL_VERSION: u32 = 1;
/// Longest request line a daemon reads; anything longer is refused.
const MAX_LINE: usize = 64 * 1024;

#[derive(Debug, Serialize, Deserialize)]
pub struct Envelope<T> {
    pub v: u32,
    #[serde(flatten)]
    pub body: T,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    /// The current snapshot, including every change made before the request.
    Path {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        sub: Option<String>,
    },
    Status,
    /// Keep a served snapshot until unpinned, the lease runs out, or `until_gone` (a path)
    /// no longer exists.
    Pin {
        basename: String,
        lease_secs: Option<u64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        until_gone: Option<String>,
    },
    Unpin {
        id: u64,
    },
    /// Stream events on this connection from now on, one response per line: a new current
    /// snapshot (`event: "snapshot"`, `path`) or a read that failed because a file changed
    /// (`event: "read_failed"`, `path` of the file).
    Subscribe,
}

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Response {
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pin: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event: Option<String>,
    /// With a refusal of a request's protocol version: the version this daemon speaks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub speaks: Option<u32>,
}

impl Response {
    pub fn error(msg: impl Into<String>) -> Self {
        Response {
            ok: false,
            error: Some(msg.into()),
            ..Default::default()
        }
    }
}

/// Where daemons of this user keep sockets, locks and default mountpoints.
pub fn runtime_dir() -> PathBuf {
    let uid = rustix::process::geteuid();
    if uid.is_root() {
        return PathBuf::from("/run/srcstore");
    }
    match std::env::var_os("XDG_RUNTIME_DIR").filter(|v| !v.is_empty()) {
        Some(d) => PathBuf::from(d).join("srcstore"),
        None => fallback_runtime_dir(uid.as_raw()),
    }
}

/// A user's runtime directory when they have no `XDG_RUNTIME_DIR`.
pub fn fallback_runtime_dir(uid: u32) -> PathBuf {
    PathBuf::from(format!("/tmp/srcstore-{uid}"))
}

/// [`runtime_dir`], made (mode 0700) if `create` and it is missing, and checked: a directory,
/// not a link, owned by this user and closed to everyone else. Anything else is refused with
/// the reason and the fix, since whoever controls it controls what `path` answers.
pub fn private_runtime_dir(create: bool) -> std::io::Result<PathBuf> {
    let dir = runtime_dir();
    if create {
        match std::fs::DirBuilder::new().mode(0o700).create(&dir) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                if let Some(parent) = dir.parent() {
                    std::fs::DirBuilder::new()
                        .recursive(true)
                        .mode(0o700)
                        .create(parent)?;
                }
                std::fs::DirBuilder::new().mode(0o700).create(&dir)?;
            }
            Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => return Err(e),
            _ => {}
        }
    }
    check_private_dir(&dir, rustix::process::geteuid().as_raw())?;
    Ok(dir)
}

/// `dir` is a directory (not a link) owned by `uid` with no access for group or others.
pub fn check_private_dir(dir: &Path, uid: u32) -> std::io::Result<()> {
    let meta = std::fs::symlink_metadata(dir)?;
    let refuse = |why: String| {
        Err(std::io::Error::new(
            std::io::ErrorKind::PermissionDenied,
            why,
        ))
    };
    if !meta.file_type().is_dir() {
        return refuse(format!(
            "not a directory of srcstore's (a {}); remove it and start again",
            if meta.file_type().is_symlink() {
                "symlink"
            } else {
                "file"
            }
        ));
    }
    if meta.uid() != uid {
        return refuse(format!(
            "owned by uid {}, not by uid {uid}: another user may have made it; remove it (as root) and start again",
            meta.uid()
        ));
    }
    if meta.mode() & 0o077 != 0 {
        return refuse(format!(
            "mode {:o} lets other users in; run `chmod 700` on it",
            meta.mode() & 0o7777
        ));
    }
    Ok(())
}

fn key(project: &Path) -> String {
    blake3::hash(project.as_os_str().as_bytes()).to_hex()[..24].to_string()
}

pub fn socket_path(runtime: &Path, project: &Path) -> PathBuf {
    runtime.join(format!("{}.sock", key(project)))
}

pub fn lock_path(runtime: &Path, project: &Path) -> PathBuf {
    runtime.join(format!("{}.lock", key(project)))
}

/// `<runtime>/<name>-<key>`: one mountpoint per project, readable by name.
pub fn default_mountpoint(runtime: &Path, project: &Path, name: &str) -> PathBuf {
    runtime.join(format!("{name}-{}", &key(project)[..8]))
}

/// The project directory served by a daemon, searching `start` and its ancestors.
pub fn find_project(runtime: &Path, start: &Path) -> Option<PathBuf> {
    start
        .ancestors()
        .find(|dir| socket_path(runtime, dir).exists())
        .map(Path::to_path_buf)
}

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

/// What a daemon does with a request.
pub trait Handler: Send + Sync + 'static {
    fn handle(&self, request: Request) -> Response;
    /// Events for a [`Request::Subscribe`]r, until the receiver's sender is dropped.
    fn subscribe(&self) -> std::sync::mpsc::Receiver<Response>;
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

/// Answers connections on `listener` from a thread each, until the listener is closed.
pub fn serve(listener: UnixListener, handler: Arc<dyn Handler>) {
    let me = rustix::process::geteuid().as_raw();
    for stream in listener.incoming() {
        let Ok(stream) = stream else { continue };
        let handler = handler.clone();
        let _ = std::thread::Builder::new()
            .name("srcstore-control".into())
            .spawn(move || {
                if let Err(e) = converse(stream, me, &handler) {
                    tracing::debug!("control connection: {e}");
                }
            });
    }
}

fn converse(stream: UnixStream, me: u32, handler: &Arc<dyn Handler>) -> std::io::Result<()> {
    let mut writer = stream.try_clone()?;
    let peer = rustix::net::sockopt::socket_peercred(&stream)?;
    if peer.uid.as_raw() != me && !peer.uid.is_root() {
        let refusal = Response::error(format!(
            "uid {} may not control this daemon",
            peer.uid.as_raw()
        ));
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
            Ok(request) => write_response(&mut writer, &handler.handle(request))?,
            Err(refusal) => write_response(&mut writer, &refusal)?,
        }
    }
}

/// Parses one request line; a malformed or foreign-version one gets the refusal to send back.
/// Never panics, whatever the bytes.
pub fn parse(line: &[u8]) -> Result<Request, Box<Response>> {
    #[derive(Deserialize)]
    struct Version {
        v: u32,
    }
    match serde_json::from_slice::<Version>(line) {
        Ok(Version {
            v: PROTOCOL_VERSION,
        }) => {}
        Ok(Version { v }) => {
            return Err(Box::new(Response {
                speaks: Some(PROTOCOL_VERSION),
                ..Response::error(format!(
                    "protocol version {v} not spoken here (this daemon speaks {PROTOCOL_VERSION})"
                ))
            }))
        }
        Err(e) => return Err(Box::new(Response::error(format!("bad request: {e}")))),
    }
    serde_json::from_slice::<Envelope<Request>>(line)
        .map(|e| e.body)
        .map_err(|e| Box::new(Response::error(format!("bad request: {e}"))))
}

fn write_response(w: &mut UnixStream, r: &Response) -> std::io::Result<()> {
    let mut line = serde_json::to_vec(r)?;
    line.push(b'\n');
    w.write_all(&line)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_versioned_and_malformed_ones_refused() {
        assert!(matches!(
            parse(br#"{"v":1,"op":"status"}"#),
            Ok(Request::Status)
        ));
        assert!(matches!(
            parse(br#"{"v":1,"op":"path","sub":"pkg/foo"}"#),
            Ok(Request::Path { sub: Some(s) }) if s == "pkg/foo"
        ));
        let r = parse(br#"{"v":2,"op":"status"}"#).unwrap_err();
        assert!(r.error.unwrap().contains("version 2"));
        assert_eq!(
            r.speaks,
            Some(PROTOCOL_VERSION),
            "a refusal says what would do"
        );
        for bad in [
            &b""[..],
            b"{",
            b"null",
            br#"{"op":"status"}"#,
            br#"{"v":1,"op":"nope"}"#,
            b"\xff\xfe",
            br#"{"v":1,"op":"pin"}"#,
        ] {
            assert!(parse(bad).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
    }
}
