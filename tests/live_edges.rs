//! The live mount in odd corners and under attack, on real FUSE mounts: nothing outside what
//! srcstore owns is ever written, `--no-ignore` is exactly `nix-store --add`, saves and churn
//! never fail `path`, a long scan is waited for, and changes no inotify event reports are seen.

mod support;

use std::collections::BTreeSet;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use support::{write, Daemon, Sandbox};

fn project(sb: &Sandbox) -> PathBuf {
    let p = sb.path("proj");
    write(&p.join("src/main.c"), "int main(void) { return 0; }\n");
    write(&p.join("README"), "hello\n");
    p
}

fn basename(path: &Path) -> &str {
    path.file_name().unwrap().to_str().unwrap()
}

fn names_in(dir: &Path) -> BTreeSet<String> {
    fs::read_dir(dir)
        .map(|r| {
            r.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn sync_cookies_live_in_a_private_directory_no_one_can_name_ahead_of_time() {
    // A name another user could predict is a place to plant a link before the daemon writes
    // there; the project itself is never written.
    let sb = Sandbox::new();
    let p = project(&sb);
    let dir = srcstore::daemon::paths::cookie_dir(&srcstore::daemon::paths::runtime_dir(), &p);
    let mut names = Vec::new();
    for _ in 0..2 {
        let _d = Daemon::start(&sb, &p, &[]);
        // Cookies are made and removed while `path` waits; the directory keeps the last name
        // only while a caller waits, so record names as they come.
        let mut seen = BTreeSet::new();
        let stop = Arc::new(AtomicBool::new(false));
        let watcher = {
            let (dir, stop) = (dir.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut seen = BTreeSet::new();
                while !stop.load(Ordering::Relaxed) {
                    for e in fs::read_dir(&dir).into_iter().flatten().flatten() {
                        seen.insert(e.file_name().to_string_lossy().into_owned());
                    }
                }
                seen
            })
        };
        for _ in 0..200 {
            sb.ok(&["path", p.to_str().unwrap()]);
        }
        stop.store(true, Ordering::Relaxed);
        seen.extend(watcher.join().unwrap());
        let meta = fs::symlink_metadata(&dir).unwrap();
        assert!(meta.is_dir(), "{}", dir.display());
        assert_eq!(meta.mode() & 0o7777, 0o700, "{}", dir.display());
        assert_eq!(meta.uid(), rustix::process::geteuid().as_raw());
        assert!(fs::read_dir(&p)
            .unwrap()
            .flatten()
            .all(|e| !e.file_name().to_string_lossy().contains("cookie")));
        names.push(seen);
    }
    assert!(
        !names[0].is_empty() && names[0].is_disjoint(&names[1]),
        "each run names its cookies anew: {names:?}"
    );
}

#[test]
fn path_never_makes_a_file_in_the_project_and_no_ignore_snapshots_hold_none() {
    let sb = Sandbox::new();
    let p = project(&sb);
    let git = Command::new("git")
        .args(["init", "-q"])
        .current_dir(&p)
        .status()
        .unwrap();
    assert!(git.success());
    let d = Daemon::start(&sb, &p, &["--no-ignore"]);
    let dirs = [p.clone(), p.join(".git")];
    let before: Vec<BTreeSet<String>> = dirs.iter().map(|d| names_in(d)).collect();
    // Everything that appears in the project root or its `.git` while `path` runs.
    let stop = Arc::new(AtomicBool::new(false));
    let lister = {
        let (stop, dirs, before) = (stop.clone(), dirs.clone(), before.clone());
        std::thread::spawn(move || {
            let mut seen = BTreeSet::new();
            while !stop.load(Ordering::Relaxed) {
                for (dir, before) in dirs.iter().zip(&before) {
                    seen.extend(names_in(dir).difference(before).cloned());
                }
            }
            seen
        })
    };
    let mut answers = BTreeSet::new();
    for _ in 0..40 {
        answers.insert(d.path(&sb));
    }
    stop.store(true, Ordering::Relaxed);
    let appeared = lister.join().unwrap();
    assert!(
        appeared.is_empty(),
        "path made files in the project: {appeared:?}"
    );
    assert_eq!(answers.len(), 1, "{answers:?}");
    let path = answers.into_iter().next().unwrap();
    assert_eq!(
        basename(&path),
        sb.ok(&["hash", "--no-ignore", p.to_str().unwrap()]).trim()
    );
    for dir in [path.clone(), path.join(".git")] {
        let names = names_in(&dir);
        assert!(
            !names.iter().any(|n| n.starts_with(".srcstore")),
            "{}: {names:?}",
            dir.display()
        );
    }
}

#[test]
fn no_ignore_takes_srcstore_named_files_exactly_as_nix_store_add_does() {
    let sb = Sandbox::new();
    let p = project(&sb);
    write(&p.join(".srcstore-x"), "a user's file\n");
    write(&p.join("sub/.srcstore-cookie-1-1"), "also a user's file\n");
    let j = sb.json(&["--nix", "--no-ignore", p.to_str().unwrap()]);
    assert_eq!(j["nar_hash"], support::nix_hash_path(&p));
    let d = Daemon::start(&sb, &p, &["--no-ignore"]);
    let path = d.path(&sb);
    assert_eq!(
        fs::read_to_string(path.join(".srcstore-x")).unwrap(),
        "a user's file\n"
    );
    assert!(path.join("sub/.srcstore-cookie-1-1").exists());
}

#[test]
fn a_file_nix_cannot_store_is_reported_with_a_fix_that_works_under_the_filter() {
    let sb = Sandbox::new();
    let p = project(&sb);
    let made = Command::new("mkfifo")
        .arg(p.join("src/pipe"))
        .status()
        .unwrap();
    assert!(made.success());
    let ignoring = sb.fails(&["hash", p.to_str().unwrap()]);
    assert!(
        ignoring.contains("src/pipe") && ignoring.contains(".srcstoreignore"),
        "{ignoring}"
    );
    let all = sb.fails(&["hash", "--no-ignore", p.to_str().unwrap()]);
    assert!(all.contains("src/pipe"), "{all}");
    assert!(
        !all.contains(".srcstoreignore"),
        "under --no-ignore, .srcstoreignore keeps nothing out: {all}"
    );
}

#[test]
fn saves_by_rename_and_checkout_churn_never_fail_path() {
    let sb = Sandbox::new();
    let p = project(&sb);
    let d = Daemon::start(&sb, &p, &[]);
    let stop = Arc::new(AtomicBool::new(false));
    // An editor's save: write a temporary file beside the real one, rename it over it.
    let saver = {
        let (stop, p) = (stop.clone(), p.clone());
        std::thread::spawn(move || {
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let tmp = p.join(format!("src/.tmp{}", i % 20));
                fs::write(&tmp, format!("int main(void) {{ return {i}; }}\n")).unwrap();
                fs::rename(&tmp, p.join("src/main.c")).unwrap();
                i += 1;
                std::thread::sleep(Duration::from_micros(500));
            }
        })
    };
    // A checkout: a directory of files made, rewritten and removed again.
    let checkout = {
        let (stop, p) = (stop.clone(), p.clone());
        std::thread::spawn(move || {
            let mut round = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let dir = p.join("pkg");
                for i in 0..40 {
                    write(
                        &dir.join(format!("m{}/f{i}", i % 4)),
                        format!("{round}-{i}"),
                    );
                }
                std::thread::sleep(Duration::from_millis(3));
                fs::remove_dir_all(&dir).unwrap();
                round += 1;
            }
        })
    };
    let mut failures = Vec::new();
    let calls = 200;
    for _ in 0..calls {
        let out = sb.run(&["path", p.to_str().unwrap()]);
        if !out.status.success() {
            failures.push(support::stderr(&out));
        }
    }
    stop.store(true, Ordering::Relaxed);
    saver.join().unwrap();
    checkout.join().unwrap();
    assert!(
        failures.is_empty(),
        "{} of {calls} path calls failed, first: {:?}",
        failures.len(),
        failures.first()
    );
    let path = d.path(&sb);
    assert_eq!(basename(&path), sb.hash(&p));
    assert_eq!(
        fs::read(path.join("src/main.c")).unwrap(),
        fs::read(p.join("src/main.c")).unwrap()
    );
}

