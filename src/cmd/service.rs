//! `srcstore service`: a systemd user unit that keeps a project's daemon running.
//!
//! Only the unit file is written or deleted here. Starting, stopping and enabling are left to
//! `systemctl`, whose exact lines are printed: nothing happens to a running daemon behind the
//! user's back, and the command works where no user manager runs (a container, a chroot).

use std::ffi::{OsStr, OsString};
use std::fs;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context};

#[derive(clap::Subcommand)]
pub enum Service {
    /// Write a systemd user unit running `srcstore mount --allow-other DIR`, and say how to start it.
    Install(InstallArgs),
    /// Delete the project's systemd user unit (disable it first).
    Remove(RemoveArgs),
}

#[derive(clap::Args)]
pub struct InstallArgs {
    /// The project directory.
    #[arg(default_value = ".")]
    dir: PathBuf,
    /// One more argument for `srcstore mount`, e.g. `--mount-arg=--keep --mount-arg=4`.
    #[arg(long = "mount-arg", value_name = "ARG", allow_hyphen_values = true)]
    mount_args: Vec<OsString>,
}

#[derive(clap::Args)]
pub struct RemoveArgs {
    /// The project directory (it may have been deleted since).
    #[arg(default_value = ".")]
    dir: PathBuf,
}

pub fn run(cmd: Service) -> anyhow::Result<ExitCode> {
    match cmd {
        Service::Install(args) => install(args),
        Service::Remove(args) => remove(args),
    }
}

fn install(args: InstallArgs) -> anyhow::Result<ExitCode> {
    let project = fs::canonicalize(&args.dir).with_context(|| args.dir.display().to_string())?;
    if !project.is_dir() {
        bail!("{}: not a directory", project.display());
    }
    let program = std::env::current_exe().context("finding the path of the running srcstore")?;
    check_program(&program)?;
    let mut argv: Vec<OsString> = vec!["mount".into(), "--allow-other".into()];
    argv.extend(args.mount_args);
    argv.push(project.clone().into());
    check_mount_args(&argv)?;

    let unit = Unit::for_project(&project)?;
    let text = unit_file(&project, &program, &argv);
    let before = match fs::read(&unit.path) {
        Ok(bytes) => Some(bytes),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(e).with_context(|| unit.path.display().to_string()),
    };
    let name = &unit.name;
    match before {
        Some(bytes) if bytes == text.as_bytes() => {
            println!("unchanged: {}", unit.path.display());
            print_start(name);
        }
        Some(_) => {
            write_atomically(&unit.path, text.as_bytes())
                .with_context(|| unit.path.display().to_string())?;
            println!("updated {}", unit.path.display());
            // `enable --now` leaves a running daemon on its old command line.
            println!("to run it as written now, and at every login:");
            println!("    systemctl --user daemon-reload");
            println!("    systemctl --user enable {name}");
            println!("    systemctl --user restart {name}");
        }
        None => {
            fs::create_dir_all(&unit.dir).with_context(|| unit.dir.display().to_string())?;
            write_atomically(&unit.path, text.as_bytes())
                .with_context(|| unit.path.display().to_string())?;
            println!("installed {}", unit.path.display());
            print_start(name);
        }
    }
    println!("its log:");
    println!("    journalctl --user -u {name}");
    Ok(ExitCode::SUCCESS)
}

fn print_start(name: &str) {
    println!("to start it now, and at every login:");
    println!("    systemctl --user daemon-reload");
    println!("    systemctl --user enable --now {name}");
}

