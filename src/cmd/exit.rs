//! Exit codes a script can tell apart.
//!
//! | code | meaning |
//! |---|---|
//! | 0 | done |
//! | 1 | an error: I/O, bad input (the message names the path) |
//! | 2 | usage: a command line srcstore does not take |
//! | 3 | not running: no daemon serves the project (start `srcstore mount`) |
//! | 4 | refused: a daemon, the hook or a check said no (a snapshot no longer served, a directory or socket of another user's, a project already served) |

use std::process::ExitCode;

/// The kinds of failure with a code of their own; anything else is 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    NotRunning,
    Refused,
}

/// An error whose kind a script should be able to tell from its exit code.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct Failure {
    pub kind: Kind,
    message: String,
}

pub fn not_running(message: impl std::fmt::Display) -> anyhow::Error {
    Failure {
        kind: Kind::NotRunning,
        message: message.to_string(),
    }
    .into()
}

pub fn refused(message: impl std::fmt::Display) -> anyhow::Error {
    Failure {
        kind: Kind::Refused,
        message: message.to_string(),
    }
    .into()
}

/// The exit code for `e`.
pub fn code(e: &anyhow::Error) -> ExitCode {
    let kind = e
        .chain()
        .find_map(|c| c.downcast_ref::<Failure>())
        .map(|f| f.kind)
        .or_else(|| {
            e.chain()
                .any(|c| c.is::<srcstore::hook::HookError>())
                .then_some(Kind::Refused)
        });
    match kind {
        Some(Kind::NotRunning) => ExitCode::from(3),
        Some(Kind::Refused) => ExitCode::from(4),
        None => ExitCode::FAILURE,
    }
}
