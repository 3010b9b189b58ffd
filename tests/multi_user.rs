//! Multi-user Nix, end to end: nix-daemon runs as root, a user runs `srcstore mount` as
//! themselves, builds go through the daemon with the hook from nix.conf as
//! `srcstore nix setup --apply` wrote it.
//!
//! Each test makes a world of its own ([`support::world::World`]).

mod support;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use support::world::{World, DEV, NIX_DAEMON, OTHER};
use support::{own, uid_of, wait_for, write, NixBuild};

/// The same daemon under the name of the `nix` command: its workers are called `nix`.
const NIX_DAEMON_COMMAND: &[&str] = &["nix", "daemon"];
/// A worker per connection that holds it on descriptors 0 and 1, as Lix's re-executed workers
/// (fd 0) and socket-activated ones (fd 3) hold theirs: `nix-daemon --stdio` started on each
/// connection accepted on the daemon's socket.
const STDIO_WORKERS: &[&str] = &[
    "socat",
    "UNIX-LISTEN:/nix/var/nix/daemon-socket/socket,fork,mode=0666",
    "EXEC:nix-daemon --stdio,nofork",
];

#[test]
fn a_users_daemon_serves_builds_that_nix_daemon_runs_and_an_edit_gives_a_new_output() {
    let mut w = World::new(true);
    let p = w.project(DEV, "proj");
    w.mount(DEV, &p);
    let nix = NixBuild::new(
        &w.sb,
        "reader",
        "mkdir $out; cat $src/f > $out/f; cat /srcstore/src/f > $out/stable",
    );

    let first = w.path(DEV, &p);
    assert!(
        first.starts_with(&format!("/tmp/srcstore-{}/", uid_of(DEV))),
        "a user without XDG_RUNTIME_DIR serves from /tmp/srcstore-<uid>: {first}"
    );
    let (out1, log) = w.build(DEV, &nix, &first);
    let out1 = out1.unwrap_or_else(|| panic!("build failed: {log}"));
    assert_eq!(fs::read_to_string(out1.join("f")).unwrap(), "hello\n");
    assert_eq!(fs::read_to_string(out1.join("stable")).unwrap(), "hello\n");

    write(&p.join("f"), "edited\n");
    let second = w.path(DEV, &p);
    assert_ne!(second, first);
    let (out2, log) = w.build(DEV, &nix, &second);
    let out2 = out2.unwrap_or_else(|| panic!("build failed: {log}"));
    assert_ne!(out2, out1);
    assert_eq!(fs::read_to_string(out2.join("f")).unwrap(), "edited\n");

    // The pins the hook took end with the builds.
    wait_for("the pins to be released", || w.status(DEV, &p)["pins"] == 0);
}

#[test]
fn another_users_build_sees_nothing_of_srcstore_unless_its_derivation_names_a_snapshot() {
    let mut w = World::new(true);
    let p = w.project(DEV, "proj");
    w.mount(DEV, &p);
    let nix = NixBuild::new(
        &w.sb,
        "probe",
        "if test -e /srcstore || ls /tmp/srcstore-* >/dev/null 2>&1; then echo seen > $out; else echo unseen > $out; fi",
    );
    let (out, log) = w.build(OTHER, &nix, "not a snapshot");
    assert_eq!(
        fs::read_to_string(out.unwrap_or_else(|| panic!("{log}"))).unwrap(),
        "unseen\n"
    );
    // Named, a snapshot is as readable as a store path would be.
    let reader = NixBuild::new(&w.sb, "named", "cat $src/f > $out");
    let (out, log) = w.build(OTHER, &reader, &w.path(DEV, &p));
    assert_eq!(
        fs::read_to_string(out.unwrap_or_else(|| panic!("{log}"))).unwrap(),
        "hello\n"
    );
}

#[test]
fn watch_as_a_user_rebuilds_through_nix_daemon_on_every_save() {
    let w = World::new(true);
    let p = w.project(DEV, "proj");
    let nix = NixBuild::new(&w.sb, "w", "cat $src/f > $out");
    let runs = w.sb.path("runs");
    fs::write(&runs, "").unwrap();
    own(&runs, DEV, 0o644);
    let script = format!(
        "nix-build --no-out-link {} --argstr src {{}} | xargs cat >> {}",
        nix.expr.display(),
        runs.display()
    );
    let mut watch = w
        .in_ns(Some(DEV))
        .arg(support::srcstore_bin())
        .arg("watch")
        .arg(&p)
        .args(["--", "sh", "-c", &script])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for("the first run", || {
        fs::read_to_string(&runs).unwrap() == "hello\n"
    });
    write(&p.join("f"), "saved\n");
    wait_for("the run after a save", || {
        fs::read_to_string(&runs).unwrap() == "hello\nsaved\n"
    });
    Command::new("kill")
        .args(["-INT", &watch.id().to_string()])
        .status()
        .unwrap();
    let status = watch.wait().unwrap();
    assert!(status.success(), "watch exited with {status}");
}

