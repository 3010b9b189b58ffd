//! `srcstore store`: what store mode published, and taking back what nothing uses or what a
//! crash left. Root's, as the store is.

use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use srcstore::store;

#[derive(clap::Subcommand)]
pub enum Store {
    /// Published paths, roots, blobs and their bytes, publications under way.
    Status(StatusArgs),
    /// Delete the published paths no daemon roots (through Nix, which keeps what is in use);
    /// repairs first.
    Gc(JsonArgs),
    /// Remove what a publication that died half-made, and release the roots of daemons that
    /// are gone; says what it did.
    Repair,
    /// Publish users' snapshots for their daemons (`srcstore mount --store` as a user), reading
    /// each from the user's own view: root's service, in the foreground.
    Serve(ServeArgs),
}

#[derive(clap::Args)]
pub struct ServeArgs {
    /// Where to answer.
    #[arg(long, default_value = store::SERVICE_SOCKET)]
    socket: PathBuf,
    /// Seconds a publication may go without progress before its view is cut off (a view
    /// whose server stopped answering).
    #[arg(long, default_value_t = 60)]
    stall: u64,
    /// How many entries (files, directories, links) one user's publication may read.
    #[arg(long, default_value_t = 1_000_000)]
    quota_paths: u64,
    /// How many bytes of files one user's publication may read (default: a tenth of the
    /// store's filesystem).
    #[arg(long)]
    quota_bytes: Option<u64>,
}

#[derive(clap::Args)]
pub struct StatusArgs {
    #[command(flatten)]
    json: JsonArgs,
}

#[derive(clap::Args)]
pub struct JsonArgs {
    /// One JSON object.
    #[arg(long)]
    json: bool,
}

pub fn run(cmd: Store) -> anyhow::Result<ExitCode> {
    let refused = |e: store::StoreError| match e {
        e @ store::StoreError::NotRoot => super::exit::refused(e),
        e => e.into(),
    };
    match cmd {
        Store::Status(args) => {
            let s = store::status().map_err(refused)?;
            match args.json.json {
                true => println!("{}", serde_json::to_string(&s)?),
                false => println!(
                    "published: {} valid ({} since collected by Nix)\nroots: {}\nblobs: {} ({} bytes)\npublishing: {}",
                    s.published, s.collected, s.roots, s.blobs, s.blob_bytes, s.publishing
                ),
            }
        }
        Store::Gc(args) => {
            let c = store::gc().map_err(refused)?;
            match args.json {
                true => println!("{}", serde_json::to_string(&c)?),
                false => {
                    for line in &c.repaired {
                        println!("{line}");
                    }
                    println!(
                        "deleted {} unrooted published paths ({} kept: still in use); forgot {} Nix collected",
                        c.deleted, c.kept_alive, c.forgotten
                    );
                }
            }
        }
        Store::Serve(args) => serve(args)?,
        Store::Repair => {
            let said = store::repair().map_err(refused)?;
            for line in &said {
                println!("{line}");
            }
            if said.is_empty() {
                println!("nothing to repair");
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Answers at `args.socket` until killed. A socket left there by a service that is gone is
/// replaced; one that answers is another service's.
fn serve(args: ServeArgs) -> anyhow::Result<()> {
    if !rustix::process::geteuid().is_root() {
        return Err(super::exit::refused(store::StoreError::NotRoot));
    }
    let socket = &args.socket;
    if UnixStream::connect(socket).is_ok() {
        return Err(super::exit::refused(format!(
            "{}: a store service answers there already",
            socket.display()
        )));
    }
    // What a service killed mid-publication left. On a thread of its own: where the store is
    // read-only, writing it moves that thread into a mount namespace of its own, and the
    // service must go on seeing users' views where they are mounted.
    let repaired = std::thread::spawn(store::repair)
        .join()
        .map_err(|_| anyhow::anyhow!("repairing the store panicked"))??;
    for line in repaired {
        tracing::info!("{line}");
    }
    match std::fs::remove_file(socket) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => anyhow::bail!("{}: {e}", socket.display()),
    }
    let listener =
        UnixListener::bind(socket).map_err(|e| anyhow::anyhow!("{}: {e}", socket.display()))?;
    // Anyone may ask: who the asker is comes from the connection, never from the request.
    std::fs::set_permissions(socket, std::fs::Permissions::from_mode(0o666))
        .map_err(|e| anyhow::anyhow!("{}: {e}", socket.display()))?;
    tracing::info!("answering at {}", socket.display());
    let quota_bytes = match args.quota_bytes {
        Some(b) => b,
        None => {
            let st = rustix::fs::statvfs(store::STORE_DIR)
                .map_err(|e| anyhow::anyhow!("{}: {e}", store::STORE_DIR))?;
            st.f_blocks * st.f_frsize / 10
        }
    };
    let service = store::Service::new(store::Limits {
        stall: Duration::from_secs(args.stall),
        quota_paths: args.quota_paths,
        quota_bytes,
    });
    srcstore::daemon::serve(listener, Arc::new(service));
    Ok(())
}
