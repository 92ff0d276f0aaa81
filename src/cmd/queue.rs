//! `ringmx queue ls|show|retry|delete`. `ls` and `show` read the spool and its delivery journal
//! (the server may be running or not; the work is [`crate::relay::tool`]'s); `retry` and
//! `delete` ask the running server through its control socket ([`crate::relay::control`]) and
//! fail when no server runs. Errors are one line on stderr, `ringmx queue: …`, exit status 1.

use std::io::{self, BufWriter, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Subcommand};

use crate::relay::control::{self, Command, ControlError};
use crate::relay::tool::{self, Filter};
use crate::spool::id::MessageId;
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
    /// Make deferred recipients due now, without waiting for their backoff (like Postfix's
    /// `postqueue -i ID` / `postqueue -f`). Needs the running server.
    Retry {
        /// The message id.
        #[arg(required_unless_present = "all", conflicts_with = "all")]
        id: Option<String>,
        /// Every queued message.
        #[arg(long)]
        all: bool,
    },
    /// Delete a message from the queue: its recipients not yet delivered never will be (like
    /// Postfix's `postsuper -d ID`). Recorded durably in the delivery journal; needs the
    /// running server.
    Delete {
        /// The message id.
        id: String,
    },
    /// Fail a message's recipients not yet delivered now, and send its sender a DSN saying so
    /// (like Postfix's `postsuper -r`-then-expire, or Exim's `-Mg`). Needs the running server.
    Bounce {
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
        QueueCommand::Retry { id, all } => match (id, all) {
            (Some(id), _) => {
                parse_id(id).and_then(|id| control_cmd(dir, Command::Retry(Some(id)), &mut out))
            }
            (None, _) => control_cmd(dir, Command::Retry(None), &mut out),
        },
        QueueCommand::Delete { id } => {
            parse_id(id).and_then(|id| control_cmd(dir, Command::Delete(id), &mut out))
        }
        QueueCommand::Bounce { id } => {
            parse_id(id).and_then(|id| control_cmd(dir, Command::Bounce(id), &mut out))
        }
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

fn parse_id(id: &str) -> Result<MessageId, ToolError> {
    id.parse()
        .map_err(|_| ToolError::Msg(format!("{id:?} is not a message id")))
}

/// Sends `cmd` to the server's control socket and says what it did.
fn control_cmd(dir: &std::path::Path, cmd: Command, out: &mut dyn Write) -> Result<(), ToolError> {
    let n = control::request(dir, cmd).map_err(|e| match e {
        ControlError::Refused(why) => ToolError::Msg(why),
        e => ToolError::Msg(e.to_string()),
    })?;
    let line = match cmd {
        Command::Retry(Some(id)) => format!("{id}: {n} recipient(s) due now"),
        Command::Retry(None) => format!("{n} recipient(s) due now"),
        Command::Delete(id) => format!("{id}: deleted ({n} recipient(s) not delivered)"),
        Command::Bounce(id) => format!("{id}: {n} recipient(s) failed, sender notified"),
    };
    writeln!(out, "{line}").map_err(|e| ToolError::io("stdout", e))
}
