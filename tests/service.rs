//! `srcstore service`: the unit it writes is one systemd accepts and reads back as the intended
//! command line, rewriting it is idempotent, and `remove` takes it back.

mod support;

use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use support::{stderr, Sandbox};

/// A project name with everything a unit file treats specially: a space, `%` (specifiers),
/// `$` (environment variables), quotes and a backslash (escapes).
const AWKWARD: &str = r#"my proj 100% $HOME "q" 'q' \x"#;

/// The systemd user unit directory under `config` (what `XDG_CONFIG_HOME` names).
fn unit_dir(config: &Path) -> PathBuf {
    config.join("systemd/user")
}

/// `srcstore service ARGS` with its own `XDG_CONFIG_HOME`.
fn service(sb: &Sandbox, config: &Path, args: &[&str]) -> Output {
    sb.cmd()
        .env("XDG_CONFIG_HOME", config)
        .arg("service")
        .args(args)
        .output()
        .unwrap()
}

fn ok(out: Output) -> String {
    assert!(out.status.success(), "{}", stderr(&out));
    String::from_utf8(out.stdout).unwrap()
}

/// The names in a directory, sorted.
fn listing(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    names
}

/// The only unit in `config`, after checking its name: `srcstore-<name>-<8 hex>.service`.
fn the_unit(config: &Path, name: &str) -> (String, PathBuf) {
    let names = listing(&unit_dir(config));
    assert_eq!(names.len(), 1, "{names:?}");
    let unit = names[0].clone();
    let key = unit
        .strip_prefix(&format!("srcstore-{name}-"))
        .and_then(|rest| rest.strip_suffix(".service"))
        .unwrap_or_else(|| panic!("{unit}"));
    assert!(
        key.len() == 8 && key.bytes().all(|b| b.is_ascii_hexdigit()),
        "{unit}"
    );
    (unit.clone(), unit_dir(config).join(unit))
}

/// The value of the one `key=` line.
fn setting<'a>(text: &'a str, key: &str) -> &'a str {
    let values: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix(key)?.strip_prefix('='))
        .collect();
    assert_eq!(values.len(), 1, "{key} in {text}");
    values[0]
}

/// The command line systemd runs for an `ExecStart=` value, by its rules: words split at
/// unquoted whitespace, quotes removed, C escapes undone, `%%` is `%`, and in the arguments
/// (not the program) `$$` is `$`. Anything it would expand instead fails the test.
fn exec_argv(value: &str) -> Vec<Vec<u8>> {
    let mut words = Vec::new();
    let mut chars = value.chars().peekable();
    loop {
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        let Some(first) = chars.next() else { break };
        let mut word = Vec::new();
        let quote = matches!(first, '"' | '\'').then_some(first);
        let mut c = if quote.is_some() {
            chars.next()
        } else {
            Some(first)
        };
        loop {
            match c {
                None => {
                    assert!(quote.is_none(), "unbalanced quote in {value}");
                    break;
                }
                Some(q) if Some(q) == quote => break,
                Some(w) if quote.is_none() && w.is_whitespace() => break,
                Some('\\') => match chars.next().expect("a lone backslash") {
                    'x' => {
                        let hex: String = [chars.next().unwrap(), chars.next().unwrap()]
                            .into_iter()
                            .collect();
                        word.push(u8::from_str_radix(&hex, 16).unwrap());
                    }
                    'n' => word.push(b'\n'),
                    't' => word.push(b'\t'),
                    e @ ('\\' | '"' | '\'' | ' ') => word.push(e as u8),
                    e => panic!("unexpected escape \\{e} in {value}"),
                },
                Some(ch) => word.extend_from_slice(ch.encode_utf8(&mut [0; 4]).as_bytes()),
            }
            c = chars.next();
        }
        if quote.is_some() {
            if let Some(next) = chars.peek() {
                assert!(
                    next.is_whitespace(),
                    "text after a closing quote in {value}"
                );
            }
        }
        words.push(word);
    }
    words
        .into_iter()
        .enumerate()
        .map(|(i, w)| {
            let w = unescape_pair(&w, b'%');
            if i == 0 {
                w
            } else {
                unescape_pair(&w, b'$')
            }
        })
        .collect()
}

/// `cc` becomes `c`; a lone `c` (a specifier, a variable) fails.
fn unescape_pair(word: &[u8], c: u8) -> Vec<u8> {
    let mut out = Vec::new();
    let mut bytes = word.iter();
    while let Some(&b) = bytes.next() {
        if b == c {
            assert_eq!(
                bytes.next(),
                Some(&c),
                "a lone {} in {}",
                c as char,
                String::from_utf8_lossy(word)
            );
        }
        out.push(b);
    }
    out
}

/// The runtime directory `systemd-analyze --user` wants: the user's own, mode 0700.
fn runtime_dir(sb: &Sandbox) -> PathBuf {
    let dir = sb.path("runtime");
    fs::create_dir(&dir).unwrap();
    support::chmod(&dir, 0o700);
    dir
}

