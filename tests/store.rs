//! Store mode with root's daemon: a snapshot published as the valid, content-addressed
//! `/nix/store/<h>-source` path, as real Nix sees it.

mod support;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use support::{publish, srcstore_as, stderr, valid, verify_path, write, Daemon, Sandbox};

/// The ordinary user the refusals are for.
const DEV: &str = "srcstore-dev";

/// A file only this test's project has, so that its paths are its own (a path another test or
/// an earlier run published is valid already, and nothing is made).
fn unique(sb: &Sandbox, project: &Path) {
    write(&project.join("unique"), sb.dir.path().to_str().unwrap());
}

/// [`project`], served by a daemon in store mode, and its first published path.
fn published(sb: &Sandbox) -> (PathBuf, Daemon, String) {
    let p = project(sb);
    let d = Daemon::start(sb, &p, &["--store"]);
    let path = publish(sb, &p, &[]);
    (p, d, path)
}

/// A build running `script` with `src` the store path `path` (and `attrs`, Nix attributes).
fn build_from<'a>(
    sb: &'a Sandbox,
    name: &str,
    script: &str,
    path: &str,
    attrs: &str,
) -> support::NixBuild<'a> {
    support::NixBuild::with_attrs(
        sb,
        name,
        script,
        &format!("{{ src = builtins.storePath \"{path}\"; {attrs} }}"),
    )
}

/// A project of a few files, an executable and a symlink.
fn project(sb: &Sandbox) -> PathBuf {
    let p = sb.path("proj");
    unique(sb, &p);
    write(&p.join("a.txt"), "hello\n");
    write(&p.join("sub/run"), "#!/bin/sh\necho hi\n");
    support::chmod(&p.join("sub/run"), 0o755);
    write(&p.join("sub/deep/data"), vec![7u8; 200_000]);
    std::os::unix::fs::symlink("a.txt", p.join("link")).unwrap();
    write(&p.join(".gitignore"), "ignored\n");
    write(&p.join("ignored"), "not in the snapshot\n");
    p
}

/// The path Nix itself gives `dir` filtered as srcstore filters it: `builtins.path` named
/// `source`, with the project's ignore rules applied by srcstore's own `hash --nix`.
fn nix_would_give(sb: &Sandbox, dir: &Path) -> String {
    let v = sb.json(&["--nix", "--name", "source", dir.to_str().unwrap()]);
    v["store_path"].as_str().unwrap().to_owned()
}

fn nix(args: &[&str]) -> std::process::Output {
    Command::new("nix")
        .args(["--extra-experimental-features", "nix-command flakes"])
        .args(args)
        .output()
        .unwrap()
}

fn ino(path: &Path) -> u64 {
    std::os::unix::fs::MetadataExt::ino(&fs::symlink_metadata(path).unwrap())
}