#[test]
fn a_mount_nix_daemon_cannot_see_fails_the_build_with_one_line_naming_the_cause() {
    // A private root mount: nix-daemon's namespace never sees the user's later mount.
    let mut w = World::new(false);
    let p = w.project(DEV, "proj");
    w.mount(DEV, &p);
    let nix = NixBuild::new(&w.sb, "reader", "cat $src/f > $out");
    let path = w.path(DEV, &p);
    let (out, log) = w.build(DEV, &nix, &path);
    assert!(out.is_none(), "a build ran without its source: {log}");
    let ours: Vec<&str> = log.lines().filter(|l| l.contains("srcstore:")).collect();
    assert_eq!(ours.len(), 1, "{log}");
    assert!(
        ours[0].contains(&path)
            && ours[0].contains("not visible to nix-daemon")
            && ours[0].contains("make-rshared"),
        "{log}"
    );
}

/// The cache volume of `user`'s `project`, where their daemon keeps it.
fn volume(user: &str, project: &Path) -> PathBuf {
    let home = PathBuf::from(format!("/home/{user}/.cache/srcstore"));
    srcstore::daemon::paths::volume_path(&home, &project.canonicalize().unwrap())
}

#[test]
fn only_the_owners_builds_get_the_cache_and_another_users_build_that_asks_gets_none() {
    let mut w = World::new(true);
    let p = w.project(DEV, "proj");
    w.mount(DEV, &p);
    let src = w.path(DEV, &p);
    let script = |who: &str| {
        format!(
            "if test -e /srcstore/cache; then echo {who} >> /srcstore/cache/log; \
             cat /srcstore/cache/log > $out; else cat /srcstore/no-cache > $out; fi"
        )
    };
    let attrs = r#"{ srcstoreCache = "t"; }"#;
    let mine = NixBuild::with_attrs(&w.sb, "mine", &script("dev"), attrs);
    let (out, log) = w.build(DEV, &mine, &src);
    let out = out.unwrap_or_else(|| panic!("build failed: {log}"));
    assert_eq!(fs::read_to_string(out).unwrap(), "dev\n");

    // Snapshot paths are not secret and .drv files world-readable: another user can name the
    // snapshot and ask for its cache. The build runs, without it, and says why.
    let theirs = NixBuild::with_attrs(&w.sb, "theirs", &script("other"), attrs);
    let (out, log) = w.build(OTHER, &theirs, &src);
    let said = fs::read_to_string(out.unwrap_or_else(|| panic!("build failed: {log}"))).unwrap();
    assert!(
        said.starts_with("srcstore: built without the cache volume")
            && said.contains(&format!("uid {}", uid_of(OTHER)))
            && said.lines().count() == 1,
        "{said}"
    );

    // On disk: the owner's alone, untouched by the other build, closed to other users.
    let log_file = volume(DEV, &p).join("t/log");
    assert_eq!(fs::read_to_string(&log_file).unwrap(), "dev\n");
    let looked = w.user(OTHER, &["cat", log_file.to_str().unwrap()]);
    assert!(!looked.status.success(), "another user read the volume");
}

/// The build script that records who wrote the volume (`who`), or says why it got none.
fn volume_probe(who: &str) -> String {
    format!(
        "if test -e /srcstore/cache; then echo {who} >> /srcstore/cache/log; \
         cat /srcstore/cache/log > $out; else cat /srcstore/no-cache > $out; fi"
    )
}

#[test]
fn under_every_kind_of_nix_daemon_the_owners_build_gets_the_volume_and_another_users_none() {
    let attrs = r#"{ srcstoreCache = "t"; }"#;
    for daemon in [NIX_DAEMON, NIX_DAEMON_COMMAND, STDIO_WORKERS] {
        let mut w = World::with_daemon(true, "", daemon);
        let p = w.project(DEV, "proj");
        w.mount(DEV, &p);
        let src = w.path(DEV, &p);
        let mine = NixBuild::with_attrs(&w.sb, "mine", &volume_probe("dev"), attrs);
        let (out, log) = w.build(DEV, &mine, &src);
        let out = out.unwrap_or_else(|| panic!("{daemon:?}: build failed: {log}"));
        assert_eq!(fs::read_to_string(out).unwrap(), "dev\n", "{daemon:?}");

        let theirs = NixBuild::with_attrs(&w.sb, "theirs", &volume_probe("other"), attrs);
        let (out, log) = w.build(OTHER, &theirs, &src);
        let said = fs::read_to_string(out.unwrap_or_else(|| panic!("{daemon:?}: {log}"))).unwrap();
        assert!(
            said.starts_with("srcstore: built without the cache volume")
                && said.contains(&format!("uid {}", uid_of(OTHER))),
            "{daemon:?}: {said}"
        );
        let log_file = volume(DEV, &p).join("t/log");
        assert_eq!(
            fs::read_to_string(&log_file).unwrap(),
            "dev\n",
            "{daemon:?}"
        );
    }
}

