//! Real Nix 2.8, sandbox on, build users: builds read the projected source through the hook.

mod support;

use std::fs;
use std::path::Path;

use support::{write, Daemon, NixBuild, Sandbox};

fn project(sb: &Sandbox) -> std::path::PathBuf {
    let p = sb.path("proj");
    write(&p.join("f"), "hello\n");
    write(&p.join("run.sh"), "#!/bin/sh\n");
    support::chmod(&p.join("run.sh"), 0o755);
    std::os::unix::fs::symlink("f", p.join("link")).unwrap();
    write(&p.join("pkg/foo/main.c"), "int main;\n");
    write(&p.join("pkg/bar/main.c"), "int bar;\n");
    p
}

const READER: &str = "mkdir $out; cat $src/f > $out/f; cat /srcstore/src/f > $out/stable; \
    test -x $src/run.sh && echo exec > $out/exec; readlink $src/link > $out/link";

fn read(out: &Path, name: &str) -> String {
    fs::read_to_string(out.join(name)).unwrap()
}

#[test]
fn a_sandboxed_build_reads_the_snapshot_and_its_name_follows_the_content() {
    let sb = Sandbox::new();
    let p = project(&sb);
    let d = Daemon::start(&sb, &p, &[]);
    let nix = NixBuild::new(&sb, "reader", READER);

    let first = d.path(&sb);
    let (out1, log) = nix.build(first.to_str().unwrap());
    let out1 = out1.unwrap_or_else(|| panic!("build failed: {log}"));
    assert_eq!(read(&out1, "f"), "hello\n");
    assert_eq!(
        read(&out1, "stable"),
        "hello\n",
        "the stable path /srcstore/src shows the snapshot"
    );
    assert_eq!(read(&out1, "exec"), "exec\n");
    assert_eq!(read(&out1, "link"), "f\n");

    write(&p.join("f"), "edited\n");
    let second = d.path(&sb);
    assert_ne!(second, first);
    let (out2, log) = nix.build(second.to_str().unwrap());
    let out2 = out2.unwrap_or_else(|| panic!("build failed: {log}"));
    assert_ne!(out2, out1);
    assert_eq!(read(&out2, "f"), "edited\n");

    write(&p.join("f"), "hello\n");
    assert_eq!(d.path(&sb), first, "reverting gives the first path back");
    let (out3, log) = nix.build(first.to_str().unwrap());
    assert_eq!(out3.as_deref(), Some(out1.as_path()), "{log}");
    assert!(
        !log.contains("building"),
        "Nix rebuilt a reverted tree: {log}"
    );
}

#[test]
fn the_snapshot_is_pinned_for_the_build_and_released_after() {
    let sb = Sandbox::new();
    let p = project(&sb);
    let d = Daemon::start(&sb, &p, &["--keep", "0"]);
    let nix = NixBuild::new(&sb, "slow", "sleep 2; cat $src/f > $out");
    let first = d.path(&sb);
    let build = {
        let (expr, hook, src, home) =
            (nix.expr.clone(), nix.hook.clone(), first.clone(), sb.home());
        std::thread::spawn(move || {
            std::process::Command::new("nix-build")
                .args(["--no-out-link", "--option", "pre-build-hook"])
                .arg(hook)
                .arg(expr)
                .args(["--argstr", "src", src.to_str().unwrap()])
                .env("HOME", home)
                .output()
                .unwrap()
        })
    };
    support::wait_for("the build's pin", || d.status(&sb)["pins"] == 1);
    // An edit during the build supersedes the snapshot; with --keep 0 only the pin keeps it.
    // (The build reads a file the edit leaves alone: bytes overwritten on disk are gone for
    // every snapshot, and reading them fails with EIO rather than mixing versions.)
    write(&p.join("pkg/bar/main.c"), "edited during the build\n");
    assert_ne!(d.path(&sb), first);
    assert_eq!(d.status(&sb)["pins"], 1);
    let out = build.join().unwrap();
    assert!(out.status.success(), "{}", support::stderr(&out));
    let built = std::path::PathBuf::from(String::from_utf8(out.stdout).unwrap().trim());
    assert_eq!(
        fs::read_to_string(built).unwrap(),
        "hello\n",
        "the build read its own snapshot"
    );
    support::wait_for("the pin to go with the build", || {
        d.status(&sb)["pins"] == 0
    });
    assert!(
        !first.exists(),
        "an unpinned, superseded snapshot is no longer served"
    );
}