#[test]
fn a_published_snapshot_is_the_source_path_nix_gives_the_tree_and_nix_verifies_it() {
    let sb = Sandbox::new();
    let (p, _d, path) = published(&sb);
    assert_eq!(path, nix_would_give(&sb, &p));
    assert!(path.ends_with("-source"), "{path}");
    // With --no-ignore Nix's own builtins.path gives the same path for the same files.
    let whole = sb.path("whole");
    Command::new("cp")
        .arg("-a")
        .arg(&p)
        .arg(&whole)
        .status()
        .unwrap();
    fs::remove_file(whole.join("ignored")).unwrap();
    let out = Command::new("nix-instantiate")
        .args(["--eval", "-E"])
        .arg(format!(
            "builtins.path {{ path = {}; name = \"source\"; }}",
            whole.display()
        ))
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("\"{path}\""),
        "{}",
        stderr(&out)
    );
    verify_path(&path);
    let out = Command::new("nix-store")
        .args(["--verify", "--check-contents"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let info = nix(&["path-info", "--json", &path]);
    assert!(info.status.success(), "{}", stderr(&info));
    let info: serde_json::Value = serde_json::from_slice(&info.stdout).unwrap();
    // A list before 2.19, an object keyed by path after.
    let info = info
        .as_array()
        .map(|a| a[0].clone())
        .unwrap_or_else(|| info[&path].clone());
    assert_eq!(info["references"], serde_json::json!([]), "{info}");
    let ca = info["ca"].as_str().unwrap_or_default();
    assert!(ca.starts_with("fixed:r:sha256:"), "{info}");
    assert_eq!(
        fs::read_link(Path::new(&path).join("link")).unwrap(),
        Path::new("a.txt")
    );
}

#[test]
fn a_subtree_is_published_as_a_source_path_of_its_own() {
    let sb = Sandbox::new();
    let p = project(&sb);
    let _d = Daemon::start(&sb, &p, &["--store"]);
    let path = publish(&sb, &p, &["--sub", "sub"]);
    assert_eq!(path, nix_would_give(&sb, &p.join("sub")));
    verify_path(&path);
    assert!(Path::new(&path).join("deep/data").is_file());
}

#[test]
fn an_edit_makes_a_new_path_that_copies_only_the_edited_file_and_the_old_path_keeps_its_bytes() {
    let sb = Sandbox::new();
    let p = project(&sb);
    let _d = Daemon::start(&sb, &p, &["--store"]);
    let old = publish(&sb, &p, &[]);
    write(&p.join("a.txt"), "edited\n");
    let new = publish(&sb, &p, &[]);
    assert_ne!(old, new);
    assert_eq!(new, nix_would_give(&sb, &p));
    assert_eq!(
        fs::read_to_string(Path::new(&old).join("a.txt")).unwrap(),
        "hello\n"
    );
    assert_eq!(
        fs::read_to_string(Path::new(&new).join("a.txt")).unwrap(),
        "edited\n"
    );
    // The unchanged files are the old path's very inodes (linked, not copied).
    for f in ["sub/run", "sub/deep/data"] {
        assert_eq!(
            ino(&Path::new(&old).join(f)),
            ino(&Path::new(&new).join(f)),
            "{f}"
        );
    }
    assert_ne!(
        ino(&Path::new(&old).join("a.txt")),
        ino(&Path::new(&new).join("a.txt"))
    );
    verify_path(&old);
    verify_path(&new);
}

/// A flake whose builder comes from a locked input, building from its own source.
fn flake_project(sb: &Sandbox, files: usize) -> PathBuf {
    let p = sb.path("flake");
    write(&p.join("flake.nix"), support::flake_nix());
    write(&p.join("msg"), "first");
    unique(sb, &p);
    for i in 0..files {
        write(&p.join(format!("src/f{i}.txt")), format!("file {i}\n"));
    }
    // What a user commits beside flake.nix.
    let out = nix(&["flake", "lock", p.to_str().unwrap()]);
    assert!(out.status.success(), "nix flake lock: {}", stderr(&out));
    assert!(p.join("flake.lock").is_file());
    p
}

/// What `nix build "path:<path>"` did, traced.
struct Traced {
    /// The output's text.
    text: String,
    /// How many of the tree's files anything opened.
    read: usize,
    /// How many files anything created in the store.
    created: usize,
}

fn build_flake_traced(sb: &Sandbox, path: &str) -> Traced {
    let trace = sb.path("trace");
    let result = sb.path("result");
    let _ = fs::remove_file(&result);
    let out = Command::new("strace")
        .args(["-f", "-qq", "-e", "trace=open,openat,openat2", "-o"])
        .arg(&trace)
        .args([
            "nix",
            "--extra-experimental-features",
            "nix-command flakes",
            "build",
            "--out-link",
        ])
        .arg(&result)
        .arg(format!("path:{path}"))
        .output()
        .expect("strace is required for these tests (scripts/setup-machine installs it)");
    assert!(out.status.success(), "nix build: {}", stderr(&out));
    let trace = fs::read_to_string(&trace).unwrap();
    let read: std::collections::BTreeSet<&str> = trace
        .lines()
        .filter_map(|l| {
            let at = l.find(&format!("{path}/"))?;
            let rest = &l[at + path.len() + 1..];
            Some(&rest[..rest.find('"')?])
        })
        .collect();
    let created = trace
        .lines()
        .filter(|l| l.contains("\"/nix/store/") && l.contains("O_CREAT"))
        .count();
    Traced {
        text: fs::read_to_string(&result).unwrap(),
        read: read.len(),
        created,
    }
}

#[test]
fn nix_build_of_a_published_flake_evaluates_purely_and_neither_copies_nor_reads_the_tree() {
    let sb = Sandbox::new();
    let p = flake_project(&sb, 200);
    let _d = Daemon::start(&sb, &p, &["--store"]);
    for msg in ["first", "second"] {
        write(&p.join("msg"), msg);
        let path = publish(&sb, &p, &[]);
        let t = build_flake_traced(&sb, &path);
        assert_eq!(t.text, format!("{msg}\n"), "the edit shows in the result");
        // A copy would create the tree's 204 files again.
        assert!(t.created < 20, "{} files created in the store", t.created);
        // 2.8 and 2.32+ take the valid `source` path as it is; from 2.19 to 2.31 Nix hashes
        // a flake's source tree once per new path (reading it, copying nothing).
        let v = support::nix_version();
        if !((2, 19)..(2, 32)).contains(&v) {
            // flake.nix, flake.lock and the file the build reads.
            assert!(t.read <= 3, "{} of the tree's files were opened", t.read);
        }
    }
}

#[test]
fn a_sandboxed_build_takes_a_published_path_through_builtins_store_path() {
    let sb = Sandbox::new();
    let (_, _d, path) = published(&sb);
    let nix = build_from(
        &sb,
        "classic",
        "cat $src/a.txt $src/sub/run > $out",
        &path,
        "",
    );
    let (out, log) = nix.build("unused");
    let out = out.unwrap_or_else(|| panic!("{log}"));
    assert_eq!(
        fs::read_to_string(out).unwrap(),
        "hello\n#!/bin/sh\necho hi\n"
    );
}

#[test]
fn a_store_that_requires_signatures_accepts_a_published_path_by_its_content_address() {
    let sb = Sandbox::new();
    let (_, _d, path) = published(&sb);
    let other = sb.path("other-store");
    // `require-sigs` is on by default; nothing here turns signature checks off.
    let out = nix(&[
        "copy",
        "--option",
        "require-sigs",
        "true",
        "--to",
        other.to_str().unwrap(),
        &path,
    ]);
    assert!(out.status.success(), "nix copy: {}", stderr(&out));
    let copied = other.join(path.trim_start_matches('/'));
    assert_eq!(fs::read_to_string(copied.join("a.txt")).unwrap(), "hello\n");
}

#[test]
fn an_entry_standing_at_the_path_is_replaced_and_a_symlink_there_is_never_followed() {
    let sb = Sandbox::new();
    let p = project(&sb);
    let expected = nix_would_give(&sb, &p);
    // Another user of the store (a build with sandbox = false) put a link there first.
    let target = sb.path("elsewhere");
    fs::create_dir(&target).unwrap();
    write(&target.join("keep"), "mine");
    let _ = fs::remove_file(&expected);
    std::os::unix::fs::symlink(&target, &expected).unwrap();
    let _d = Daemon::start(&sb, &p, &["--store"]);
    let path = publish(&sb, &p, &[]);
    assert_eq!(path, expected);
    assert!(fs::symlink_metadata(&path).unwrap().is_dir());
    verify_path(&path);
    assert_eq!(fs::read_to_string(target.join("keep")).unwrap(), "mine");
    assert_eq!(fs::read_dir(&target).unwrap().count(), 1);
}

#[test]
fn nix_store_optimise_works_beside_published_paths() {
    let sb = Sandbox::new();
    let (p, _d, path) = published(&sb);
    let out = Command::new("nix-store")
        .arg("--optimise")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    verify_path(&path);
    write(&p.join("a.txt"), "after optimise\n");
    let new = publish(&sb, &p, &[]);
    verify_path(&new);
}

#[test]
fn path_store_from_a_daemon_without_store_mode_says_how_to_start_one() {
    let sb = Sandbox::new();
    let p = project(&sb);
    let _d = Daemon::start(&sb, &p, &[]);
    let out = sb.run(&["path", "--store", p.to_str().unwrap()]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(4), "{err}");
    assert!(err.contains("mount --store"), "{err}");
}

/// Starts a daemon in store mode on `project` and kills it (SIGKILL) while its first
/// publication, of `path`, is under way; the store entry it was making.
fn kill_mid_publication(sb: &Sandbox, project: &Path, path: &str) -> String {
    let mut d = Daemon::start(sb, project, &["--store"]);
    // The first publication runs in the background from the start.
    let mut making = None;
    for _ in 0..5000 {
        if let Some(entry) = support::under_way(project) {
            d.stop_with("-KILL");
            making = Some(entry);
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    let making = making
        .unwrap_or_else(|| panic!("the publication was never seen under way: {}", d.log_text()));
    support::detach(&d.mountpoint);
    // Never valid and wrong: invalid (half made), or valid and whole.
    if valid(path) {
        verify_path(path);
    }
    making
}

/// A project of 3,000 files, its own.
fn big_project(sb: &Sandbox, name: &str) -> PathBuf {
    let p = sb.path(name);
    unique(sb, &p);
    for i in 0..3000 {
        write(
            &p.join(format!("d{}/f{i}", i % 30)),
            format!("{i}").repeat(3000),
        );
    }
    p
}

#[test]
fn a_daemon_killed_mid_publication_leaves_nothing_valid_and_wrong_and_the_next_start_repairs() {
    let sb = Sandbox::new();
    let p = big_project(&sb, "big");
    let path = nix_would_give(&sb, &p);
    let making = kill_mid_publication(&sb, &p, &path);
    let d = Daemon::start(&sb, &p, &["--store"]);
    let again = publish(&sb, &p, &[]);
    assert_eq!(again, path);
    verify_path(&again);
    let log = d.log_text();
    assert!(
        log.contains(&format!("{making}: removed, left half-made"))
            || log.contains(&format!("{making}: published whole")),
        "the restart did not say what it repaired: {log}"
    );
    assert!(fs::symlink_metadata(&making).is_err() || valid(&making));
}

#[test]
fn store_repair_takes_back_what_a_killed_publication_left_and_says_so() {
    let sb = Sandbox::new();
    let p = big_project(&sb, "big2");
    let path = nix_would_give(&sb, &p);
    let making = kill_mid_publication(&sb, &p, &path);
    let said = sb.ok(&["store", "repair"]);
    assert!(
        said.contains(&format!("{making}: removed, left half-made"))
            || said.contains(&format!("{making}: published whole")),
        "{said}"
    );
    if !valid(&making) {
        assert!(fs::symlink_metadata(&making).is_err(), "{making} was left");
    }
    assert!(support::under_way(&p).is_none());
}

#[test]
fn path_store_says_while_it_waits_how_far_the_publication_has_come() {
    let sb = Sandbox::new();
    let (p, d, _) = published(&sb);
    // New to the store (no blob to link): each is copied.
    let unique = sb.dir.path().display().to_string();
    for i in 0..1000 {
        write(&p.join(format!("new/f{i}")), format!("{unique} {i}"));
    }
    // Each file the publication makes takes 5 ms longer to get its mode: 5 s in all.
    let slowed = support::slow_down(d.child.id(), 5000);
    let out = sb.run(&["path", "--store", p.to_str().unwrap()]);
    drop(slowed);
    let err = stderr(&out);
    assert!(out.status.success(), "{err}");
    let total = d.status(&sb)["files"].as_u64().unwrap();
    let said = err
        .lines()
        .find_map(|l| l.split_once(": publishing for ").map(|(_, r)| r))
        .unwrap_or_else(|| panic!("path never said how far the publication had come: {err}"));
    let numbers: Vec<u64> = said
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|n| n.parse().ok())
        .collect();
    let [_, files, of, copied] = numbers[..] else {
        panic!("{said}")
    };
    assert_eq!(of, total, "{said}");
    assert!(0 < files && files < total, "{said}");
    assert!(copied > 0, "{said}");
}

#[test]
fn store_commands_for_a_user_who_is_not_root_are_refused_in_one_line() {
    for cmd in [["store", "status"], ["store", "gc"], ["store", "repair"]] {
        let out = srcstore_as(DEV, &[], &cmd);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(4), "{cmd:?}: {err}");
        assert_eq!(err.lines().count(), 1, "{err}");
    }
}

#[test]
fn a_build_from_a_published_path_keeps_its_projects_cache_volume() {
    let sb = Sandbox::new();
    let p = project(&sb);
    let _d = Daemon::start(&sb, &p, &["--store"]);
    let build = |word: &str, src: &str| {
        let nix = build_from(
            &sb,
            &format!("append-{word}"),
            &format!("echo {word} >> /srcstore/cache/log && cat /srcstore/cache/log > $out"),
            src,
            "srcstoreCache = \"t\";",
        );
        let (out, log) = nix.build("unused");
        fs::read_to_string(out.unwrap_or_else(|| panic!("{log}"))).unwrap()
    };
    let first = publish(&sb, &p, &[]);
    assert_eq!(build("one", &first), "one\n");
    write(&p.join("a.txt"), "edited\n");
    let second = publish(&sb, &p, &[]);
    assert_ne!(first, second);
    assert_eq!(
        build("two", &second),
        "one\ntwo\n",
        "the second snapshot's build found what the first one's left"
    );

    // A path with the same shape that srcstore did not publish gets no volume.
    let stranger = sb.path("stranger");
    write(&stranger.join("unique"), sb.dir.path().to_str().unwrap());
    write(&stranger.join("x"), "not published\n");
    let added = support::nix_store_keep(&stranger);
    let nix = build_from(
        &sb,
        "stranger",
        "if [ -d /srcstore/cache ]; then echo mounted; else echo none; fi > $out",
        &added,
        "srcstoreCache = \"t\";",
    );
    let (out, log) = nix.build("unused");
    assert_eq!(
        fs::read_to_string(out.unwrap_or_else(|| panic!("{log}"))).unwrap(),
        "none\n"
    );
}

/// `srcstore mount --store` on `project`, run by a shell that first runs `setup` in a mount
/// namespace of its own (what it mounts there, nobody else sees).
fn in_namespace(sb: &Sandbox, project: &Path, setup: &str) -> Command {
    let script = format!(
        "{setup}\nexec {} mount --store --allow-other --mountpoint {} {}",
        support::srcstore_bin().display(),
        sb.path("mnt").display(),
        project.display()
    );
    let mut c = Command::new("unshare");
    c.args(["-m", "--propagation", "private", "sh", "-c", &script])
        .env("HOME", sb.home())
        .env("SRCSTORE_LOG", "info");
    c
}

#[test]
fn a_links_directory_another_user_can_write_is_refused_before_anything_is_published() {
    // Whoever can change `.links` chooses what a farm's files hold: here a build user's.
    let sb = Sandbox::new();
    let p = project(&sb);
    let setup = format!(
        "mount -t tmpfs -o mode=0777,uid={} tmpfs /nix/store/.links || exit 8",
        support::uid_of(DEV)
    );
    let mut child = in_namespace(&sb, &p, &setup)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // A daemon that started instead of refusing would serve until stopped.
    let refused = (0..300).any(|_| {
        std::thread::sleep(std::time::Duration::from_millis(100));
        child.try_wait().unwrap().is_some()
    });
    if !refused {
        let _ = child.kill();
    }
    let out = child.wait_with_output().unwrap();
    let err = stderr(&out);
    assert!(refused, "the daemon started with such a .links: {err}");
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains("/nix/store/.links") && err.contains("not root's alone"),
        "{err}"
    );
}