fn remove(args: RemoveArgs) -> anyhow::Result<ExitCode> {
    let project = match fs::canonicalize(&args.dir) {
        Ok(p) if !p.is_dir() => bail!("{}: not a directory", p.display()),
        Ok(p) => p,
        // A deleted project's unit must still be removable: its path is all the key needs.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => gone_project(&args.dir)?,
        Err(e) => return Err(e).with_context(|| args.dir.display().to_string()),
    };
    let unit = Unit::for_project(&project)?;
    let name = &unit.name;
    if !unit.path.exists() {
        bail!(
            "{}: not installed for {}",
            unit.path.display(),
            project.display()
        );
    }
    // Deleting an enabled unit would leave its `*.wants` link dangling, and systemd would fail
    // to start it at every login; `systemctl disable` removes the link while the unit is there.
    if let Some(link) = unit.enabled_by() {
        bail!(
            "{name} is enabled ({}): run `systemctl --user disable --now {name}` first, then remove it",
            link.display()
        );
    }
    fs::remove_file(&unit.path).with_context(|| unit.path.display().to_string())?;
    println!("removed {}", unit.path.display());
    println!("if it is still running, stop it, then let systemd forget it:");
    println!("    systemctl --user stop {name}");
    println!("    systemctl --user daemon-reload");
    Ok(ExitCode::SUCCESS)
}

/// The absolute path a project that no longer exists had, as `canonicalize` would have given it
/// (through its parent, which usually still exists).
fn gone_project(dir: &Path) -> anyhow::Result<PathBuf> {
    let absolute = std::path::absolute(dir).with_context(|| dir.display().to_string())?;
    Ok(match (absolute.parent(), absolute.file_name()) {
        (Some(parent), Some(name)) => match fs::canonicalize(parent) {
            Ok(parent) => parent.join(name),
            Err(_) => absolute,
        },
        _ => absolute,
    })
}

/// Where a project's unit lives and what it is called.
struct Unit {
    /// `srcstore-<name>-<key>.service`.
    name: String,
    /// The systemd user configuration directory it is in.
    dir: PathBuf,
    path: PathBuf,
}

impl Unit {
    fn for_project(project: &Path) -> anyhow::Result<Unit> {
        let dir = config_home()?.join("systemd/user");
        let name = unit_name(project);
        Ok(Unit {
            path: dir.join(&name),
            dir,
            name,
        })
    }

    /// A link that `systemctl enable` made to the unit (`<target>.wants/<unit>`), if any.
    fn enabled_by(&self) -> Option<PathBuf> {
        fs::read_dir(&self.dir)
            .ok()?
            .flatten()
            .filter(|e| {
                let n = e.file_name();
                let n = n.as_bytes();
                n.ends_with(b".wants") || n.ends_with(b".requires")
            })
            .map(|e| e.path().join(&self.name))
            .find(|link| fs::symlink_metadata(link).is_ok())
    }
}

/// `$XDG_CONFIG_HOME`, or `~/.config`: where systemd looks for a user's own units.
fn config_home() -> anyhow::Result<PathBuf> {
    // The XDG spec says to ignore a relative value, and systemd does.
    if let Some(dir) = std::env::var_os("XDG_CONFIG_HOME").map(PathBuf::from) {
        if dir.is_absolute() {
            return Ok(dir);
        }
    }
    match std::env::var_os("HOME").filter(|h| !h.is_empty()) {
        Some(home) => Ok(PathBuf::from(home).join(".config")),
        None => bail!(
            "neither XDG_CONFIG_HOME nor HOME is set, so there is no systemd user unit directory; set HOME"
        ),
    }
}

/// `srcstore-<name>-<key>.service`: the basename for people, the path's hash so that two
/// projects of the same name get a unit each. The key is the one in the default mountpoint's
/// name, so a unit and its mountpoint are easy to pair.
fn unit_name(project: &Path) -> String {
    let base = project.file_name().unwrap_or_default().to_string_lossy();
    // Unit names allow `[A-Za-z0-9:_.\-]`, so the snapshot name's `+?=` become `-` too; a run of
    // `-` shrinks to one, and none is left at either end. A short name keeps `systemctl` lines
    // readable (systemd allows 255 bytes).
    let mut name = String::new();
    for c in srcstore::name::from_basename(&base).chars().take(64) {
        let c = if "+?=".contains(c) { '-' } else { c };
        if !(c == '-' && (name.is_empty() || name.ends_with('-'))) {
            name.push(c);
        }
    }
    let name = match name.trim_end_matches('-') {
        "" => "source",
        n => n,
    };
    let key = blake3::hash(project.as_os_str().as_bytes()).to_hex();
    format!("srcstore-{name}-{}.service", &key[..8])
}

