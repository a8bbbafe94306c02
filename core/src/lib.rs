#![forbid(unsafe_code)]
pub mod acme;
pub mod api;
pub mod cache;
pub mod cidr;
pub mod clienthello;
pub mod fetch;
pub mod flight;
pub mod intern;
pub mod lru;
pub mod metrics;
pub mod name;
pub mod pem;
pub mod ratelimit;
pub mod record;
pub mod template;
pub mod timefmt;
pub mod validate;
