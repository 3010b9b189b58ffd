//! The live mount, on a real FUSE mount: naming, integrity, read-only contract, and faults.

mod support;

use std::fs;
use std::io::ErrorKind;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::Command;

use support::{write, Daemon, Sandbox};

fn project(sb: &Sandbox) -> std::path::PathBuf {
    let p = sb.path("proj");
    write(&p.join("src/main.c"), "int main(void) { return 0; }\n");
    write(&p.join("run.sh"), "#!/bin/sh\necho hi\n");
    support::chmod(&p.join("run.sh"), 0o755);
    write(&p.join(".gitignore"), "*.o\n");
    write(&p.join("build.o"), "object");
    std::os::unix::fs::symlink("src/main.c", p.join("link")).unwrap();
    std::os::unix::fs::symlink("/etc/passwd", p.join("abs")).unwrap();
    p
}

#[test]
fn the_mount_serves_the_snapshot_that_hash_names() {
    let sb = Sandbox::new();
    let p = project(&sb);
    let d = Daemon::start(&sb, &p, &[]);
    let path = d.path(&sb);
    assert_eq!(path.parent().unwrap(), d.mountpoint);
    assert_eq!(path.file_name().unwrap().to_str().unwrap(), sb.hash(&p));
    assert_eq!(
        fs::read_to_string(path.join("src/main.c")).unwrap(),
        "int main(void) { return 0; }\n"
    );
    assert!(
        !path.join("build.o").exists(),
        "ignored files stay out of the view"
    );
    // From any directory inside the project.
    let out = sb
        .cmd()
        .arg("path")
        .current_dir(p.join("src"))
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8(out.stdout).unwrap().trim(),
        path.to_str().unwrap()
    );
}

#[test]
fn entries_are_canonical_world_readable_and_links_stay_links() {
    let sb = Sandbox::new();
    let p = project(&sb);
    support::chmod(&p.join("src/main.c"), 0o600);
    let d = Daemon::start(&sb, &p, &[]);
    let path = d.path(&sb);
    let mode = |rel: &str| {
        fs::symlink_metadata(path.join(rel))
            .unwrap()
            .permissions()
            .mode()
            & 0o7777
    };
    assert_eq!(mode("src/main.c"), 0o444);
    assert_eq!(mode("run.sh"), 0o555);
    assert_eq!(mode("src"), 0o555);
    let meta = fs::symlink_metadata(path.join("src/main.c")).unwrap();
    assert_eq!(meta.mtime(), 1);
    assert_eq!(meta.uid(), 0);
    assert!(fs::symlink_metadata(path.join("link"))
        .unwrap()
        .file_type()
        .is_symlink());
    assert_eq!(
        fs::read_link(path.join("abs")).unwrap(),
        Path::new("/etc/passwd")
    );
    assert_eq!(
        fs::read_link(path.join("link")).unwrap(),
        Path::new("src/main.c")
    );
}

#[test]
fn every_kind_of_write_is_refused_with_erofs() {
    let sb = Sandbox::new();
    let p = project(&sb);
    let d = Daemon::start(&sb, &p, &[]);
    let path = d.path(&sb);
    let erofs = |r: std::io::Result<()>, what: &str| {
        let e = r.expect_err(what);
        assert_eq!(e.raw_os_error(), Some(30), "{what}: {e}"); // EROFS
    };
    erofs(fs::write(path.join("src/main.c"), "x").map(|_| ()), "write");
    erofs(fs::write(path.join("new"), "x").map(|_| ()), "create");
    erofs(fs::create_dir(path.join("dir")), "mkdir");
    erofs(
        fs::rename(path.join("run.sh"), path.join("moved")),
        "rename",
    );
    erofs(fs::remove_file(path.join("run.sh")), "unlink");
    erofs(
        fs::set_permissions(path.join("run.sh"), fs::Permissions::from_mode(0o777)),
        "chmod",
    );
    erofs(
        rustix::fs::setxattr(
            path.join("run.sh"),
            "user.x",
            b"1",
            rustix::fs::XattrFlags::empty(),
        )
        .map_err(Into::into),
        "setxattr",
    );
    erofs(
        fs::write(d.mountpoint.join("new-root-entry"), "x").map(|_| ()),
        "create at the root",
    );
    assert_eq!(
        fs::read_to_string(p.join("run.sh")).unwrap(),
        "#!/bin/sh\necho hi\n"
    );
}

