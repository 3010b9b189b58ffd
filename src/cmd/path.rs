use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::mpsc;
use std::time::Duration;

use srcstore::daemon::Request;
use srcstore::store::ProgressNow;

#[derive(clap::Args)]
pub struct Args {
    /// A directory inside the project (default: the current one).
    dir: Option<PathBuf>,
    /// A subdirectory (relative to the project root) to serve as a snapshot of its own, named
    /// by its own hash: edits elsewhere in the project leave its path unchanged.
    #[arg(long)]
    sub: Option<String>,
    /// Publish the snapshot as the valid store path `nix-store --add` would give it,
    /// /nix/store/<h>-source, and print that (the daemon must run with `mount --store`).
    #[arg(long)]
    store: bool,
}

/// How long an answer may take before `path` says on stderr what it waits for.
const QUIET: Duration = Duration::from_secs(2);

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let (answered, waiting) = mpsc::channel::<()>();
    let dir = args.dir.clone();
    let what = match args.store {
        true => "to publish the snapshot to the Nix store (the first publication copies the project; a garbage collection Nix runs is waited for)",
        false => "to bring the snapshot up to date",
    };
    // A daemon still bringing its snapshot up to date (a long scan) answers late: say so, with
    // the progress `status` shows, rather than sit silent.
    std::thread::spawn(move || {
        let mut wait = QUIET;
        while let Err(mpsc::RecvTimeoutError::Timeout) = waiting.recv_timeout(wait) {
            let progress = super::daemon::ask(dir.as_deref(), Request::Status)
                .ok()
                .and_then(|(_, r)| r.status)
                .and_then(|s| match (s.get("updating"), s.get("publishing")) {
                    (Some(u), _) if !u.is_null() => Some(format!(
                        ": an update running for {:.0}s, {} entries looked at so far",
                        u["seconds"].as_f64()?,
                        u["entries"].as_u64()?
                    )),
                    (_, Some(p)) => {
                        let p: ProgressNow = serde_json::from_value(p.clone()).ok()?;
                        Some(format!(": {p}"))
                    }
                    _ => None,
                })
                .unwrap_or_default();
            eprintln!("srcstore: waiting for the daemon {what}{progress}");
            wait = Duration::from_secs(5);
        }
    });
    let result = super::daemon::ask(
        args.dir.as_deref(),
        Request::Path {
            sub: args.sub,
            store: args.store,
        },
    );
    drop(answered);
    let (_, response) = result?;
    println!("{}", response.path.unwrap_or_default());
    Ok(ExitCode::SUCCESS)
}
