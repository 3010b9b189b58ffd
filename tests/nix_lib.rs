//! The shipped Nix library and the flake example, with real Nix.

mod support;

use std::fs;
use std::path::Path;
use std::process::Command;

use support::{write, Daemon, Sandbox};

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// An expression that takes its source through nix/default.nix and lists it.
fn expression(sb: &Sandbox, project: &Path) -> std::path::PathBuf {
    let bb = support::busybox_store_path();
    let expr = sb.path("lib.nix");
    fs::write(
        &expr,
        format!(
            r#"{{ src ? null }}:
let bb = builtins.storePath "{bb}"; in
derivation {{
  name = "lib"; system = builtins.currentSystem; builder = "${{bb}}/bin/sh"; PATH = "${{bb}}/bin";
  src = import {lib} {{ inherit src; fallback = {project}; }};
  args = [ "-c" "echo $src > $out; cat $src/f >> $out" ];
}}"#,
            lib = repo().join("nix").display(),
            project = project.display()
        ),
    )
    .unwrap();
    expr
}

fn nix_build(sb: &Sandbox, expr: &Path, args: &[&str], env: &[(&str, &str)]) -> Vec<String> {
    let hook = support::NixBuild::new(sb, "unused", "true").hook;
    let out = Command::new("nix-build")
        .args(["--no-out-link", "--option", "pre-build-hook"])
        .arg(hook)
        .arg(expr)
        .args(args)
        .env_remove("SRCSTORE_SRC")
        .envs(env.iter().copied())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", support::stderr(&out));
    let path = String::from_utf8(out.stdout).unwrap();
    fs::read_to_string(path.trim())
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect()
}

#[test]
fn the_library_takes_the_argument_then_the_environment_then_the_fallback() {
    let sb = Sandbox::new();
    let p = sb.path("proj");
    write(&p.join("f"), "content\n");
    let d = Daemon::start(&sb, &p, &[]);
    let snapshot = d.path(&sb);
    let expr = expression(&sb, &p);

    let by_arg = nix_build(
        &sb,
        &expr,
        &["--argstr", "src", snapshot.to_str().unwrap()],
        &[],
    );
    assert_eq!(by_arg, [snapshot.to_str().unwrap(), "content"]);

    let by_env = nix_build(
        &sb,
        &expr,
        &[],
        &[("SRCSTORE_SRC", snapshot.to_str().unwrap())],
    );
    assert_eq!(by_env, [snapshot.to_str().unwrap(), "content"]);

    let fallback = nix_build(&sb, &expr, &[], &[]);
    assert!(
        fallback[0].starts_with("/nix/store/") && fallback[0].ends_with("-proj"),
        "{fallback:?}"
    );
    assert_eq!(fallback[1], "content");
}

#[test]
fn the_flake_example_builds_from_the_snapshot_without_copying_the_project() {
    let sb = Sandbox::new();
    let p = sb.path("proj");
    write(&p.join("f"), "flake\n");
    write(&p.join("sub/g"), "g\n");
    let d = Daemon::start(&sb, &p, &[]);
    let snapshot = d.path(&sb);
    // Offline: stand in for nixpkgs with a flake that has just busybox.
    let fake = sb.path("fakepkgs");
    write(
        &fake.join("flake.nix"),
        format!(
            "{{ outputs = _: {{ legacyPackages.x86_64-linux.busybox = builtins.storePath \"{}\"; }}; }}",
            support::busybox_store_path()
        ),
    );
    let hook = support::NixBuild::new(&sb, "unused", "true").hook;
    let out = Command::new("nix")
        .args([
            "--extra-experimental-features",
            "nix-command flakes",
            "build",
            "--impure",
            "--no-write-lock-file",
            "--no-link",
            "--json",
        ])
        .args(["--option", "pre-build-hook"])
        .arg(&hook)
        .arg("--override-input")
        .arg("nixpkgs")
        .arg(format!("path:{}", fake.display()))
        .arg(format!("path:{}", repo().join("examples/flake").display()))
        .env("SRCSTORE_SRC", &snapshot)
        .env("HOME", sb.home())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", support::stderr(&out));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let built = json[0]["outputs"]["out"].as_str().unwrap();
    assert_eq!(fs::read_to_string(built).unwrap(), "./f\n./sub/g\n");

    // The project itself was never copied into the store.
    let j = sb.json(&["--nix", "--no-ignore", p.to_str().unwrap()]);
    let would_be = j["store_path"].as_str().unwrap();
    let valid = Command::new("nix-store")
        .args(["--check-validity", would_be])
        .output()
        .unwrap();
    assert!(
        !valid.status.success(),
        "the project was copied to {would_be}"
    );
}