#[test]
fn an_edit_gives_a_new_path_and_an_old_path_never_yields_new_bytes() {
    let sb = Sandbox::new();
    let p = project(&sb);
    let d = Daemon::start(&sb, &p, &[]);
    let first = d.path(&sb);
    write(&p.join("src/main.c"), "int main(void) { return 1; }\n");
    let second = d.path(&sb);
    assert_ne!(first, second);
    assert_eq!(
        fs::read_to_string(second.join("src/main.c")).unwrap(),
        "int main(void) { return 1; }\n"
    );
    // The older snapshot is still served, but its changed file cannot be read as it was.
    let e = fs::read(first.join("src/main.c")).expect_err("an old name yielded new bytes");
    assert_eq!(e.raw_os_error(), Some(5), "{e}"); // EIO
    assert_eq!(
        fs::read_to_string(first.join("run.sh")).unwrap(),
        "#!/bin/sh\necho hi\n"
    );
    assert!(d.status(&sb)["stale_reads"].as_u64().unwrap() >= 1);
    // Putting the old content back makes the old name current and readable again.
    write(&p.join("src/main.c"), "int main(void) { return 0; }\n");
    assert_eq!(d.path(&sb), first);
    assert_eq!(
        fs::read_to_string(first.join("src/main.c")).unwrap(),
        "int main(void) { return 0; }\n"
    );
}

#[test]
fn every_change_made_before_path_is_in_its_answer() {
    let sb = Sandbox::new();
    let p = project(&sb);
    let d = Daemon::start(&sb, &p, &["--settle-ms", "200"]);
    for i in 0..20 {
        write(&p.join(format!("gen/f{}", i % 3)), format!("{i}"));
        let path = d.path(&sb);
        assert_eq!(
            fs::read_to_string(path.join(format!("gen/f{}", i % 3))).unwrap(),
            i.to_string()
        );
        assert_eq!(path.file_name().unwrap().to_str().unwrap(), sb.hash(&p));
    }
}

