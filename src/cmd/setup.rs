//! `srcstore nix setup`: check and explain what Nix needs, change it only with `--apply`.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context};
use srcstore::nix::conf;

#[derive(clap::Args)]
pub struct Args {
    /// Make the changes (idempotent; nix.conf is replaced atomically, never half-written).
    #[arg(long, conflicts_with = "undo")]
    apply: bool,
    /// Take back exactly what --apply added.
    #[arg(long)]
    undo: bool,
    /// The FUSE configuration file to check.
    #[arg(long, default_value = "/etc/fuse.conf", hide = true)]
    fuse_conf: PathBuf,
    /// Where systemd's system units are.
    #[arg(long, default_value = "/etc/systemd/system", hide = true)]
    systemd_dir: PathBuf,
}

const WRAPPER_NAME: &str = "srcstore-pre-build-hook";
/// Root's own copy of the binary, beside the wrapper: root never runs a file a user can change
/// (a `~/.cargo/bin/srcstore`, a `target/release` build).
const COPY_NAME: &str = "srcstore";
const FUSE_MARK: &str =
    "# added by `srcstore nix setup --apply` for `srcstore mount --allow-other`";
/// The system unit of root's store service.
const UNIT_NAME: &str = "srcstore-store.service";

struct Plan {
    lines: Vec<String>,
    settings: Vec<String>,
    wrapper: String,
    /// The bytes root's copy must have (this binary's).
    copy: Vec<u8>,
    fuse_line_needed: bool,
    /// The store service's unit, where systemd keeps units.
    unit: Option<(PathBuf, String)>,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let given =
        std::env::var_os("NIX_CONF_DIR").map_or_else(|| PathBuf::from("/etc/nix"), PathBuf::from);
    // One path for checking, writing and naming: root later runs what nix.conf names, so a
    // link on the way (a user's, re-pointed after the check) must never be in it.
    let conf_dir = fs::canonicalize(&given).unwrap_or(given);
    let nix_conf = conf_dir.join("nix.conf");
    let wrapper_path = conf_dir.join(WRAPPER_NAME);
    let text = match fs::read_to_string(&nix_conf) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && conf_dir.is_dir() => String::new(),
        Err(e) => return Err(e).with_context(|| nix_conf.display().to_string()),
    };
    let fuse = fs::read_to_string(&args.fuse_conf).unwrap_or_default();
    let copy_path = conf_dir.join(COPY_NAME);
    let unit_path = args.systemd_dir.join(UNIT_NAME);
    if args.undo {
        if unit_path.exists() {
            systemctl(&["disable", "--now", UNIT_NAME]);
        }
        return undo(
            &nix_conf,
            &text,
            &[&wrapper_path, &copy_path, &unit_path],
            &args.fuse_conf,
            &fuse,
        );
    }
    let mut plan = plan(&text, &wrapper_path, &copy_path, &fuse)?;
    plan_unit(&mut plan, &args.systemd_dir, &copy_path);
    let new_text = conf::with_block(&text, &plan.settings);
    let wrapper_current = fs::read_to_string(&wrapper_path).ok();
    let copy_current = fs::read(&copy_path).ok();
    let unchanged = new_text == text
        && wrapper_current.as_deref() == Some(&plan.wrapper)
        && copy_current.as_deref() == Some(&plan.copy)
        && !plan.fuse_line_needed
        && plan
            .unit
            .as_ref()
            .is_none_or(|(path, unit)| fs::read_to_string(path).ok().as_ref() == Some(unit));
    for line in &plan.lines {
        match line.strip_prefix("change  ") {
            Some(rest) if unchanged => println!("ok      {rest}"),
            _ => println!("{line}"),
        }
    }
    if unchanged {
        println!("nothing to change");
        return Ok(ExitCode::SUCCESS);
    }
    if !args.apply {
        println!("run `srcstore nix setup --apply` (as root) to make these changes");
        return Ok(ExitCode::SUCCESS);
    }
    check_root_only(&conf_dir)?;
    write_atomically(&copy_path, &plan.copy, 0o755)?;
    write_atomically(&wrapper_path, plan.wrapper.as_bytes(), 0o755)?;
    // NixOS writes nix.conf and fuse.conf from the system's configuration, as links into the
    // store: a file written in their place would be gone on the next rebuild. Say what to add
    // there instead.
    let system = [&nix_conf, &args.fuse_conf].map(|p| written_by_system(p));
    let mut declare = Vec::new();
    let mut managed = Vec::new();
    if let Some((path, unit)) = &plan.unit {
        if written_by_system(&args.systemd_dir) {
            declare.push(nixos_unit(&copy_path));
            managed.push(args.systemd_dir.display().to_string());
        } else {
            write_atomically(path, unit.as_bytes(), 0o644)?;
            match systemctl(&["daemon-reload"]) && systemctl(&["enable", "--now", UNIT_NAME]) {
                true => println!("started {UNIT_NAME}"),
                false => println!(
                    "note    systemd does not run the system here: start root's store service yourself (`{} store serve`, as root)",
                    copy_path.display()
                ),
            }
        }
    }
    if new_text != text && system[0] {
        declare.extend(plan.settings.iter().map(|s| nixos_setting(s)));
    } else if new_text != text {
        write_atomically(&nix_conf, new_text.as_bytes(), mode_of(&nix_conf, 0o644))?;
    }
    if plan.fuse_line_needed && system[1] {
        declare.push("programs.fuse.userAllowOther = true;".to_owned());
    } else if plan.fuse_line_needed {
        let mut f = fuse.clone();
        if !f.is_empty() && !f.ends_with('\n') {
            f.push('\n');
        }
        f.push_str(&format!("{FUSE_MARK}\nuser_allow_other\n"));
        write_atomically(
            &args.fuse_conf,
            f.as_bytes(),
            mode_of(&args.fuse_conf, 0o644),
        )?;
    }
    if !declare.is_empty() {
        managed.extend(
            [&nix_conf, &args.fuse_conf]
                .iter()
                .zip(system)
                .filter(|(_, s)| *s)
                .map(|(p, _)| p.display().to_string()),
        );
        println!(
            "written: {} and {}; {} written by the system's configuration (a link into the Nix store): add this to it (NixOS: configuration.nix), then run `nixos-rebuild switch`:",
            copy_path.display(),
            wrapper_path.display(),
            managed.join(" and ")
        );
        for line in declare {
            println!("  {line}");
        }
        return Ok(ExitCode::SUCCESS);
    }
    println!("applied: {}", nix_conf.display());
    Ok(ExitCode::SUCCESS)
}

