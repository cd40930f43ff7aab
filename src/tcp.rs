//! TCP passthrough: routing a connection by what its first bytes say, without terminating it.

pub mod client_hello;
