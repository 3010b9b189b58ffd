//! Made-up trees that stress the NAR encoding, each checked against real `nix hash path` and
//! `nix-store --add`.

mod support;

use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::symlink;
use std::path::Path;

use support::{chmod, write, Sandbox};

/// Asserts srcstore's `--nix` values equal real Nix's for `dir` (named `source`).
fn assert_same_as_nix(sb: &Sandbox, dir: &Path) {
    let j = sb.json(&["--nix", "--no-ignore", "--no-index", dir.to_str().unwrap()]);
    assert_eq!(
        j["nar_hash"],
        support::nix_hash_path(dir),
        "{}",
        dir.display()
    );
    assert_eq!(
        j["store_path"],
        support::nix_store_add(dir),
        "{}",
        dir.display()
    );
}

#[test]
fn odd_names_sort_and_encode_like_nix() {
    let sb = Sandbox::new();
    let d = sb.path("odd/source");
    for name in [
        "new\nline",
        "tab\there",
        "sp ace",
        "-dash",
        "ä-nfc",
        "a\u{308}-nfd",
        "\u{1F600}",
        "B",
        "a",
        "a-b",
        "a.b",
        "#",
        "~",
        ".hidden",
        "..dots",
    ] {
        write(&d.join(name), name.as_bytes());
    }
    // A raw non-UTF-8 name.
    let raw = std::ffi::OsStr::from_bytes(b"latin1-\xe9");
    std::fs::write(d.join(raw), b"x").unwrap();
    assert_same_as_nix(&sb, &d);
}

#[test]
fn sizes_around_multiples_of_eight_are_padded_like_nix() {
    let sb = Sandbox::new();
    let d = sb.path("sizes/source");
    for n in [
        0usize, 1, 7, 8, 9, 15, 16, 17, 63, 64, 65, 4095, 4096, 4097, 65537,
    ] {
        write(&d.join(format!("f{n}")), vec![b'x'; n]);
        write(&d.join(format!("n{}", "y".repeat(n % 20))), b"name length");
        symlink("t".repeat(n % 30 + 1), d.join(format!("l{n}"))).unwrap();
    }
    assert_same_as_nix(&sb, &d);
}

#[test]
fn deep_chains_and_wide_directories_match_nix() {
    let sb = Sandbox::new();
    let d = sb.path("deep/source");
    let mut p = d.clone();
    for i in 0..60 {
        p = p.join(format!("l{i}"));
    }
    write(&p.join("leaf"), b"deep");
    for i in 0..3000 {
        write(&d.join("wide").join(format!("e{i}")), i.to_string());
    }
    std::fs::create_dir_all(d.join("empty/nested/empty")).unwrap();
    assert_same_as_nix(&sb, &d);
}

#[test]
fn modes_other_than_the_owner_exec_bit_are_ignored_like_nix() {
    let sb = Sandbox::new();
    let d = sb.path("modes/source");
    write(&d.join("private"), b"secret");
    chmod(&d.join("private"), 0o600);
    write(&d.join("exec-owner-only"), b"#!/bin/sh\n");
    chmod(&d.join("exec-owner-only"), 0o700);
    write(&d.join("exec-group-only"), b"#!/bin/sh\n");
    chmod(&d.join("exec-group-only"), 0o654);
    write(&d.join("closed/inner"), b"x");
    chmod(&d.join("closed"), 0o700);
    let before = sb.hash(&d);
    assert_same_as_nix(&sb, &d);
    chmod(&d.join("private"), 0o644);
    chmod(&d.join("closed"), 0o755);
    assert_eq!(
        sb.hash(&d),
        before,
        "non-exec mode bits must not change the hash"
    );
    chmod(&d.join("exec-group-only"), 0o754);
    assert_ne!(
        sb.hash(&d),
        before,
        "the owner exec bit must change the hash"
    );
}

#[test]
fn dangling_and_absolute_symlinks_are_kept_as_symlinks() {
    let sb = Sandbox::new();
    let d = sb.path("links/source");
    write(&d.join("real"), b"r");
    symlink("does/not/exist", d.join("dangling")).unwrap();
    symlink("/etc/passwd", d.join("absolute")).unwrap();
    symlink("/", d.join("root")).unwrap();
    symlink("..", d.join("up")).unwrap();
    symlink("real", d.join("rel")).unwrap();
    let before = sb.hash(&d);
    assert_same_as_nix(&sb, &d);
    // The targets' content is never read: only the link text counts.
    write(&d.join("real"), b"changed");
    let after = sb.hash(&d);
    assert_ne!(before, after);
    std::fs::remove_file(d.join("dangling")).unwrap();
    symlink("does/not/exist/either", d.join("dangling")).unwrap();
    assert_ne!(sb.hash(&d), after, "a changed link target changes the hash");
}
