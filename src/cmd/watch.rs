//! `srcstore watch`: run a command on the current snapshot, then once per burst of saves.

use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, ExitStatus};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::Context;
use srcstore::daemon::{paths, Request, Response};

#[derive(clap::Args)]
pub struct Args {
    /// The project directory.
    #[arg(default_value = ".")]
    dir: PathBuf,
    /// Kill a running command when the source changes and start over, instead of queueing one
    /// more run.
    #[arg(long)]
    restart: bool,
    /// Run on the snapshot published as its /nix/store/<h>-source path (`{}` is that path):
    /// `srcstore watch --store -- nix build 'path:{}'`.
    #[arg(long)]
    store: bool,
    /// How long saves must pause before a run starts, in milliseconds.
    #[arg(long, default_value_t = 100)]
    debounce_ms: u64,
    /// The command; `{}` in an argument is replaced by the snapshot path (also in $SRCSTORE_SRC).
    #[arg(last = true, required = true)]
    command: Vec<String>,
}

enum Ev {
    Daemon(Response),
    Interrupt,
}

/// How long a killed command may take to exit before it is killed for good.
const KILL_GRACE: Duration = Duration::from_secs(2);
/// A run's pin outlives a run that hangs at most this long.
const RUN_LEASE: Duration = Duration::from_secs(24 * 3600);

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let dir = std::fs::canonicalize(&args.dir).with_context(|| args.dir.display().to_string())?;
    let runtime = super::daemon::runtime_dir(false)?;
    let in_process = match paths::find_project(&runtime, &dir) {
        Some(_) => None,
        None => Some(start_daemon(&dir, args.store)?),
    };
    let result = watch(&args, &dir);
    if let Some((stop, thread)) = in_process {
        stop();
        let _ = thread.join();
    }
    result
}

/// A daemon for `dir` in this process, for as long as the watch runs.
fn start_daemon(
    dir: &Path,
    store: bool,
) -> anyhow::Result<(impl Fn(), std::thread::JoinHandle<ExitCode>)> {
    let allow_other = rustix::process::geteuid().is_root()
        || std::fs::read_to_string("/etc/fuse.conf")
            .is_ok_and(|c| c.lines().any(|l| l.trim() == "user_allow_other"));
    let args = super::mount::Args::for_watch(dir, allow_other, store);
    let server = super::mount::Server::start(&args)?;
    let stop = server.stopper();
    Ok((stop, std::thread::spawn(move || server.wait())))
}

fn watch(args: &Args, dir: &Path) -> anyhow::Result<ExitCode> {
    let (tx, rx) = mpsc::channel();
    let socket = {
        let runtime = super::daemon::runtime_dir(false)?;
        let project = paths::find_project(&runtime, dir).context("the daemon went away")?;
        paths::socket_path(&runtime, &project)
    };
    let events = super::daemon::connect(&socket)?.subscribe()?;
    let daemon_tx = tx.clone();
    std::thread::spawn(move || {
        for e in events {
            if daemon_tx.send(Ev::Daemon(e)).is_err() {
                return;
            }
        }
    });
    let mut signals = signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGTERM,
    ])?;
    std::thread::spawn(move || {
        for _ in signals.forever() {
            if tx.send(Ev::Interrupt).is_err() {
                return;
            }
        }
    });

    let mut runs = 0;
    loop {
        let ask = |store| {
            super::daemon::ask(Some(dir), Request::Path { sub: None, store })
                .map(|(_, answer)| answer.path.unwrap_or_default())
        };
        // The view's path tells a new snapshot from this one; the store's is what the command
        // gets, with `--store`.
        let path = ask(false)?;
        let source = match args.store {
            true => ask(true)?,
            false => path.clone(),
        };
        let basename = Path::new(&path)
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned();
        let pin = pin(&socket, &basename);
        runs += 1;
        let started = Instant::now();
        let mut child = spawn(&args.command, &source)?;
        let mut pending = false;
        let mut interrupted = false;
        let status = loop {
            if let Some(status) = child.try_wait()? {
                break Some(status);
            }
            match rx.recv_timeout(Duration::from_millis(20)) {
                Ok(Ev::Daemon(e)) if changes_source(&e, &path) => {
                    pending = true;
                    if args.restart {
                        stop(&mut child);
                        break None;
                    }
                }
                Ok(Ev::Interrupt) => {
                    interrupted = true;
                    break Some(stop(&mut child));
                }
                _ => {}
            }
        };
        eprintln!(
            "srcstore watch: run {runs}: {path}: {:.3} s, {}",
            started.elapsed().as_secs_f64(),
            describe(status)
        );
        if let Some(id) = pin {
            let _ =
                super::daemon::connect(&socket).and_then(|mut c| c.request(Request::Unpin { id }));
        }
        if interrupted {
            return Ok(ExitCode::SUCCESS);
        }
        if !pending && !wait_for_change(&rx, &path) {
            return Ok(ExitCode::SUCCESS);
        }
        // Let the burst of saves finish before the next run reads the tree.
        let quiet = Duration::from_millis(args.debounce_ms);
        loop {
            match rx.recv_timeout(quiet) {
                Ok(Ev::Interrupt) => return Ok(ExitCode::SUCCESS),
                Ok(Ev::Daemon(_)) => continue,
                Err(_) => break,
            }
        }
    }
}

/// Whether an event means the command should run again: a new snapshot, or a read of this
/// run's snapshot that failed because a file changed under it.
fn changes_source(e: &Response, path: &str) -> bool {
    match e.event.as_deref() {
        Some("snapshot") => e.path.as_deref() != Some(path),
        Some("read_failed") => true,
        _ => false,
    }
}

/// Waits for the next change; `false` when interrupted.
fn wait_for_change(rx: &mpsc::Receiver<Ev>, path: &str) -> bool {
    loop {
        match rx.recv() {
            Ok(Ev::Daemon(e)) if changes_source(&e, path) => return true,
            Ok(Ev::Daemon(_)) => {}
            Ok(Ev::Interrupt) | Err(_) => return false,
        }
    }
}

fn pin(socket: &Path, basename: &str) -> Option<u64> {
    let request = Request::Pin {
        basename: basename.to_owned(),
        lease_secs: Some(RUN_LEASE.as_secs()),
        until_gone: None,
    };
    super::daemon::connect(socket)
        .and_then(|mut c| c.request(request))
        .ok()
        .and_then(|r| r.pin)
}

fn spawn(command: &[String], path: &str) -> anyhow::Result<Child> {
    let argv: Vec<String> = command.iter().map(|a| a.replace("{}", path)).collect();
    Command::new(&argv[0])
        .args(&argv[1..])
        .env("SRCSTORE_SRC", path)
        .process_group(0)
        .spawn()
        .with_context(|| format!("{}: cannot run", argv[0]))
}

/// Stops the command and everything it started (its process group).
fn stop(child: &mut Child) -> ExitStatus {
    let group = rustix::process::Pid::from_child(child);
    let _ = rustix::process::kill_process_group(group, rustix::process::Signal::TERM);
    let deadline = Instant::now() + KILL_GRACE;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return status;
        }
        if Instant::now() > deadline {
            let _ = rustix::process::kill_process_group(group, rustix::process::Signal::KILL);
            return child.wait().unwrap_or_else(|_| ExitStatus::from_raw(9));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn describe(status: Option<ExitStatus>) -> String {
    match status {
        None => "restarted".into(),
        Some(s) => match (s.code(), s.signal()) {
            (Some(c), _) => format!("exit {c}"),
            (None, Some(sig)) => format!("killed by signal {sig}"),
            _ => s.to_string(),
        },
    }
}