/// Plans root's store service: a systemd system unit running root's copy as `srcstore store
/// serve`, where systemd keeps units.
fn plan_unit(plan: &mut Plan, systemd_dir: &Path, copy_path: &Path) {
    if !systemd_dir.is_dir() {
        plan.lines.push(format!(
            "note    no {}: start root's store service yourself (`{} store serve`, as root) for users' `srcstore mount --store`",
            systemd_dir.display(),
            copy_path.display()
        ));
        return;
    }
    let path = systemd_dir.join(UNIT_NAME);
    let unit = format!(
        "# Written by `srcstore nix setup --apply`; `srcstore nix setup --undo` removes it.\n\
         [Unit]\nDescription=srcstore store service: publishes users' snapshots to the Nix store\n\
         After=nix-daemon.service\n\n\
         [Service]\nExecStart={} store serve\nRestart=on-failure\n\n\
         [Install]\nWantedBy=multi-user.target\n",
        copy_path.display()
    );
    match fs::read_to_string(&path) {
        Ok(current) if current == unit => plan.lines.push(format!(
            "ok      {} runs root's store service",
            path.display()
        )),
        _ => plan.lines.push(format!(
            "change  {}: root's store service (`srcstore store serve`), through which users' `srcstore mount --store` publish",
            path.display()
        )),
    }
    plan.unit = Some((path, unit));
}

/// The NixOS declaration of root's store service.
fn nixos_unit(copy_path: &Path) -> String {
    format!(
        "systemd.services.srcstore-store = {{ wantedBy = [ \"multi-user.target\" ]; after = [ \"nix-daemon.service\" ]; serviceConfig.ExecStart = \"{} store serve\"; }};",
        copy_path.display()
    )
}

/// `systemctl ARGS` where systemd runs the system: whether it did. Says what failed.
fn systemctl(args: &[&str]) -> bool {
    if !Path::new("/run/systemd/system").is_dir() {
        return false;
    }
    match std::process::Command::new("systemctl").args(args).output() {
        Ok(out) if out.status.success() => return true,
        Ok(out) => println!(
            "note    systemctl {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ),
        Err(e) => println!("note    systemctl {}: {e}", args.join(" ")),
    }
    false
}

/// Whether `path` is a link into the Nix store, as NixOS makes `/etc/nix/nix.conf` and
/// `/etc/fuse.conf`: read-only, and replaced by the system's configuration on every rebuild.
fn written_by_system(path: &Path) -> bool {
    let store = std::env::var_os("NIX_STORE_DIR")
        .map_or_else(|| PathBuf::from("/nix/store"), PathBuf::from);
    fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink())
        && fs::canonicalize(path).is_ok_and(|t| t.starts_with(&store))
}

