//! The integration test binary (one binary, one module per area): real servers over loopback,
//! real clients, the spool read back with `ringmx spool`.

mod abuse;
mod bdat;
mod bounce;
mod clients;
mod conformance;
mod deliver;
mod dns;
mod dovecot;
mod haproxy;
mod postfix;
mod proxy;
mod relay_peers;
mod server;
mod shutdown;
mod spool;
mod tls;
mod util;
mod verify;