#[test]
fn a_path_during_a_long_update_waits_for_it() {
    let sb = Sandbox::new();
    let p = project(&sb);
    let d = Daemon::start(&sb, &p, &[]);
    // `path` used to give up after 10 s whatever the daemon was doing. A sparse file costs no
    // disk but all of its length to hash: grown until hashing it takes clearly longer than
    // that here, every answer waited for.
    let disk = fs::File::create(p.join("disk.img")).unwrap();
    let mut size = 4u64 << 30;
    loop {
        disk.set_len(size).unwrap();
        let started = Instant::now();
        let out = sb.run(&["path", p.to_str().unwrap()]);
        let took = started.elapsed();
        let err = support::stderr(&out);
        assert!(out.status.success(), "path failed after {took:?}: {err}");
        let path = PathBuf::from(String::from_utf8(out.stdout).unwrap().trim());
        assert_eq!(path.parent().unwrap(), d.mountpoint);
        assert_eq!(fs::metadata(path.join("disk.img")).unwrap().len(), size);
        if took > Duration::from_secs(5) {
            assert!(err.contains("waiting"), "a long wait said nothing: {err:?}");
        }
        if took > Duration::from_secs(14) {
            break;
        }
        assert!(size < 1 << 40, "hashing {size} bytes never took long here");
        // Aim at about 20 s: past the old timeout, well within the 50 s a `path` waits.
        let factor = (20.0 / took.as_secs_f64().max(0.5)).clamp(1.5, 8.0);
        size = (size as f64 * factor) as u64;
    }
}

