//! `ringmx spool …`: read the spool without a server. (Being written.)

use std::process::ExitCode;

/// `ringmx spool` arguments.
#[derive(Debug, clap::Args)]
pub struct SpoolArgs {}

/// Runs a spool subcommand.
pub fn run(args: SpoolArgs) -> ExitCode {
    let _ = args;
    ExitCode::FAILURE
}
