use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use srcstore::{index, nar, nixhash, Filter, Scanner, Snapshot};

#[derive(clap::Args)]
pub struct Args {
    /// The project directory.
    #[arg(default_value = ".")]
    dir: PathBuf,
    /// Print a JSON object: name, hash, files, bytes, seconds (and the Nix values with --nix).
    #[arg(long)]
    json: bool,
    /// Also compute the NAR SHA-256, NAR size and /nix/store path real Nix would give.
    #[arg(long)]
    nix: bool,
    /// Take every file, exactly what `nix-store --add DIR` would take.
    #[arg(long)]
    no_ignore: bool,
    /// The name after `<hash>-` (default: the directory's basename, made valid for Nix).
    #[arg(long)]
    name: Option<String>,
    /// Neither read nor write the index: hash every file.
    #[arg(long)]
    no_index: bool,
}

#[derive(serde::Serialize)]
struct Report<'a> {
    name: &'a str,
    hash: String,
    basename: String,
    #[serde(flatten)]
    stats: &'a srcstore::ScanStats,
    seconds: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    nar_hash: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    nar_size: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    store_path: Option<String>,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let started = Instant::now();
    let dir =
        std::fs::canonicalize(&args.dir).with_context(|| format!("{}", args.dir.display()))?;
    let filter = if args.no_ignore {
        Filter::All
    } else {
        Filter::Ignore
    };
    let index_path = (!args.no_index)
        .then(srcstore::daemon::paths::cache_home)
        .flatten()
        .map(|cache| index::location(&cache, &dir, filter));
    let previous = index_path
        .as_deref()
        .and_then(|p| load_index(p, &dir, filter));
    let had_index = previous.is_some();
    let previous_id = previous.as_ref().map(|t| t.id());

    // Without an index every file is read anyway: with --nix, in the one pass that hashes the
    // NAR (the NAR's SHA-256 and each file's BLAKE3 from the same bytes), after a walk that
    // only stats. A file that changed while read sends it the ordinary way, which waits for it.
    let fused = args.nix && args.no_index;
    let scan = |previous: Option<srcstore::tree::Node>, fused: bool| -> anyhow::Result<_> {
        let from_index = previous.is_some();
        let progress = Arc::new(AtomicU64::new(0));
        let spinner = Spinner::start(progress.clone());
        let scanner = Scanner::new(&dir, filter)
            .name(args.name.clone())
            .previous(previous)
            .progress(progress);
        let scanner = match fused {
            true => scanner.unread(),
            false => scanner,
        };
        let (snapshot, mut stats) = scanner.scan_with_stats()?;
        drop(spinner);
        if fused {
            let (snapshot, nar) = nar::nar_info_reading(&snapshot)?;
            stats.hashed = stats.files;
            stats.bytes = snapshot.tree().files().1;
            return Ok((snapshot, stats, Ok(Some(nar))));
        }
        if let Some(p) = &index_path {
            if !from_index || stats.hashed > 0 || Some(snapshot.tree().id()) != previous_id {
                if let Err(e) = index::save(p, &dir, filter, snapshot.tree()) {
                    tracing::warn!("{e}; the next run will hash every file again");
                }
            }
        }
        let nar = args.nix.then(|| nar::nar_info(&snapshot)).transpose();
        Ok((snapshot, stats, nar))
    };
    let scanned = match scan(previous.clone(), fused) {
        Err(e) if fused && matches!(e.downcast_ref(), Some(srcstore::Error::Unstable { .. })) => {
            scan(previous, false)
        }
        r => r,
    };
    let (mut snapshot, mut stats, mut nar) = scanned?;
    // A stamp the index trusted vouched for bytes that changed behind it (a write through a
    // mapping moves none): the NAR's proof refused them. Hash every file again, once, and keep
    // that index, rather than fail every later run the same way.
    if had_index && matches!(nar, Err(srcstore::Error::Stale { .. })) {
        (snapshot, stats, nar) = scan(None, false)?;
    }
    let nar = nar?;
    let report = Report {
        name: snapshot.name(),
        hash: snapshot.short_hash(),
        basename: snapshot.basename(),
        stats: &stats,
        seconds: started.elapsed().as_secs_f64(),
        nar_hash: nar.map(|n| nixhash::sha256_string(&n.sha256)),
        nar_size: nar.map(|n| n.size),
        store_path: nar.map(|n| store_path(&snapshot, &n)),
    };
    let mut out = std::io::stdout().lock();
    if args.json {
        serde_json::to_writer(&mut out, &report)?;
        writeln!(out)?;
    } else {
        writeln!(out, "{}", report.basename)?;
        if let (Some(h), Some(s), Some(p)) = (&report.nar_hash, report.nar_size, &report.store_path)
        {
            writeln!(out, "nar_hash {h}\nnar_size {s}\nstore_path {p}")?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn store_path(snapshot: &Snapshot, nar: &nar::NarInfo) -> String {
    nixhash::source_store_path("/nix/store", &nar.sha256, snapshot.name())
}

/// An unusable index is reported once and then replaced by the one this run writes.
fn load_index(path: &Path, dir: &Path, filter: Filter) -> Option<srcstore::tree::Node> {
    match index::load(path, dir, filter) {
        Ok(tree) => tree,
        Err(e) => {
            tracing::warn!("{e}; discarding it and hashing every file");
            None
        }
    }
}

/// A spinner on stderr, shown only when a scan takes over a second and stderr is a terminal.
struct Spinner {
    done: Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Spinner {
    fn start(progress: Arc<AtomicU64>) -> Self {
        let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let thread = std::io::stderr().is_terminal().then(|| {
            let done = done.clone();
            std::thread::spawn(move || {
                let deadline = Instant::now() + Duration::from_secs(1);
                while Instant::now() < deadline {
                    if done.load(Ordering::Relaxed) {
                        return;
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
                let bar = indicatif::ProgressBar::new_spinner();
                bar.set_style(
                    indicatif::ProgressStyle::with_template("{spinner} scanning: {msg} entries")
                        .expect("valid template"),
                );
                while !done.load(Ordering::Relaxed) {
                    bar.set_message(progress.load(Ordering::Relaxed).to_string());
                    bar.tick();
                    std::thread::sleep(Duration::from_millis(100));
                }
                bar.finish_and_clear();
            })
        });
        Spinner { done, thread }
    }
}

impl Drop for Spinner {
    fn drop(&mut self) {
        self.done.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