/// A `nix.conf` line (`key = value`) as the NixOS option that writes it.
fn nixos_setting(line: &str) -> String {
    let (key, value) = line.split_once(" = ").unwrap_or((line, ""));
    let value = match value {
        "true" | "false" => value.to_owned(),
        v => format!(
            "\"{}\"",
            v.replace('\\', "\\\\")
                .replace('"', "\\\"")
                .replace("${", "\\${")
        ),
    };
    format!("nix.settings.{key} = {value};")
}

fn plan(text: &str, wrapper_path: &Path, copy_path: &Path, fuse: &str) -> anyhow::Result<Plan> {
    let mut lines = Vec::new();
    let mut settings = Vec::new();
    match conf::setting(text, "sandbox").as_deref() {
        Some("true") | Some("relaxed") => {
            lines.push("ok      sandbox is on (the hook only runs for sandboxed builds)".into())
        }
        other => {
            lines.push(format!(
                "change  sandbox = true (now {}): Nix calls the pre-build hook only for sandboxed builds",
                other.unwrap_or("unset, Debian's default is false")
            ));
            settings.push("sandbox = true".to_owned());
        }
    }
    let me = std::env::current_exe().context("locating the srcstore binary")?;
    let copy = fs::read(&me).with_context(|| me.display().to_string())?;
    match fs::read(copy_path) {
        Ok(current) if current == copy => lines.push(format!(
            "ok      {} is root's copy of this srcstore",
            copy_path.display()
        )),
        Ok(_) => lines.push(format!(
            "change  {} from {}: root's copy, which the hook runs, is of another srcstore",
            copy_path.display(),
            me.display()
        )),
        Err(_) => lines.push(format!(
            "change  {} from {}: root's own copy for the hook, since root must never run a file a user can change",
            copy_path.display(),
            me.display()
        )),
    }
    if !statically_linked() {
        lines.push("note    this srcstore is dynamically linked: the hook runs, but a build cannot run root's copy inside its sandbox (no /lib there); install a static build (`scripts/install`) for that".into());
    }
    let previous = conf::setting(text, "pre-build-hook")
        .filter(|h| !h.is_empty() && Path::new(h) != wrapper_path);
    // If srcstore is uninstalled, builds go on as if it had never been set up.
    let bin = shell_quote(&copy_path.display().to_string());
    let absent = match &previous {
        Some(prev) => format!("exec {} \"$@\"", shell_quote(prev)),
        None => "exit 0".to_owned(),
    };
    let mut wrapper = format!(
        "#!/bin/sh\n# Written by `srcstore nix setup --apply`; `srcstore nix setup --undo` removes it.\n\
         [ -x {bin} ] || {absent}\nexec {bin} nix hook"
    );
    if let Some(prev) = &previous {
        wrapper.push_str(&format!(" --previous {}", shell_quote(prev)));
        lines.push(format!(
            "change  pre-build-hook = {} (now {prev}, which it keeps running): Nix allows one hook; srcstore's runs yours and merges its output",
            wrapper_path.display()
        ));
    } else if conf::effective(text, "pre-build-hook").as_deref()
        == Some(&wrapper_path.display().to_string())
    {
        lines.push(format!(
            "ok      pre-build-hook = {}",
            wrapper_path.display()
        ));
    } else {
        lines.push(format!(
            "change  pre-build-hook = {}: makes the snapshots a derivation names visible in its sandbox, and nothing for other builds",
            wrapper_path.display()
        ));
    }
    wrapper.push_str(" \"$@\"\n");
    settings.push(format!("pre-build-hook = {}", wrapper_path.display()));
    match conf::setting(text, "build-users-group").as_deref() {
        Some("") => lines.push("note    build-users-group is empty: builds run as root, which reads views even without --allow-other".into()),
        other => lines.push(format!(
            "ok      build users ({}) read the view when `srcstore mount` has --allow-other",
            other.unwrap_or("nixbld")
        )),
    }
    let fuse_line_needed = !fuse.lines().any(|l| l.trim() == "user_allow_other");
    if fuse_line_needed {
        lines.push("change  user_allow_other in /etc/fuse.conf: lets a non-root `srcstore mount --allow-other` serve Nix's build users".into());
    } else {
        lines.push("ok      /etc/fuse.conf allows --allow-other".into());
    }
    if let Some(warning) = super::nix::installed().and_then(|v| v.hook_warning()) {
        lines.push(format!("note    {warning}"));
    }
    if nix_daemon_running() {
        lines.push("note    nix-daemon is running: restart it after --apply (systemctl restart nix-daemon) so it reads the change".into());
    }
    Ok(Plan {
        lines,
        settings,
        wrapper,
        copy,
        fuse_line_needed,
        unit: None,
    })
}

