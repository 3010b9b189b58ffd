//! `srcstore hash` as a user meets it: which files count, what bad input does, and the index.

mod support;

use std::fs;
use std::path::Path;
use std::process::Command;

use support::{write, Sandbox};

fn files(sb: &Sandbox, dir: &Path, extra: &[&str]) -> u64 {
    let mut args = vec![dir.to_str().unwrap()];
    args.extend_from_slice(extra);
    sb.json(&args)["files"].as_u64().unwrap()
}

fn index_files(sb: &Sandbox) -> Vec<std::path::PathBuf> {
    match fs::read_dir(sb.cache()) {
        Ok(rd) => rd.map(|e| e.unwrap().path()).collect(),
        Err(_) => Vec::new(),
    }
}

/// A project with every kind of ignore rule the default filter honours.
fn project_with_ignore_rules(sb: &Sandbox) -> std::path::PathBuf {
    let p = sb.path("proj");
    write(&p.join("main.c"), "int main(){}\n");
    write(&p.join(".gitignore"), "*.log\nbuild/\n");
    write(&p.join("app.log"), "log");
    write(&p.join("build/out.o"), "obj");
    write(&p.join("sub/.gitignore"), "local.txt\n");
    write(&p.join("sub/local.txt"), "local");
    write(&p.join("sub/kept.txt"), "kept");
    write(&p.join(".srcstoreignore"), "secret/\n");
    write(&p.join("secret/key"), "k");
    assert!(Command::new("git")
        .args(["init", "-q"])
        .current_dir(&p)
        .status()
        .unwrap()
        .success());
    write(&p.join(".git/info/exclude"), "excluded.txt\n");
    write(&p.join("excluded.txt"), "x");
    write(&sb.home().join(".config/git/ignore"), "*.global\n");
    write(&p.join("editor.global"), "g");
    p
}

#[test]
fn the_default_filter_honours_every_ignore_source_and_leaves_out_dot_git() {
    let sb = Sandbox::new();
    let p = project_with_ignore_rules(&sb);
    // Kept: main.c, .gitignore, sub/.gitignore, sub/kept.txt, .srcstoreignore.
    assert_eq!(files(&sb, &p, &[]), 5);
    let before = sb.hash(&p);
    for ignored in [
        "app.log",
        "build/out.o",
        "sub/local.txt",
        "secret/key",
        "excluded.txt",
        "editor.global",
        ".git/HEAD",
    ] {
        write(&p.join(ignored), "edited");
        assert_eq!(
            sb.hash(&p),
            before,
            "editing ignored {ignored} changed the hash"
        );
    }
    for kept in ["main.c", "sub/kept.txt"] {
        let prev = sb.hash(&p);
        write(&p.join(kept), format!("edited {kept}"));
        assert_ne!(
            sb.hash(&p),
            prev,
            "editing kept {kept} did not change the hash"
        );
    }
}

#[test]
fn no_ignore_takes_every_file_like_nix_store_add() {
    let sb = Sandbox::new();
    let p = project_with_ignore_rules(&sb);
    let all = files(&sb, &p, &["--no-ignore"]);
    let on_disk = walkdir_count(&p);
    assert_eq!(all, on_disk);
    let j = sb.json(&["--nix", "--no-ignore", p.to_str().unwrap()]);
    assert_eq!(j["nar_hash"], support::nix_hash_path(&p));
}

fn walkdir_count(p: &Path) -> u64 {
    let out = Command::new("find")
        .arg(p)
        .args(["-type", "f"])
        .output()
        .unwrap();
    String::from_utf8(out.stdout).unwrap().lines().count() as u64
}

#[test]
fn special_files_are_errors_unless_ignored() {
    let sb = Sandbox::new();
    let p = sb.path("proj");
    write(&p.join("ok"), "ok");
    write(&p.join(".gitignore"), "ignored.fifo\n");
    let mkfifo = |name: &str| {
        assert!(Command::new("mkfifo")
            .arg(p.join(name))
            .status()
            .unwrap()
            .success());
    };
    mkfifo("ignored.fifo");
    assert_eq!(
        files(&sb, &p, &["--no-index"]),
        2,
        "an ignored fifo is skipped"
    );
    let err = sb.fails(&["hash", "--no-ignore", p.to_str().unwrap()]);
    assert!(
        err.contains("ignored.fifo") && err.contains("fifo"),
        "{err}"
    );

    mkfifo("kept.fifo");
    let err = sb.fails(&["hash", p.to_str().unwrap()]);
    assert!(err.contains("kept.fifo"), "{err}");
    fs::remove_file(p.join("kept.fifo")).unwrap();

    let _listener = std::os::unix::net::UnixListener::bind(p.join("sock")).unwrap();
    let err = sb.fails(&["hash", p.to_str().unwrap()]);
    assert!(err.contains("sock") && err.contains("socket"), "{err}");
    fs::remove_file(p.join("sock")).unwrap();

    if Command::new("mknod")
        .arg(p.join("null"))
        .args(["c", "1", "3"])
        .status()
        .unwrap()
        .success()
    {
        let err = sb.fails(&["hash", p.to_str().unwrap()]);
        assert!(err.contains("null") && err.contains("device"), "{err}");
    }
    assert!(index_files(&sb).is_empty(), "a failed run wrote an index");
}

