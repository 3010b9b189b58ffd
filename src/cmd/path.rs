use std::path::PathBuf;
use std::process::ExitCode;

use srcstore::control::Request;

#[derive(clap::Args)]
pub struct Args {
    /// A directory inside the project (default: the current one).
    dir: Option<PathBuf>,
    /// A subdirectory (relative to the project root) to serve as a snapshot of its own, named
    /// by its own hash: edits elsewhere in the project leave its path unchanged.
    #[arg(long)]
    sub: Option<String>,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let (_, response) = super::daemon::ask(args.dir.as_deref(), Request::Path { sub: args.sub })?;
    println!("{}", response.path.unwrap_or_default());
    Ok(ExitCode::SUCCESS)
}
