#![forbid(unsafe_code)]
pub mod cache;
pub mod clienthello;
pub mod fetch;
pub mod flight;
pub mod name;
pub mod ratelimit;
pub mod record;
pub mod validate;
pub mod api;
pub mod template;
pub mod metrics;
pub mod timefmt;
pub mod cidr;
pub mod acme;
