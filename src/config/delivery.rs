//! The delivery and recipient-verification steps of `Config::merge` (in `load`): the
//! routes (`[routes]` and `--relay-to`), the queue's delays, `--bounce-copy`, and the
//! verification timeout and cache lifetimes. Each takes the flag and the file's value, lets the
//! flag win, fills in the default and checks the result.
//!
//! It does not decide the order of the checks (`load` calls these in turn, first error wins),
//! nor does it deliver, verify or resolve anything: it only builds the [`Route`]s and loads
//! their TLS trust anchors to check them.

use std::collections::BTreeMap;
use std::time::Duration;

use super::ConfigError;
use crate::relay::queue::{DEFAULT_MAX_QUEUE_LIFETIME, DEFAULT_RETRY_FIRST, DEFAULT_RETRY_MAX};
use crate::relay::stage::DEFAULT_COMPACT_AFTER;
use crate::relay::tls::RouteTls;
use crate::relay::verify;
use crate::relay::{Route, RouteSpec};

/// The `[routes]`, then a `relay_to` route for each domain without one; each route's TLS checked.
pub(super) fn routes(
    file: Option<BTreeMap<String, RouteSpec>>,
    relay_to: Option<String>,
    domains: &[String],
    verify_all: bool,
) -> Result<Vec<Route>, ConfigError> {
    let mut routes = Vec::new();
    for (name, spec) in file.unwrap_or_default() {
        routes.push(Route::from_spec(&name, &spec, verify_all).map_err(ConfigError::Route)?);
    }
    if let Some(target) = relay_to {
        let spec = RouteSpec::Target(target);
        for d in domains {
            if !routes.iter().any(|r| &r.name == d) {
                routes.push(Route::from_spec(d, &spec, verify_all).map_err(ConfigError::Route)?);
            }
        }
    }
    // A route's CA file (or, for `encrypt` without one, the system's trust store) must be
    // usable now, not at the first delivery.
    for r in &routes {
        RouteTls::new(r).map_err(ConfigError::Route)?;
    }
    Ok(routes)
}

/// `--retry-first` over the file: not zero, or [`DEFAULT_RETRY_FIRST`].
pub(super) fn retry_first(flag: Option<u64>, file: Option<u64>) -> Result<Duration, ConfigError> {
    nonzero_secs(flag.or(file), "retry-first", DEFAULT_RETRY_FIRST)
}

/// `--retry-max` over the file: not zero, or [`DEFAULT_RETRY_MAX`].
pub(super) fn retry_max(flag: Option<u64>, file: Option<u64>) -> Result<Duration, ConfigError> {
    nonzero_secs(flag.or(file), "retry-max", DEFAULT_RETRY_MAX)
}

/// `--max-queue-lifetime` over the file: not zero, or [`DEFAULT_MAX_QUEUE_LIFETIME`].
pub(super) fn max_queue_lifetime(
    flag: Option<u64>,
    file: Option<u64>,
) -> Result<Duration, ConfigError> {
    nonzero_secs(
        flag.or(file),
        "max-queue-lifetime",
        DEFAULT_MAX_QUEUE_LIFETIME,
    )
}

/// `--compact-after` over the file: not zero, or [`DEFAULT_COMPACT_AFTER`].
pub(super) fn compact_after(flag: Option<u64>, file: Option<u64>) -> Result<Duration, ConfigError> {
    nonzero_secs(flag.or(file), "compact-after", DEFAULT_COMPACT_AFTER)
}

/// `--delay-warning` over the file, if any: not zero.
pub(super) fn delay_warning(
    flag: Option<u64>,
    file: Option<u64>,
) -> Result<Option<Duration>, ConfigError> {
    match flag.or(file) {
        Some(0) => Err(ConfigError::Zero("delay-warning")),
        v => Ok(v.map(Duration::from_secs)),
    }
}