/// `systemd-analyze verify --user` of a unit, as the user manager would load it.
fn systemd_verify(sb: &Sandbox, config: &Path, unit: &Path) {
    let out = Command::new("systemd-analyze")
        .args(["verify", "--user"])
        .arg(unit)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", sb.home())
        .env("XDG_CONFIG_HOME", config)
        .env("XDG_RUNTIME_DIR", runtime_dir(sb))
        .output()
        .expect("systemd-analyze is needed (Debian package `systemd`)");
    // It goes on past a setting it ignores, saying so: any word from it is a failure.
    assert!(
        out.status.success() && out.stderr.is_empty() && out.stdout.is_empty(),
        "systemd-analyze verify {}: {}\n{}",
        unit.display(),
        stderr(&out),
        fs::read_to_string(unit).unwrap()
    );
}

#[test]
fn install_writes_a_unit_systemd_accepts_and_runs_as_meant() {
    let sb = Sandbox::new();
    let project = sb.path(AWKWARD);
    fs::create_dir(&project).unwrap();
    // The unit names the binary that wrote it: one at an awkward path shows that its quoting
    // is right by systemd's own reading, which checks that the program is there. (systemd
    // refuses quotes and backslashes in a program's path, so those stay out of this one.)
    let bin_dir = sb.path("bin 100% $dir");
    fs::create_dir(&bin_dir).unwrap();
    let bin = bin_dir.join("srcstore");
    fs::hard_link(support::srcstore_bin(), &bin)
        .or_else(|_| fs::copy(support::srcstore_bin(), &bin).map(drop))
        .unwrap();
    let config = sb.path("config");
    let out = ok(Command::new(&bin)
        .env_clear()
        .env("HOME", sb.home())
        .env("XDG_CONFIG_HOME", &config)
        .current_dir(sb.path(""))
        .args([
            "service",
            "install",
            "--mount-arg=--keep",
            "--mount-arg",
            "4",
        ])
        .arg(AWKWARD)
        .output()
        .unwrap());

    let (unit, path) = the_unit(&config, "my-proj-100-HOME-q-q-x");
    let text = fs::read_to_string(&path).unwrap();
    let (bin, project) = (
        fs::canonicalize(bin).unwrap(),
        fs::canonicalize(project).unwrap(),
    );
    let argv = exec_argv(setting(&text, "ExecStart"));
    let expected: Vec<&[u8]> = vec![
        bin.as_os_str().as_bytes(),
        b"mount",
        b"--allow-other",
        b"--keep",
        b"4",
        project.as_os_str().as_bytes(),
    ];
    assert_eq!(
        argv,
        expected,
        "{}",
        setting(&text, "ExecStart") // the line, when the words are off
    );
    for (key, value) in [
        ("Type", "simple"),
        ("Restart", "on-failure"),
        ("KillSignal", "SIGTERM"),
        ("TimeoutStopSec", "10"),
        ("WantedBy", "default.target"),
    ] {
        assert_eq!(setting(&text, key), value, "{text}");
    }
    assert!(
        setting(&text, "Description").contains("my proj 100%% $HOME"),
        "{text}"
    );
    systemd_verify(&sb, &config, &path);

    let lines: Vec<&str> = out.lines().map(str::trim).collect();
    assert_eq!(lines[0], format!("installed {}", path.display()), "{out}");
    let reload = lines
        .iter()
        .position(|l| *l == "systemctl --user daemon-reload");
    let enable = lines
        .iter()
        .position(|l| *l == format!("systemctl --user enable --now {unit}"));
    assert!(reload.is_some() && reload < enable, "{out}");
    assert!(
        lines.contains(&format!("journalctl --user -u {unit}").as_str()),
        "{out}"
    );
}

#[test]
fn each_project_gets_its_own_unit() {
    let sb = Sandbox::new();
    let config = sb.path("config");
    let mut projects = Vec::new();
    for dir in ["a/my app", "b/my app"] {
        fs::create_dir_all(sb.path(dir)).unwrap();
        ok(service(
            &sb,
            &config,
            &["install", sb.path(dir).to_str().unwrap()],
        ));
        projects.push(fs::canonicalize(sb.path(dir)).unwrap());
    }
    let names = listing(&unit_dir(&config));
    assert_eq!(names.len(), 2, "{names:?}");
    let mut served: Vec<PathBuf> = names
        .iter()
        .map(|name| {
            assert!(name.starts_with("srcstore-my-app-"), "{name}");
            let text = fs::read_to_string(unit_dir(&config).join(name)).unwrap();
            let argv = exec_argv(setting(&text, "ExecStart"));
            PathBuf::from(std::ffi::OsStr::from_bytes(argv.last().unwrap()))
        })
        .collect();
    served.sort();
    assert_eq!(served, projects);
}