#[test]
fn a_read_racing_an_edit_never_returns_mixed_bytes() {
    let sb = Sandbox::new();
    let p = sb.path("proj");
    let original: Vec<u8> = (0..8 << 20).map(|i| (i % 251) as u8).collect();
    write(&p.join("big"), &original);
    let d = Daemon::start(&sb, &p, &[]);
    let path = d.path(&sb);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let editor = {
        let (stop, file) = (stop.clone(), p.join("big"));
        std::thread::spawn(move || {
            use std::os::unix::fs::FileExt;
            let f = fs::OpenOptions::new().write(true).open(file).unwrap();
            let mut i = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                f.write_at(&[0xAA; 4096], (i * 4096 * 7) % (8 << 20))
                    .unwrap();
                i += 1;
            }
        })
    };
    let (mut whole, mut failed) = (0, 0);
    for _ in 0..20 {
        // Drop the page cache so each pass reaches the daemon.
        fs::write("/proc/sys/vm/drop_caches", "1").ok();
        match fs::read(path.join("big")) {
            Ok(bytes) => {
                assert!(
                    bytes == original,
                    "a read returned bytes that are not the snapshot's"
                );
                whole += 1;
            }
            Err(e) => {
                assert_eq!(e.raw_os_error(), Some(5), "{e}");
                failed += 1;
            }
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    editor.join().unwrap();
    assert!(
        failed > 0,
        "the edits were never noticed ({whole} clean reads)"
    );
    let s = d.status(&sb);
    assert!(s["stale_reads"].as_u64().unwrap() + s["torn_reads"].as_u64().unwrap() >= failed);
}

#[test]
fn sigterm_and_sigint_unmount_and_exit_zero() {
    for signal in ["-TERM", "-INT"] {
        let sb = Sandbox::new();
        let p = project(&sb);
        let mut d = Daemon::start(&sb, &p, &[]);
        let status = d.stop_with(signal);
        assert!(status.success(), "{signal}: {status}");
        let mounts = fs::read_to_string("/proc/mounts").unwrap();
        assert!(
            !mounts.contains(d.mountpoint.to_str().unwrap()),
            "{signal}: still mounted"
        );
        let err = sb.fails(&["path", p.to_str().unwrap()]);
        assert!(err.contains("srcstore mount"), "{err}");
    }
}

#[test]
fn a_stop_ends_in_bounded_time_whatever_holds_the_view_and_the_next_mount_needs_no_repair() {
    for (signal, remove_project) in [("-TERM", false), ("-INT", false), ("-TERM", true)] {
        let sb = Sandbox::new();
        let p = project(&sb);
        let mut d = Daemon::start(&sb, &p, &[]);
        let snapshot = d.path(&sb);
        // A reader holding a file open, and a process working in a directory of the view.
        let mut file = fs::File::open(snapshot.join("src/main.c")).unwrap();
        let mut cwd = Command::new("sleep")
            .arg("60")
            .current_dir(snapshot.join("src"))
            .spawn()
            .unwrap();
        if remove_project {
            fs::remove_dir_all(&p).unwrap();
        } else {
            Command::new("kill")
                .args([signal, &d.child.id().to_string()])
                .status()
                .unwrap();
        }
        let started = std::time::Instant::now();
        let status = d.wait_exit(10);
        let _ = cwd.kill();
        let _ = cwd.wait();
        let status = status.unwrap_or_else(|| {
            panic!("{signal}, project removed {remove_project}: the daemon did not stop")
        });
        assert!(
            started.elapsed() < std::time::Duration::from_secs(6),
            "took {:?}",
            started.elapsed()
        );
        assert_eq!(status.success(), !remove_project, "{status}");
        // Off the mountpoint while still held: no dead mount stays behind.
        let mounted = Command::new("mountpoint")
            .arg("-q")
            .arg(&d.mountpoint)
            .status()
            .unwrap();
        assert!(
            !mounted.success(),
            "a dead mount stayed at {}",
            d.mountpoint.display()
        );
        assert!(d.log_text().contains("detached"), "{}", d.log_text());
        let mut buf = Vec::new();
        use std::io::Read;
        assert!(
            file.read_to_end(&mut buf).is_err() || !buf.is_empty(),
            "the open file neither failed cleanly nor kept its bytes"
        );
        drop(file);
        if !remove_project {
            let err = sb.fails(&["path", p.to_str().unwrap()]);
            assert!(err.contains("srcstore mount"), "{err}");
            let again = Daemon::start(&sb, &p, &[]);
            assert_eq!(
                again.path(&sb),
                snapshot,
                "the next mount started as if nothing happened"
            );
        }
    }
}

#[test]
fn a_daemon_killed_hard_is_repaired_by_the_next_mount() {
    let sb = Sandbox::new();
    let p = project(&sb);
    let mut d = Daemon::start(&sb, &p, &[]);
    let first = d.path(&sb);
    d.stop_with("-KILL");
    let e = fs::metadata(&first).expect_err("a dead daemon's mount answered");
    assert_eq!(e.raw_os_error(), Some(107), "{e}"); // ENOTCONN
    let err = sb.fails(&["path", p.to_str().unwrap()]);
    assert!(err.contains("srcstore mount"), "{err}");
    let again = Daemon::start(&sb, &p, &[]);
    assert_eq!(again.path(&sb), first);
    assert!(first.join("src/main.c").exists());
}

#[test]
fn a_file_edited_between_daemons_never_gets_back_a_number_it_had() {
    // A cache that outlives the daemon and trusts (inode, mtime, size) would take a returning
    // number, with the same size, for the old content.
    let sb = Sandbox::new();
    let p = project(&sb);
    let mut had = std::collections::HashSet::new();
    for round in 0..4 {
        let d = Daemon::start(&sb, &p, &[]);
        let ino = fs::metadata(d.path(&sb).join("src/main.c")).unwrap().ino();
        assert!(had.insert(ino), "round {round}: inode {ino} came back");
        drop(d);
        write(
            &p.join("src/main.c"),
            format!("int main(void) {{ return {round}; }}\n"),
        );
    }
    assert_eq!(fs::read_to_string(sb.cache().join("epoch")).unwrap(), "4\n");
}

#[test]
fn a_corrupt_epoch_counter_is_an_error_naming_it_and_never_a_fresh_start() {
    let sb = Sandbox::new();
    let p = project(&sb);
    let epoch = sb.cache().join("epoch");
    write(&epoch, "12\0garbage");
    let out = sb.mount_once(&sb.path("mnt"), &p);
    assert_eq!(out.status.code(), Some(1));
    let err = support::stderr(&out);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.starts_with(&format!("srcstore: error: {}: ", epoch.display())),
        "{err}"
    );
    assert_eq!(fs::read(&epoch).unwrap(), b"12\0garbage");
}

