//! Shared helpers for the integration tests: running the real binary in an isolated
//! environment, making trees, and asking real Nix.
#![allow(dead_code)]

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub fn srcstore_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_srcstore"))
}

/// A scratch area with its own HOME and XDG_CACHE_HOME, so tests never share an index or git
/// configuration with each other or with the user.
pub struct Sandbox {
    pub dir: tempfile::TempDir,
}

impl Sandbox {
    pub fn new() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("srcstore-test")
            .tempdir_in(std::env::var_os("SRCSTORE_TEST_TMP").unwrap_or_else(|| "/var/tmp".into()))
            .unwrap();
        fs::create_dir_all(dir.path().join("home")).unwrap();
        Sandbox { dir }
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    pub fn home(&self) -> PathBuf {
        self.path("home")
    }

    pub fn cache(&self) -> PathBuf {
        self.path("home/.cache/srcstore")
    }

    pub fn cmd(&self) -> Command {
        let mut c = Command::new(srcstore_bin());
        c.env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", self.home())
            .env("SRCSTORE_LOG", "warn");
        c
    }

    pub fn run(&self, args: &[&str]) -> Output {
        self.cmd().args(args).output().unwrap()
    }

    /// Runs and expects success; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "srcstore {args:?} failed: {}",
            stderr(&out)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// Runs and expects a one-line error; returns it.
    pub fn fails(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            !out.status.success(),
            "srcstore {args:?} should have failed"
        );
        let err = stderr(&out);
        let lines: Vec<&str> = err.lines().collect();
        assert_eq!(lines.len(), 1, "expected a one-line error, got: {err}");
        assert!(out.stdout.is_empty(), "a failing run printed a result");
        lines[0].to_owned()
    }

    pub fn json(&self, args: &[&str]) -> serde_json::Value {
        let mut all = vec!["hash", "--json"];
        all.extend_from_slice(args);
        serde_json::from_str(&self.ok(&all)).unwrap()
    }

    pub fn hash(&self, dir: &Path) -> String {
        self.ok(&["hash", dir.to_str().unwrap()]).trim().to_owned()
    }
}

pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

pub fn write(path: &Path, bytes: impl AsRef<[u8]>) {
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(path, bytes).unwrap();
}

pub fn chmod(path: &Path, mode: u32) {
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
}

/// Real Nix's NAR hash of a path (base-32), or `None` when Nix is not installed.
pub fn nix_hash_path(path: &Path) -> String {
    let out = Command::new("nix")
        .args([
            "--extra-experimental-features",
            "nix-command",
            "hash",
            "path",
            "--type",
            "sha256",
            "--base32",
        ])
        .arg(path)
        .output()
        .expect("nix is required for these tests (scripts/setup-machine installs it)");
    assert!(out.status.success(), "nix hash path: {}", stderr(&out));
    format!("sha256:{}", String::from_utf8(out.stdout).unwrap().trim())
}

/// `nix-store --add` of a path, removed again afterwards.
pub fn nix_store_add(path: &Path) -> String {
    let out = Command::new("nix-store")
        .arg("--add")
        .arg(path)
        .output()
        .unwrap();
    assert!(out.status.success(), "nix-store --add: {}", stderr(&out));
    let p = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    let _ = Command::new("nix-store").args(["--delete", &p]).output();
    p
}

/// The shared directory beside the checkout (test vectors, corpus generator).
pub fn shared() -> PathBuf {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared");
    assert!(
        p.join("nix-vectors/expected.tsv").exists(),
        "missing {}: the shared test material must sit beside the checkout",
        p.display()
    );
    p
}
