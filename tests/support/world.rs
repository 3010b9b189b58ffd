//! A world of its own for a multi-user test: a mount namespace (`unshare -m`) standing in for
//! a systemd host (root mount shared) or for a container (private), with its own `/etc/nix`
//! and its own daemon socket directory mounted over the machine's, a real nix-daemon in it,
//! and users' srcstore daemons. The users are `srcstore-dev` and `srcstore-other`
//! (scripts/setup-machine makes them).
#![allow(dead_code)]

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output};

use super::{own, wait_for, write, NixBuild, Sandbox};

pub const DEV: &str = "srcstore-dev";
pub const OTHER: &str = "srcstore-other";

/// Nix's daemon as Debian starts it.
pub const NIX_DAEMON: &[&str] = &["nix-daemon"];
pub struct World {
    pub sb: Sandbox,
    /// A process holding the namespace (`sleep`), whose pid names it to `nsenter`.
    holder: Child,
    nix_daemon: Option<Child>,
    daemons: Vec<Child>,
    /// Where root's store service answers, once started ([`World::serve_store`]), and the
    /// service.
    pub store_service: Option<PathBuf>,
    pub store_child: Option<Child>,
    _conf: tempfile::TempDir,
}

impl World {
    /// `shared`: the root mount is shared, as systemd makes it; else private, as in some
    /// containers and VMs, where nix-daemon never sees a mount made after it started.
    pub fn new(shared: bool) -> World {
        World::with_conf(shared, "")
    }

    /// As [`World::new`], with `extra` appended to the world's nix.conf.
    pub fn with_conf(shared: bool, extra: &str) -> World {
        World::with_daemon(shared, extra, NIX_DAEMON)
    }

