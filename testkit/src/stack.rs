//! What most tests start with: a PKI, a Redis, maybe the certificate API,
//! and an nginx whose `http {}` block is the test's template.

use crate::api::CertApi;
use crate::client::{Exchange, Request};
use crate::conf::metrics_http;
use crate::nginx::{Nginx, NginxOpts};
use crate::pki::Pki;
use crate::process::free_port;
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
        Stack::start_with(template, NginxOpts::new().workers(workers))
    }

    /// As [`Stack::start`], with `opts` (workers, more placeholders, ...)
    /// to which `@REDIS@` is added.
    pub fn start_with(template: &str, opts: NginxOpts) -> Stack {
        let pki = Pki::new();
        let redis = Redis::start();
        let nginx = Nginx::start(&pki, template, opts.redis(&redis));
        Stack { pki, redis, nginx }
    }

    /// As [`Stack::start_with`] for [`metrics_http`]`(rest)`, on a free
    /// metrics port (`@MPORT@`), returned with the stack.
    pub fn with_metrics(rest: &str, opts: NginxOpts) -> (Stack, u16) {
        let mport = free_port();
        let s = Stack::start_with(&metrics_http(rest), opts.var("MPORT", mport));
        (s, mport)
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
        ApiStack::start_with(template, NginxOpts::new().workers(workers))
    }

    /// As [`ApiStack::start`], with `opts` (workers, more placeholders,
    /// ...) to which `@REDIS@`, `@API@` and `@API_CA@` are added.
    pub fn start_with(template: &str, opts: NginxOpts) -> ApiStack {
        let pki = Pki::new();
        let redis = Redis::start();
        let api = CertApi::start();
        let nginx = Nginx::start(&pki, template, opts.redis(&redis).api(&api));
        ApiStack {
            pki,
            redis,
            api,
            nginx,
        }
    }

    /// Another terminator: an nginx for `template` on the same Redis and
    /// API (one worker, its own empty cache).
    pub fn another_nginx(&self, template: &str) -> Nginx {
        Nginx::start(
            &self.pki,
            template,
            NginxOpts::new().redis(&self.redis).api(&self.api),
        )
    }

    /// `GET /` over TLS with SNI `sni`; panics when the request fails.
    pub fn get(&self, sni: &str) -> Exchange {
        Request::default()
            .sni(sni)
            .https(self.nginx.port)
            .unwrap_or_else(|e| {
                panic!(
                    "TLS request with SNI {sni:?} failed: {e}\n{}",
                    self.nginx.logs()
                )
            })
    }

    /// Asserts that the API was asked about `name` `n` times.
    #[track_caller]
    pub fn assert_asked(&self, name: &str, n: usize) {
        assert_eq!(self.api.requests_for(name), n, "{}", self.api.dump());
    }
}
