use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, ExitCode, Stdio};

#[derive(clap::Subcommand)]
pub enum Nix {
    /// The pre-build hook: make the snapshots a derivation names visible in its sandbox.
    Hook(HookArgs),
    /// Show (and with --apply, make) the nix.conf change srcstore needs.
    Setup(super::setup::Args),
    /// Internal: the hook's helper holding a user namespace for an id-mapped cache volume.
    #[command(hide = true)]
    HoldUserNamespace,
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

pub fn run(cmd: Nix) -> anyhow::Result<ExitCode> {
    match cmd {
        Nix::Hook(args) => run_hook(args),
        Nix::Setup(args) => super::setup::run(args),
        Nix::HoldUserNamespace => {
            srcstore::hook::idmap::hold_user_namespace()?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// The Nix on PATH, as `nix --version` names it; `None` where there is none.
pub fn installed() -> Option<srcstore::nix::version::Version> {
    let out = Command::new("nix")
        .arg("--version")
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .ok()?;
    srcstore::nix::version::Version::parse(&String::from_utf8_lossy(&out.stdout))
}

/// How long the hook may take in all. A FUSE view that stops answering blocks the hook in the
/// kernel where no timeout reaches; the build that named it then fails, and never hangs (with
/// its nix-daemon worker and build user) for good.
const DEADLINE: std::time::Duration = std::time::Duration::from_secs(60);

/// Ends the hook at [`DEADLINE`], failing the build with one line.
fn watchdog(args: &HookArgs) {
    let drv = args.drv.clone();
    std::thread::spawn(move || {
        std::thread::sleep(DEADLINE);
        let refusal = srcstore::hook::HookError::new(
            &drv,
            format!(
                "the hook gave up after {}s: a srcstore view or daemon this derivation names does not answer",
                DEADLINE.as_secs()
            ),
        );
        eprintln!("srcstore: error: {refusal}");
        // Under nix-daemon the refusal travels in Nix's own error, as `run_hook` sends it.
        if srcstore::hook::under_nix_daemon() {
            let mut stdout = std::io::stdout().lock();
            let _ = stdout.write_all(srcstore::hook::refusal_block(&refusal).as_bytes());
            let _ = stdout.flush();
            std::process::exit(0);
        }
        std::process::exit(4);
    });
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
    srcstore::hook::enter_builder_namespace();
    watchdog(&args);
    match srcstore::hook::run(&args.drv, args.chroot.as_deref()) {
        Ok(block) => out.push_str(&block),
        // The client of nix-daemon sees Nix's error, not ours: the refusal goes in it.
        Err(refusal) if srcstore::hook::under_nix_daemon() => {
            eprintln!("srcstore: error: {refusal}");
            out.push_str(&srcstore::hook::refusal_block(&refusal));
        }
        Err(refusal) => return Err(refusal.into()),
    }
    let mut stdout = std::io::stdout().lock();
    stdout.write_all(out.as_bytes())?;
    stdout.flush()?;
    Ok(ExitCode::SUCCESS)
}
