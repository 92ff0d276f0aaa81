//! How a connection ends: [`End`], with its `reason=` name and how the statistics count it,
//! and `finish`, which aborts a message left unfinished, shuts the socket down (completing any
//! read still in flight, so the fd really closes), counts the session and logs the disconnect.
//!
//! It does not write the last reply (whatever ended the session did) or decide when to end.

use std::io;
use std::net::Shutdown;

use super::Conn;
use crate::server::tls::TlsFailure;
use crate::smtp::Closed;
use crate::stats::{MessageOutcome, SessionEnd};

/// How a session ended.
#[derive(Debug)]
pub(super) enum End {
    /// The session closed it (QUIT, errors, timeout, shutdown); its reply was written.
    Closed(Closed),
    /// The client closed the connection.
    Eof,
    /// A socket error.
    Io(io::Error),
    /// The client did not take our replies within the idle timeout.
    WriteTimeout,
    /// The session left more unconsumed input than it promised.
    Overflow,
    /// The TLS handshake did not finish within `--tls-handshake-timeout`.
    TlsTimeout,
    /// TLS failed (handshake or later).
    Tls(TlsFailure),
    /// The client talked before the end of the greet pause (554 5.5.1 written).
    Pregreet,
}

impl End {
    /// The `reason=` of the disconnect log line.
    pub(super) fn name(&self) -> &'static str {
        match self {
            Self::Closed(Closed::Quit) => "quit",
            Self::Closed(Closed::Timeout) => "timeout",
            Self::Closed(Closed::TooManyErrors) => "too-many-errors",
            Self::Closed(Closed::Shutdown) => "shutdown",
            Self::Closed(Closed::NotSmtp) => "not-smtp",
            Self::Closed(Closed::Unframeable) => "bad-bdat",
            Self::Eof => "client-closed",
            Self::WriteTimeout => "write-timeout",
            Self::Io(_) | Self::Overflow => "error",
            Self::TlsTimeout => "tls-timeout",
            Self::Tls(TlsFailure::Protocol) => "tls-protocol-error",
            Self::Tls(TlsFailure::ClientAlert) => "tls-client-alert",
            Self::Pregreet => "pregreet",
        }
    }

    /// How the statistics count it.
    fn counted_as(&self) -> SessionEnd {
        match self {
            Self::Closed(Closed::Quit) => SessionEnd::Quit,
            Self::Closed(Closed::Timeout) | Self::WriteTimeout | Self::TlsTimeout => {
                SessionEnd::Timeout
            }
            // An unframeable BDAT line is a protocol error that ends the session at once.
            Self::Closed(Closed::TooManyErrors | Closed::Unframeable) => SessionEnd::TooManyErrors,
            Self::Closed(Closed::Shutdown) => SessionEnd::Shutdown,
            Self::Closed(Closed::NotSmtp) => SessionEnd::NotSmtp,
            Self::Eof => SessionEnd::Disconnected,
            Self::Io(_) | Self::Overflow | Self::Tls(_) => SessionEnd::IoError,
            Self::Pregreet => SessionEnd::Pregreet,
        }
    }
}

impl Conn<'_> {
    /// Aborts an unfinished message, shuts the socket down (completing any read still in
    /// flight, so the fd really closes), counts and logs.
    pub(super) async fn finish(mut self, end: End) {
        let stats = &self.r.stats;
        if let Some(w) = self.sink.writer.take() {
            w.abort().await;
            stats.message(MessageOutcome::Aborted);
            tracing::info!(
                "aborted from=<{}> client={} size={} (connection ended mid-message)",
                self.sink.from_current,
                self.peer.ip(),
                self.sink.size
            );
        }
        let _ = self.stream.shutdown(Shutdown::Both);
        let reason = end.name();
        let duration = self.started.elapsed();
        stats.session_ended(end.counted_as(), duration);
        match &end {
            End::Io(e) => tracing::info!(
                "disconnect from={} reason={reason} error=\"{e}\" messages={} rejected={} bytes={} ms={}",
                self.peer,
                self.messages,
                self.rejected,
                self.bytes_in,
                duration.as_millis()
            ),
            _ => tracing::info!(
                "disconnect from={} reason={reason} messages={} rejected={} bytes={} ms={}",
                self.peer,
                self.messages,
                self.rejected,
                self.bytes_in,
                duration.as_millis()
            ),
        }
    }
}
