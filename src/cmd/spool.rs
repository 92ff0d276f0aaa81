//! `ringmx spool ls|cat|export|check`: the flags of the spool tools and their front end.
//!
//! Errors are one line on stderr: `ringmx spool: …`. Exit codes: 0 success, 1 failure (I/O
//! error, unknown id, or corruption found by `check`), 2 usage error (from clap). The work
//! itself (reading, exporting, checking) is [`crate::spool::tool`]'s.

use std::io::{self, BufWriter, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Subcommand};

use crate::spool::tool::{self, Target, ToolError};

/// `ringmx spool` arguments.
#[derive(Debug, Args)]
pub struct SpoolArgs {
    /// The spool directory.
    #[arg(long, global = true, value_name = "DIR", default_value = "./spool")]
    pub spool: PathBuf,
    /// What to do.
    #[command(subcommand)]
    pub command: SpoolCommand,
}

/// `ringmx spool` subcommands.
#[derive(Debug, Subcommand)]
pub enum SpoolCommand {
    /// List committed messages, oldest first: id, time (UTC), client IP, size, from,
    /// recipients, decoded Subject (tab-separated).
    Ls {
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
    },
    /// Print one message (the stored RFC 5322 bytes, our Received: header first) to stdout.
    Cat {
        /// The message id (as in `ls` or the 250 reply).
        id: String,
    },
    /// Export committed messages as files. Incremental: progress is kept in the target
    /// directory, and a rerun exports only what is new.
    Export(ExportArgs),
    /// Verify every frame's CRC and every message, count messages, report torn tails.
    /// Exits 1 if corruption is found (torn tails and crash gaps are normal after a crash).
    Check {
        /// One JSON object.
        #[arg(long)]
        json: bool,
    },
}

/// Where `export` writes.
#[derive(Debug, Args)]
#[group(required = true, multiple = false)]
pub struct ExportArgs {
    /// Write `<id>.eml` files into DIR.
    #[arg(long, value_name = "DIR")]
    pub eml: Option<PathBuf>,
    /// Deliver into the Maildir DIR (tmp/ then rename to new/).
    #[arg(long, value_name = "DIR")]
    pub maildir: Option<PathBuf>,
}

/// Runs a spool subcommand; prints errors and returns the exit code.
pub fn run(args: &SpoolArgs) -> ExitCode {
    let stdout = io::stdout();
    let mut out = BufWriter::new(stdout.lock());
    let res = dispatch(args, &mut out).and_then(|code| {
        out.flush().map_err(|e| ToolError::io("stdout", e))?;
        Ok(code)
    });
    match res {
        Ok(code) => code,
        Err(ToolError::BrokenPipe) => ExitCode::SUCCESS,
        Err(e) => {
            drop(out);
            eprintln!("ringmx spool: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Runs a subcommand, writing its output to `out`.
///
/// # Errors
/// See [`ToolError`].
pub fn dispatch(args: &SpoolArgs, out: &mut dyn Write) -> Result<ExitCode, ToolError> {
    let dir = &args.spool;
    tool::require_spool_dir(dir)?;
    match &args.command {
        SpoolCommand::Ls { json } => tool::ls(dir, *json, out)?,
        SpoolCommand::Cat { id } => tool::cat(dir, id, out)?,
        SpoolCommand::Export(ExportArgs { eml, maildir }) => {
            let target = match (eml, maildir) {
                (Some(d), None) => Target::Eml(d.clone()),
                (None, Some(d)) => Target::Maildir(d.clone()),
                _ => {
                    return Err(ToolError::Msg(
                        "give exactly one of --eml DIR or --maildir DIR".into(),
                    ))
                }
            };
            let s = tool::export(dir, &target)?;
            writeln!(
                out,
                "exported {} new message(s), {} already there, to {}",
                s.exported,
                s.skipped,
                target.dir().display()
            )
            .map_err(|e| ToolError::io("stdout", e))?;
        }
        SpoolCommand::Check { json } => {
            if !tool::check(dir, *json, out)? {
                return Ok(ExitCode::FAILURE);
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