#[test]
fn a_path_that_is_not_a_directory_or_does_not_exist_is_named() {
    let sb = Sandbox::new();
    write(&sb.path("file"), "x");
    let err = sb.fails(&["hash", sb.path("file").to_str().unwrap()]);
    assert!(
        err.contains("file") && err.contains("not a directory"),
        "{err}"
    );
    let err = sb.fails(&["hash", sb.path("missing").to_str().unwrap()]);
    assert!(err.contains("missing"), "{err}");
}

#[test]
fn a_name_nix_cannot_take_is_refused() {
    let sb = Sandbox::new();
    write(&sb.path("proj/f"), "x");
    for bad in ["a b", ".hidden", "ä"] {
        let err = sb.fails(&["hash", "--name", bad, sb.path("proj").to_str().unwrap()]);
        assert!(err.contains(bad), "{err}");
    }
    let out = sb.ok(&[
        "hash",
        "--name",
        "my-pkg",
        sb.path("proj").to_str().unwrap(),
    ]);
    assert!(out.trim().ends_with("-my-pkg"));
    // A basename Nix cannot take is made valid rather than refused.
    write(&sb.path("my proj/f"), "x");
    assert!(sb.hash(&sb.path("my proj")).ends_with("-my-proj"));
}

/// Runs srcstore as an unprivileged user, so permissions apply (root reads everything).
fn as_nobody(sb: &Sandbox, args: &[&str]) -> std::process::Output {
    Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .arg(support::srcstore_bin())
        .args(args)
        .env("HOME", sb.home())
        .output()
        .unwrap()
}

#[test]
fn unreadable_files_and_directories_are_named() {
    let sb = Sandbox::new();
    support::chmod(sb.dir.path(), 0o755);
    let p = sb.path("proj");
    write(&p.join("ok"), "ok");
    write(&p.join("locked"), "secret");
    support::chmod(&p.join("locked"), 0o600);
    let out = as_nobody(&sb, &["hash", "--no-index", p.to_str().unwrap()]);
    let err = support::stderr(&out);
    assert!(
        !out.status.success() && err.contains("locked") && err.lines().count() == 1,
        "{err}"
    );
    assert_eq!(
        err.matches("Permission denied").count(),
        1,
        "the cause once: {err}"
    );
    support::chmod(&p.join("locked"), 0o644);

    write(&p.join("closed/inner"), "x");
    support::chmod(&p.join("closed"), 0o700);
    let out = as_nobody(&sb, &["hash", "--no-index", p.to_str().unwrap()]);
    let err = support::stderr(&out);
    assert!(
        !out.status.success() && err.contains("closed") && err.lines().count() == 1,
        "{err}"
    );
}

#[test]
fn a_file_that_keeps_changing_while_hashed_is_named_not_hashed() {
    let sb = Sandbox::new();
    let p = sb.path("proj");
    write(&p.join("growing"), vec![0u8; 64 << 20]);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let (stop, path) = (stop.clone(), p.join("growing"));
        std::thread::spawn(move || {
            use std::io::Write;
            let mut f = fs::OpenOptions::new().append(true).open(path).unwrap();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                f.write_all(b"more").unwrap();
            }
        })
    };
    let out = sb.run(&["hash", p.to_str().unwrap()]);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    writer.join().unwrap();
    let err = support::stderr(&out);
    assert!(
        !out.status.success(),
        "a hash of a file being written was passed off as good"
    );
    assert!(
        err.contains("growing") && err.contains("changed while being hashed"),
        "{err}"
    );
    assert!(index_files(&sb).is_empty());
}

