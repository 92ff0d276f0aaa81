//! The command line (clap derive). (Stub.)

use clap::{Parser, Subcommand};

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
    /// Read the spool without a server.
    Spool(crate::spool::tool::SpoolArgs),
}