#[test]
fn a_store_mounted_read_only_is_written_from_a_mount_namespace_of_the_publishers_own() {
    // As on NixOS, where only nix-daemon writes the store: here the daemon starts in a mount
    // namespace where /nix/store is bound read-only onto itself.
    let sb = Sandbox::new();
    let p = project(&sb);
    let log = sb.path("ro.log");
    let child = in_namespace(
        &sb,
        &p,
        "mount --bind /nix/store /nix/store && mount -o remount,bind,ro /nix/store || exit 8
         if touch /nix/store/.srcstore-probe 2>/dev/null; then exit 9; fi",
    )
    .stdout(fs::File::create(&log).unwrap())
    .stderr(fs::File::create(&log).unwrap())
    .spawn()
    .unwrap();
    let mut d = Daemon {
        child,
        mountpoint: sb.path("mnt"),
        project: p.clone(),
        log,
    };
    support::wait_for("the daemon in a read-only store's namespace", || {
        assert!(
            d.child.try_wait().unwrap().is_none(),
            "the daemon exited: {}",
            d.log_text()
        );
        sb.run(&["path", p.to_str().unwrap()]).status.success()
    });
    let path = publish(&sb, &p, &[]);
    assert_eq!(path, nix_would_give(&sb, &p));
    verify_path(&path);
    write(&p.join("a.txt"), "edited on a read-only store\n");
    let path = publish(&sb, &p, &[]);
    verify_path(&path);
    d.stop_with("-TERM");
}