#[test]
fn a_second_daemon_for_the_same_project_refuses_and_names_the_first() {
    let sb = Sandbox::new();
    let p = project(&sb);
    let d = Daemon::start(&sb, &p, &[]);
    let out = sb.mount_once(&sb.path("other-mnt"), &p);
    assert!(!out.status.success());
    let err = support::stderr(&out);
    assert!(err.contains(&format!("pid {}", d.child.id())), "{err}");
    assert_eq!(
        err.lines().filter(|l| l.contains("error")).count(),
        1,
        "{err}"
    );
}

#[test]
fn the_project_directory_removed_or_moved_stops_the_daemon_with_a_clear_message() {
    let sb = Sandbox::new();
    let removed = project(&sb);
    let moved = sb.path("moved");
    fs::create_dir_all(&moved).unwrap();
    write(&moved.join("f"), "f");
    let mnt_removed = sb.path("mnt-removed");
    let mnt_moved = sb.path("mnt-moved");
    let mut d_removed = Daemon::start_at(&sb, &removed, &mnt_removed, &[]);
    let mut d_moved = Daemon::start_at(&sb, &moved, &mnt_moved, &[]);
    fs::remove_dir_all(&removed).unwrap();
    fs::rename(&moved, sb.path("elsewhere")).unwrap();
    for (d, p, mnt) in [
        (&mut d_removed, &removed, &mnt_removed),
        (&mut d_moved, &moved, &mnt_moved),
    ] {
        let status = d
            .wait_exit(10)
            .unwrap_or_else(|| panic!("the daemon kept running without {}", p.display()));
        assert!(!status.success());
        let log = d.log_text();
        assert!(
            log.contains("removed or moved") && log.contains(p.to_str().unwrap()),
            "{log}"
        );
        let mounted = Command::new("mountpoint")
            .arg("-q")
            .arg(mnt)
            .status()
            .unwrap();
        assert!(!mounted.success(), "{} is still mounted", mnt.display());
    }
}

#[test]
fn the_control_socket_answers_only_its_owner_and_root() {
    let sb = Sandbox::new();
    let p = project(&sb);
    let d = Daemon::start(&sb, &p, &[]);
    let socket = srcstore::daemon::paths::socket_path(&srcstore::daemon::paths::runtime_dir(), &p);
    // Another uid that can reach the socket (it may pass any permission check, as where the
    // runtime directory was opened by mistake): the daemon itself must refuse it.
    let ask = |who: &[&str]| {
        let out = Command::new("setpriv")
            .args(who)
            .args([
                "--",
                "socat",
                "-t5",
                "-",
                &format!("UNIX-CONNECT:{}", socket.display()),
            ])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write;
        out.stdin
            .as_ref()
            .unwrap()
            .write_all(b"{\"v\":1,\"op\":\"status\"}\n")
            .unwrap();
        let out = out.wait_with_output().unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned() + &support::stderr(&out)
    };
    let other = ask(&[
        "--reuid=65534",
        "--regid=65534",
        "--clear-groups",
        "--inh-caps=+dac_override",
        "--ambient-caps=+dac_override",
    ]);
    let own = ask(&[]);
    assert!(
        other.contains("uid 65534 may not control this daemon") && !other.contains("\"ok\":true"),
        "the daemon answered another user: {other}"
    );
    assert!(own.contains("\"ok\":true"), "and answers its owner: {own}");
    assert!(d.child.id() > 0);
}

#[test]
fn churn_ends_in_the_snapshot_of_what_is_on_disk() {
    let sb = Sandbox::new();
    let p = project(&sb);
    let d = Daemon::start(&sb, &p, &[]);
    // A storm like a git checkout: many files and dirs created, rewritten, moved and removed.
    for round in 0..5 {
        if p.join("storm/d4").is_file() {
            fs::remove_file(p.join("storm/d4")).unwrap();
        }
        for i in 0..200 {
            write(
                &p.join(format!("storm/d{}/f{i}", i % 10)),
                format!("{round}-{i}"),
            );
        }
        if round % 2 == 1 {
            fs::rename(p.join("storm/d1"), p.join(format!("storm/moved{round}"))).unwrap();
            fs::remove_dir_all(p.join("storm/d2")).unwrap();
            fs::remove_file(p.join("storm/d3/f3")).unwrap();
            // A directory replaced by a file.
            fs::remove_dir_all(p.join("storm/d4")).unwrap();
            write(&p.join("storm/d4"), "now a file");
        }
    }
    let path = d.path(&sb);
    assert_eq!(path.file_name().unwrap().to_str().unwrap(), sb.hash(&p));
    let err = fs::read(path.join("missing")).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound);
}

