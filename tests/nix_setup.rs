//! `srcstore nix setup`: explains, changes only with --apply, idempotent, and --undo restores
//! the exact bytes.

mod support;

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::process::Command;

use support::{write, Sandbox};

struct Conf {
    dir: std::path::PathBuf,
    fuse: std::path::PathBuf,
    /// Where systemd's system units would be.
    systemd: std::path::PathBuf,
    /// Root's copy lands beside the hook, so its directory must be one only root can write.
    _root_only: Option<tempfile::TempDir>,
}

fn setup(sb: &Sandbox, c: &Conf, extra: &[&str]) -> std::process::Output {
    sb.cmd()
        .env("NIX_CONF_DIR", &c.dir)
        .args(["nix", "setup", "--fuse-conf"])
        .arg(&c.fuse)
        .arg("--systemd-dir")
        .arg(&c.systemd)
        .args(extra)
        .output()
        .unwrap()
}

fn conf(sb: &Sandbox, nix_conf: &str, fuse_conf: &str) -> Conf {
    let root_only = root_only_dir();
    let dir = root_only.path().join("etc-nix");
    write(&dir.join("nix.conf"), nix_conf);
    support::chmod(&dir, 0o755);
    let fuse = sb.path("fuse.conf");
    write(&fuse, fuse_conf);
    let systemd = root_only.path().join("systemd-system");
    fs::create_dir(&systemd).unwrap();
    Conf {
        dir,
        fuse,
        systemd,
        _root_only: Some(root_only),
    }
}

/// A directory whose every ancestor only root can write (`/run` is root's, 0755).
fn root_only_dir() -> tempfile::TempDir {
    let d = tempfile::Builder::new()
        .prefix("srcstore-test")
        .tempdir_in("/run")
        .unwrap();
    support::chmod(d.path(), 0o755);
    d
}

fn stdout(o: &std::process::Output) -> String {
    assert!(o.status.success(), "{}", support::stderr(o));
    String::from_utf8(o.stdout.clone()).unwrap()
}

const ORIGINAL: &str =
    "sandbox = false\npre-build-hook = /opt/other-hook\nsubstituters =\n# no newline at the end";

#[test]
fn setup_explains_and_changes_nothing_without_apply() {
    let sb = Sandbox::new();
    let c = conf(&sb, ORIGINAL, "#mount_max = 1000\n");
    let out = stdout(&setup(&sb, &c, &[]));
    assert!(out.contains("change  sandbox = true"), "{out}");
    assert!(
        out.contains("change  pre-build-hook") && out.contains("/opt/other-hook"),
        "{out}"
    );
    assert!(out.contains("user_allow_other"), "{out}");
    assert!(out.contains("--apply"), "{out}");
    assert_eq!(
        fs::read_to_string(c.dir.join("nix.conf")).unwrap(),
        ORIGINAL
    );
    assert!(!c.dir.join("srcstore-pre-build-hook").exists());
}

