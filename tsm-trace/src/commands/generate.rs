//! `tsm-trace generate DIR` (hidden): what a package ships beside the binary, made from the
//! command-line definition itself so that none of it can drift from the flags:
//! `man/*.1` (clap_mangen), `completions/{tsm-trace.bash,_tsm-trace,tsm-trace.fish}`
//! (clap_complete) and `default/tsm-trace`, the commented `/etc/default/tsm-trace`.

use std::path::Path;

use anyhow::{Context, Result};
use clap::{Arg, ArgAction, Command};

/// The variable the systemd unit passes to `run` as extra arguments (`$TSM_TRACE_ARGS`), for
/// options that have no variable of their own.
pub const ARGS_VAR: &str = "TSM_TRACE_ARGS";

fn write(path: &Path, bytes: &[u8]) -> Result<()> {
    std::fs::write(path, bytes).with_context(|| format!("writing {}", path.display()))
}

pub fn run(cmd: Command, out: &Path) -> Result<()> {
    // No pages for `help`, which only repeats them.
    let man_cmd = cmd.clone().disable_help_subcommand(true);
    let mut cmd = cmd;
    cmd.build();
    let man = out.join("man");
    let comp = out.join("completions");
    let default = out.join("default");
    for d in [&man, &comp, &default] {
        std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
    }
    // One page for the program, one per visible subcommand (tsm-trace-run.1, ...).
    clap_mangen::generate_to(man_cmd, &man).context("writing the man pages")?;
    environment_sections(&cmd, &man)?;
    for (shell, name) in [
        (clap_complete::Shell::Bash, "tsm-trace.bash"),
        (clap_complete::Shell::Zsh, "_tsm-trace"),
        (clap_complete::Shell::Fish, "tsm-trace.fish"),
    ] {
        let mut buf = Vec::new();
        clap_complete::generate(shell, &mut cmd, "tsm-trace", &mut buf);
        write(&comp.join(name), &buf)?;
    }
    let run = cmd
        .find_subcommand("run")
        .context("the CLI has no `run` subcommand")?;
    write(
        &default.join("tsm-trace"),
        default_file(&cmd, run).as_bytes(),
    )?;
    Ok(())
}

/// Appends an ENVIRONMENT section to each page whose command reads `TSM_TRACE_*` variables
/// (clap_mangen writes none).
fn environment_sections(cmd: &Command, man: &Path) -> Result<()> {
    let mut pages = vec![("tsm-trace".to_string(), cmd)];
    pages.extend(
        cmd.get_subcommands()
            .filter(|s| !s.is_hide_set())
            .map(|s| (format!("tsm-trace-{}", s.get_name()), s)),
    );
    for (name, c) in pages {
        let vars: Vec<(String, &str)> = c
            .get_arguments()
            .filter(|a| !a.is_hide_set())
            .filter_map(|a| Some((a.get_env()?.to_string_lossy().into_owned(), a.get_long()?)))
            .collect();
        let path = man.join(format!("{name}.1"));
        if vars.is_empty() || !path.exists() {
            continue;
        }
        let mut page = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        page.push_str(
            ".SH ENVIRONMENT\nEach option below also reads its variable; the command line wins.\n",
        );
        for (var, long) in vars {
            let long = long.replace('-', "\\-");
            page.push_str(&format!(".TP\n\\fB{var}\\fR\n\\fB\\-\\-{long}\\fR\n"));
        }
        write(&path, page.as_bytes())?;
    }
    Ok(())
}

fn help(a: &Arg) -> String {
    a.get_long_help()
        .or_else(|| a.get_help())
        .map(|h| h.to_string())
        .unwrap_or_default()
}

/// Wraps `text` into `# `-comment lines of at most 78 columns.
fn comment(text: &str, out: &mut String) {
    for para in text.split('\n') {
        let mut line = String::from("#");
        for word in para.split_whitespace() {
            if line.len() + 1 + word.len() > 78 && line.len() > 1 {
                out.push_str(&line);
                out.push('\n');
                line = String::from("#");
            }
            line.push(' ');
            line.push_str(word);
        }
        out.push_str(&line);
        out.push('\n');
    }
}

fn takes_value(a: &Arg) -> bool {
    matches!(a.get_action(), ArgAction::Set | ArgAction::Append)
}

