//! `ringmx serve`: load the configuration, set up logging, run the server until it stops.
//!
//! Only the front end: the server itself is [`crate::server::run`].

use std::process::ExitCode;

use crate::config::{Config, ServeArgs};

/// Runs the server with `args`; returns once it has stopped.
pub fn run(args: &ServeArgs) -> ExitCode {
    let log = crate::server::init_logging();
    let res = match Config::load(args) {
        Ok(config) => crate::server::run(config).map_err(|e| e.to_string()),
        Err(e) => Err(e.to_string()),
    };
    // Flush the log lines before the final error line.
    drop(log);
    super::done(res)
}
