use std::fs;
use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, ExitCode, Stdio};
use std::time::Duration;

use srcstore::control::{Client, Request};
use srcstore::nix::{drv, hook};

#[derive(clap::Subcommand)]
pub enum Nix {
    /// The pre-build hook: make the snapshots a derivation names visible in its sandbox.
    Hook(HookArgs),
    /// Show (and with --apply, make) the nix.conf change srcstore needs.
    Setup(super::setup::Args),
}

#[derive(clap::Args)]
pub struct HookArgs {
    /// The derivation being built (Nix passes its path).
    drv: PathBuf,
    /// The build's chroot directory; the snapshots stay pinned until it is gone.
    chroot: Option<PathBuf>,
    /// A pre-build hook that was configured before srcstore's: run it too and merge its output.
    #[arg(long)]
    previous: Option<PathBuf>,
}

/// With the build's chroot to watch, a pin outlives it only by this much at most.
const LEASE_WITH_CHROOT: Duration = Duration::from_secs(7 * 24 * 3600);
/// Without it (a caller that passes no chroot), the build must finish within this.
const LEASE_WITHOUT_CHROOT: Duration = Duration::from_secs(6 * 3600);

pub fn run(cmd: Nix) -> anyhow::Result<ExitCode> {
    match cmd {
        Nix::Hook(args) => run_hook(args),
        Nix::Setup(args) => super::setup::run(args),
    }
}

/// Never breaks an unrelated build: anything that is not a derivation naming a snapshot gets
/// no output and exit 0. A snapshot that is named but not served fails the build, with one line.
fn run_hook(args: HookArgs) -> anyhow::Result<ExitCode> {
    let mut out = String::new();
    if let Some(previous) = &args.previous {
        let result = Command::new(previous)
            .arg(&args.drv)
            .args(&args.chroot)
            .stdin(Stdio::null())
            .stderr(Stdio::inherit())
            .output();
        match result {
            Ok(o) if o.status.success() => out.push_str(&String::from_utf8_lossy(&o.stdout)),
            Ok(o) => anyhow::bail!(
                "{}: the previous pre-build-hook failed ({})",
                previous.display(),
                o.status
            ),
            Err(e) => anyhow::bail!(
                "{}: cannot run the previous pre-build-hook: {e}",
                previous.display()
            ),
        }
        if !out.is_empty() && !out.ends_with('\n') {
            out.push('\n');
        }
        if !out.is_empty() && !out.ends_with("\n\n") {
            out.push('\n');
        }
    }
    out.push_str(&snapshot_block(&args)?);
    let mut stdout = std::io::stdout().lock();
    stdout.write_all(out.as_bytes())?;
    stdout.flush()?;
    Ok(ExitCode::SUCCESS)
}

fn snapshot_block(args: &HookArgs) -> anyhow::Result<String> {
    let Ok(text) = fs::read(&args.drv) else {
        return Ok(String::new());
    };
    let Ok(derivation) = drv::parse(&text) else {
        return Ok(String::new());
    };
    let views = hook::view_mounts(&fs::read_to_string("/proc/self/mountinfo").unwrap_or_default());
    let refs = hook::references(&derivation, &views);
    for r in &refs {
        let path = r.path.display();
        let Some(view) = &r.view else {
            anyhow::bail!(
                "{path}: no srcstore daemon serves this snapshot any more; start `srcstore mount --allow-other` in the project and build with the path `srcstore path` prints"
            );
        };
        let lease = if args.chroot.is_some() {
            LEASE_WITH_CHROOT
        } else {
            LEASE_WITHOUT_CHROOT
        };
        let pin = Request::Pin {
            basename: r.basename.clone(),
            lease_secs: Some(lease.as_secs()),
            until_gone: args.chroot.as_ref().map(|c| c.display().to_string()),
        };
        let answer = Client::connect(&view.socket).and_then(|mut c| c.request(pin));
        match answer {
            Ok(a) if a.ok => {}
            Ok(a) => anyhow::bail!(
                "{path}: no longer served ({}); build with the path `srcstore path` prints now",
                a.error.unwrap_or_default()
            ),
            Err(e) => anyhow::bail!(
                "{path}: the srcstore daemon serving it is not running ({}: {e}); run `srcstore mount --allow-other` in the project again",
                view.socket.display()
            ),
        }
    }
    Ok(hook::sandbox_block(&refs))
}
