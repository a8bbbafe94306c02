// Safe code only, but for the OpenSSL glue in `ossl_ffi` and `ossl_engine`.
#![deny(unsafe_code)]
pub mod acme;
pub mod api;
pub mod cache;
pub mod chainsec;
pub mod cidr;
pub mod clientca;
pub mod clienthello;
pub mod clock;
pub mod compact;
pub mod der;
pub mod directives;
pub mod event_method;
pub mod fetch;
pub mod flight;
pub mod intern;
pub mod keyref;
pub mod keywrap;
pub mod leafkey;
pub mod lru;
pub mod metrics;
pub mod name;
pub mod on_demand;
#[allow(unsafe_code)]
mod ossl_engine;
#[allow(unsafe_code)]
mod ossl_ffi;
pub mod outcome;
pub mod pem;
pub mod ratelimit;
pub mod record;
pub mod template;
pub mod tenant;
pub mod tickets;
pub mod tier;
pub mod timefmt;
pub mod tokenbucket;
pub mod topology;
pub mod validate;
pub mod weight;
pub mod worker;
pub mod workqueue;
pub mod zonelock;
