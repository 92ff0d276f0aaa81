//! `ringmx stats`: ask a running server's stats socket for a snapshot and print it.
//!
//! Only the client's argument handling and output loop; the protocol is
//! [`crate::stats::socket::query`], the formats [`crate::stats::format`].

use std::io::{self, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Args;

use crate::stats::format::Format;
use crate::stats::socket::query;

/// `ringmx stats --watch` refresh period.
const WATCH_PERIOD: Duration = Duration::from_secs(1);

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

/// Prints one snapshot, or one per second with `--watch`.
pub fn run(args: &StatsArgs) -> ExitCode {
    super::done(print(args))
}

/// The client loop.
///
/// # Errors
/// The first failed query (or a write error on stdout).
fn print(args: &StatsArgs) -> io::Result<()> {
    let format = if args.json {
        Format::Json
    } else if args.prometheus {
        Format::Prometheus
    } else {
        Format::Text
    };
    let mut stdout = io::stdout().lock();
    loop {
        let text = query(&args.stats, format)?;
        if args.watch && format == Format::Text {
            // Clear the screen and home the cursor, like watch(1).
            stdout.write_all(b"\x1b[2J\x1b[H")?;
        }
        stdout.write_all(text.as_bytes())?;
        stdout.flush()?;
        if !args.watch {
            return Ok(());
        }
        std::thread::sleep(WATCH_PERIOD);
    }
}
