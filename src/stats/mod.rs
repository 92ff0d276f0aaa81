//! Stats. (Stub.)
