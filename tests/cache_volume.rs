//! The compile cache volume, with real sandboxed nix-builds and build users: a derivation that
//! names a snapshot and sets `srcstoreCache` gets its project's partition, writable, at
//! `/srcstore/cache`, whichever build user Nix picks; nothing else gets anything.
//!
//! The daemon here runs as root; `multi_user.rs` has a user's daemon behind nix-daemon and
//! another user's build that asks for it.

mod support;

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use support::{write, Daemon, NixBuild, OnlyBuildUser, Sandbox};

fn project(sb: &Sandbox) -> PathBuf {
    let p = sb.path("proj");
    write(&p.join("f"), "hello\n");
    p
}

/// The partition directory on the host, where the daemon keeps it.
fn partition(sb: &Sandbox, name: &str) -> PathBuf {
    let volumes = sb.cache().join("volumes");
    let project = fs::read_dir(&volumes)
        .unwrap_or_else(|e| panic!("{}: {e}", volumes.display()))
        .next()
        .expect("a volume")
        .unwrap()
        .path();
    project.join(name)
}

/// A build that appends `word` to `log` in the cache and copies what it then holds to $out.
fn appender<'a>(sb: &'a Sandbox, word: &str) -> NixBuild<'a> {
    NixBuild::with_attrs(
        sb,
        &format!("append-{word}"),
        &format!(
            "echo {word} >> /srcstore/cache/log && mkdir -p /srcstore/cache/dir && \
             echo {word} > /srcstore/cache/dir/last && cat /srcstore/cache/log > $out && \
             {} > /srcstore/cache/ran-as-{word}",
            support::RAN_AS
        ),
        r#"{ srcstoreCache = "t"; }"#,
    )
}

#[test]
fn builds_by_different_build_users_read_and_replace_each_others_cache_files() {
    let sb = Sandbox::new();
    let p = project(&sb);
    let d = Daemon::start(&sb, &p, &[]);
    let src = d.path(&sb);
    let src = src.to_str().unwrap();

    let first = {
        let _only = OnlyBuildUser::new("nixbld1");
        appender(&sb, "one").build(src)
    };
    let out = first
        .0
        .unwrap_or_else(|| panic!("build failed: {}", first.1));
    assert_eq!(fs::read_to_string(out).unwrap(), "one\n");

    let second = {
        let _only = OnlyBuildUser::new("nixbld7");
        appender(&sb, "two").build(src)
    };
    let out = second
        .0
        .unwrap_or_else(|| panic!("build failed: {}", second.1));
    assert_eq!(
        fs::read_to_string(out).unwrap(),
        "one\ntwo\n",
        "nixbld7 read what nixbld1 wrote, and added to it"
    );

    // On disk everything is the owner's (here root), closed to others.
    let dir = partition(&sb, "t");
    for (word, user) in [("one", "nixbld1"), ("two", "nixbld7")] {
        let ran_as = fs::read_to_string(dir.join(format!("ran-as-{word}"))).unwrap();
        assert_eq!(
            ran_as.trim(),
            support::uid_of(user).to_string(),
            "{word} ran as {user}"
        );
    }
    assert_eq!(fs::read_to_string(dir.join("dir/last")).unwrap(), "two\n");
    for f in ["", "log", "dir", "dir/last"] {
        let meta = fs::symlink_metadata(dir.join(f)).unwrap();
        assert_eq!((meta.uid(), meta.gid()), (0, 0), "{f}: the owner's on disk");
    }
    assert_eq!(fs::metadata(&dir).unwrap().mode() & 0o777, 0o700);
    assert_eq!(
        fs::metadata(dir.parent().unwrap()).unwrap().mode() & 0o777,
        0o700
    );
}