    /// As [`World::with_conf`], with the daemon started as `daemon` (argv, run as root).
    pub fn with_daemon(shared: bool, extra: &str, daemon: &[&str]) -> World {
        let sb = Sandbox::new();
        fs::set_permissions(sb.dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
        let conf = tempfile::Builder::new()
            .prefix("srcstore-test-etc-nix")
            .tempdir_in("/run")
            .unwrap();
        fs::set_permissions(conf.path(), fs::Permissions::from_mode(0o755)).unwrap();
        let base = fs::read_to_string("/etc/nix/nix.conf").unwrap();
        fs::write(conf.path().join("nix.conf"), format!("{base}\n{extra}\n")).unwrap();
        let ready = sb.path("ns-ready");
        fs::create_dir_all("/nix/var/nix/daemon-socket").unwrap();
        let script = format!(
            "set -e; {share} mount -t tmpfs -o mode=0755 tmpfs /nix/var/nix/daemon-socket; \
             mount --bind {conf} /etc/nix; touch {ready}; exec sleep 100000",
            share = if shared {
                "mount --make-rshared /;"
            } else {
                ""
            },
            conf = conf.path().display(),
            ready = ready.display(),
        );
        let holder = Command::new("unshare")
            .args(["-m", "--propagation", "private", "sh", "-c", &script])
            .spawn()
            .unwrap();
        let mut world = World {
            sb,
            holder,
            nix_daemon: None,
            daemons: Vec::new(),
            store_service: None,
            store_child: None,
            _conf: conf,
        };
        wait_for("the namespace", || ready.exists());
        // Units go to a directory of the world's, not the machine's.
        let units = world.sb.path("systemd-system");
        fs::create_dir_all(&units).unwrap();
        let applied = world.root(&[
            super::srcstore_bin().to_str().unwrap(),
            "nix",
            "setup",
            "--apply",
            "--systemd-dir",
            units.to_str().unwrap(),
        ]);
        assert!(applied.status.success(), "{}", super::stderr(&applied));
        let log = fs::File::create(world.sb.path("nix-daemon.log")).unwrap();
        world.nix_daemon = Some(
            world
                .in_ns(None)
                .args(daemon)
                .stdout(log.try_clone().unwrap())
                .stderr(log)
                .spawn()
                .unwrap(),
        );
        let socket = PathBuf::from(format!(
            "/proc/{}/root/nix/var/nix/daemon-socket/socket",
            world.holder.id()
        ));
        wait_for("nix-daemon's socket", || socket.exists());
        world
    }

    /// A command in the world's namespace, as `user` (root if `None`), with a clean
    /// environment that builds through the daemon.
    pub fn in_ns(&self, user: Option<&str>) -> Command {
        let mut c = Command::new("nsenter");
        c.env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("SRCSTORE_LOG", "warn")
            .envs(
                self.store_service
                    .iter()
                    .map(|s| ("SRCSTORE_STORE_SERVICE", s.as_os_str())),
            )
            .args(["-t", &self.holder.id().to_string(), "-m", "--"]);
        match user {
            Some(u) => {
                c.env("HOME", format!("/home/{u}"))
                    .env("USER", u)
                    .env("NIX_REMOTE", "daemon")
                    .args([
                        "setpriv",
                        &format!("--reuid={u}"),
                        &format!("--regid={u}"),
                        "--init-groups",
                    ]);
            }
            None => {
                c.env("HOME", self.sb.home());
            }
        }
        c
    }

    pub fn root(&self, argv: &[&str]) -> Output {
        self.in_ns(None).args(argv).output().unwrap()
    }

    pub fn user(&self, user: &str, argv: &[&str]) -> Output {
        self.in_ns(Some(user)).args(argv).output().unwrap()
    }

    pub fn srcstore(&self, user: &str, args: &[&str]) -> Output {
        let mut argv = vec![super::srcstore_bin().to_str().unwrap().to_owned()];
        argv.extend(args.iter().map(|a| a.to_string()));
        let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
        self.user(user, &argv)
    }

    /// A project owned by `user`, with one file.
    pub fn project(&self, user: &str, name: &str) -> PathBuf {
        let p = self.sb.path(name);
        write(&p.join("f"), "hello\n");
        own(&p, user, 0o755);
        own(&p.join("f"), user, 0o644);
        p
    }

    /// `srcstore mount --allow-other` run by `user`, ready to answer `path`.
    pub fn mount(&mut self, user: &str, project: &Path) {
        self.mount_with(user, project, &[]);
    }

    /// [`World::mount`] with `extra` arguments.
    pub fn mount_with(&mut self, user: &str, project: &Path, extra: &[&str]) {
        let log = fs::File::create(self.sb.path(&format!("srcstore-{user}.log"))).unwrap();
        let child = self
            .in_ns(Some(user))
            .env("SRCSTORE_LOG", "info")
            .arg(super::srcstore_bin())
            .args(["mount", "--allow-other"])
            .args(extra)
            .arg(project)
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        self.daemons.push(child);
        wait_for("the user's daemon", || {
            self.srcstore(user, &["path", project.to_str().unwrap()])
                .status
                .success()
        });
    }

    /// Starts root's store service (`srcstore store serve`) in the world, at a socket of its
    /// own, cutting off a view after `stall` seconds without progress; every later command
    /// finds it through `SRCSTORE_STORE_SERVICE`.
    pub fn serve_store(&mut self, stall: u64) -> PathBuf {
        self.serve_store_with(&["--stall", &stall.to_string()])
    }

    /// [`World::serve_store`] with `args` for `srcstore store serve`.
    pub fn serve_store_with(&mut self, args: &[&str]) -> PathBuf {
        let mut c = self.in_ns(None);
        c.arg(super::srcstore_bin()).args(["store", "serve"]);
        let (child, socket) = super::store_service(c, &self.sb, args);
        self.store_child = Some(child);
        self.store_service = Some(socket.clone());
        socket
    }

    /// Stops the users' srcstore daemons (SIGTERM), and waits for them.
    pub fn stop_mounts(&mut self) {
        for mut d in self.daemons.drain(..) {
            let _ = Command::new("kill")
                .args(["-TERM", &d.id().to_string()])
                .status();
            let _ = d.wait();
        }
    }

    /// Stops root's store service (SIGKILL).
    pub fn stop_store(&mut self) {
        if let Some(mut service) = self.store_child.take() {
            service.kill().unwrap();
            service.wait().unwrap();
        }
    }

    pub fn path(&self, user: &str, project: &Path) -> String {
        let out = self.srcstore(user, &["path", project.to_str().unwrap()]);
        assert!(out.status.success(), "{}", super::stderr(&out));
        String::from_utf8(out.stdout).unwrap().trim().to_owned()
    }

    pub fn status(&self, user: &str, project: &Path) -> serde_json::Value {
        let out = self.srcstore(user, &["status", "--json", project.to_str().unwrap()]);
        assert!(out.status.success(), "{}", super::stderr(&out));
        serde_json::from_slice(&out.stdout).unwrap()
    }

    /// A build of `nix`'s expression through nix-daemon as `user`: the output path and log.
    pub fn build(&self, user: &str, nix: &NixBuild, src: &str) -> (Option<PathBuf>, String) {
        let out = self.user(
            user,
            &[
                "nix-build",
                "--no-out-link",
                nix.expr.to_str().unwrap(),
                "--argstr",
                "src",
                src,
            ],
        );
        let log = super::stderr(&out);
        let path = out
            .status
            .success()
            .then(|| PathBuf::from(String::from_utf8(out.stdout).unwrap().trim()));
        (path, log)
    }
}

impl Drop for World {
    fn drop(&mut self) {
        let children = self.store_child.iter_mut().chain(self.daemons.iter_mut());
        for child in children.chain(self.nix_daemon.as_mut()) {
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
            let _ = child.wait();
        }
        let _ = self.holder.kill();
        let _ = self.holder.wait();
    }
}
