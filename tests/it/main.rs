//! The one integration test binary: real servers over loopback, real clients, the spool read
//! back with `ringmx spool`.

mod clients;
mod server;
mod util;
