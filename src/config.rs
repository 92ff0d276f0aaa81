//! Configuration. (Stub.)