#[test]
fn a_build_that_does_not_ask_or_names_no_snapshot_gets_no_volume() {
    let sb = Sandbox::new();
    let p = project(&sb);
    let d = Daemon::start(&sb, &p, &[]);
    let probe = "if test -e /srcstore/cache; then echo cache > $out; else echo none > $out; fi";

    let plain = NixBuild::new(&sb, "plain", probe);
    let (out, log) = plain.build(d.path(&sb).to_str().unwrap());
    assert_eq!(
        fs::read_to_string(out.unwrap_or_else(|| panic!("{log}"))).unwrap(),
        "none\n"
    );

    let unnamed = NixBuild::with_attrs(&sb, "unnamed", probe, r#"{ srcstoreCache = "t"; }"#);
    let (out, log) = unnamed.build("not a snapshot");
    assert_eq!(
        fs::read_to_string(out.unwrap_or_else(|| panic!("{log}"))).unwrap(),
        "none\n"
    );
    assert!(
        !log.contains("srcstore"),
        "nothing said for a build that is not ours: {log}"
    );
}

#[test]
fn a_partition_name_that_is_not_one_fails_the_build_with_one_line_naming_it() {
    let sb = Sandbox::new();
    let p = project(&sb);
    let d = Daemon::start(&sb, &p, &[]);
    let nix = NixBuild::with_attrs(
        &sb,
        "badname",
        "echo > $out",
        r#"{ srcstoreCache = "../x"; }"#,
    );
    let (out, log) = nix.build(d.path(&sb).to_str().unwrap());
    assert!(out.is_none(), "{log}");
    let ours: Vec<&str> = log.lines().filter(|l| l.contains("srcstore")).collect();
    assert!(
        ours.iter()
            .any(|l| l.contains(r#"srcstoreCache = "../x""#) && l.contains(".drv")),
        "{log}"
    );
}

#[test]
fn a_volume_the_daemon_cannot_vouch_for_is_not_mounted_and_the_build_says_why() {
    let sb = Sandbox::new();
    let p = project(&sb);
    let d = Daemon::start(&sb, &p, &[]);
    let src = d.path(&sb);
    let probe = "if test -e /srcstore/cache; then echo cache > $out; else echo none > $out; fi; \
                 cat /srcstore/no-cache >&2";
    // Made once, then opened to others: the daemon refuses it, the build runs without.
    let made = NixBuild::with_attrs(&sb, "made", "echo > $out", r#"{ srcstoreCache = "t"; }"#);
    assert!(made.build(src.to_str().unwrap()).0.is_some());
    let dir = partition(&sb, "t");
    support::chmod(&dir, 0o755);
    let nix = NixBuild::with_attrs(&sb, "open", probe, r#"{ srcstoreCache = "t"; }"#);
    let (out, log) = nix.build(src.to_str().unwrap());
    assert_eq!(
        fs::read_to_string(out.unwrap_or_else(|| panic!("{log}"))).unwrap(),
        "none\n"
    );
    assert!(
        log.contains("srcstore: built without the cache volume")
            && log.contains("not a private directory"),
        "{log}"
    );

    // A symlink in its place, to somewhere else: not followed.
    fs::remove_dir_all(&dir).unwrap();
    let elsewhere = sb.path("elsewhere");
    fs::create_dir(&elsewhere).unwrap();
    support::chmod(&elsewhere, 0o700);
    std::os::unix::fs::symlink(&elsewhere, &dir).unwrap();
    let nix = NixBuild::with_attrs(&sb, "linked", probe, r#"{ srcstoreCache = "t"; }"#);
    let (out, log) = nix.build(src.to_str().unwrap());
    assert_eq!(
        fs::read_to_string(out.unwrap_or_else(|| panic!("{log}"))).unwrap(),
        "none\n"
    );
    assert!(log.contains("built without the cache volume"), "{log}");
    assert_eq!(fs::read_dir(&elsewhere).unwrap().count(), 0);
}

#[test]
fn the_nix_library_builds_with_the_volume_and_without_it_alike() {
    let sb = Sandbox::new();
    let p = project(&sb);
    let d = Daemon::start(&sb, &p, &[]);
    let lib = Path::new(env!("CARGO_MANIFEST_DIR")).join("nix/cache.nix");
    let attrs = format!("(import {}).dir {{ }}", lib.display());
    let script = ". $srcstoreCacheSetup; echo $SRCSTORE_CACHE > $out; date >> $SRCSTORE_CACHE/runs";
    let with = NixBuild::with_attrs(&sb, "lib-with", script, &attrs);
    let (out, log) = with.build(d.path(&sb).to_str().unwrap());
    assert_eq!(
        fs::read_to_string(out.unwrap_or_else(|| panic!("{log}"))).unwrap(),
        "/srcstore/cache\n"
    );
    assert!(partition(&sb, "misc").join("runs").exists());

    // Without srcstore (a path Nix copied), the same expression builds, in its own TMPDIR.
    let without = NixBuild::with_attrs(&sb, "lib-without", script, &attrs);
    let (out, log) = without.build(&support::nix_store_keep(&p));
    let said = fs::read_to_string(out.unwrap_or_else(|| panic!("{log}"))).unwrap();
    assert!(
        said.ends_with("/srcstore-cache\n") && !said.starts_with("/srcstore"),
        "{said}"
    );
}

#[test]
fn a_snapshot_the_hook_did_not_bind_fails_the_build_with_one_line_naming_the_cause() {
    // As under a Nix that runs no hook, or a Lix that discards what it prints.
    let sb = Sandbox::new();
    let p = project(&sb);
    let d = Daemon::start(&sb, &p, &[]);
    let lib = Path::new(env!("CARGO_MANIFEST_DIR")).join("nix/cache.nix");
    let nix = NixBuild::with_attrs(
        &sb,
        "unbound",
        ". $srcstoreCacheSetup; cat $src/f > $out",
        &format!("(import {}).dir {{ }}", lib.display()),
    );
    let src = d.path(&sb);
    let out = std::process::Command::new("nix-build")
        .args(["--no-out-link"])
        .arg(&nix.expr)
        .args(["--argstr", "src", src.to_str().unwrap()])
        .output()
        .unwrap();
    let log = support::stderr(&out);
    assert!(!out.status.success());
    let said: Vec<&str> = log.lines().filter(|l| l.contains("srcstore:")).collect();
    assert_eq!(said.len(), 1, "{log}");
    assert!(
        said[0].contains(src.to_str().unwrap())
            && said[0].contains("is not in this build's sandbox"),
        "{log}"
    );
}

#[test]
fn a_full_volume_makes_a_cache_miss_and_the_build_says_so() {
    let sb = Sandbox::new();
    let p = project(&sb);
    let d = Daemon::start(&sb, &p, &[]);
    let src = d.path(&sb);
    let lib = Path::new(env!("CARGO_MANIFEST_DIR")).join("nix/cache.nix");
    let attrs = format!("(import {}).dir {{ }}", lib.display());
    let made = NixBuild::with_attrs(&sb, "full-made", "echo > $out", &attrs);
    assert!(made.build(src.to_str().unwrap()).0.is_some());
    // A 256 KiB filesystem in its place, as private as the directory was.
    let dir = partition(&sb, "misc");
    let tmpfs = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=256k,mode=0700", "tmpfs"])
        .arg(&dir)
        .status()
        .unwrap();
    assert!(tmpfs.success());
    let _unmount = support::Unmount(dir.clone());
    let script = ". $srcstoreCacheSetup; echo $SRCSTORE_CACHE > $out";
    let nix = NixBuild::with_attrs(&sb, "full", script, &attrs);
    let (out, log) = nix.build(src.to_str().unwrap());
    let said = fs::read_to_string(out.unwrap_or_else(|| panic!("{log}"))).unwrap();
    assert!(!said.starts_with("/srcstore/cache"), "{said}");
    assert!(log.contains("cache volume cannot be written"), "{log}");
}

#[test]
fn cache_stats_clear_and_gc_work_on_the_volume_with_or_without_a_daemon() {
    let sb = Sandbox::new();
    let p = project(&sb);
    let mut d = Daemon::start(&sb, &p, &[]);
    let fill = NixBuild::with_attrs(
        &sb,
        "fill",
        "for i in 1 2 3 4; do head -c 65536 /dev/zero > /srcstore/cache/f$i; done; echo > $out",
        r#"{ srcstoreCache = "go"; }"#,
    );
    let (out, log) = fill.build(d.path(&sb).to_str().unwrap());
    assert!(out.is_some(), "{log}");
    d.stop_with("-TERM");

    let dir = p.to_str().unwrap();
    let stats_of = || -> serde_json::Value {
        serde_json::from_str(&sb.ok(&["cache", "stats", "--json", dir])).unwrap()
    };
    let stats = stats_of();
    assert_eq!(stats["partitions"][0]["name"], "go");
    assert_eq!(stats["partitions"][0]["entries"], 4);
    let said = sb.ok(&["cache", "gc", "--max-size", "150K", dir]);
    assert!(said.starts_with("removed 2 entries"), "{said}");
    let stats = stats_of();
    assert_eq!(stats["partitions"][0]["entries"], 2);
    sb.ok(&["cache", "clear", "--partition", "go", dir]);
    let stats = stats_of();
    assert_eq!(stats["partitions"][0]["entries"], 0);

    // Bad input: one line naming what is wrong, and an exit code that tells usage apart.
    let bad = sb.run(&["cache", "gc", "--max-size", "lots", dir]);
    assert_eq!(bad.status.code(), Some(2), "{}", support::stderr(&bad));
    let elsewhere = sb.path("elsewhere");
    fs::create_dir(&elsewhere).unwrap();
    let none = sb.run(&["cache", "stats", elsewhere.to_str().unwrap()]);
    assert_eq!(none.status.code(), Some(1));
    let line = support::stderr(&none);
    assert!(
        line.trim().lines().count() == 1 && line.contains(elsewhere.to_str().unwrap()),
        "{line}"
    );
}

#[test]
fn srcstore_in_the_sandbox_is_read_only_even_to_a_build_running_as_host_root() {
    let sb = Sandbox::new();
    let p = project(&sb);
    let d = Daemon::start(&sb, &p, &[]);
    // A copy of the binary runs the hook, so that a failure here damages only the copy.
    let copy = sb.path("srcstore-copy");
    fs::copy(support::srcstore_bin(), &copy).unwrap();
    let hook = sb.path("hook-copy");
    write(
        &hook,
        format!("#!/bin/sh\nexec {} nix hook \"$@\"\n", copy.display()),
    );
    support::chmod(&hook, 0o755);
    let before = fs::read(&copy).unwrap();
    let nix = NixBuild::with_attrs(
        &sb,
        "overwrite",
        "if test -e /srcstore/bin/srcstore && ! echo x >> /srcstore/bin/srcstore; \
         then echo refused > $out; else echo wrote > $out; fi",
        r#"{ srcstoreCache = "t"; }"#,
    );
    // With `build-users-group =` the builder is host root (uid 1000 of its user namespace).
    let out = std::process::Command::new("nix-build")
        .args(["--no-out-link", "--option", "build-users-group", ""])
        .args(["--option", "pre-build-hook"])
        .arg(&hook)
        .arg(&nix.expr)
        .args(["--argstr", "src", d.path(&sb).to_str().unwrap()])
        .output()
        .unwrap();
    let log = support::stderr(&out);
    assert!(out.status.success(), "{log}");
    let built = PathBuf::from(String::from_utf8(out.stdout).unwrap().trim());
    assert_eq!(fs::read_to_string(built).unwrap(), "refused\n", "{log}");
    assert!(fs::read(&copy).unwrap() == before, "the binary was changed");
}

#[test]
fn two_builds_at_once_share_the_volume() {
    let sb = Sandbox::new();
    let p = project(&sb);
    let d = Daemon::start(&sb, &p, &[]);
    let src = d.path(&sb);
    // Each writes 300 entries of its own (written aside, renamed into place, as caches do) and
    // reads back what it wrote while the other writes beside it.
    let builds: Vec<NixBuild> = ["a", "b"]
        .iter()
        .map(|who| {
            NixBuild::with_attrs(
                &sb,
                &format!("together-{who}"),
                &format!(
                    "mkdir -p /srcstore/cache/entries; i=0; while [ $i -lt 300 ]; do \
                     echo {who}$i > /srcstore/cache/entries/.{who}$i.tmp && \
                     mv /srcstore/cache/entries/.{who}$i.tmp /srcstore/cache/entries/{who}$i; \
                     i=$((i+1)); done; cat /srcstore/cache/entries/{who}* | wc -l > $out"
                ),
                r#"{ srcstoreCache = "t"; }"#,
            )
        })
        .collect();
    let children: Vec<_> = builds
        .iter()
        .map(|b| {
            std::process::Command::new("nix-build")
                .args(["--no-out-link", "--option", "pre-build-hook"])
                .arg(&b.hook)
                .arg(&b.expr)
                .args(["--argstr", "src", src.to_str().unwrap()])
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for child in children {
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "{}", support::stderr(&out));
        let built = PathBuf::from(String::from_utf8(out.stdout).unwrap().trim());
        assert_eq!(fs::read_to_string(built).unwrap().trim(), "300");
    }
    let entries = partition(&sb, "t").join("entries");
    for who in ["a", "b"] {
        for i in [0, 150, 299] {
            let e = fs::read_to_string(entries.join(format!("{who}{i}"))).unwrap();
            assert_eq!(e, format!("{who}{i}\n"));
        }
    }
    assert_eq!(fs::read_dir(&entries).unwrap().count(), 600);
}

/// `srcstore gocacheprog --dir DIR` fed `input`: its output and exit.
fn gocacheprog(sb: &Sandbox, dir: &Path, input: &str) -> std::process::Output {
    use std::io::Write;
    let mut child = sb
        .cmd()
        .args(["gocacheprog", "--dir"])
        .arg(dir)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

#[test]
fn gocacheprog_speaks_gos_protocol_and_a_malformed_stream_is_one_line_and_exit_1() {
    let sb = Sandbox::new();
    let dir = sb.path("go-prog");
    // What Go sends for a put (the request, an empty line, the body) and a get; ids are
    // base64 of 32 bytes; the OutputID is the SHA-256 of "hi".
    let action = "AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE=";
    let output = "j0NDRmSPa5bfid2pAcUXaxCm2Dlh3TwayItZstwyeqQ=";
    let put = format!(
        "{{\"ID\":1,\"Command\":\"put\",\"ActionID\":\"{action}\",\"OutputID\":\"{output}\",\"BodySize\":2}}\n\n\"aGk=\"\n{{\"ID\":2,\"Command\":\"close\"}}\n"
    );
    let out = gocacheprog(&sb, &dir, &put);
    assert!(out.status.success(), "{}", support::stderr(&out));
    let get = format!(
        "{{\"ID\":3,\"Command\":\"get\",\"ActionID\":\"{action}\"}}\n{{\"ID\":4,\"Command\":\"close\"}}\n"
    );
    let out = gocacheprog(&sb, &dir, &get);
    let answers = String::from_utf8(out.stdout).unwrap();
    let get_answer: serde_json::Value =
        serde_json::from_str(answers.lines().nth(1).unwrap()).unwrap();
    assert_eq!(get_answer["OutputID"], output, "{answers}");
    let disk = get_answer["DiskPath"].as_str().unwrap();
    assert_eq!(fs::read(disk).unwrap(), b"hi");

    let out = gocacheprog(
        &sb,
        &dir,
        "{\"ID\":5,\"Command\":\"get\",\"ActionID\":\"short\"}\n",
    );
    assert_eq!(out.status.code(), Some(1));
    let err = support::stderr(&out);
    assert!(
        err.trim().lines().count() == 1
            && err.contains(dir.to_str().unwrap())
            && err.contains("malformed"),
        "{err}"
    );
}

/// Runs `srcstore args` and gives it `secs` to finish: a command that hangs fails the test.
fn within(sb: &Sandbox, secs: u64, args: &[&str]) -> std::process::Output {
    let mut child = sb
        .cmd()
        .args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    for _ in 0..secs * 10 {
        if child.try_wait().unwrap().is_some() {
            return child.wait_with_output().unwrap();
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let _ = child.kill();
    panic!("srcstore {args:?} did not finish in {secs} s");
}

#[test]
fn cache_stats_reports_what_a_build_planted_for_its_counts_instead_of_hanging_or_growing() {
    let sb = Sandbox::new();
    let p = project(&sb);
    let d = Daemon::start(&sb, &p, &[]);
    let src = d.path(&sb);
    for (partition, plant) in [
        ("fifo", "mkfifo /srcstore/cache/go-prog/counts"),
        ("zero", "ln -s /dev/zero /srcstore/cache/go-prog/counts"),
        (
            "huge",
            "head -c 1048576 /dev/zero > /srcstore/cache/go-prog/counts",
        ),
    ] {
        let nix = NixBuild::with_attrs(
            &sb,
            partition,
            &format!("mkdir -p /srcstore/cache/go-prog && {plant} && echo > $out"),
            &format!("{{ srcstoreCache = \"{partition}\"; }}"),
        );
        let (out, log) = nix.build(src.to_str().unwrap());
        assert!(out.is_some(), "{log}");
    }
    let out = within(&sb, 10, &["cache", "stats", "--json", p.to_str().unwrap()]);
    assert!(out.status.success(), "{}", support::stderr(&out));
    let stats: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    for (i, (name, what)) in [
        (
            "fifo",
            "a FIFO, socket or device where a regular file should be",
        ),
        ("huge", "1048576 bytes, more than the 4096 read here"),
        ("zero", "a symlink where a regular file should be"),
    ]
    .iter()
    .enumerate()
    {
        let part = &stats["partitions"][i];
        assert_eq!(part["name"], *name);
        let planted = part["planted"][0].as_str().unwrap_or_default();
        assert!(
            planted.starts_with("go-prog/counts: ") && planted.contains(what),
            "{name}: {part}"
        );
        assert_eq!(
            part["gocacheprog"]["hits"], 0,
            "{name}: nothing read as counts"
        );
    }
    let text = within(&sb, 10, &["cache", "stats", p.to_str().unwrap()]);
    let text = String::from_utf8(text.stdout).unwrap();
    assert!(text.contains("fifo: 2 entries (1 FIFOs"), "{text}");
}

#[test]
fn a_full_cache_home_stops_a_start_with_one_line_and_the_epoch_survives_it() {
    let sb = Sandbox::new();
    let p = project(&sb);
    // A small filesystem of the test's own for the cache home, never the machine's.
    let cache = sb.home().join(".cache");
    fs::create_dir_all(&cache).unwrap();
    let mounted = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=512k", "tmpfs"])
        .arg(&cache)
        .status()
        .unwrap();
    assert!(
        mounted.success(),
        "cannot mount a tmpfs at {}",
        cache.display()
    );
    let _unmount = support::Unmount(cache.clone());
    let mut d = Daemon::start(&sb, &p, &[]);
    d.stop_with("-TERM");
    let epoch = sb.cache().join("epoch");
    let first = fs::read_to_string(&epoch).unwrap();

    let filler = cache.join("filler");
    let mut f = fs::File::create(&filler).unwrap();
    let full = loop {
        if let Err(e) = std::io::Write::write_all(&mut f, &[0u8; 4096]) {
            break e;
        }
    };
    assert_eq!(full.raw_os_error(), Some(28), "{full}");
    drop(f);
    let refused = sb.mount_once(&sb.path("mnt"), &p);
    assert_eq!(
        refused.status.code(),
        Some(1),
        "{}",
        support::stderr(&refused)
    );
    let line = support::stderr(&refused);
    assert!(
        line.trim().lines().count() == 1
            && line.contains(epoch.to_str().unwrap())
            && line.contains("No space left"),
        "{line}"
    );
    assert_eq!(
        fs::read_to_string(&epoch).unwrap(),
        first,
        "the epoch is kept"
    );
    let strays: Vec<_> = fs::read_dir(sb.cache())
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(".tmp"))
        .collect();
    assert!(strays.is_empty(), "a failed write left {strays:?}");

    fs::remove_file(&filler).unwrap();
    let mut d = Daemon::start(&sb, &p, &[]);
    d.stop_with("-TERM");
    let next: u64 = fs::read_to_string(&epoch).unwrap().trim().parse().unwrap();
    assert_eq!(next, first.trim().parse::<u64>().unwrap() + 1);
}