#[test]
fn apply_is_idempotent_keeps_the_old_hook_running_and_undo_restores_the_bytes() {
    let sb = Sandbox::new();
    let c = conf(&sb, ORIGINAL, "#mount_max = 1000\n");
    stdout(&setup(&sb, &c, &["--apply"]));
    let applied = fs::read_to_string(c.dir.join("nix.conf")).unwrap();
    let wrapper = c.dir.join("srcstore-pre-build-hook");
    let script = fs::read_to_string(&wrapper).unwrap();
    assert!(
        script.contains("nix hook") && script.contains("--previous '/opt/other-hook'"),
        "{script}"
    );
    assert!(fs::read_to_string(&c.fuse)
        .unwrap()
        .contains("\nuser_allow_other\n"));
    // Root's store service, running root's copy.
    let unit = c.systemd.join("srcstore-store.service");
    let text = fs::read_to_string(&unit).unwrap();
    assert!(
        text.contains(&format!(
            "\nExecStart={} store serve\n",
            c.dir.join("srcstore").display()
        )),
        "{text}"
    );

    // Real Nix reads the result.
    let shown = Command::new("nix")
        .args([
            "--extra-experimental-features",
            "nix-command",
            "show-config",
        ])
        .env("NIX_CONF_DIR", &c.dir)
        .output()
        .unwrap();
    let shown = String::from_utf8(shown.stdout).unwrap();
    assert!(
        shown.contains(&format!("pre-build-hook = {}", wrapper.display())),
        "{shown}"
    );
    assert!(shown.contains("sandbox = true"), "{shown}");

    let again = stdout(&setup(&sb, &c, &["--apply"]));
    assert!(again.contains("nothing to change"), "{again}");
    assert_eq!(fs::read_to_string(c.dir.join("nix.conf")).unwrap(), applied);

    stdout(&setup(&sb, &c, &["--undo"]));
    assert_eq!(
        fs::read_to_string(c.dir.join("nix.conf")).unwrap(),
        ORIGINAL
    );
    assert_eq!(fs::read_to_string(&c.fuse).unwrap(), "#mount_max = 1000\n");
    assert!(!wrapper.exists());
    assert!(!unit.exists());
}

