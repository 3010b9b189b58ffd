//! The hook finds the user a build runs as exactly, or says it cannot: a cache volume mapped to
//! the wrong build user is unwritable to its build (or writable to another's). Each build here
//! records the host uid it ran as (its sandbox's `/proc/self/uid_map`), its uid inside, the
//! volume's owner as it sees it, and whether it could write there.

mod support;

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use support::{write, Daemon, Sandbox};

/// What one build saw.
#[derive(Debug)]
struct Seen {
    host_uid: u32,
    uid: u32,
    volume_owner: Option<u32>,
    wrote: bool,
    denied: Option<String>,
}

impl Seen {
    fn parse(text: &str) -> Seen {
        let field = |k: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(&format!("{k}=")))
                .unwrap_or_else(|| panic!("no {k} in {text}"))
                .trim()
                .to_owned()
        };
        Seen {
            host_uid: field("host").parse().unwrap(),
            uid: field("uid").parse().unwrap(),
            volume_owner: field("volume").parse().ok(),
            wrote: field("wrote") == "yes",
            denied: Some(field("denied")).filter(|d| !d.is_empty()),
        }
    }

    /// The volume was this build's own: its owner is the build's uid, and the build wrote.
    fn had_own_volume(&self) -> bool {
        self.volume_owner == Some(self.uid) && self.wrote && self.denied.is_none()
    }
}

/// `n` derivations, all wanting the cache, that one `nix-build -j n` runs at once; each named
/// `name(i)`. Each sleeps a little, so that the hook runs while other builds hold their users.
fn at_once(sb: &Sandbox, n: usize, name: impl Fn(usize) -> String) -> PathBuf {
    let bb = support::busybox_store_path();
    let child = |i: usize| {
        format!(
            "(derivation {{ name = \"{name}\"; system = builtins.currentSystem; i = \"{i}\"; \
             builder = \"${{bb}}/bin/sh\"; PATH = \"${{bb}}/bin\"; inherit src; srcstoreCache = \"t\"; \
             args = [ \"-c\" \"{script}\" ]; }})",
            name = name(i),
            script = support::nix_string(&format!(
                "read inside host count < /proc/self/uid_map; sleep 2; \
                 {{ echo host=$host; echo uid=$(id -u); \
                 echo volume=$(stat -c %u /srcstore/cache 2>/dev/null); \
                 if echo {i} > /srcstore/cache/w{i} 2>/dev/null; then echo wrote=yes; else echo wrote=no; fi; \
                 echo denied=$(cat /srcstore/no-cache 2>/dev/null); }} > $out"
            )),
        )
    };
    let children: Vec<String> = (0..n).map(child).collect();
    let expr = sb.path("at-once.nix");
    write(
        &expr,
        format!(
            "{{ src }}: let bb = builtins.storePath \"{bb}\"; in [ {} ]",
            children.join(" ")
        ),
    );
    expr
}

/// Builds `expr` with `-j jobs` and `options`; every output's [`Seen`], and the log.
fn build_all(
    sb: &Sandbox,
    expr: &Path,
    src: &Path,
    jobs: usize,
    options: &[(&str, &str)],
) -> (Vec<Seen>, String) {
    let mut cmd = Command::new("nix-build");
    cmd.args([
        "--no-out-link",
        "-j",
        &jobs.to_string(),
        "--option",
        "pre-build-hook",
    ])
    .arg(support::hook_script(sb))
    .arg(expr)
    .args(["--argstr", "src", src.to_str().unwrap()]);
    for (k, v) in options {
        cmd.args(["--option", k, v]);
    }
    let out = cmd.output().unwrap();
    let log = support::stderr(&out);
    assert!(out.status.success(), "{log}");
    let seen = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|p| Seen::parse(&fs::read_to_string(p).unwrap()))
        .collect();
    (seen, log)
}

fn project(sb: &Sandbox) -> PathBuf {
    let p = sb.path("proj");
    write(&p.join("f"), "hello\n");
    p
}

#[test]
fn eight_builds_at_once_each_get_the_volume_as_their_own_build_user() {
    let sb = Sandbox::new();
    let p = project(&sb);
    let d = Daemon::start(&sb, &p, &[]);
    let expr = at_once(&sb, 8, |i| format!("user-{i}"));
    let (seen, log) = build_all(&sb, &expr, &d.path(&sb), 8, &[]);
    let users: BTreeSet<u32> = seen.iter().map(|s| s.host_uid).collect();
    assert_eq!(users.len(), 8, "eight build users ran them: {seen:?}");
    for s in &seen {
        assert!(s.had_own_volume(), "{s:?}\n{log}");
    }
    assert!(!log.contains("built without the cache volume"), "{log}");
}

#[test]
fn builds_of_one_name_at_once_get_the_volume_as_their_own_user_or_say_why_never_anothers() {
    let sb = Sandbox::new();
    let p = project(&sb);
    let d = Daemon::start(&sb, &p, &[]);
    // One name: only the Nix process's own records can tell these builds apart.
    let expr = at_once(&sb, 4, |_| "same".into());
    let (seen, log) = build_all(&sb, &expr, &d.path(&sb), 4, &[]);
    for s in &seen {
        match &s.denied {
            None => assert!(
                s.had_own_volume(),
                "a volume, and the build's own: {s:?}\n{log}"
            ),
            Some(why) => {
                assert!(why.contains("cannot tell which"), "{why}");
                assert_eq!(s.volume_owner, None, "no volume with the refusal: {s:?}");
            }
        }
    }
}

/// `auto-allocate-uids` (Nix 2.12+): the build's uid comes from a slot the Nix process locks
/// (`userpool2/slot-<i>`), not from the build users' group.
#[test]
fn auto_allocated_build_users_get_the_volume_as_their_own() {
    let sb = Sandbox::new();
    let p = project(&sb);
    let d = Daemon::start(&sb, &p, &[]);
    let expr = at_once(&sb, 4, |i| format!("auto-{i}"));
    let options = [
        ("experimental-features", "nix-command auto-allocate-uids"),
        ("auto-allocate-uids", "true"),
    ];
    if support::nix_version() < (2, 12) {
        // This Nix has no such setting: say so, and build as it does.
        let (seen, log) = build_all(&sb, &expr, &d.path(&sb), 4, &options);
        assert!(log.contains("auto-allocate-uids"), "{log}");
        assert!(seen.iter().all(Seen::had_own_volume), "{seen:?}");
        return;
    }
    let (seen, log) = build_all(&sb, &expr, &d.path(&sb), 4, &options);
    let users: BTreeSet<u32> = seen.iter().map(|s| s.host_uid).collect();
    assert_eq!(users.len(), 4, "{seen:?}");
    for s in &seen {
        // Nix's default start-id.
        assert!(s.host_uid >= 872_415_232, "an auto-allocated uid: {s:?}");
        assert!(s.had_own_volume(), "{s:?}\n{log}");
    }
}
