//! The unsafe glue between nginx/OpenSSL and `dyncert_core`: one file per
//! nginx concept. Each converts nginx's raw pointers at its entry points,
//! asks the core what to do, and applies the answer; no decision is taken
//! here that the core could take instead.

pub mod access;
pub mod acme;
pub mod boundary;
pub mod conf;
pub mod directives;
pub mod handshake;
pub mod lifecycle;
pub mod log;
pub mod metrics;
pub mod peek;
pub mod response;
pub mod ssl;
pub mod state;
pub mod variables;