#[test]
fn a_build_root_runs_for_another_user_through_a_relay_never_gets_the_owners_volume() {
    // What a store reached as ssh-ng://root@… runs: root's `nix-daemon --stdio`, building in
    // root's store for whoever reached it, here behind a socket instead of sshd, and an `ssh`
    // that connects to it. Root proves nothing about whom it builds for.
    let mut w = World::new(true);
    let p = w.project(DEV, "proj");
    w.mount(DEV, &p);
    let src = w.path(DEV, &p);
    let serve = w.sb.path("serve.sock");
    let mut server = w
        .in_ns(None)
        .args([
            "socat",
            &format!("UNIX-LISTEN:{},fork,mode=0666", serve.display()),
        ])
        .arg("EXEC:nix-daemon --stdio")
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for("the relay's socket", || serve.exists());
    let bin = w.sb.path("ssh-bin");
    write(
        &bin.join("ssh"),
        format!(
            "#!/bin/sh\nexec socat STDIO UNIX-CONNECT:{}\n",
            serve.display()
        ),
    );
    fs::set_permissions(bin.join("ssh"), fs::Permissions::from_mode(0o755)).unwrap();
    own(&bin, OTHER, 0o755);
    let theirs = NixBuild::with_attrs(
        &w.sb,
        "served",
        &volume_probe("other"),
        r#"{ srcstoreCache = "t"; }"#,
    );
    // Instantiated through the daemon, built by root's relay.
    let drv = w.user(
        OTHER,
        &[
            "nix-instantiate",
            theirs.expr.to_str().unwrap(),
            "--argstr",
            "src",
            &src,
        ],
    );
    let drv = String::from_utf8(drv.stdout).unwrap().trim().to_owned();
    let out = w
        .in_ns(Some(OTHER))
        .env(
            "PATH",
            format!("{}:{}", bin.display(), std::env::var("PATH").unwrap()),
        )
        .args([
            "nix-store",
            "--store",
            "ssh-ng://root@localhost",
            "--realise",
            &drv,
        ])
        .output()
        .unwrap();
    let _ = server.kill();
    let _ = server.wait();
    let log = support::stderr(&out);
    assert!(out.status.success(), "{log}");
    let path = w.user(OTHER, &["nix-store", "-q", "--outputs", &drv]);
    let said = fs::read_to_string(String::from_utf8(path.stdout).unwrap().trim()).unwrap();
    assert!(
        said.starts_with("srcstore: built without the cache volume")
            && said.contains("asked for by uid 0")
            && said.contains("root's builds"),
        "{said}"
    );
    assert!(
        !volume(DEV, &p).join("t/log").exists(),
        "nothing was written to the owner's volume"
    );
}