#[test]
fn a_build_with_auto_optimise_store_joins_its_output_to_a_published_blob_and_both_verify() {
    let sb = Sandbox::new();
    let (_, _d, path) = published(&sb);
    let nix = build_from(
        &sb,
        "optimised",
        "mkdir $out && cp $src/sub/deep/data $out/data",
        &path,
        "",
    );
    let out = Command::new("nix-build")
        .args(["--no-out-link", "--option", "auto-optimise-store", "true"])
        .arg(&nix.expr)
        .args(["--argstr", "src", "unused"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let built = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    // Nix linked the output's file to the blob in `.links` (one a publication made), named as
    // Nix names it: the hash of the file's NAR.
    let published = Path::new(&path).join("sub/deep/data");
    let hash = Command::new("nix-hash")
        .args(["--type", "sha256", "--base32"])
        .arg(&published)
        .output()
        .unwrap();
    let blob = Path::new("/nix/store/.links").join(String::from_utf8_lossy(&hash.stdout).trim());
    assert_eq!(ino(&Path::new(&built).join("data")), ino(&blob));
    verify_path(&built);
    verify_path(&path);
}

/// Debian's sshd on loopback, letting root in with a key of the test's own: a remote builder
/// whose store is a chroot store of its own (`local?root=…`), stopped when dropped.
struct RemoteBuilder {
    sshd: std::process::Child,
    port: u16,
    key: PathBuf,
    /// Where its store is: below directories only root can write, as Nix (2.34) requires of a
    /// chroot store it builds in.
    root: tempfile::TempDir,
}

impl RemoteBuilder {
    fn start(sb: &Sandbox) -> RemoteBuilder {
        let dir = sb.path("ssh");
        fs::create_dir_all(&dir).unwrap();
        for key in ["host", "key"] {
            let made = Command::new("ssh-keygen")
                .args(["-q", "-t", "ed25519", "-N", "", "-f"])
                .arg(dir.join(key))
                .status()
                .unwrap();
            assert!(made.success());
        }
        fs::copy(dir.join("key.pub"), dir.join("authorized_keys")).unwrap();
        fs::create_dir_all("/run/sshd").unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let sshd = Command::new("/usr/sbin/sshd")
            .args(["-D", "-e", "-f", "/dev/null", "-p", &port.to_string(), "-h"])
            .arg(dir.join("host"))
            .args(["-o", "ListenAddress=127.0.0.1", "-o", "PidFile=none"])
            .args([
                "-o",
                "PermitRootLogin=prohibit-password",
                "-o",
                "StrictModes=no",
            ])
            .arg("-o")
            .arg(format!(
                "AuthorizedKeysFile={}",
                dir.join("authorized_keys").display()
            ))
            .stderr(fs::File::create(sb.path("sshd.log")).unwrap())
            .spawn()
            .expect("sshd (Debian's openssh-server; scripts/setup-machine installs it)");
        support::wait_for("sshd", || {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        RemoteBuilder {
            sshd,
            port,
            key: dir.join("key"),
            root: tempfile::Builder::new()
                .prefix("srcstore-test-builder")
                .tempdir_in("/run")
                .unwrap(),
        }
    }

    /// The builder's own store, as a store URL.
    fn store(&self) -> String {
        format!("local?root={}", self.root.path().display())
    }

    fn has(&self, path: &str) -> bool {
        Command::new("nix-store")
            .args(["--store", &self.store(), "--check-validity", path])
            .output()
            .unwrap()
            .status
            .success()
    }
}

impl Drop for RemoteBuilder {
    fn drop(&mut self) {
        let _ = self.sshd.kill();
        let _ = self.sshd.wait();
    }
}

#[test]
fn a_remote_builder_receives_a_published_source_through_nix_and_builds_from_it() {
    let sb = Sandbox::new();
    let (_, _d, path) = published(&sb);
    let builder = RemoteBuilder::start(&sb);
    assert!(
        !builder.has(&path),
        "{path} is on the builder before the build"
    );
    let nix = build_from(&sb, "remote", "cat $src/a.txt > $out", &path, "");
    let remote_store = builder
        .store()
        .replace('?', "%3F")
        .replace('=', "%3D")
        .replace('/', "%2F");
    let builders = format!(
        "ssh-ng://root@127.0.0.1?remote-store={remote_store} x86_64-linux {} 1",
        builder.key.display()
    );
    let out = Command::new("nix-build")
        .args([
            "--no-out-link",
            "--max-jobs",
            "0",
            "--option",
            "builders",
            &builders,
        ])
        .arg(&nix.expr)
        .args(["--argstr", "src", "unused"])
        .env("HOME", sb.home())
        .env(
            "NIX_SSHOPTS",
            format!(
                "-p {} -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null",
                builder.port
            ),
        )
        .output()
        .unwrap();
    let log = stderr(&out);
    assert!(out.status.success(), "{log}");
    let built = String::from_utf8(out.stdout).unwrap();
    assert_eq!(fs::read_to_string(built.trim()).unwrap(), "hello\n");
    assert!(
        builder.has(&path),
        "Nix did not ship {path} to the builder: {log}"
    );
}
