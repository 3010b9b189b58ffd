use std::path::PathBuf;
use std::process::ExitCode;

use srcstore::daemon::Request;

#[derive(clap::Args)]
pub struct Args {
    /// A directory inside the project (default: the current one).
    dir: Option<PathBuf>,
    /// Print the daemon's JSON status object.
    #[arg(long)]
    json: bool,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let (_, response) = super::daemon::ask(args.dir.as_deref(), Request::Status)?;
    let status = response.status.unwrap_or_default();
    if args.json {
        println!("{status}");
    } else if let Some(fields) = status.as_object() {
        for (k, v) in fields {
            match v {
                serde_json::Value::String(s) => println!("{k}: {s}"),
                other => println!("{k}: {other}"),
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
