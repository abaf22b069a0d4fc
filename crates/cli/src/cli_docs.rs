//! `veil completion` and `veil man`: shell completion scripts and man
//! pages generated from the same clap definition the binary parses.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Args, CommandFactory};
use clap_complete::Shell;

/// Arguments of `veil completion`.
#[derive(Args)]
pub struct CompletionArgs {
    /// The shell: bash, zsh, fish (also elvish, powershell).
    pub shell: Shell,
}

/// Arguments of `veil man`.
#[derive(Args)]
pub struct ManArgs {
    /// Directory to write one page per (sub)command into (veil.1,
    /// veil-attest.1, veil-attest-verify.1, …); default: print veil.1 on stdout.
    #[arg(short, long, value_name = "DIR")]
    pub out_dir: Option<PathBuf>,
}

/// `veil completion SHELL`: the completion script on stdout.
pub fn completion<C: CommandFactory>(a: CompletionArgs) -> Result<ExitCode> {
    let mut cmd = C::command();
    clap_complete::generate(a.shell, &mut cmd, "veil", &mut std::io::stdout());
    Ok(ExitCode::SUCCESS)
}

/// `veil man [-o DIR]`.
pub fn man<C: CommandFactory>(a: ManArgs) -> Result<ExitCode> {
    let cmd = C::command();
    match &a.out_dir {
        None => {
            clap_mangen::Man::new(cmd).render(&mut std::io::stdout())?;
        }
        Some(dir) => {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
            let n = write_pages(cmd, dir)?;
            eprintln!("veil: {n} man pages written to {}", dir.display());
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// One page per visible (sub)command, named `veil-sub-subsub.1`.
fn write_pages(cmd: clap::Command, dir: &Path) -> Result<usize> {
    fn count(c: &clap::Command) -> usize {
        1 + c
            .get_subcommands()
            .filter(|s| !s.is_hide_set())
            .map(count)
            .sum::<usize>()
    }
    let mut built = cmd.clone().disable_help_subcommand(true);
    built.build();
    clap_mangen::generate_to(cmd, dir).with_context(|| format!("writing to {}", dir.display()))?;
    Ok(count(&built))
}
