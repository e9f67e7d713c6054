//! `overlayctl generate`: shell completions and man pages made from the clap definition,
//! for packaging (`scripts/package`). Hidden from `--help`, the completions and the man
//! pages themselves. Writes only into the folder it is given; talks to no daemon.

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::Subcommand;
use clap_complete::Shell;

/// `overlayctl generate ...`.
#[derive(Subcommand, Debug)]
pub enum GenerateCommand {
    /// Write completions for bash (`overlayctl.bash`), zsh (`_overlayctl`) and fish
    /// (`overlayctl.fish`) into DIR.
    Completions {
        /// The folder to write into (created if missing).
        #[arg(value_name = "DIR")]
        dir: PathBuf,
    },
    /// Write man pages into DIR: `overlayctl.1` and one per subcommand
    /// (`overlayctl-token-create.1`, ...).
    Man {
        /// The folder to write into (created if missing).
        #[arg(value_name = "DIR")]
        dir: PathBuf,
    },
}

/// Runs `command` for the command line `cli` (the whole `overlayctl`).
pub fn run(command: GenerateCommand, cli: clap::Command) -> anyhow::Result<()> {
    let mut cli = without_hidden(cli);
    match command {
        GenerateCommand::Completions { dir } => {
            create(&dir)?;
            let name = cli.get_name().to_owned();
            for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
                let path = clap_complete::generate_to(shell, &mut cli, &name, &dir).with_context(
                    || format!("cannot write {shell} completions into {}", dir.display()),
                )?;
                println!("{}", path.display());
            }
        }
        GenerateCommand::Man { dir } => {
            create(&dir)?;
            clap_mangen::generate_to(cli, &dir)
                .with_context(|| format!("cannot write man pages into {}", dir.display()))?;
            println!("{}", dir.display());
        }
    }
    Ok(())
}

/// `cli` without its hidden subcommands: clap_complete would offer them (it completes
/// hidden ones too), and `help` would list them.
fn without_hidden(cli: clap::Command) -> clap::Command {
    let mut shown = clap::Command::new(env!("CARGO_BIN_NAME"))
        .version(env!("CARGO_PKG_VERSION"))
        .subcommand_required(cli.is_subcommand_required_set())
        .arg_required_else_help(cli.is_arg_required_else_help_set())
        .args(cli.get_arguments().cloned())
        .subcommands(cli.get_subcommands().filter(|s| !s.is_hide_set()).cloned());
    if let Some(about) = cli.get_about() {
        shown = shown.about(about.clone());
    }
    if let Some(about) = cli.get_long_about() {
        shown = shown.long_about(about.clone());
    }
    shown
}

fn create(dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory as _;

    #[test]
    fn completions_for_three_shells_without_the_hidden_command() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("completions");
        let command = GenerateCommand::Completions { dir: out.clone() };
        run(command, crate::Cli::command()).unwrap();
        for name in ["overlayctl.bash", "_overlayctl", "overlayctl.fish"] {
            let text = std::fs::read_to_string(out.join(name)).unwrap();
            assert!(text.contains("token"), "{name} completes the subcommands");
            assert!(text.contains("socket"), "{name} completes --socket");
            assert!(!text.contains("packaging"), "{name} offers `generate`");
        }
    }

    #[test]
    fn a_man_page_per_visible_subcommand() {
        let dir = tempfile::tempdir().unwrap();
        run(
            GenerateCommand::Man {
                dir: dir.path().to_owned(),
            },
            crate::Cli::command(),
        )
        .unwrap();
        let mut names: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        for page in [
            "overlayctl.1",
            "overlayctl-init.1",
            "overlayctl-join.1",
            "overlayctl-keys-generate.1",
            "overlayctl-peers.1",
            "overlayctl-status.1",
            "overlayctl-token-create.1",
        ] {
            assert!(names.iter().any(|n| n == page), "{page} missing: {names:?}");
        }
        assert!(
            !names.iter().any(|n| n.starts_with("overlayctl-generate")),
            "{names:?}"
        );
        let top = std::fs::read_to_string(dir.path().join("overlayctl.1")).unwrap();
        assert!(top.contains("overlayctl\\-join(1)"), "{top}");
    }
}
