//! `srcstore cache`: the project's compile cache volume, with or without a running daemon.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use srcstore::cache::{self, Volume};
use srcstore::daemon::paths;

#[derive(clap::Subcommand)]
pub enum Cache {
    /// Entries and bytes of each partition of the project's volume.
    Stats(StatsArgs),
    /// Empty a partition (every partition without --partition).
    Clear(ClearArgs),
    /// Remove least recently used entries until the volume holds at most --max-size.
    Gc(GcArgs),
}

#[derive(clap::Args)]
pub struct Project {
    /// A directory inside the project (default: the current one).
    dir: Option<PathBuf>,
}

#[derive(clap::Args)]
pub struct StatsArgs {
    #[command(flatten)]
    project: Project,
    /// One JSON object: the volume's path and its partitions.
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args)]
pub struct ClearArgs {
    #[command(flatten)]
    project: Project,
    /// The partition to empty, e.g. `go`.
    #[arg(long)]
    partition: Option<String>,
}

#[derive(clap::Args)]
pub struct GcArgs {
    #[command(flatten)]
    project: Project,
    /// The most the volume may hold, e.g. `20G`, counting each entry's inode as well as its
    /// blocks (default: a tenth of its filesystem).
    #[arg(long, value_parser = cache::parse_size)]
    max_size: Option<u64>,
    /// The most entries (files, directories, links, …) it may hold (default: a tenth of its
    /// filesystem's inodes).
    #[arg(long)]
    max_entries: Option<u64>,
}

pub fn run(cmd: Cache) -> anyhow::Result<ExitCode> {
    match cmd {
        Cache::Stats(a) => {
            let volume = volume(&a.project)?;
            let stats = volume
                .stats()
                .with_context(|| volume.root().display().to_string())?;
            if a.json {
                let json = serde_json::json!({ "volume": volume.root(), "partitions": stats });
                println!("{json}");
            } else {
                println!("volume: {}", volume.root().display());
                for p in stats {
                    let c = p.gocacheprog;
                    let mut odd = Vec::new();
                    for (n, what) in [
                        (p.symlinks, "symlinks"),
                        (p.special, "FIFOs, sockets or devices"),
                        (p.unentered, "directories not looked into"),
                    ] {
                        if n > 0 {
                            odd.push(format!("{n} {what}"));
                        }
                    }
                    let odd = match odd.is_empty() {
                        true => String::new(),
                        false => format!(" ({})", odd.join(", ")),
                    };
                    println!(
                        "{}: {} entries{odd}, {}; gocacheprog: {} hits, {} misses, {} puts, {} rejected",
                        p.name,
                        p.entries,
                        human(p.bytes),
                        c.hits,
                        c.misses,
                        c.puts,
                        c.rejected
                    );
                    for planted in &p.planted {
                        println!("{}: {planted}", p.name);
                    }
                }
            }
        }
        Cache::Clear(a) => {
            let volume = volume(&a.project)?;
            let done = volume
                .clear(a.partition.as_deref())
                .with_context(|| volume.root().display().to_string())?;
            println!(
                "removed {} entries, {}",
                done.removed,
                human(done.freed_bytes)
            );
        }
        Cache::Gc(a) => {
            let volume = volume(&a.project)?;
            let default = cache::default_limit(volume.root())
                .with_context(|| volume.root().display().to_string())?;
            let limit = cache::Limit {
                bytes: a.max_size.unwrap_or(default.bytes),
                entries: a.max_entries.unwrap_or(default.entries),
            };
            let done = volume
                .gc(limit)
                .with_context(|| volume.root().display().to_string())?;
            println!(
                "removed {} entries, {}; {} entries, {} kept (at most {})",
                done.removed,
                human(done.freed_bytes),
                done.kept_entries,
                human(done.kept_bytes),
                human(limit.bytes)
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The volume of the project `dir` lies in: the nearest directory, `dir` or above, that has one.
fn volume(project: &Project) -> anyhow::Result<Volume> {
    let start = match &project.dir {
        Some(d) => d.clone(),
        None => std::env::current_dir()?,
    };
    let start = start
        .canonicalize()
        .with_context(|| start.display().to_string())?;
    let home = paths::cache_home().context("no cache home: set XDG_CACHE_HOME or HOME")?;
    let found = start
        .ancestors()
        .map(|d| paths::volume_path(&home, d))
        .find(|v| v.is_dir());
    match found {
        Some(v) => Ok(Volume::at(v)),
        None => anyhow::bail!(
            "{}: no compile cache volume for this project yet (a build that sets srcstoreCache makes one)",
            start.display()
        ),
    }
}

fn human(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = bytes as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    match u {
        0 => format!("{bytes} B"),
        _ => format!("{v:.1} {}", UNITS[u]),
    }
}
