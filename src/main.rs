//! The `srcstore` command: a thin layer over the engine in `lib.rs`.
#![forbid(unsafe_code)]

mod cmd;

use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "srcstore",
    version,
    about = "Content-named, zero-copy snapshots of a working tree for Nix builds"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print the content hash of a directory as `<hash>-<name>`.
    Hash(cmd::hash::Args),
    /// Serve the project's snapshots read-only at <mountpoint>/<hash>-<name>, kept current.
    Mount(cmd::mount::Args),
    /// Print the path of the current snapshot (including every change made before the call).
    Path(cmd::path::Args),
    /// Show what the project's daemon serves and how it is doing.
    Status(cmd::status::Args),
    /// Run a command on the current snapshot, and again after every burst of saves.
    Watch(cmd::watch::Args),
    /// Nix integration: the pre-build hook and the nix.conf setup.
    #[command(subcommand)]
    Nix(cmd::nix::Nix),
    /// The project's compile cache volume: stats, clear, gc.
    #[command(subcommand)]
    Cache(cmd::cache::Cache),
    /// Store mode's published paths: status, gc, repair (root).
    #[command(subcommand)]
    Store(cmd::store::Store),
    /// A GOCACHEPROG program: Go's build cache, every object checked against its OutputID.
    Gocacheprog(cmd::gocacheprog::Args),
    /// A systemd user unit that keeps the project's daemon running.
    #[command(subcommand)]
    Service(cmd::service::Service),
    /// Print the shell completion script for bash, zsh, fish, elvish or powershell.
    Completions(cmd::completions::Args),
    /// Print the man page, srcstore(1), or a command's (`srcstore man mount`).
    Man(cmd::completions::ManArgs),
    /// The daemon's warmer: list every directory below DIR (a snapshot through the daemon's
    /// mount) and print how many.
    #[command(hide = true)]
    WarmWalk { dir: std::path::PathBuf },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // The daemon reports what it serves; one-shot commands speak only when something is off,
    // and so does `watch`, whose terminal belongs to the command it runs. The FUSE library's
    // own reports are for its developers.
    let default_level = match cli.command {
        Command::Mount(_) => "info,fuser=error",
        _ => "warn,fuser=error",
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("SRCSTORE_LOG")
                .unwrap_or_else(|_| default_level.into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .without_time()
        .with_target(false)
        .init();
    let result = match cli.command {
        Command::Hash(args) => cmd::hash::run(args),
        Command::Mount(args) => cmd::mount::run(args),
        Command::Path(args) => cmd::path::run(args),
        Command::Status(args) => cmd::status::run(args),
        Command::Nix(cmd) => cmd::nix::run(cmd),
        Command::Watch(args) => cmd::watch::run(args),
        Command::Service(cmd) => cmd::service::run(cmd),
        Command::Cache(cmd) => cmd::cache::run(cmd),
        Command::Store(cmd) => cmd::store::run(cmd),
        Command::Gocacheprog(args) => cmd::gocacheprog::run(args),
        Command::Completions(args) => cmd::completions::run(args, Cli::command()),
        Command::Man(args) => cmd::completions::man(args, Cli::command()),
        Command::WarmWalk { dir } => {
            // Dies with its daemon rather than walk a mount nobody serves.
            let _ = rustix::process::set_parent_process_death_signal(Some(
                rustix::process::Signal::KILL,
            ));
            println!("{}", srcstore::daemon::walk(&dir));
            Ok(std::process::ExitCode::SUCCESS)
        }
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("srcstore: error: {e:#}");
            cmd::exit::code(&e)
        }
    }
}