#[test]
fn installing_again_is_idempotent() {
    let sb = Sandbox::new();
    let project = sb.path("proj");
    fs::create_dir(&project).unwrap();
    let config = sb.path("config");
    let dir = project.to_str().unwrap();
    ok(service(&sb, &config, &["install", dir]));
    let (unit, path) = the_unit(&config, "proj");
    let first = fs::read(&path).unwrap();

    let again = ok(service(&sb, &config, &["install", dir]));
    assert!(
        again.starts_with(&format!("unchanged: {}\n", path.display())),
        "{again}"
    );
    assert_eq!(fs::read(&path).unwrap(), first);
    // The same project by another spelling is the same unit.
    let relative = sb
        .cmd()
        .env("XDG_CONFIG_HOME", &config)
        .current_dir(&project)
        .args(["service", "install"])
        .output()
        .unwrap();
    assert!(ok(relative).starts_with("unchanged: "));

    // Other arguments replace it in place; a running daemon needs a restart to take them.
    let changed = ok(service(
        &sb,
        &config,
        &["install", "--mount-arg=--keep=4", dir],
    ));
    assert!(
        changed.starts_with(&format!("updated {}\n", path.display())),
        "{changed}"
    );
    assert!(
        changed.contains(&format!("systemctl --user restart {unit}")),
        "{changed}"
    );
    let text = fs::read_to_string(&path).unwrap();
    assert!(setting(&text, "ExecStart").contains(" --keep=4 "), "{text}");
    // Nothing left beside it: the temporary file was renamed into place.
    assert_eq!(listing(&unit_dir(&config)), [unit]);
}

#[test]
fn remove_takes_it_back() {
    let sb = Sandbox::new();
    let project = sb.path("proj");
    fs::create_dir(&project).unwrap();
    let config = sb.path("config");
    let dir = project.to_str().unwrap();
    ok(service(&sb, &config, &["install", dir]));
    let (unit, path) = the_unit(&config, "proj");

    let out = ok(service(&sb, &config, &["remove", dir]));
    assert!(!path.exists());
    assert!(listing(&unit_dir(&config)).is_empty());
    let lines: Vec<&str> = out.lines().map(str::trim).collect();
    assert_eq!(lines[0], format!("removed {}", path.display()), "{out}");
    let stop = lines
        .iter()
        .position(|l| *l == format!("systemctl --user stop {unit}"));
    let reload = lines
        .iter()
        .position(|l| *l == "systemctl --user daemon-reload");
    assert!(stop.is_some() && stop < reload, "{out}");

    // A project deleted since still has its unit removed.
    ok(service(&sb, &config, &["install", dir]));
    fs::remove_dir(&project).unwrap();
    ok(service(&sb, &config, &["remove", dir]));
    assert!(listing(&unit_dir(&config)).is_empty());
}

#[test]
fn remove_refuses_an_enabled_unit_and_says_how_to_disable_it() {
    let sb = Sandbox::new();
    let project = sb.path("proj");
    fs::create_dir(&project).unwrap();
    let dir = project.to_str().unwrap();
    // No XDG_CONFIG_HOME: the units are in ~/.config.
    let config = sb.home().join(".config");
    sb.ok(&["service", "install", dir]);
    let (unit, path) = the_unit(&config, "proj");
    // What `systemctl --user enable` leaves.
    let wants = unit_dir(&config).join("default.target.wants");
    fs::create_dir(&wants).unwrap();
    std::os::unix::fs::symlink(&path, wants.join(&unit)).unwrap();

    let err = sb.fails(&["service", "remove", dir]);
    assert!(
        err.contains(&format!("`systemctl --user disable --now {unit}`")),
        "{err}"
    );
    assert!(path.exists());

    fs::remove_file(wants.join(&unit)).unwrap();
    sb.ok(&["service", "remove", dir]);
    assert!(!path.exists());
}

#[test]
fn removing_a_unit_that_is_not_there_is_an_error_naming_it() {
    let sb = Sandbox::new();
    let project = sb.path("proj");
    fs::create_dir(&project).unwrap();
    let err = sb.fails(&["service", "remove", project.to_str().unwrap()]);
    let units = sb.home().join(".config/systemd/user");
    assert!(
        err.contains(&format!("{}/srcstore-proj-", units.display())) && err.contains(".service"),
        "{err}"
    );
    assert!(err.contains("not installed"), "{err}");
}

#[test]
fn install_of_what_is_not_a_directory_is_an_error_and_writes_nothing() {
    let sb = Sandbox::new();
    let missing = sb.path("missing");
    let err = sb.fails(&["service", "install", missing.to_str().unwrap()]);
    assert!(err.contains(missing.to_str().unwrap()), "{err}");

    let file = sb.path("file");
    fs::write(&file, "").unwrap();
    let err = sb.fails(&["service", "install", file.to_str().unwrap()]);
    assert!(
        err.contains(file.to_str().unwrap()) && err.contains("not a directory"),
        "{err}"
    );
    assert!(!sb.home().join(".config").exists());
}

#[test]
fn mount_args_are_checked_before_anything_is_written() {
    let sb = Sandbox::new();
    let project = sb.path("proj");
    fs::create_dir(&project).unwrap();
    let dir = project.to_str().unwrap();
    for (arg, said) in [
        ("--mount-arg=--kepe", "--kepe"),
        ("--mount-arg=--allow-other", "--allow-other"),
        ("--mount-arg=/elsewhere", "/elsewhere"),
    ] {
        let err = sb.fails(&["service", "install", arg, dir]);
        assert!(err.contains(said), "{arg}: {err}");
    }
    assert!(!sb.home().join(".config").exists());
}
