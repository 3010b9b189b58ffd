//! Nix's own database of valid paths, read and written as Nix does it.
//!
//! `nix-store --register-validity` has no field for a content address, and a path without one
//! is refused by a store that requires signatures; so srcstore registers a path the way
//! `nix-store --add` leaves it: one `ValidPaths` row with its NAR hash, NAR size and
//! `fixed:r:sha256:…` content address, no deriver, no references. Only under Nix's own locks:
//! `big-lock` held shared (Nix takes it exclusively only to change the schema), the schema
//! version checked to be the one whose table this is, and SQLite's own locking for the row.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustix::fs::{FlockOperation, Mode, OFlags};

use crate::nar::NarInfo;
use crate::nixhash;

/// The schema version of Nix's database whose `ValidPaths` table this writes (Nix 2.0 to
/// 2.35, Lix and Determinate alike).
const SCHEMA: &str = "10";
/// How long a write waits for another writer of the database.
const BUSY: Duration = Duration::from_secs(60);

pub struct NixDb {
    conn: rusqlite::Connection,
    path: PathBuf,
    /// `big-lock`, held shared for as long as this is open.
    _big_lock: std::os::fd::OwnedFd,
}

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("{0}: {1}")]
    Io(PathBuf, std::io::Error),
    #[error("{path}: schema version {found:?}, srcstore knows {SCHEMA}: upgrade srcstore")]
    Schema { path: PathBuf, found: String },
    #[error("{0}: {1}")]
    Sql(PathBuf, rusqlite::Error),
}

impl NixDb {
    /// Opens the database in Nix's state directory `state` (`/nix/var/nix`).
    pub fn open(state: &Path) -> Result<NixDb, DbError> {
        let dir = state.join("db");
        let io = |p: &Path| {
            let p = p.to_path_buf();
            move |e: rustix::io::Errno| DbError::Io(p, e.into())
        };
        let lock = dir.join("big-lock");
        let big_lock = rustix::fs::open(
            &lock,
            OFlags::RDWR | OFlags::CREATE | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o600),
        )
        .map_err(io(&lock))?;
        rustix::fs::flock(&big_lock, FlockOperation::LockShared).map_err(io(&lock))?;
        let schema = dir.join("schema");
        let found = fs::read_to_string(&schema).map_err(|e| DbError::Io(schema.clone(), e))?;
        if found.trim() != SCHEMA {
            return Err(DbError::Schema {
                path: schema,
                found: found.trim().to_owned(),
            });
        }
        let path = dir.join("db.sqlite");
        let sql = |e| DbError::Sql(path.clone(), e);
        let conn = rusqlite::Connection::open_with_flags(
            &path,
            rusqlite::OpenFlags::SQLITE_OPEN_READ_WRITE | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(sql)?;
        conn.busy_timeout(BUSY).map_err(sql)?;
        Ok(NixDb {
            conn,
            path,
            _big_lock: big_lock,
        })
    }

    fn sql(&self, e: rusqlite::Error) -> DbError {
        DbError::Sql(self.path.clone(), e)
    }

    /// Whether `path` (a full store path) is valid.
    pub fn is_valid(&self, path: &str) -> Result<bool, DbError> {
        self.conn
            .query_row("SELECT 1 FROM ValidPaths WHERE path = ?1", [path], |_| {
                Ok(())
            })
            .map(|()| true)
            .or_else(|e| match e {
                rusqlite::Error::QueryReturnedNoRows => Ok(false),
                e => Err(self.sql(e)),
            })
    }

    /// The NAR hash (`sha256:<hex>`) Nix holds for `path`, if it is valid.
    pub fn nar_hash(&self, path: &str) -> Result<Option<String>, DbError> {
        self.conn
            .query_row("SELECT hash FROM ValidPaths WHERE path = ?1", [path], |r| {
                r.get(0)
            })
            .map(Some)
            .or_else(|e| match e {
                rusqlite::Error::QueryReturnedNoRows => Ok(None),
                e => Err(self.sql(e)),
            })
    }

    /// Registers the source path `path` with its NAR, as `nix-store --add` would have.
    pub fn register_source(&self, path: &str, nar: &NarInfo) -> Result<(), DbError> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs() as i64;
        self.conn
            .execute(
                "INSERT INTO ValidPaths (path, hash, registrationTime, narSize, ca) \
                 VALUES (?1, ?2, ?3, ?4, ?5)",
                rusqlite::params![
                    path,
                    format!("sha256:{}", nixhash::hex(&nar.sha256)),
                    now,
                    nar.size as i64,
                    format!("fixed:r:{}", nixhash::sha256_string(&nar.sha256)),
                ],
            )
            .map(drop)
            .map_err(|e| self.sql(e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_database_of_another_schema_is_refused_in_one_line_naming_its_schema_file() {
        let state = tempfile::tempdir().unwrap();
        fs::create_dir(state.path().join("db")).unwrap();
        fs::write(state.path().join("db/schema"), "11").unwrap();
        let e = NixDb::open(state.path()).err().expect("refused");
        let said = e.to_string();
        assert!(matches!(e, DbError::Schema { .. }), "{said}");
        assert!(
            said.contains("db/schema") && said.contains("\"11\""),
            "{said}"
        );
        assert_eq!(said.lines().count(), 1);
    }

    #[test]
    fn a_missing_database_is_an_error_naming_it_never_a_new_one() {
        let state = tempfile::tempdir().unwrap();
        fs::create_dir(state.path().join("db")).unwrap();
        fs::write(state.path().join("db/schema"), "10").unwrap();
        let e = NixDb::open(state.path()).err().expect("refused");
        assert!(e.to_string().contains("db.sqlite"), "{e}");
        assert!(!state.path().join("db/db.sqlite").exists());
    }
}
