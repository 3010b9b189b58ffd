//! The `srcstore` command: a thin layer over the engine in `lib.rs`.

mod cmd;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

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
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("SRCSTORE_LOG")
                .unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .without_time()
        .with_target(false)
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Hash(args) => cmd::hash::run(args),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("srcstore: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
