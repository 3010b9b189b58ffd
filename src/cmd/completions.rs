//! `srcstore completions SHELL` and `srcstore man [COMMAND]...`: a shell's completion script
//! and the manual pages, both made from the command-line definition itself, so they never
//! fall behind it.

use std::io::Write;
use std::process::ExitCode;

use anyhow::{bail, Context};

#[derive(clap::Args)]
pub struct Args {
    /// The shell to print the script for.
    shell: clap_complete::Shell,
}

#[derive(clap::Args)]
pub struct ManArgs {
    /// The command whose page to print instead of srcstore(1), e.g. `mount` or `nix setup`.
    command: Vec<String>,
}

/// Prints the completion script for `cli`, the whole command line.
pub fn run(args: Args, mut cli: clap::Command) -> anyhow::Result<ExitCode> {
    let name = cli.get_name().to_owned();
    let mut script = Vec::new();
    clap_complete::generate(args.shell, &mut cli, name, &mut script);
    emit(&script)
}

/// Prints srcstore(1), or the page of one command (`srcstore-mount(1)`, which srcstore(1) names).
pub fn man(args: ManArgs, cli: clap::Command) -> anyhow::Result<ExitCode> {
    // Every command's own `--help` covers what `srcstore help` would say.
    let mut cli = cli.disable_help_subcommand(true);
    // Gives each command its page's name, `srcstore-nix-setup`.
    cli.build();
    let mut page = &cli;
    let mut path = vec![cli.get_name()];
    for name in &args.command {
        page = match page.find_subcommand(name) {
            Some(sub) => sub,
            None => {
                let parent = path.join(" ");
                bail!("{parent} has no command `{name}`; `{parent} --help` lists them")
            }
        };
        path.push(page.get_name());
    }
    let mut roff = Vec::new();
    // A command's own page would name only itself in its footer, without a version.
    let source = format!(
        "{} {}",
        cli.get_name(),
        cli.get_version().unwrap_or_default()
    );
    clap_mangen::Man::new(page.clone())
        .source(source)
        .render(&mut roff)
        .context("rendering the man page")?;
    emit(&roff)
}

/// Writes `bytes` to standard output; a reader that has seen enough (`| head`) is no error.
fn emit(bytes: &[u8]) -> anyhow::Result<ExitCode> {
    let mut out = std::io::stdout().lock();
    match out.write_all(bytes).and_then(|()| out.flush()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
            Err(e).context("writing to standard output")
        }
        _ => Ok(ExitCode::SUCCESS),
    }
}
