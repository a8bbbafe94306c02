//! The unsafe glue between nginx/OpenSSL and `dyncert_core`: one file per
//! nginx concept. Each converts nginx's raw pointers at its entry points,
//! asks the core what to do, and applies the answer; no decision is taken
//! here that the core could take instead.
//!
//! Raw pointers become references once, at the entry points, under a
//! `// SAFETY:` line. A reference to an nginx structure (`&ngx_conf_t`,
//! `&ngx_connection_t`, `&ngx_http_request_t`, ...) in these files always
//! comes from nginx and is live, so the pointers nginx keeps in it are
//! valid (NULL or pointing to live structures): the safe functions that
//! take such references rely on that, and say so where they dereference.

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
pub mod tickets;
pub mod variables;
pub mod zone;
