//! Finding and talking to the daemon that serves a project, from the client side.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;

use super::exit;
use srcstore::daemon::{paths, Client, Request, Response};

/// Sends one request to the daemon serving `dir` (or a parent of it).
pub fn ask(dir: Option<&Path>, request: Request) -> anyhow::Result<(PathBuf, Response)> {
    let start = match dir {
        Some(d) => std::fs::canonicalize(d).with_context(|| d.display().to_string())?,
        None => std::env::current_dir().context("current directory")?,
    };
    let runtime = runtime_dir(false)?;
    let Some(project) = paths::find_project(&runtime, &start) else {
        return Err(exit::not_running(format!(
            "{}: no srcstore daemon serves this directory or a parent; start one in the project with `srcstore mount --allow-other`",
            start.display()
        )));
    };
    let socket = paths::socket_path(&runtime, &project);
    // A publication to the store may copy a whole project the first time, and waits for a
    // garbage collection Nix is running: `path` says meanwhile what it waits for.
    let deadline = match request {
        Request::Path { store: true, .. } => PUBLISH_DEADLINE,
        _ => ANSWER_DEADLINE,
    };
    let mut client = Client::connect_within(&socket, rustix::process::geteuid().as_raw(), deadline)
        .map_err(|e| match e.kind() {
        std::io::ErrorKind::PermissionDenied => {
            exit::refused(format!("{}: {e}", project.display()))
        }
        _ => exit::not_running(format!(
            "{}: its daemon is not running (stale socket {}: {e}); start it again with `srcstore mount`",
            project.display(),
            socket.display()
        )),
    })?;
    let response = client
        .request(request)
        .with_context(|| format!("{}: daemon did not answer", project.display()))?;
    if !response.ok {
        let why = response
            .error
            .unwrap_or_else(|| "daemon refused the request".into());
        return Err(match response.failed {
            true => anyhow::anyhow!(why),
            false => exit::refused(why),
        });
    }
    Ok((project, response))
}

/// This user's runtime directory, checked (and made, if `create`): see
/// [`paths::private_runtime_dir`]. A missing one is returned too: nothing is served from it.
pub fn runtime_dir(create: bool) -> anyhow::Result<PathBuf> {
    match paths::private_runtime_dir(create) {
        Ok(dir) => Ok(dir),
        Err(e) if !create && e.kind() == std::io::ErrorKind::NotFound => Ok(paths::runtime_dir()),
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => Err(exit::refused(format!(
            "{}: {e}",
            paths::runtime_dir().display()
        ))),
        Err(e) => Err(anyhow::anyhow!("{}: {e}", paths::runtime_dir().display())),
    }
}

/// How long a client waits for an answer; for a publication to the store.
const ANSWER_DEADLINE: Duration = Duration::from_secs(60);
const PUBLISH_DEADLINE: Duration = Duration::from_secs(24 * 3600);

/// A connection to a daemon of this user's.
pub fn connect(socket: &Path) -> std::io::Result<Client> {
    Client::connect_within(socket, rustix::process::geteuid().as_raw(), ANSWER_DEADLINE)
}
