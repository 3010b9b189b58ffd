//! The control protocol's messages (`docs/control-protocol.md`): one JSON object per line each
//! way. Every request carries `"v"`; a daemon answers a version it does not speak with a
//! refusal that says which one it speaks, never a guess.

use serde::{Deserialize, Serialize};

pub const PROTOCOL_VERSION: u32 = 1;
/// Longest request line a daemon reads; anything longer is refused.
pub(super) const MAX_LINE: usize = 64 * 1024;

#[derive(Debug, Serialize, Deserialize)]
pub struct Envelope<T> {
    pub v: u32,
    #[serde(flatten)]
    pub body: T,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    /// The current snapshot, including every change made before the request; with `store`,
    /// published as its `/nix/store/<h>-source` path (by a daemon started with `--store`).
    Path {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        sub: Option<String>,
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        store: bool,
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
    /// The directory of the project's compile cache partition `partition`, made if missing
    /// (`path`). Asked by the hook for a build that sets `srcstoreCache`.
    Volume {
        partition: String,
    },
    /// To the store service (`srcstore store serve`), from a user's daemon: publish the
    /// snapshot the view serves at `view` (`<mountpoint>/<basename>`), reading it there
    /// (`path`: its `/nix/store/<h>-source`). Only the view's owner may ask.
    Publish {
        view: String,
    },
    /// To the store service: drop the roots of what it published for the asker from the view
    /// at `mountpoint` (the paths stay valid until Nix collects them).
    Release {
        mountpoint: String,
    },
}

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Response {
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// With an error: the daemon could not do what it was asked (I/O: a full runtime
    /// directory, a watcher gone), as opposed to refusing it. Absent from older daemons, whose
    /// every error reads as a refusal.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub failed: bool,
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
    /// A refusal: the request is one the daemon will not answer.
    pub fn error(msg: impl Into<String>) -> Self {
        Response {
            ok: false,
            error: Some(msg.into()),
            ..Default::default()
        }
    }

    /// A failure: the daemon could not do what it was asked.
    pub fn failed(msg: impl Into<String>) -> Self {
        Response {
            failed: true,
            ..Response::error(msg)
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
            Ok(Request::Path {
                sub: Some(s),
                store: false,
            }) if s == "pkg/foo"
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