/// systemd refuses to run a program whose path has quotes, backslashes or control characters
/// ("Executable name contains special characters"), however it is quoted.
fn check_program(program: &Path) -> anyhow::Result<()> {
    if program
        .as_os_str()
        .as_bytes()
        .iter()
        .any(|&b| b < b' ' || b == 0x7f || b"\"'\\".contains(&b))
    {
        bail!(
            "{}: systemd cannot run a program whose path has quotes, backslashes or control characters; install srcstore elsewhere and run that one",
            program.display()
        );
    }
    Ok(())
}

/// Parses the command line the unit will run as `srcstore mount` would, so that a typo in
/// `--mount-arg` fails here, not in the journal at every restart.
fn check_mount_args(argv: &[OsString]) -> anyhow::Result<()> {
    use clap::error::ErrorKind;
    use clap::parser::ValueSource;
    use clap::Args as _;
    let mount = super::mount::Args::augment_args(clap::Command::new("mount"));
    // Without the project directory at the end: a directory among the extra arguments would
    // take its place, and clap would blame the project's.
    let extra = &argv[..argv.len() - 1];
    let given = match mount.clone().try_get_matches_from(extra) {
        Ok(m) => m,
        Err(e) if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) => {
            bail!("--mount-arg: asking for help or the version does not run a daemon")
        }
        Err(e) => {
            let text = e.to_string();
            let first = text.lines().next().unwrap_or_default();
            bail!(
                "--mount-arg: {}; `srcstore mount --help` lists what it takes",
                first.strip_prefix("error: ").unwrap_or(first)
            )
        }
    };
    for arg in mount.get_positionals() {
        let id = arg.get_id().as_str();
        if given.value_source(id) == Some(ValueSource::CommandLine) {
            let value = given
                .get_raw(id)
                .into_iter()
                .flatten()
                .next()
                .unwrap_or_default();
            bail!(
                "--mount-arg {}: `srcstore mount` would take it for the project; give the project as DIR",
                Path::new(value).display()
            );
        }
    }
    Ok(())
}

/// The unit file.
fn unit_file(project: &Path, program: &Path, argv: &[OsString]) -> String {
    let name = project.file_name().unwrap_or_default().to_string_lossy();
    let mut exec = exec_word(program.as_os_str(), true);
    for arg in argv {
        exec.push(' ');
        exec.push_str(&exec_word(arg, false));
    }
    // The description ends in `)`: a line ending in `\` would continue onto the next one.
    let description = unit_text(&format!(
        "srcstore snapshots of {name} ({})",
        project.display()
    ));
    format!(
        "# Written by `srcstore service install`; `srcstore service remove` deletes it.\n\
         [Unit]\n\
         Description={description}\n\
         \n\
         [Service]\n\
         Type=simple\n\
         ExecStart={exec}\n\
         Restart=on-failure\n\
         KillSignal=SIGTERM\n\
         TimeoutStopSec=10\n\
         \n\
         [Install]\n\
         WantedBy=default.target\n"
    )
}

/// Free text for a unit setting: `%` starts a specifier, and a control character would end or
/// garble the line.
fn unit_text(s: &str) -> String {
    s.chars()
        .map(|c| match c {
            '%' => "%%".to_owned(),
            c if c.is_control() => "?".to_owned(),
            c => c.to_string(),
        })
        .collect()
}