#[test]
fn a_build_swapping_links_into_its_volume_never_makes_clear_or_gc_touch_anything_outside_it() {
    let mut w = World::new(true);
    let p = w.project(DEV, "proj");
    w.mount(DEV, &p);
    let src = w.path(DEV, &p);
    // Files of the owner's that no sandbox sees, beside the cache home, and the epoch in it.
    let home = PathBuf::from(format!("/home/{DEV}"));
    let precious = home.join(format!("precious-{}", std::process::id()));
    for i in 0..50 {
        write(&precious.join(format!("f{i}")), "keep\n");
        own(&precious.join(format!("f{i}")), DEV, 0o644);
    }
    own(&precious, DEV, 0o755);
    let epoch_file = home.join(".cache/srcstore/epoch");
    let epoch: u64 = fs::read_to_string(&epoch_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();

    // From the volume's place on disk (<cache home>/volumes/<key>/t/flip), six levels up is the
    // owner's home, four the cache home. The build swaps d<i> between a directory and a link
    // to one of them, and leaves read-only directories (as ccache's and sccache's users can).
    let name = precious.file_name().unwrap().to_str().unwrap();
    let flip = format!(
        "v=/srcstore/cache/flip; end=$(( $(date +%s) + 10 )); \
         while [ $(date +%s) -lt $end ]; do mkdir -p $v; \
           for i in 0 1 2 3; do mkdir -p $v/r$i/x && touch $v/r$i/x/f && chmod 555 $v/r$i/x $v/r$i; done; \
           for i in 0 1 2 3 4 5 6 7 8 9; do \
             rm -rf $v/d$i $v/h$i; mkdir $v/d$i $v/h$i; touch $v/d$i/a $v/h$i/a; rm -rf $v/d$i $v/h$i; \
             ln -s ../../../../../../{name} $v/d$i; ln -s ../../../.. $v/h$i; done; done 2> /dev/null; \
         echo done > $out"
    );
    let flipper = NixBuild::with_attrs(&w.sb, "flipper", &flip, r#"{ srcstoreCache = "t"; }"#);
    // Its log goes to a file: a pipe nobody reads until the end would stall the build.
    let build_log = w.sb.path("flipper.log");
    let mut build = w
        .in_ns(Some(DEV))
        .args(["nix-build", "--no-out-link", flipper.expr.to_str().unwrap()])
        .args(["--argstr", "src", &src])
        .stdout(Stdio::null())
        .stderr(fs::File::create(&build_log).unwrap())
        .spawn()
        .unwrap();
    let flip_dir = volume(DEV, &p).join("t/flip");
    wait_for("the build to start swapping", || {
        flip_dir.join("r3").exists()
    });
    // The daemon's own collection, due again, set off by another build that asks.
    let probe = NixBuild::with_attrs(&w.sb, "asks", "echo > $out", r#"{ srcstoreCache = "t"; }"#);
    let stamp = volume(DEV, &p).join(".collected");
    let dir = p.to_str().unwrap();
    let mut rounds = 0;
    while build.try_wait().unwrap().is_none() {
        let _ = fs::remove_file(&stamp);
        let _ = w.build(DEV, &probe, &src);
        for args in [
            &["cache", "clear", dir][..],
            &["cache", "gc", "--max-size", "0", dir],
        ] {
            let out = w.srcstore(DEV, args);
            assert!(out.status.success(), "{args:?}: {}", support::stderr(&out));
        }
        rounds += 1;
    }
    assert!(
        rounds >= 2,
        "the attack ran against {rounds} rounds of clear and gc"
    );
    let built = build.wait().unwrap();
    assert!(
        built.success(),
        "{}",
        fs::read_to_string(&build_log).unwrap()
    );
    assert_eq!(
        fs::read_dir(&precious).unwrap().count(),
        50,
        "nothing outside the volume was removed"
    );
    // Other tests' daemons of the same user may start meanwhile: the epoch only goes forward.
    let now: u64 = fs::read_to_string(&epoch_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(now >= epoch, "the epoch went back from {epoch} to {now}");
    let _ = fs::remove_dir_all(&precious);

    // And once the build is over, clear empties the partition of everything it left.
    let out = w.srcstore(DEV, &["cache", "clear", dir]);
    assert!(out.status.success(), "{}", support::stderr(&out));
    assert_eq!(fs::read_dir(volume(DEV, &p).join("t")).unwrap().count(), 0);
}

#[test]
fn when_two_users_wait_on_one_derivation_the_cache_goes_only_to_a_build_its_owner_runs() {
    let mut w = World::new(true);
    let p = w.project(DEV, "proj");
    w.mount(DEV, &p);
    let src = w.path(DEV, &p);
    // One derivation for both: whichever worker takes its lock first builds it; the other waits
    // and gets the output.
    let nix = NixBuild::with_attrs(
        &w.sb,
        "shared",
        "sleep 3; if test -e /srcstore/cache; then echo used >> /srcstore/cache/log; \
         echo cache > $out; else echo none > $out; fi",
        r#"{ srcstoreCache = "t"; }"#,
    );
    let drv = w.root(&[
        "nix-instantiate",
        nix.expr.to_str().unwrap(),
        "--argstr",
        "src",
        &src,
    ]);
    let drv = String::from_utf8(drv.stdout).unwrap().trim().to_owned();
    let chroot = PathBuf::from(format!("{drv}.chroot"));
    let spawn = |user: &str| {
        w.in_ns(Some(user))
            .args(["nix-build", "--no-out-link", nix.expr.to_str().unwrap()])
            .args(["--argstr", "src", &src])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let first = spawn(OTHER);
    wait_for("the other user's build to start", || chroot.exists());
    let second = spawn(DEV);
    let (a, b) = (
        first.wait_with_output().unwrap(),
        second.wait_with_output().unwrap(),
    );
    assert!(
        a.status.success() && b.status.success(),
        "{}{}",
        support::stderr(&a),
        support::stderr(&b)
    );
    assert_eq!(a.stdout, b.stdout, "one output for both");
    let out = PathBuf::from(String::from_utf8(a.stdout).unwrap().trim());
    assert_eq!(
        fs::read_to_string(out).unwrap(),
        "none\n",
        "the other user's worker built it, without the owner's cache"
    );
    assert!(
        !volume(DEV, &p).join("t/log").exists(),
        "nothing was written to the owner's volume"
    );
}

#[test]
fn zig_builds_through_nix_daemon_for_a_user_reuse_the_cache_as_another_build_user() {
    let mut w = World::new(true);
    let p = w.project(DEV, "zigapp");
    let main = p.join("main.zig");
    write(
        &main,
        "const std = @import(\"std\");\nconst msg = @import(\"msg.zig\").msg;\n\
         pub fn main() void {\n    std.debug.print(\"{s}\\n\", .{msg});\n}\n",
    );
    let msg = p.join("msg.zig");
    let say = |m: &str| format!("pub const msg = \"{m}\";\n");
    write(&msg, say("hello"));
    for f in [&main, &msg] {
        own(f, DEV, 0o644);
    }
    w.mount(DEV, &p);
    let zig = support::zig_root();
    let lib = Path::new(env!("CARGO_MANIFEST_DIR")).join("nix/cache.nix");
    let build = |round: &str, user: &str| {
        let nix = NixBuild::with_attrs(
            &w.sb,
            &format!("zig-{round}"),
            &format!(
                ". $srcstoreCacheSetup; mkdir $out; cd /srcstore/src; \
                 $zig/zig build-exe main.zig -femit-bin=$out/app; $out/app 2> $out/said; {} > $out/ran-as",
                support::RAN_AS
            ),
            &format!(
                "(import {}).zig {{ }} // {{ zig = builtins.storePath \"{zig}\"; }}",
                lib.display()
            ),
        );
        let _only = support::OnlyBuildUser::new(user);
        let (out, log) = w.build(DEV, &nix, &w.path(DEV, &p));
        let out = out.unwrap_or_else(|| panic!("round {round} as {user}: {log}"));
        let ran_as = fs::read_to_string(out.join("ran-as")).unwrap();
        assert_eq!(
            ran_as.trim(),
            uid_of(user).to_string(),
            "round {round} ran as {user}"
        );
        fs::read_to_string(out.join("said")).unwrap()
    };
    assert_eq!(build("1", "nixbld1"), "hello\n");
    write(&msg, say("HELLO"));
    assert_eq!(build("2", "nixbld7"), "HELLO\n", "the same-size edit shows");
    let global = volume(DEV, &p).join("zig/zig-global");
    assert!(global.is_dir(), "the cache is in the owner's volume");
    let meta = fs::metadata(&global).unwrap();
    assert_eq!(
        std::os::unix::fs::MetadataExt::uid(&meta),
        uid_of(DEV),
        "written by nixbld1 and nixbld7, the owner's on disk"
    );
    write(&msg, say("hello"));
    assert_eq!(build("3", "nixbld3"), "hello\n", "the revert shows");
}

#[test]
fn with_build_users_off_a_users_build_writes_the_cache_as_the_owner() {
    // `build-users-group =`: nix-daemon runs builds as root (uid 1000 of the sandbox's
    // namespace); the volume shows the owner's files as root's, and root's writes land as the
    // owner's.
    let mut w = World::with_conf(true, "build-users-group =");
    let p = w.project(DEV, "proj");
    w.mount(DEV, &p);
    let nix = NixBuild::with_attrs(
        &w.sb,
        "as-root",
        "echo one >> /srcstore/cache/log && mkdir -p /srcstore/cache/d && echo x > /srcstore/cache/d/f \
         && cat /srcstore/cache/log > $out",
        r#"{ srcstoreCache = "t"; }"#,
    );
    let (out, log) = w.build(DEV, &nix, &w.path(DEV, &p));
    let out = out.unwrap_or_else(|| panic!("build failed: {log}"));
    assert_eq!(fs::read_to_string(out).unwrap(), "one\n");
    let dir = volume(DEV, &p).join("t");
    for f in ["log", "d", "d/f"] {
        let meta = fs::symlink_metadata(dir.join(f)).unwrap();
        assert_eq!(
            std::os::unix::fs::MetadataExt::uid(&meta),
            uid_of(DEV),
            "{f}: the owner's on disk"
        );
    }
}
