//! What most tests start with: a PKI, a Redis, maybe the certificate API,
//! and an nginx whose `http {}` block is the test's template.

use crate::api::CertApi;
use crate::client::{Exchange, Request};
use crate::nginx::{Nginx, NginxOpts};
use crate::pki::Pki;
use crate::redis::Redis;

/// A PKI, a Redis and an nginx with the module for a template with `@PORT@`
/// and `@REDIS@`.
pub struct Stack {
    pub pki: Pki,
    pub redis: Redis,
    pub nginx: Nginx,
}

impl Stack {
    pub fn start(workers: u32, template: &str) -> Stack {
        let pki = Pki::new();
        let redis = Redis::start();
        let nginx = Nginx::start(
            &pki,
            template,
            NginxOpts::new().workers(workers).redis(&redis),
        );
        Stack { pki, redis, nginx }
    }

    /// `GET /` over TLS with SNI `sni` (none when `None`); panics when the
    /// request fails.
    pub fn get(&self, sni: Option<&str>) -> Exchange {
        Request::default()
            .sni_opt(sni)
            .https(self.nginx.port)
            .unwrap_or_else(|e| panic!("TLS request with SNI {sni:?} failed: {e}"))
    }
}

/// `Stack` plus the certificate API: the template has `@PORT@`, `@REDIS@`,
/// `@API@` (the quoted URL template) and `@API_CA@`.
pub struct ApiStack {
    pub pki: Pki,
    pub redis: Redis,
    pub api: CertApi,
    pub nginx: Nginx,
}

impl ApiStack {
    pub fn start(workers: u32, template: &str) -> ApiStack {
        let pki = Pki::new();
        let redis = Redis::start();
        let api = CertApi::start();
        let nginx = Nginx::start(
            &pki,
            template,
            NginxOpts::new().workers(workers).redis(&redis).api(&api),
        );
        ApiStack {
            pki,
            redis,
            api,
            nginx,
        }
    }

    /// `GET /` over TLS with SNI `sni`; panics when the request fails.
    pub fn get(&self, sni: &str) -> Exchange {
        Request::default()
            .sni(sni)
            .https(self.nginx.port)
            .unwrap_or_else(|e| panic!("TLS request with SNI {sni:?} failed: {e}"))
    }
}