fn undo(
    nix_conf: &Path,
    text: &str,
    installed: &[&Path],
    fuse_conf: &Path,
    fuse: &str,
) -> anyhow::Result<ExitCode> {
    let restored = conf::remove_block(text);
    if restored != text {
        write_atomically(nix_conf, restored.as_bytes(), mode_of(nix_conf, 0o644))?;
        println!("removed srcstore's block from {}", nix_conf.display());
    }
    for file in installed {
        match fs::remove_file(file) {
            Ok(()) => println!("removed {}", file.display()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| file.display().to_string()),
        }
    }
    if rustix::process::geteuid().is_root() {
        let swept =
            srcstore::hook::sweep(true).with_context(|| srcstore::hook::STAGE_ROOT.to_owned())?;
        if swept > 0 {
            println!(
                "removed {swept} staged snapshot mounts from {}",
                srcstore::hook::STAGE_ROOT
            );
        }
    }
    let marked = format!("{FUSE_MARK}\nuser_allow_other\n");
    if let Some(i) = fuse.find(&marked) {
        let restored = format!("{}{}", &fuse[..i], &fuse[i + marked.len()..]);
        write_atomically(fuse_conf, restored.as_bytes(), mode_of(fuse_conf, 0o644))?;
        println!("removed user_allow_other from {}", fuse_conf.display());
    }
    println!("nothing of srcstore's is left in the Nix configuration");
    Ok(ExitCode::SUCCESS)
}

/// Root runs what lies in `dir`: it and every directory above it must be root's and writable by
/// no one else, or whoever can write there could put code of theirs in root's way.
fn check_root_only(dir: &Path) -> anyhow::Result<()> {
    let dir = fs::canonicalize(dir).with_context(|| dir.display().to_string())?;
    for d in dir.ancestors() {
        let meta = fs::metadata(d).with_context(|| d.display().to_string())?;
        if meta.uid() != 0 || meta.mode() & 0o022 != 0 {
            bail!(
                "{}: {} (mode {:o}), so root's copy of srcstore beside the hook could be replaced; use a configuration directory only root can write (NIX_CONF_DIR)",
                d.display(),
                if meta.uid() != 0 { format!("owned by uid {}", meta.uid()) } else { "writable by group or others".to_owned() },
                meta.mode() & 0o7777
            );
        }
    }
    Ok(())
}

/// Whether this process runs without a dynamic loader (so a copy of it runs in a sandbox).
fn statically_linked() -> bool {
    let maps = fs::read_to_string("/proc/self/maps").unwrap_or_default();
    !maps
        .lines()
        .filter_map(|l| l.split_whitespace().nth(5))
        .any(|file| {
            file.rsplit('/')
                .next()
                .is_some_and(|f| f.starts_with("ld-") && f.contains(".so"))
        })
}

fn mode_of(path: &Path, default: u32) -> u32 {
    fs::metadata(path).map_or(default, |m| m.permissions().mode() & 0o7777)
}

/// Writes beside the target and renames over it: readers see the old file or the new one. The
/// file beside it is new (`O_EXCL`, a random name), so nothing planted there is written through.
fn write_atomically(path: &Path, bytes: &[u8], mode: u32) -> anyhow::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    (|| -> std::io::Result<()> {
        let mut tmp = tempfile::Builder::new()
            .prefix(&format!(".{name}."))
            .suffix(".srcstore-tmp")
            .tempfile_in(dir)?;
        tmp.write_all(bytes)?;
        tmp.as_file()
            .set_permissions(fs::Permissions::from_mode(mode))?;
        tmp.as_file().sync_all()?;
        tmp.persist(path).map_err(|e| e.error)?;
        Ok(())
    })()
    .with_context(|| path.display().to_string())
}

fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

fn nix_daemon_running() -> bool {
    fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .any(|e| fs::read_to_string(e.path().join("comm")).is_ok_and(|c| c.trim() == "nix-daemon"))
}
