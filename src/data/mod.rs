//! The DATA phase: finding the end of a message and undoing dot-stuffing (RFC 5321 §4.5.2).
//!
//! This module is sans-IO: it looks at bytes handed to it and says how many it consumed,
//! whether the terminator `<CRLF>.<CRLF>` was found, and which body segments (dot-stuffing
//! undone) the bytes held. It does not read sockets, allocate per chunk or know about SMTP
//! replies; the SMTP session drives it.
#![forbid(unsafe_code)]

#[cfg(test)]
mod naive;
mod scanner;

pub use scanner::{DataScanner, Scan};
