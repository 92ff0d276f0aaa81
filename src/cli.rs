//! The command line (clap derive): `serve`, `check-config`, `stats` and `spool`.
//!
//! This module only describes the flags. It does not apply defaults, read the TOML file or
//! validate anything: every `serve` option is an `Option` here so that [`crate::config`] can tell
//! "given on the command line" (wins) from "absent" (falls back to the file, then the default).

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

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
    Stats(StatsArgs),
    /// Read the spool without a server.
    Spool(crate::spool::tool::SpoolArgs),
}

/// The options of `ringmx serve` (and `ringmx check-config`).
///
/// The same keys are accepted in the `--config` TOML file, spelled like the flags (kebab-case,
/// e.g. `max-message-size = 1048576`); a flag given on the command line wins over the file.
#[derive(Debug, Clone, Default, Args)]
pub struct ServeArgs {
    /// Address to listen on, IPv4 `127.0.0.1:2525` or IPv6 `[::1]:2525` (repeatable)
    /// [default: 127.0.0.1:2525].
    #[arg(long, value_name = "ADDR")]
    pub listen: Vec<SocketAddr>,
    /// A domain we accept mail for (repeatable; required here or in the config file).
    #[arg(long, value_name = "D")]
    pub domain: Vec<String>,
    /// The spool directory [default: ./spool].
    #[arg(long, value_name = "DIR")]
    pub spool: Option<PathBuf>,
    /// The stats unix socket [default: <spool>/stats.sock].
    #[arg(long, value_name = "PATH")]
    pub stats: Option<PathBuf>,
    /// Number of io_uring reactors (threads) [default: the CPUs this process may use].
    #[arg(long, value_name = "N")]
    pub reactors: Option<usize>,
    /// Our hostname in the greeting and the Received: header [default: the system's].
    #[arg(long, value_name = "NAME")]
    pub hostname: Option<String>,
    /// When to fsync: `group` (before every 250, shared by concurrent messages) or `none`
    /// (testing only: acknowledged mail can be lost) [default: group].
    #[arg(long, value_name = "POLICY")]
    pub sync: Option<SyncArg>,
    /// Largest message accepted, in bytes (advertised as SIZE) [default: 36700160 = 35 MiB].
    #[arg(long, value_name = "BYTES")]
    pub max_message_size: Option<u64>,
    /// Recipients per message [default: 100].
    #[arg(long, value_name = "N")]
    pub max_recipients: Option<usize>,
    /// Concurrent connections over all reactors; more get `421 4.7.0` [default: 10000].
    #[arg(long, value_name = "N")]
    pub max_connections: Option<usize>,
    /// Concurrent connections from one client IP address; more get `421 4.7.0`
    /// [default: no limit].
    #[arg(long, value_name = "N")]
    pub max_connections_per_ip: Option<usize>,
    /// How long a client may stay silent or take for one command, in seconds [default: 300].
    #[arg(long, value_name = "SECS")]
    pub idle_timeout: Option<u64>,
    /// How long a whole message body may take, from the 354 to the final dot, in seconds, so
    /// a client dripping bytes cannot hold a connection forever [default: 600].
    #[arg(long, value_name = "SECS")]
    pub data_timeout: Option<u64>,
    /// A bare LF (LF without CR) in a command or a body: `reject` it (500 5.5.2 / 550 5.6.0),
    /// or `normalize` it to CRLF for old clients. Bare CR is always refused, and only
    /// <CRLF>.<CRLF> ends a message either way [default: reject].
    #[arg(long, value_name = "POLICY")]
    pub bare_lf: Option<BareLfArg>,
    /// A TOML file with the same keys as these flags (kebab-case); flags win.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
}

/// `--sync` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SyncArg {
    /// fdatasync before every 250, one sync shared by all messages that end meanwhile.
    Group,
    /// Never fsync (testing only).
    None,
}

/// `--bare-lf` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum BareLfArg {
    /// Refuse commands and messages with a bare LF.
    Reject,
    /// Treat a bare LF as CRLF (stored as CRLF).
    Normalize,
}

/// The options of `ringmx stats`.
#[derive(Debug, Clone, Args)]
pub struct StatsArgs {
    /// The server's stats socket.
    #[arg(long, value_name = "PATH", default_value = "spool/stats.sock")]
    pub stats: PathBuf,
    /// Print JSON.
    #[arg(long, conflicts_with = "prometheus")]
    pub json: bool,
    /// Print the Prometheus text exposition format.
    #[arg(long)]
    pub prometheus: bool,
    /// Refresh every second until interrupted.
    #[arg(long)]
    pub watch: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clap_definition_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
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
        assert_eq!(args.sync, Some(SyncArg::None));
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