#[test]
fn the_hook_runs_the_previous_hook_and_merges_its_output() {
    let sb = Sandbox::new();
    let prev = sb.path("prev-hook");
    write(
        &prev,
        "#!/bin/sh\nprintf 'extra-sandbox-paths\\n/opt/from-previous'\n",
    );
    support::chmod(&prev, 0o755);
    write(&sb.path("x.drv"), "Derive([],[],[],\"s\",\"b\",[],[])");
    let out = sb.run(&[
        "nix",
        "hook",
        "--previous",
        prev.to_str().unwrap(),
        sb.path("x.drv").to_str().unwrap(),
        "/chroot",
    ]);
    assert_eq!(stdout(&out), "extra-sandbox-paths\n/opt/from-previous\n\n");

    write(&prev, "#!/bin/sh\necho broken >&2; exit 3\n");
    let out = sb.run(&[
        "nix",
        "hook",
        "--previous",
        prev.to_str().unwrap(),
        sb.path("x.drv").to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    assert!(support::stderr(&out).contains("prev-hook"));
}

#[test]
fn a_configuration_directory_that_does_not_exist_is_named() {
    let sb = Sandbox::new();
    let c = Conf {
        dir: sb.path("no/such/dir"),
        fuse: sb.path("fuse.conf"),
        systemd: sb.path("systemd-system"),
        _root_only: None,
    };
    let out = setup(&sb, &c, &["--apply"]);
    assert!(!out.status.success());
    let err = support::stderr(&out);
    assert!(
        err.contains("no/such/dir/nix.conf") && err.lines().count() == 1,
        "{err}"
    );
}

#[test]
fn apply_installs_roots_own_copy_and_the_hook_runs_it() {
    let sb = Sandbox::new();
    let c = conf(&sb, "sandbox = true\n", "user_allow_other\n");
    stdout(&setup(&sb, &c, &["--apply"]));
    let copy = c.dir.join("srcstore");
    let meta = fs::metadata(&copy).unwrap();
    assert_eq!(
        fs::read(&copy).unwrap(),
        fs::read(support::srcstore_bin()).unwrap(),
        "root's copy is this binary"
    );
    assert_eq!((meta.uid(), meta.mode() & 0o7777), (0, 0o755));
    let wrapper = fs::read_to_string(c.dir.join("srcstore-pre-build-hook")).unwrap();
    assert!(
        wrapper.contains(&format!("exec '{}' nix hook", copy.display()))
            && !wrapper.contains(support::srcstore_bin().to_str().unwrap()),
        "the wrapper runs root's copy, never the user's binary: {wrapper}"
    );

    // The wrapper on a derivation naming no snapshot: no output, success.
    write(&sb.path("x.drv"), "Derive([],[],[],\"s\",\"b\",[],[])");
    let run = Command::new(c.dir.join("srcstore-pre-build-hook"))
        .arg(sb.path("x.drv"))
        .output()
        .unwrap();
    assert!(run.status.success() && run.stdout.is_empty(), "{run:?}");

    // An upgrade: a changed binary is copied again; srcstore gone: builds go on.
    fs::write(&copy, b"an older srcstore").unwrap();
    let out = stdout(&setup(&sb, &c, &[]));
    assert!(
        out.contains("change") && out.contains("another srcstore"),
        "{out}"
    );
    stdout(&setup(&sb, &c, &["--apply"]));
    assert_eq!(
        fs::read(&copy).unwrap(),
        fs::read(support::srcstore_bin()).unwrap()
    );
    fs::remove_file(&copy).unwrap();
    let run = Command::new(c.dir.join("srcstore-pre-build-hook"))
        .arg(sb.path("x.drv"))
        .output()
        .unwrap();
    assert!(
        run.status.success() && run.stdout.is_empty() && run.stderr.is_empty(),
        "with srcstore gone the wrapper does nothing: {run:?}"
    );
    stdout(&setup(&sb, &c, &["--apply"]));
    stdout(&setup(&sb, &c, &["--undo"]));
    assert!(!copy.exists(), "--undo removes root's copy");
}

#[test]
fn apply_refuses_a_configuration_directory_others_can_write() {
    let sb = Sandbox::new();
    let c = conf(&sb, "sandbox = true\n", "user_allow_other\n");
    for (dir, mode) in [(c.dir.clone(), 0o777), (c.dir.clone(), 0o775)] {
        support::chmod(&dir, mode);
        let err = {
            let out = setup(&sb, &c, &["--apply"]);
            assert!(
                !out.status.success(),
                "applied into a mode {mode:o} directory"
            );
            support::stderr(&out)
        };
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(err.contains(dir.to_str().unwrap()), "{err}");
        assert!(
            !c.dir.join("srcstore").exists() && !c.dir.join("srcstore-pre-build-hook").exists()
        );
    }
    support::chmod(&c.dir, 0o755);
    // A parent others can write (the sandbox's own /var/tmp is 1777).
    let exposed = Conf {
        dir: sb.path("etc-nix"),
        fuse: c.fuse.clone(),
        systemd: c.systemd.clone(),
        _root_only: None,
    };
    write(&exposed.dir.join("nix.conf"), "sandbox = true\n");
    support::chmod(&exposed.dir, 0o755);
    let out = setup(&sb, &exposed, &["--apply"]);
    assert!(!out.status.success());
    let err = support::stderr(&out);
    assert!(
        err.contains("writable by group or others") && err.lines().count() == 1,
        "{err}"
    );
}

#[test]
fn on_nixos_apply_writes_roots_copy_and_prints_the_configuration_for_the_files_the_system_writes() {
    // NixOS makes nix.conf and fuse.conf read-only links into the store, written by the
    // system's configuration: --apply must not replace them, and must say what to declare.
    let sb = Sandbox::new();
    let root_only = root_only_dir();
    let dir = root_only.path().join("etc-nix");
    fs::create_dir(&dir).unwrap();
    support::chmod(&dir, 0o755);
    let generated = sb.path("generated");
    write(&generated.join("nix.conf"), "sandbox = false\n");
    write(&generated.join("fuse.conf"), "# mount_max = 1000\n");
    write(
        &generated.join("systemd-system/nix-daemon.service"),
        "[Unit]\n",
    );
    let store = support::nix_store_keep(&generated);
    std::os::unix::fs::symlink(format!("{store}/nix.conf"), dir.join("nix.conf")).unwrap();
    let fuse = sb.path("fuse.conf");
    std::os::unix::fs::symlink(format!("{store}/fuse.conf"), &fuse).unwrap();
    let systemd = sb.path("systemd-system");
    std::os::unix::fs::symlink(format!("{store}/systemd-system"), &systemd).unwrap();
    let c = Conf {
        dir: dir.clone(),
        fuse: fuse.clone(),
        systemd,
        _root_only: None,
    };
    let out = stdout(&setup(&sb, &c, &["--apply"]));
    let hook = dir.join("srcstore-pre-build-hook");
    for line in [
        "  nix.settings.sandbox = true;".to_owned(),
        format!("  nix.settings.pre-build-hook = \"{}\";", hook.display()),
        "  programs.fuse.userAllowOther = true;".to_owned(),
        format!(
            "  systemd.services.srcstore-store = {{ wantedBy = [ \"multi-user.target\" ]; after = [ \"nix-daemon.service\" ]; serviceConfig.ExecStart = \"{} store serve\"; }};",
            dir.join("srcstore").display()
        ),
    ] {
        assert!(out.lines().any(|l| l == line), "no `{line}` in:\n{out}");
    }
    assert!(out.contains("nixos-rebuild switch"), "{out}");
    // The system's files are untouched, still links into the store.
    assert_eq!(
        fs::read_link(dir.join("nix.conf")).unwrap(),
        std::path::PathBuf::from(format!("{store}/nix.conf"))
    );
    assert_eq!(
        fs::read_link(&fuse).unwrap(),
        std::path::PathBuf::from(format!("{store}/fuse.conf"))
    );
    // Root's copy and the hook are written all the same.
    assert_eq!(fs::metadata(&hook).unwrap().uid(), 0);
    assert_eq!(
        fs::read(dir.join("srcstore")).unwrap(),
        fs::read(support::srcstore_bin()).unwrap()
    );
    let _ = Command::new("nix-store")
        .args(["--delete", &store])
        .output();
    drop(root_only);
}

#[test]
fn setup_and_mount_say_in_one_line_that_a_lix_discarding_the_hooks_output_shows_builds_no_snapshot()
{
    // Lix is not in Debian: a `nix` that answers its version as Lix 2.93 does.
    let sb = Sandbox::new();
    let bin = sb.path("lix-bin");
    write(
        &bin.join("nix"),
        "#!/bin/sh\necho 'nix (Lix, like Nix) 2.93.0'\n",
    );
    support::chmod(&bin.join("nix"), 0o755);
    let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap());
    let c = conf(&sb, "sandbox = true\n", "user_allow_other\n");
    let out = sb
        .cmd()
        .env("PATH", &path)
        .env("NIX_CONF_DIR", &c.dir)
        .args(["nix", "setup", "--fuse-conf"])
        .arg(&c.fuse)
        .arg("--systemd-dir")
        .arg(&c.systemd)
        .output()
        .unwrap();
    let out = stdout(&out);
    let said: Vec<&str> = out.lines().filter(|l| l.contains("Lix 2.93.0")).collect();
    assert_eq!(said.len(), 1, "{out}");
    assert!(
        said[0].contains("will not see snapshots") && said[0].contains("store mode"),
        "{out}"
    );

    let p = sb.path("proj");
    write(&p.join("f"), "x");
    let d = sb
        .cmd()
        .env("PATH", &path)
        .args(["mount", "--mountpoint"])
        .arg(sb.path("mnt"))
        .arg(&p)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    support::wait_for("the mount", || {
        sb.run(&["path", p.to_str().unwrap()]).status.success()
    });
    Command::new("kill")
        .args(["-TERM", &d.id().to_string()])
        .status()
        .unwrap();
    let out = d.wait_with_output().unwrap();
    let err = support::stderr(&out);
    let said: Vec<&str> = err.lines().filter(|l| l.contains("Lix 2.93.0")).collect();
    assert_eq!(said.len(), 1, "{err}");
    assert!(
        said[0].starts_with("srcstore: warning: ") && said[0].contains("will not see snapshots"),
        "{err}"
    );
}