/// `/etc/default/tsm-trace`: every option of `run` (and the global ones), commented out with
/// its help and default; options without a variable go through [`ARGS_VAR`].
pub fn default_file(root: &Command, run: &Command) -> String {
    let mut out = String::new();
    comment(
        "Environment of the tsm-trace service (systemd reads it with EnvironmentFile=). \
         Every option of `tsm-trace run` is below, commented out at its default; uncomment \
         and change a line, then `systemctl restart tsm-trace`. Generated from the \
         command-line definition by `tsm-trace generate`; `man tsm-trace-run` has the same.",
        &mut out,
    );
    let args = root
        .get_arguments()
        .filter(|a| a.is_global_set())
        .chain(run.get_arguments())
        .filter(|a| !a.is_hide_set() && a.get_long().is_some())
        .filter(|a| !matches!(a.get_id().as_str(), "help" | "version"));
    let mut without_env = Vec::new();
    // A global option also appears among `run`'s own once the command is built: once here.
    let mut seen = std::collections::HashSet::new();
    for a in args {
        if !seen.insert(a.get_id().clone()) {
            continue;
        }
        let long = a.get_long().unwrap_or_default();
        let Some(env) = a.get_env() else {
            without_env.push(a);
            continue;
        };
        out.push('\n');
        let switch = if takes_value(a) {
            ""
        } else {
            " (A switch: true turns it on.)"
        };
        comment(&format!("--{long}: {}{switch}", help(a)), &mut out);
        let default: Vec<String> = a
            .get_default_values()
            .iter()
            .map(|v| v.to_string_lossy().into_owned())
            .collect();
        let value = if takes_value(a) {
            default.join(",")
        } else {
            "false".to_string()
        };
        out.push_str(&format!("#{}={value}\n", env.to_string_lossy()));
    }
    out.push('\n');
    comment(
        &format!(
            "Options without a variable of their own, passed to `tsm-trace run` as arguments \
             through {ARGS_VAR} (split at spaces), e.g. {ARGS_VAR}=\"--disable vmm_exit --ringbuf-size 1048576\":"
        ),
        &mut out,
    );
    for a in without_env {
        let long = a.get_long().unwrap_or_default();
        let value = a
            .get_value_names()
            .and_then(|v| v.first())
            .map(|v| format!(" {v}"))
            .unwrap_or_default();
        let default: Vec<String> = a
            .get_default_values()
            .iter()
            .map(|v| v.to_string_lossy().into_owned())
            .collect();
        let d = if default.is_empty() {
            String::new()
        } else {
            format!(" [default: {}]", default.join(","))
        };
        comment(&format!("  --{long}{value}{d}: {}", help(a)), &mut out);
    }
    out.push_str(&format!("#{ARGS_VAR}=\n"));
    out
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    #[test]
    fn default_file_names_every_option_of_run() {
        let mut root = crate::Cli::command();
        root.build();
        let run = root.find_subcommand("run").unwrap();
        let text = default_file(&root, run);
        let mut n = 0;
        for a in run.get_arguments().filter(|a| !a.is_hide_set()) {
            let Some(long) = a.get_long() else { continue };
            if long == "help" {
                continue;
            }
            n += 1;
            match a.get_env() {
                Some(env) => {
                    let env = env.to_string_lossy();
                    assert!(
                        text.contains(&format!("\n#{env}=")),
                        "{env} missing:\n{text}"
                    );
                    assert!(text.contains(&format!("# --{long}: ")), "--{long} missing");
                }
                None => {
                    let at = text.find(&format!("# --{long} ")).unwrap_or(0);
                    assert!(at > text.find(ARGS_VAR).unwrap(), "--{long} missing");
                }
            }
        }
        assert!(n > 20, "only {n} options of run");
        assert!(text.contains("#TSM_TRACE_LISTEN=0.0.0.0:9477\n"), "{text}");
        for var in ["TSM_TRACE_LOG", "TSM_TRACE_LOG_FORMAT"] {
            assert_eq!(
                text.matches(&format!("\n#{var}=")).count(),
                1,
                "{var} listed twice"
            );
        }
        assert!(text.contains("#TSM_TRACE_NO_PERSIST=false\n"), "{text}");
        assert!(text.ends_with(&format!("#{ARGS_VAR}=\n")));
        // Every line is a comment or blank: installing the file changes nothing.
        assert!(text.lines().all(|l| l.is_empty() || l.starts_with('#')));
    }

    #[test]
    fn generates_man_pages_and_completions() {
        let t = tempfile::tempdir().unwrap();
        run(crate::Cli::command(), t.path()).unwrap();
        for f in [
            "man/tsm-trace.1",
            "man/tsm-trace-run.1",
            "man/tsm-trace-doctor.1",
            "completions/tsm-trace.bash",
            "completions/_tsm-trace",
            "completions/tsm-trace.fish",
            "default/tsm-trace",
        ] {
            let p = t.path().join(f);
            assert!(std::fs::metadata(&p).unwrap().len() > 100, "{f}");
        }
        assert!(!t.path().join("man/tsm-trace-help.1").exists());
        assert!(!t.path().join("man/tsm-trace-generate.1").exists());
        let run_page = std::fs::read_to_string(t.path().join("man/tsm-trace-run.1")).unwrap();
        assert!(run_page.contains("late\\-attach\\-window"), "{run_page}");
        let env = run_page
            .split(".SH ENVIRONMENT")
            .nth(1)
            .expect("ENVIRONMENT section");
        assert!(
            env.contains("TSM_TRACE_LISTEN") && env.contains("\\-\\-listen"),
            "{env}"
        );
        assert!(env.contains("TSM_TRACE_PIN_DIR"), "{env}");
    }
}