#[test]
fn a_build_that_names_no_snapshot_sees_nothing_of_srcstore() {
    let sb = Sandbox::new();
    let p = project(&sb);
    let _d = Daemon::start(&sb, &p, &[]);
    let nix = NixBuild::new(
        &sb,
        "plain",
        "if test -e /srcstore; then echo seen > $out; else echo unseen > $out; fi",
    );
    let (out, log) = nix.build("not a snapshot path");
    assert_eq!(
        fs::read_to_string(out.unwrap_or_else(|| panic!("{log}"))).unwrap(),
        "unseen\n"
    );
}

#[test]
fn the_hook_prints_nothing_for_what_is_not_a_derivation_naming_a_snapshot() {
    let sb = Sandbox::new();
    write(&sb.path("garbage.drv"), "Derive(garbage");
    for drv in [sb.path("missing.drv"), sb.path("garbage.drv"), sb.path("")] {
        let out = sb.run(&["nix", "hook", drv.to_str().unwrap(), "/nonexistent-chroot"]);
        assert!(out.status.success(), "{}", support::stderr(&out));
        assert!(out.stdout.is_empty() && out.stderr.is_empty());
    }
}

#[test]
fn a_snapshot_no_longer_served_fails_the_build_with_one_clear_line() {
    let sb = Sandbox::new();
    let p = project(&sb);
    let mut d = Daemon::start(&sb, &p, &["--keep", "0"]);
    let nix = NixBuild::new(&sb, "reader", READER);
    let old = d.path(&sb);
    write(&p.join("f"), "newer\n");
    assert_ne!(d.path(&sb), old);
    let (out, log) = nix.build(old.to_str().unwrap());
    assert!(out.is_none(), "a build ran with a snapshot nobody serves");
    let ours: Vec<&str> = log.lines().filter(|l| l.starts_with("srcstore:")).collect();
    assert_eq!(ours.len(), 1, "{log}");
    assert!(
        ours[0].contains(old.to_str().unwrap()) && ours[0].contains("srcstore path"),
        "{log}"
    );

    // A daemon that died leaves a disconnected mount: also one line, naming the fix.
    let current = d.path(&sb);
    d.stop_with("-KILL");
    let (out, log) = nix.build(current.to_str().unwrap());
    assert!(out.is_none());
    assert!(
        log.contains("daemon serving it is not running") && log.contains("srcstore mount"),
        "{log}"
    );
}

#[test]
fn a_subtree_path_ignores_edits_elsewhere_and_nix_rebuilds_nothing() {
    let sb = Sandbox::new();
    let p = project(&sb);
    let _daemon = Daemon::start(&sb, &p, &[]);
    let sub = |sb: &Sandbox| {
        std::path::PathBuf::from(
            sb.ok(&["path", "--sub", "pkg/foo", p.to_str().unwrap()])
                .trim(),
        )
    };
    let nix = NixBuild::new(&sb, "foo", "cat $src/main.c > $out");
    let foo = sub(&sb);
    assert!(foo.file_name().unwrap().to_str().unwrap().ends_with("-foo"));
    let (out1, log) = nix.build(foo.to_str().unwrap());
    let out1 = out1.unwrap_or_else(|| panic!("{log}"));
    assert_eq!(fs::read_to_string(&out1).unwrap(), "int main;\n");

    write(&p.join("pkg/bar/main.c"), "int bar2;\n");
    write(&p.join("f"), "elsewhere\n");
    assert_eq!(sub(&sb), foo, "an edit outside pkg/foo changed its path");
    let (out2, log) = nix.build(foo.to_str().unwrap());
    assert_eq!(out2.as_deref(), Some(out1.as_path()));
    assert!(!log.contains("building"), "Nix rebuilt pkg/foo: {log}");

    write(&p.join("pkg/foo/main.c"), "int main2;\n");
    let foo2 = sub(&sb);
    assert_ne!(foo2, foo);
    let (out3, log) = nix.build(foo2.to_str().unwrap());
    assert_eq!(
        fs::read_to_string(out3.unwrap_or_else(|| panic!("{log}"))).unwrap(),
        "int main2;\n"
    );
    let err = sb.fails(&["path", "--sub", "no/such/dir", p.to_str().unwrap()]);
    assert!(err.contains("no/such/dir"), "{err}");
}