/// One word of an `ExecStart=` line, so that systemd reads back exactly `word`.
///
/// systemd splits the line at unquoted whitespace, removes the quotes around a word and undoes
/// C escapes in it, then replaces `%%` by `%` (a lone `%` starts a specifier). In the arguments
/// it also replaces `$NAME` by an environment variable's value, and `$$` by `$`; the program's
/// path is never expanded, so its `$` stays as it is. A word of plain characters goes as it
/// is; any other is double-quoted, with `\` and `"` escaped, control characters and bytes that
/// are not UTF-8 (a unit file must be) as `\xNN`.
fn exec_word(word: &OsStr, program: bool) -> String {
    let bytes = word.as_bytes();
    let plain = |b: &u8| b.is_ascii_alphanumeric() || b"/._-+=:,@".contains(b);
    if !bytes.is_empty() && bytes.iter().all(plain) {
        return String::from_utf8_lossy(bytes).into_owned();
    }
    let mut out = String::from("\"");
    for chunk in bytes.utf8_chunks() {
        for c in chunk.valid().chars() {
            match c {
                '\\' => out.push_str("\\\\"),
                '"' => out.push_str("\\\""),
                '%' => out.push_str("%%"),
                '$' if !program => out.push_str("$$"),
                c if c.is_ascii_control() => out.push_str(&format!("\\x{:02x}", c as u32)),
                c => out.push(c),
            }
        }
        for b in chunk.invalid() {
            out.push_str(&format!("\\x{b:02x}"));
        }
    }
    out.push('"');
    out
}

/// Replaces `path` with a file of `bytes` in one step (temporary file, then rename), so that
/// systemd never reads half a unit.
fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    // Not a `.service` name: systemd ignores the file while it is being written.
    let tmp = dir.join(format!(
        ".{}.{}.tmp",
        path.file_name().unwrap_or_default().to_string_lossy(),
        std::process::id()
    ));
    let result = (|| {
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o644)
            .open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        fs::rename(&tmp, path)?;
        // The rename itself survives a crash only once the directory is synced.
        fs::File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_words_go_as_they_are_others_quoted_and_escaped() {
        let w = |s: &str, program| exec_word(OsStr::new(s), program);
        assert_eq!(w("/usr/bin/srcstore", true), "/usr/bin/srcstore");
        assert_eq!(w("--keep", false), "--keep");
        assert_eq!(w("", false), "\"\"");
        assert_eq!(w(";", false), "\";\"");
        assert_eq!(w("/a b/%c", false), "\"/a b/%%c\"");
        assert_eq!(w(r#"a\b"c'd"#, false), r#""a\\b\"c'd""#);
        assert_eq!(w("$HOME", false), "\"$$HOME\"");
        assert_eq!(w("/opt/$x bin/s", true), "\"/opt/$x bin/s\"");
        assert_eq!(w("a\nb\tc", false), "\"a\\x0ab\\x09c\"");
        assert_eq!(
            exec_word(OsStr::from_bytes(b"/x\xffy/\xc3\xa4"), false),
            "\"/x\\xffy/\u{e4}\""
        );
    }

    #[test]
    fn unit_names_are_valid_short_and_per_path() {
        let a = unit_name(Path::new("/home/u/my proj+x"));
        assert!(
            a.starts_with("srcstore-my-proj-x-") && a.ends_with(".service"),
            "{a}"
        );
        assert!(unit_name(Path::new("/p/%a $b 'c'-")).starts_with("srcstore-a-b-c-"));
        assert!(unit_name(Path::new("/p/-")).starts_with("srcstore-source-"));
        assert_eq!(a.len(), "srcstore-my-proj-x-".len() + 8 + ".service".len());
        assert_ne!(a, unit_name(Path::new("/srv/my proj+x")));
        assert_eq!(a, unit_name(Path::new("/home/u/my proj+x")));
        let long = unit_name(&Path::new("/p").join("x".repeat(300)));
        assert!(long.len() < 100, "{long}");
        assert!(unit_name(Path::new("/")).starts_with("srcstore-source-"));
        for n in [a, long, unit_name(Path::new("/"))] {
            assert!(
                n.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b)),
                "{n}"
            );
        }
    }
}
