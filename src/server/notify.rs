//! systemd readiness notification (`sd_notify`): `READY=1` once the listeners are bound and the
//! spool is open, `STOPPING=1` when a shutdown starts.
//!
//! Does nothing when `NOTIFY_SOCKET` is unset (not started by systemd with `Type=notify`).
//! Failures are logged, never fatal: the server works without a service manager.

use sd_notify::NotifyState;

/// Tells systemd the server is ready to accept mail.
pub fn ready() {
    send(&[NotifyState::Ready], "READY=1");
}

/// Tells systemd the server is shutting down.
pub fn stopping() {
    send(&[NotifyState::Stopping], "STOPPING=1");
}

fn send(state: &[NotifyState<'_>], what: &str) {
    if std::env::var_os("NOTIFY_SOCKET").is_none() {
        return;
    }
    match sd_notify::notify(false, state) {
        Ok(()) => tracing::debug!("sd_notify {what}"),
        Err(e) => tracing::warn!("sd_notify {what} failed: {e}"),
    }
}
