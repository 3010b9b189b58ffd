use std::path::PathBuf;
use std::process::ExitCode;

use srcstore::control::Request;

#[derive(clap::Args)]
pub struct Args {
    /// A directory inside the project (default: the current one).
    dir: Option<PathBuf>,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let (_, response) = super::daemon::ask(args.dir.as_deref(), Request::Path { sub: None })?;
    println!("{}", response.path.unwrap_or_default());
    Ok(ExitCode::SUCCESS)
}
