//! `smtp-source`: an SMTP load generator, flag-compatible with Postfix's smtp-source where the
//! flags mean the same, built to cost less per message than the server it measures.
//!
//! It also checks a server's stored messages against its log of acknowledged tokens
//! (`--verify-eml`). It does not do TLS, AUTH or LMTP.
//!
//! # Layout
//! - [`args`]: flags (Postfix getopt style plus our long flags).
//! - [`message`]: tokens, the canonical message for a token, dot-stuffing, the [`message::Template`].
//! - [`proxy`]: the PROXY protocol header of `--proxy`.
//! - [`reply`]: SMTP reply parsing, sans-IO.
//! - [`session`]: one connection's SMTP dialogue as a state machine, sans-IO.
//! - [`engine`]: the epoll loop(s), timeouts, the shared message counter, the ack log.
//! - [`report`]: counters, HDR histograms, the text and JSON reports, the progress line.
//! - [`verify`]: the ack-log-versus-export check.

mod args;
mod engine;
mod message;
mod proxy;
mod reply;
mod report;
mod session;
mod tls;
mod verify;

use std::io::Write;
use std::process::ExitCode;

use args::Mode;

fn main() -> ExitCode {
    let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into());
    let mode = match args::parse(std::env::args_os().skip(1), &hostname) {
        Ok(m) => m,
        Err(e) => {
            eprintln!("smtp-source: {e}\n{}", args::USAGE);
            return ExitCode::from(2);
        }
    };
    match mode {
        Mode::Help => {
            print!("{}", args::USAGE);
            ExitCode::SUCCESS
        }
        Mode::Render { config, token } => {
            if !message::is_token(&token) {
                eprintln!("smtp-source: {token:?} is not a token");
                return ExitCode::from(2);
            }
            let msg = message::render(&config.shape, &token);
            if std::io::stdout().write_all(&msg).is_err() {
                return ExitCode::FAILURE;
            }
            ExitCode::SUCCESS
        }
        Mode::Verify { config, dir } => {
            // parse() only returns Verify with an ack log.
            let Some(log) = config.ack_log.as_deref() else {
                return ExitCode::from(2);
            };
            match verify::verify(&config.shape, log, &dir) {
                Ok(v) => {
                    if config.json {
                        println!("{}", v.json());
                    } else {
                        print!("{}", v.text());
                    }
                    if v.passed() {
                        ExitCode::SUCCESS
                    } else {
                        ExitCode::FAILURE
                    }
                }
                Err(e) => {
                    eprintln!("smtp-source: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Mode::Run(config) => match engine::run(&config) {
            Ok(report) => {
                if config.json {
                    println!("{}", report.json(&config));
                } else {
                    print!("{}", report.text(&config));
                }
                if !config.json {
                    if let (0, Some(err)) = (report.stats.acked, &report.first_error) {
                        eprintln!("smtp-source: nothing delivered: {err}");
                    }
                }
                if report.success(&config) {
                    ExitCode::SUCCESS
                } else {
                    ExitCode::FAILURE
                }
            }
            Err(e) => {
                eprintln!("smtp-source: {e}");
                ExitCode::FAILURE
            }
        },
    }
}
