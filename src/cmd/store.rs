//! `srcstore store`: what store mode published, and taking back what nothing uses or what a
//! crash left. Root's, as the store is.

use std::process::ExitCode;

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
