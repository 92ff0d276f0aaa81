//! `ringmx queue ls|show`: the delivery queue, read from the spool and its delivery journal
//! (the server may be running or not). The work is [`crate::relay::tool`]'s. Errors are one
//! line on stderr, `ringmx queue: …`, exit status 1.

use std::io::{self, BufWriter, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Subcommand};

use crate::relay::tool::{self, Filter};
use crate::spool::tool::ToolError;

/// `ringmx queue` arguments.
#[derive(Debug, Args)]
pub struct QueueArgs {
    /// The spool directory.
    #[arg(long, global = true, value_name = "DIR", default_value = "./spool")]
    pub spool: PathBuf,
    /// What to do.
    #[command(subcommand)]
    pub command: QueueCommand,
}

/// `ringmx queue` subcommands.
#[derive(Debug, Subcommand)]
pub enum QueueCommand {
    /// List messages not yet delivered to every recipient: id, arrival (UTC), size, from,
    /// and each recipient with its state (queued, deferred, failed, delivered).
    Ls {
        /// Only messages with a deferred recipient.
        #[arg(long, conflicts_with = "failed")]
        deferred: bool,
        /// Only messages with a failed recipient (bounced) and others still pending.
        #[arg(long)]
        failed: bool,
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
    },
    /// Show one message: envelope, and per recipient its state, attempts, last reply and next
    /// retry.
    Show {
        /// The message id.
        id: String,
    },
}

/// Runs a queue subcommand; prints errors and returns the exit code.
pub fn run(args: &QueueArgs) -> ExitCode {
    let stdout = io::stdout();
    let mut out = BufWriter::new(stdout.lock());
    let dir = &args.spool;
    let res = match &args.command {
        QueueCommand::Ls {
            deferred,
            failed,
            json,
        } => {
            let filter = if *deferred {
                Filter::Deferred
            } else if *failed {
                Filter::Failed
            } else {
                Filter::All
            };
            tool::ls(dir, filter, *json, &mut out)
        }
        QueueCommand::Show { id } => tool::show(dir, id, &mut out),
    }
    .and_then(|()| out.flush().map_err(|e| ToolError::io("stdout", e)));
    match res {
        Ok(()) | Err(ToolError::BrokenPipe) => ExitCode::SUCCESS,
        Err(e) => {
            drop(out);
            eprintln!("ringmx queue: {e}");
            ExitCode::FAILURE
        }
    }
}
