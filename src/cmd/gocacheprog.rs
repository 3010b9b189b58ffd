//! `srcstore gocacheprog`: Go's build cache, every object checked (see `cache::gocacheprog`).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use srcstore::cache::gocacheprog::{self, Store};

#[derive(clap::Args)]
pub struct Args {
    /// Where to store (default: the cache volume inside a sandbox that has one, else
    /// ${XDG_CACHE_HOME:-~/.cache}/srcstore/go).
    #[arg(long)]
    dir: Option<PathBuf>,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let dir = args
        .dir
        .or_else(gocacheprog::default_dir)
        .context("no place for the cache: pass --dir, or set XDG_CACHE_HOME or HOME")?;
    let mut store = Store::open(&dir)?;
    let served = gocacheprog::serve(
        &mut store,
        std::io::stdin().lock(),
        std::io::BufWriter::new(std::io::stdout()),
    );
    if let Err(e) = gocacheprog::add_counts(&dir, store.counts()) {
        tracing::warn!("{}: cannot count this run: {e}", dir.display());
    }
    served.with_context(|| format!("{}: GOCACHEPROG stream", dir.display()))?;
    Ok(ExitCode::SUCCESS)
}
