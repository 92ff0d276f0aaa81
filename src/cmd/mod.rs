//! The command line (clap derive) and the front end of each subcommand: `serve`,
//! `check-config`, `stats`, `spool` and `queue`.
//!
//! This is the top of the module graph: it parses arguments, calls into the library and turns
//! the result into output and an exit code. Nothing below it imports it. It does not hold the
//! work itself: serving is [`crate::server`], the configuration [`crate::config`], the stats
//! socket [`crate::stats::socket`], the spool tools [`crate::spool::tool`].
//!
//! Errors are printed as one line, `ringmx: <message>`, with exit status 1.

pub mod check_config;
pub mod queue;
pub mod serve;
pub mod spool;
pub mod stats;

use std::fmt::Display;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::config::ServeArgs;

/// ringmx: io_uring SMTP ingress.
#[derive(Debug, Parser)]
#[command(name = "ringmx", version, about)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Accept mail: one io_uring reactor per core, a durable spool, a stats socket.
    Serve(ServeArgs),
    /// Check a configuration (file and flags) the way `serve` would, then exit.
    CheckConfig(ServeArgs),
    /// Print the statistics of a running server, read from its stats socket.
    Stats(stats::StatsArgs),
    /// Read the spool without a server.
    Spool(spool::SpoolArgs),
    /// The delivery queue (messages not yet delivered), from the spool and its journal.
    Queue(queue::QueueArgs),
}

/// The command line with the defaults of the `serve` options in their help texts (see
/// [`ServeArgs::show_defaults`]).
pub fn command() -> clap::Command {
    use clap::CommandFactory;
    Cli::command()
        .mut_subcommand("serve", ServeArgs::show_defaults)
        .mut_subcommand("check-config", ServeArgs::show_defaults)
}

/// Parses the process's arguments (exits with clap's usage message when they are wrong).
pub fn parse() -> Cli {
    use clap::FromArgMatches;
    match Cli::from_arg_matches(&command().get_matches()) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    }
}

/// Runs the subcommand `cli` names and returns the process's exit code.
pub fn run(cli: Cli) -> ExitCode {
    match cli.command {
        Command::Serve(args) => serve::run(&args),
        Command::CheckConfig(args) => check_config::run(&args),
        Command::Stats(args) => stats::run(&args),
        Command::Spool(args) => spool::run(&args),
        Command::Queue(args) => queue::run(&args),
    }
}

/// Success, or the error as one line and exit status 1.
fn done<E: Display>(res: Result<(), E>) -> ExitCode {
    match res {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(e),
    }
}

/// Prints `ringmx: <e>` to stderr; exit status 1.
fn fail(e: impl Display) -> ExitCode {
    eprintln!("ringmx: {e}");
    ExitCode::FAILURE
}

#[cfg(test)]
mod tests {
    use clap::ValueEnum;

    use super::*;
    use crate::smtp::BareLf;
    use crate::spool::SyncPolicy;

    #[test]
    fn clap_definition_is_consistent() {
        command().debug_assert();
    }

    #[test]
    fn policy_flags_are_spelled_by_the_enums_names() {
        for p in SyncPolicy::ALL {
            assert_eq!(p.to_possible_value().unwrap().get_name(), p.name());
            assert_eq!(SyncPolicy::from_name(p.name()), Some(p));
        }
        assert_eq!(SyncPolicy::value_variants().len(), SyncPolicy::ALL.len());
        for p in BareLf::ALL {
            assert_eq!(p.to_possible_value().unwrap().get_name(), p.name());
            assert_eq!(BareLf::from_name(p.name()), Some(p));
        }
        assert_eq!(BareLf::value_variants().len(), BareLf::ALL.len());
    }

    #[test]
    fn help_shows_the_defaults_the_config_uses() {
        let help = command()
            .find_subcommand_mut("serve")
            .unwrap()
            .render_help()
            .to_string();
        let size = crate::smtp::DEFAULT_MAX_MESSAGE_SIZE;
        assert!(
            help.contains(&format!("[default: {size} = 35 MiB]")),
            "{help}"
        );
        assert!(help.contains("[default: 100]"), "{help}");
        assert!(help.contains("[default: 300]"), "{help}");
        assert!(help.contains("[default: group]"), "{help}");
        assert!(help.contains("[default: reject]"), "{help}");
        // The README states the same defaults.
        let readme = include_str!("../../README.md");
        for flag in [
            format!("`--max-message-size {size}`"),
            format!("`--max-recipients {}`", crate::smtp::DEFAULT_MAX_RECIPIENTS),
            format!(
                "`--idle-timeout {}`",
                crate::smtp::DEFAULT_IDLE_TIMEOUT.as_secs()
            ),
            format!(
                "`--data-timeout {}`",
                crate::config::DEFAULT_DATA_TIMEOUT.as_secs()
            ),
            format!(
                "`--max-connections {}`",
                crate::config::DEFAULT_MAX_CONNECTIONS
            ),
        ] {
            assert!(readme.contains(&flag), "README lacks {flag}");
        }
    }

    #[test]
    fn serve_flags_parse() {
        let cli = Cli::try_parse_from([
            "ringmx",
            "serve",
            "--listen",
            "127.0.0.1:25",
            "--listen",
            "[::1]:2525",
            "--domain",
            "a.test",
            "--domain",
            "b.test",
            "--sync",
            "none",
            "--max-connections-per-ip",
            "7",
            "--idle-timeout",
            "2",
        ])
        .unwrap();
        let Command::Serve(args) = cli.command else {
            panic!("not serve")
        };
        assert_eq!(args.listen.len(), 2);
        assert!(args.listen[1].is_ipv6());
        assert_eq!(args.domain, ["a.test", "b.test"]);
        assert_eq!(args.sync, Some(SyncPolicy::None));
        assert_eq!(args.max_connections_per_ip, Some(7));
        assert_eq!(args.idle_timeout, Some(2));
        assert_eq!(args.max_recipients, None);
    }

    #[test]
    fn stats_format_flags_conflict() {
        assert!(
            Cli::try_parse_from(["ringmx", "stats", "--stats", "x", "--json", "--prometheus"])
                .is_err()
        );
        let cli = Cli::try_parse_from(["ringmx", "stats", "--stats", "x", "--watch"]).unwrap();
        let Command::Stats(args) = cli.command else {
            panic!("not stats")
        };
        assert!(args.watch && !args.json && !args.prometheus);
    }

    #[test]
    fn bad_listen_address_is_refused() {
        assert!(Cli::try_parse_from(["ringmx", "serve", "--listen", "localhost"]).is_err());
    }
}
