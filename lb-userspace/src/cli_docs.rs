//! Shell completions and man pages, generated from the command line's clap definition so
//! they never drift from it: `lb completions SHELL` and `lb man DIR` (hidden commands; the
//! Debian package runs them when it is built).

use std::io::Write;
use std::path::{Path, PathBuf};

/// The shells the package ships completions for.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum Shell {
    Bash,
    Zsh,
    Fish,
}

impl From<Shell> for clap_complete::Shell {
    fn from(shell: Shell) -> Self {
        match shell {
            Shell::Bash => Self::Bash,
            Shell::Zsh => Self::Zsh,
            Shell::Fish => Self::Fish,
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("writing man pages into {}: {source}", dir.display())]
pub struct ManPagesError {
    dir: PathBuf,
    source: std::io::Error,
}

/// Writes `cmd`'s completion script for `shell` to `out`.
pub fn completions(mut cmd: clap::Command, shell: Shell, out: &mut dyn Write) {
    let name = cmd.get_name().to_string();
    clap_complete::generate(clap_complete::Shell::from(shell), &mut cmd, name, out);
}

/// Writes `lb.1` and a page per visible subcommand (`lb-run.1`, `lb-xdp-pass-attach.1`,
/// ...) into `dir`, creating it if needed.
pub fn man_pages(cmd: clap::Command, dir: &Path) -> Result<(), ManPagesError> {
    let failed = |source| ManPagesError { dir: dir.to_path_buf(), source };
    std::fs::create_dir_all(dir).map_err(failed)?;
    clap_mangen::generate_to(cmd, dir).map_err(failed)
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    /// Every visible command below `cmd`, as the names from the top (`["xdp-pass", "attach"]`).
    fn visible_paths(cmd: &clap::Command, above: &[String]) -> Vec<Vec<String>> {
        let mut paths = Vec::new();
        for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set() && s.get_name() != "help") {
            let mut path = above.to_vec();
            path.push(sub.get_name().to_string());
            paths.extend(visible_paths(sub, &path));
            paths.push(path);
        }
        paths
    }

    fn bash_completion() -> String {
        let mut script = Vec::new();
        completions(crate::Cli::command(), Shell::Bash, &mut script);
        String::from_utf8(script).unwrap()
    }

    #[test]
    fn every_command_is_completed_in_bash() {
        let script = bash_completion();
        let paths = visible_paths(&crate::Cli::command(), &[]);
        assert!(paths.len() > 10, "{paths:?}");
        for path in paths {
            // clap_complete's bash script steps into a command on a `PARENT,NAME)` case, and
            // the parent offers NAME among its words.
            let name = path.last().unwrap();
            assert!(script.contains(&format!(",{name})")), "no case for {path:?}");
            assert!(script.lines().any(|l| l.contains("opts=") && l.contains(&format!(" {name} "))), "{path:?}");
        }
        // clap_complete offers the hidden commands too, in every shell; only the man pages
        // leave them out.
    }

    #[test]
    fn every_command_has_a_man_page() {
        let dir = tempfile::tempdir().unwrap();
        man_pages(crate::Cli::command(), dir.path()).unwrap();
        let page = |path: &[String]| {
            dir.path().join(format!("lb{}.1", path.iter().map(|n| format!("-{n}")).collect::<String>()))
        };
        assert!(std::fs::read_to_string(page(&[])).unwrap().contains("XDP edge load balancer"));
        for path in visible_paths(&crate::Cli::command(), &[]) {
            let text = std::fs::read_to_string(page(&path)).unwrap_or_else(|e| panic!("{path:?}: {e}"));
            assert!(text.starts_with(".ie") || text.contains(".TH"), "{path:?} is not a man page: {text}");
        }
        assert!(!dir.path().join("lb-completions.1").exists() && !dir.path().join("lb-man.1").exists());
    }
}