#[test]
fn a_failed_update_loses_no_change_made_beside_it() {
    let sb = Sandbox::new();
    let p = project(&sb);
    fs::create_dir_all(p.join("other")).unwrap();
    // A long settle window puts the edit and the fifo in one burst of changes.
    let d = Daemon::start(&sb, &p, &["--settle-ms", "300"]);
    write(&p.join("src/main.c"), "int main(void) { return 1; }\n");
    let made = Command::new("mkfifo")
        .arg(p.join("other/pipe"))
        .status()
        .unwrap();
    assert!(made.success());
    let err = sb.fails(&["path", p.to_str().unwrap()]);
    assert!(
        err.contains("other/pipe") && err.lines().count() == 1,
        "{err}"
    );
    fs::remove_file(p.join("other/pipe")).unwrap();
    let path = d.path(&sb);
    assert_eq!(
        path.file_name().unwrap().to_str().unwrap(),
        sb.hash(&p),
        "the edit made in the same burst as the fifo was lost"
    );
    assert_eq!(
        fs::read_to_string(path.join("src/main.c")).unwrap(),
        "int main(void) { return 1; }\n"
    );
}

#[test]
fn an_edit_of_the_repositorys_exclude_file_is_seen() {
    let sb = Sandbox::new();
    let p = project(&sb);
    write(&p.join("src/secret.env"), "token");
    let git = Command::new("git")
        .args(["init", "-q"])
        .current_dir(&p)
        .status()
        .unwrap();
    assert!(git.success());
    let d = Daemon::start(&sb, &p, &[]);
    assert!(d.path(&sb).join("src/secret.env").exists());
    write(&p.join(".git/info/exclude"), "secret.env\n");
    let path = d.path(&sb);
    assert_eq!(path.file_name().unwrap().to_str().unwrap(), sb.hash(&p));
    assert!(!path.join("src/secret.env").exists());
}

#[test]
fn a_directory_kept_by_a_new_snapshot_still_leads_back_into_its_own() {
    let sb = Sandbox::new();
    let p = project(&sb);
    let d = Daemon::start(&sb, &p, &[]);
    let first = d.path(&sb);
    // A process working in the first snapshot's `src`, which the next snapshot keeps as is.
    let mut inside = Command::new("sh")
        .args(["-c", "cd \"$0/src\" && read go && pwd -P && ls .."])
        .arg(&first)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(200));
    write(&p.join("new"), "only in the second snapshot");
    let second = d.path(&sb);
    assert_ne!(second, first);
    // The new snapshot's `src` is looked up and walked while the process works in the old one.
    let (old_src, new_src) = (first.join("src"), second.join("src"));
    assert_eq!(fs::read_dir(&new_src).unwrap().count(), 1);
    assert_ne!(
        fs::metadata(&old_src).unwrap().ino(),
        fs::metadata(&new_src).unwrap().ino(),
        "one directory inode in two snapshots: the kernel gives it a single parent"
    );
    use std::io::Write;
    inside.stdin.take().unwrap().write_all(b"go\n").unwrap();
    let out = inside.wait_with_output().unwrap();
    let out = String::from_utf8(out.stdout).unwrap();
    let mut lines = out.lines();
    assert_eq!(lines.next(), Some(old_src.to_str().unwrap()), "{out}");
    let parent: Vec<&str> = lines.collect();
    assert!(
        !parent.contains(&"new"),
        "`..` led into the second snapshot: {parent:?}"
    );
    assert!(parent.contains(&"src"), "{parent:?}");
}