#[test]
fn an_edit_through_a_hard_link_inotify_never_reports_is_seen() {
    let sb = Sandbox::new();
    let p = project(&sb);
    write(&p.join("a/shared"), "one\n");
    fs::create_dir_all(p.join("b")).unwrap();
    fs::hard_link(p.join("a/shared"), p.join("b/shared")).unwrap();
    fs::create_dir_all(sb.path("outside")).unwrap();
    fs::hard_link(p.join("src/main.c"), sb.path("outside/main.c")).unwrap();
    let d = Daemon::start(&sb, &p, &[]);
    let first = d.path(&sb);
    // Edited in place through the name outside the project: no event in any watched directory.
    std::thread::sleep(Duration::from_millis(100));
    fs::write(sb.path("outside/main.c"), "int main(void) { return 7; }\n").unwrap();
    let second = d.path(&sb);
    assert_ne!(second, first, "an edit through an outside link was missed");
    assert_eq!(
        fs::read_to_string(second.join("src/main.c")).unwrap(),
        "int main(void) { return 7; }\n"
    );
    assert_eq!(basename(&second), sb.hash(&p));
    // Edited through one of two names inside the project: the other one changed too.
    fs::write(p.join("a/shared"), "two\n").unwrap();
    let third = d.path(&sb);
    assert_eq!(fs::read_to_string(third.join("b/shared")).unwrap(), "two\n");
    assert_eq!(basename(&third), sb.hash(&p));
}

#[test]
fn path_sub_answers_every_edit_made_inside_it_before_the_call() {
    let sb = Sandbox::new();
    let p = project(&sb);
    write(&p.join("e/f"), "start");
    write(&p.join("e/deep/g"), "start");
    let _daemon = Daemon::start(&sb, &p, &[]);
    let sub =
        |sb: &Sandbox| PathBuf::from(sb.ok(&["path", "--sub", "e", p.to_str().unwrap()]).trim());
    for i in 0..150 {
        // In place, by rename, deeper down, and outside the subtree, in turns.
        let content = format!("v{i}");
        match i % 4 {
            0 => fs::write(p.join("e/f"), &content).unwrap(),
            1 => {
                fs::write(p.join("e/.f.tmp"), &content).unwrap();
                fs::rename(p.join("e/.f.tmp"), p.join("e/f")).unwrap();
            }
            2 => fs::write(p.join("e/deep/g"), &content).unwrap(),
            _ => fs::write(p.join("README"), &content).unwrap(),
        }
        let answer = sub(&sb);
        let (f, g) = (
            fs::read_to_string(answer.join("f")).unwrap(),
            fs::read_to_string(answer.join("deep/g")).unwrap(),
        );
        assert_eq!(
            (f, g),
            (
                fs::read_to_string(p.join("e/f")).unwrap(),
                fs::read_to_string(p.join("e/deep/g")).unwrap()
            ),
            "round {i}: {} is not the subtree as it was before the call",
            answer.display()
        );
        assert_eq!(basename(&answer), sb.hash(&p.join("e")), "round {i}");
    }
}

#[test]
fn a_read_that_fails_its_proof_brings_its_file_into_the_next_path() {
    let sb = Sandbox::new();
    let p = project(&sb);
    let d = Daemon::start(&sb, &p, &[]);
    let first = d.path(&sb);
    // A second name made after the file was scanned: nothing tells the daemon it has one.
    fs::create_dir_all(sb.path("outside")).unwrap();
    fs::hard_link(p.join("src/main.c"), sb.path("outside/main.c")).unwrap();
    std::thread::sleep(Duration::from_millis(100));
    fs::write(sb.path("outside/main.c"), "int main(void) { return 8; }\n").unwrap();
    let _unseen = d.path(&sb);
    // The old snapshot's copy fails its proof: that alone is news of a change.
    let e = fs::read(first.join("src/main.c")).expect_err("a changed file served old bytes");
    assert_eq!(e.raw_os_error(), Some(5), "{e}");
    let after = d.path(&sb);
    assert_eq!(
        fs::read_to_string(after.join("src/main.c")).unwrap(),
        "int main(void) { return 8; }\n",
        "a failed proof was not followed by a look at the file"
    );
    assert_eq!(basename(&after), sb.hash(&p));
    // Seen again, the file is known to have two names: the next edit needs no failed read.
    std::thread::sleep(Duration::from_millis(100));
    fs::write(sb.path("outside/main.c"), "int main(void) { return 9; }\n").unwrap();
    let next = d.path(&sb);
    assert_eq!(
        fs::read_to_string(next.join("src/main.c")).unwrap(),
        "int main(void) { return 9; }\n"
    );
}