/// `--bounce-copy` over `bounce-copy`, if any: something like an address.
pub(super) fn bounce_copy(
    flag: Option<&str>,
    file: Option<String>,
) -> Result<Option<String>, ConfigError> {
    let bounce_copy = flag.map(str::to_owned).or(file);
    if let Some(a) = &bounce_copy {
        if a.is_empty()
            || !a.contains('@')
            || a.chars()
                .any(|c| c.is_control() || c == ' ' || c == '<' || c == '>')
        {
            return Err(ConfigError::Route(format!(
                "bounce-copy {a:?} is not an address like postmaster@example.net"
            )));
        }
    }
    Ok(bounce_copy)
}

/// `retry-max` must not be below `retry-first`.
pub(super) fn check_retry_order(
    retry_first: Duration,
    retry_max: Duration,
) -> Result<(), ConfigError> {
    if retry_max < retry_first {
        return Err(ConfigError::Route(format!(
            "retry-max = {} s is below retry-first = {} s",
            retry_max.as_secs(),
            retry_first.as_secs()
        )));
    }
    Ok(())
}

/// `verify-recipients` needs at least one route to ask.
pub(super) fn check_verify_has_route(
    verify_all: bool,
    routes: &[Route],
) -> Result<(), ConfigError> {
    if verify_all && routes.is_empty() {
        return Err(ConfigError::Route(
            "verify-recipients needs a route to ask (--relay-to or [routes])".into(),
        ));
    }
    Ok(())
}

/// `--verify-timeout` over the file: 1 to [`verify::MAX_TIMEOUT_SECS`] s, or the default.
pub(super) fn verify_timeout(
    flag: Option<u64>,
    file: Option<u64>,
) -> Result<Duration, ConfigError> {
    verify_secs(
        flag.or(file),
        "verify-timeout",
        verify::MAX_TIMEOUT_SECS,
        verify::DEFAULT_TIMEOUT,
    )
}

/// `--verify-cache-accept` over the file: 1 to [`verify::MAX_CACHE_SECS`] s, or the default.
pub(super) fn verify_cache_accept(
    flag: Option<u64>,
    file: Option<u64>,
) -> Result<Duration, ConfigError> {
    verify_secs(
        flag.or(file),
        "verify-cache-accept",
        verify::MAX_CACHE_SECS,
        verify::DEFAULT_CACHE_ACCEPT,
    )
}

/// `--verify-cache-refuse` over the file: 1 to [`verify::MAX_CACHE_SECS`] s, or the default.
pub(super) fn verify_cache_refuse(
    flag: Option<u64>,
    file: Option<u64>,
) -> Result<Duration, ConfigError> {
    verify_secs(
        flag.or(file),
        "verify-cache-refuse",
        verify::MAX_CACHE_SECS,
        verify::DEFAULT_CACHE_REFUSE,
    )
}

/// A delay (`name`) in seconds, 1 to [`MAX_DELIVERY_SECS`], or `default`.
fn nonzero_secs(
    v: Option<u64>,
    name: &'static str,
    default: Duration,
) -> Result<Duration, ConfigError> {
    match v {
        Some(0) => Err(ConfigError::Zero(name)),
        Some(s) if s > MAX_DELIVERY_SECS => Err(ConfigError::SecsRange(name, s, MAX_DELIVERY_SECS)),
        Some(s) => Ok(Duration::from_secs(s)),
        None => Ok(default),
    }
}

/// Longest `retry-first`, `retry-max`, `max-queue-lifetime` and `compact-after`: a year. Retry
/// times are computed as instants from now; a bound keeps them far from overflow.
pub(super) const MAX_DELIVERY_SECS: u64 = 365 * 24 * 3600;

/// A verification time (`name`) in seconds, 1 to `max`, or `default`.
fn verify_secs(
    v: Option<u64>,
    name: &'static str,
    max: u64,
    default: Duration,
) -> Result<Duration, ConfigError> {
    match v {
        None => Ok(default),
        Some(n) if n == 0 || n > max => Err(ConfigError::SecsRange(name, n, max)),
        Some(n) => Ok(Duration::from_secs(n)),
    }
}