#[test]
fn a_listing_of_the_root_neither_skips_nor_repeats_a_name_while_snapshots_come_and_go() {
    let sb = Sandbox::new();
    let p = project(&sb);
    let d = Daemon::start(&sb, &p, &["--keep", "60"]);
    for i in 0..30 {
        write(
            &p.join("src/main.c"),
            format!("int main(void) {{ return {i}; }}\n"),
        );
        d.path(&sb);
    }
    // A listing in small pieces, with a new snapshot published between every two.
    let dir = fs::File::open(&d.mountpoint).unwrap();
    let mut buf = [std::mem::MaybeUninit::<u8>::uninit(); 200];
    let mut raw = rustix::fs::RawDir::new(&dir, &mut buf);
    let mut seen: Vec<String> = Vec::new();
    let mut round = 0;
    while let Some(entry) = raw.next() {
        let name = entry.unwrap().file_name().to_string_lossy().into_owned();
        if name != "." && name != ".." {
            seen.push(name);
        }
        if seen.len() % 2 == 0 {
            round += 1;
            write(
                &p.join("src/main.c"),
                format!("int main(void) {{ return -{round}; }}\n"),
            );
            d.path(&sb);
        }
    }
    let mut unique = seen.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(
        unique.len(),
        seen.len(),
        "a name was listed twice: {seen:?}"
    );
    assert!(
        seen.len() >= 31,
        "names served all along were skipped: {} listed",
        seen.len()
    );
}

#[test]
fn every_request_a_reader_makes_is_answered_and_the_library_stays_quiet() {
    let sb = Sandbox::new();
    let p = project(&sb);
    let d = Daemon::start(&sb, &p, &[]);
    let file = d.path(&sb).join("src/main.c");
    // Reads and closes (the kernel sends FLUSH), extended attributes and their list, twice:
    // the answers that tell the kernel to stop asking must hold the second time too.
    for _ in 0..2 {
        assert!(!fs::read(&file).unwrap().is_empty());
        let mut value = [0u8; 64];
        let e = rustix::fs::getxattr(&file, "user.x", &mut value).unwrap_err();
        assert!(
            matches!(e, rustix::io::Errno::NODATA | rustix::io::Errno::NOTSUP),
            "a snapshot holds no extended attributes: {e}"
        );
        let mut names = [0u8; 64];
        let listed = rustix::fs::listxattr(&file, &mut names);
        assert!(
            matches!(listed, Ok(0) | Err(rustix::io::Errno::NOTSUP)),
            "{listed:?}"
        );
    }
    std::thread::sleep(std::time::Duration::from_millis(200));
    let log = d.log_text();
    assert!(!log.contains("Not Implemented"), "{log}");
}