/// A file cut short and regrown with other bytes while it is hashed: either the error names it,
/// or the hash is that of a version the file really had, never of a mix.
#[test]
fn a_file_cut_and_regrown_while_hashed_is_named_or_hashed_whole() {
    const SMALL: usize = 1 << 20;
    const BIG: usize = 32 << 20;
    let version = |fill: Option<u8>| -> Vec<u8> {
        let mut v = vec![1u8; SMALL];
        if let Some(b) = fill {
            v.resize(BIG, b);
        }
        v
    };
    let sb = Sandbox::new();
    let versions = [None, Some(2), Some(3)].map(|fill| {
        let dir = sb.path(&format!("version-{}", fill.unwrap_or(0)));
        write(&dir.join("shrinking"), version(fill));
        sb.hash(&dir)
    });
    let p = sb.path("proj");
    write(&p.join("shrinking"), version(Some(2)));
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let started = std::sync::Arc::new(std::sync::Barrier::new(2));
    let writer = {
        let (stop, started, path) = (stop.clone(), started.clone(), p.join("shrinking"));
        std::thread::spawn(move || {
            use std::os::unix::fs::FileExt;
            let f = fs::OpenOptions::new().write(true).open(path).unwrap();
            for round in 0u64.. {
                if stop.load(std::sync::atomic::Ordering::Relaxed) {
                    break;
                }
                f.set_len(SMALL as u64).unwrap();
                let fill = vec![2 + (round % 2) as u8; BIG - SMALL];
                f.write_all_at(&fill, SMALL as u64).unwrap();
                if round == 1 {
                    started.wait();
                }
            }
        })
    };
    // The hash starts while the file is already being cut and regrown.
    started.wait();
    let out = sb.run(&["hash", "--no-index", "--json", p.to_str().unwrap()]);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    writer.join().unwrap();
    if out.status.success() {
        let got: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let hash = got["hash"].as_str().unwrap();
        assert!(
            versions.iter().any(|v| v.starts_with(hash)),
            "a hash of no version the file had: {hash}, versions {versions:?}"
        );
    } else {
        let err = support::stderr(&out);
        assert!(
            err.contains("shrinking") && err.lines().count() == 1,
            "{err}"
        );
    }
}

#[test]
fn a_second_run_of_an_unchanged_tree_hashes_nothing() {
    let sb = Sandbox::new();
    let p = sb.path("proj");
    for i in 0..50 {
        write(&p.join(format!("d{}/f{i}", i % 5)), format!("{i}"));
    }
    // Let every change time fall outside the racy window.
    std::thread::sleep(std::time::Duration::from_millis(100));
    let first = sb.json(&[p.to_str().unwrap()]);
    assert_eq!(first["hashed"], 50);
    let second = sb.json(&[p.to_str().unwrap()]);
    assert_eq!(second["hashed"], 0);
    assert_eq!(second["hash"], first["hash"]);
    write(&p.join("d1/f1"), "changed");
    let third = sb.json(&[p.to_str().unwrap()]);
    assert_eq!(third["hashed"], 1);
    assert_ne!(third["hash"], first["hash"]);
    let no_index = sb.json(&["--no-index", p.to_str().unwrap()]);
    assert_eq!(no_index["hashed"], 50);
    assert_eq!(no_index["hash"], third["hash"]);
}

#[test]
fn a_file_modified_no_earlier_than_the_index_was_written_is_hashed_again() {
    let sb = Sandbox::new();
    let p = sb.path("proj");
    write(&p.join("old"), "old");
    write(&p.join("future"), "future");
    let t = Command::new("touch")
        .args(["-d", "+1 hour"])
        .arg(p.join("future"))
        .status()
        .unwrap();
    assert!(t.success());
    std::thread::sleep(std::time::Duration::from_millis(100));
    sb.json(&[p.to_str().unwrap()]);
    for _ in 0..2 {
        assert_eq!(
            sb.json(&[p.to_str().unwrap()])["hashed"],
            1,
            "only the racy file is re-hashed"
        );
    }
}

#[test]
fn a_damaged_index_is_reported_once_and_rebuilt() {
    type Damage = fn(&mut Vec<u8>);
    let damages: [(&str, Damage); 4] = [
        ("corrupt", |b| {
            let i = b.len() / 2;
            b[i] ^= 0xff;
        }),
        ("corrupt", |b| b.truncate(b.len() / 2)),
        ("version", |b| {
            b[8..12].copy_from_slice(&99u32.to_le_bytes())
        }),
        ("not a srcstore index", |b| *b = b"hello".to_vec()),
    ];
    for (what, damage) in damages {
        let sb = Sandbox::new();
        let p = sb.path("proj");
        write(&p.join("a"), "a");
        write(&p.join("b/c"), "c");
        let good = sb.hash(&p);
        let idx = index_files(&sb);
        assert_eq!(idx.len(), 1);
        let mut bytes = fs::read(&idx[0]).unwrap();
        damage(&mut bytes);
        fs::write(&idx[0], bytes).unwrap();

        let out = sb.run(&["hash", p.to_str().unwrap()]);
        assert!(out.status.success());
        let err = support::stderr(&out);
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(
            err.contains(what) && err.contains(idx[0].to_str().unwrap()),
            "{err}"
        );
        assert_eq!(String::from_utf8(out.stdout).unwrap().trim(), good);

        let again = sb.run(&["hash", p.to_str().unwrap()]);
        assert!(
            again.stderr.is_empty(),
            "reported twice: {}",
            support::stderr(&again)
        );
        assert_eq!(String::from_utf8(again.stdout).unwrap().trim(), good);
    }
}

#[test]
fn no_index_writes_nothing() {
    let sb = Sandbox::new();
    write(&sb.path("proj/a"), "a");
    sb.ok(&["hash", "--no-index", sb.path("proj").to_str().unwrap()]);
    assert!(index_files(&sb).is_empty());
}