#[test]
fn a_snapshot_asked_for_is_walked_before_a_build_comes_unless_warming_is_off() {
    let sb = Sandbox::new();
    let p = project(&sb);
    for i in 0..20 {
        write(&p.join(format!("d{i}/e/f")), "x");
    }
    // The tree's directories: the root, src/, and d*/ and d*/e/.
    let dirs = 2 + 2 * 20;
    let d = Daemon::start(&sb, &p, &[]);
    d.path(&sb);
    let mut warmed = 0;
    for _ in 0..100 {
        warmed = d.status(&sb)["warmed_dirs"].as_u64().unwrap();
        if warmed >= dirs {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    // Every directory (a walk cancelled by a newer `path` may have listed some twice).
    assert!(warmed >= dirs, "{warmed} of {dirs} directories warmed");
    drop(d);

    let sb = Sandbox::new();
    let p = project(&sb);
    let d = Daemon::start(&sb, &p, &["--no-warm"]);
    d.path(&sb);
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert_eq!(d.status(&sb)["warmed_dirs"], 0);
}

#[test]
fn a_path_asked_while_the_daemon_starts_waits_for_it_and_gets_a_mounted_snapshot() {
    let sb = Sandbox::new();
    let p = project(&sb);
    // A first scan that takes a while: a large sparse file is hashed whole.
    let big = fs::File::create(p.join("sparse")).unwrap();
    big.set_len(1 << 30).unwrap();
    let mountpoint = sb.path("mnt");
    let mut child = sb
        .cmd()
        .args(["mount", "--allow-other", "--mountpoint"])
        .arg(&mountpoint)
        .arg(&p)
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Once the daemon holds the project (its lock), while its first scan runs: one `path`.
    let runtime = std::path::PathBuf::from("/run/srcstore");
    let project = fs::canonicalize(&p).unwrap();
    let lock = srcstore::daemon::paths::lock_path(&runtime, &project);
    support::wait_for("the daemon's lock", || {
        fs::read_to_string(&lock).is_ok_and(|l| l.contains(&format!("pid {}", child.id())))
    });
    // Its socket answers from then on (a loaded machine may take a while to bind it).
    let socket = srcstore::daemon::paths::socket_path(&runtime, &project);
    support::wait_for("the daemon's socket", || socket.exists());
    let out = sb.run(&["path", p.to_str().unwrap()]);
    let answer = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let served = out.status.success() && Path::new(&answer).join("src/main.c").exists();
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let _ = child.wait();
    assert!(served, "path during the start: {}", support::stderr(&out));
}

#[test]
fn allow_other_warns_once_of_files_other_users_could_not_read() {
    let sb = Sandbox::new();
    let p = project(&sb);
    let d = Daemon::start(&sb, &p, &[]);
    assert!(
        !d.log_text().contains("other users cannot read"),
        "a project open to all was warned about: {}",
        d.log_text()
    );
    drop(d);

    let sb = Sandbox::new();
    let p = project(&sb);
    write(&p.join("secret/key"), "k");
    support::chmod(&p.join("secret"), 0o700);
    support::chmod(&p.join("src/main.c"), 0o600);
    let d = Daemon::start(&sb, &p, &[]);
    let log = d.log_text();
    let warned: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("other users cannot read"))
        .collect();
    assert_eq!(warned.len(), 1, "{log}");
    assert!(
        warned[0].contains("2 entries")
            && warned[0].contains("secret")
            && warned[0].contains("src/main.c")
            && warned[0].contains(".srcstoreignore"),
        "{log}"
    );
    support::chmod(&p.join("secret"), 0o755);
}

#[test]
fn the_kernel_forgets_the_inodes_of_snapshots_no_longer_served() {
    // Warming walks every snapshot `path` answers with; the kernel keeps what it was given
    // until told to drop it (or memory runs short). 200 edits later it must hold about what
    // the served snapshots hold, not every snapshot ever answered.
    let sb = Sandbox::new();
    let p = sb.path("proj");
    for d in 0..10 {
        for f in 0..20 {
            write(&p.join(format!("d{d}/f{f}")), format!("{d} {f}\n"));
        }
    }
    let d = Daemon::start(&sb, &p, &[]);
    let inodes = || d.status(&sb)["inodes"].as_u64().unwrap();
    d.path(&sb);
    support::wait_for("the first snapshot warmed", || inodes() >= 200);
    let first = inodes();
    for i in 0..200 {
        write(&p.join(format!("d{}/f1", i % 10)), format!("edit {i}\n"));
        d.path(&sb);
    }
    support::wait_for("the kernel to forget retired snapshots", || {
        inodes() <= first * 3 / 2
    });
}

#[test]
fn a_daemon_killed_hard_while_it_warms_a_snapshot_exits_and_the_next_mount_serves() {
    // A thread of the daemon's own reading its mount when SIGKILL comes would wait forever for
    // an answer no thread is left to give: the daemon would stay a zombie holding its lock.
    let sb = Sandbox::new();
    let p = sb.path("many-dirs");
    for i in 0..8000 {
        write(&p.join(format!("d{}/e{i}/f", i % 50)), "x");
    }
    let mut d = Daemon::start(&sb, &p, &[]);
    let snapshot = d.path(&sb); // sets the walk of its 8,050 directories going
    std::thread::sleep(std::time::Duration::from_millis(30));
    Command::new("kill")
        .args(["-KILL", &d.child.id().to_string()])
        .status()
        .unwrap();
    let gone = (0..200).any(|_| {
        std::thread::sleep(std::time::Duration::from_millis(50));
        d.child.try_wait().unwrap().is_some()
    });
    if !gone {
        // Let go of it (fusectl's abort of its connection, named by the mount's device), so
        // that neither the machine nor this test waits for it forever.
        let mountinfo = fs::read_to_string("/proc/self/mountinfo").unwrap();
        let mountpoint = d.mountpoint.to_str().unwrap();
        if let Some(dev) = mountinfo.lines().find_map(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            (f.get(4) == Some(&mountpoint)).then(|| f[2].split(':').nth(1).unwrap().to_owned())
        }) {
            let _ = fs::write(format!("/sys/fs/fuse/connections/{dev}/abort"), "1");
        }
        let _ = d.child.wait();
        panic!(
            "the daemon killed while warming never exited: {}",
            d.log_text()
        );
    }
    support::detach(&d.mountpoint);
    let again = Daemon::start(&sb, &p, &[]);
    assert_eq!(again.path(&sb), snapshot);
}
