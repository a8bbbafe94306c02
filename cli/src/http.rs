//! The HTTP client of every ACME exchange: instant-acme's own stack
//! (hyper over rustls, HTTPS only, HTTP/1.1 and HTTP/2), with each
//! answer's body capped at [`BODY_MAX`]. instant-acme's default client
//! collects a body whole, so a CA (or whatever answers in its place) that
//! sends an endless body would grow the process without bound.

use std::future::Future;
use std::path::Path;
use std::pin::Pin;

use bytes::Bytes;
use http::Request;
use http_body_util::Limited;
use hyper_rustls::HttpsConnectorBuilder;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use instant_acme::{BodyWrapper, BytesResponse, HttpClient};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;

/// The largest ACME answer read: a certificate chain is a few KiB, a
/// directory or an order less; 1 MiB leaves room for long chains and
/// orders with many names.
pub const BODY_MAX: usize = 1024 * 1024;

type Inner = Client<hyper_rustls::HttpsConnector<HttpConnector>, BodyWrapper<Bytes>>;

/// An [`HttpClient`] whose answers' bodies stop at [`BODY_MAX`]: a longer
/// one fails the exchange (`length limit exceeded`) after that many bytes.
pub struct CappedClient(Inner);

impl CappedClient {
    /// Trusting the system's roots (as instant-acme's default does).
    pub fn system() -> Result<CappedClient, String> {
        let builder = HttpsConnectorBuilder::new()
            .try_with_platform_verifier()
            .map_err(|e| e.to_string())?;
        Ok(Self::new(builder))
    }

    /// Trusting only the PEM root in `pem` (a test or private CA).
    pub fn with_root(pem: &Path) -> Result<CappedClient, String> {
        let root = CertificateDer::from_pem_file(pem).map_err(|e| e.to_string())?;
        let mut roots = rustls::RootCertStore::empty();
        roots.add(root).map_err(|e| e.to_string())?;
        let config = rustls::ClientConfig::builder()
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(Self::new(
            HttpsConnectorBuilder::new().with_tls_config(config),
        ))
    }

    fn new(builder: HttpsConnectorBuilder<hyper_rustls::builderstates::WantsSchemes>) -> Self {
        let connector = builder.https_only().enable_http1().enable_http2().build();
        CappedClient(Client::builder(TokioExecutor::new()).build(connector))
    }
}

impl HttpClient for CappedClient {
    fn request(
        &self,
        req: Request<BodyWrapper<Bytes>>,
    ) -> Pin<Box<dyn Future<Output = Result<BytesResponse, instant_acme::Error>> + Send>> {
        let answer = self.0.request(req);
        Box::pin(async move {
            let rsp = answer
                .await
                .map_err(|e| instant_acme::Error::Other(Box::new(e)))?;
            Ok(BytesResponse::from(
                rsp.map(|body| Limited::new(body, BODY_MAX)),
            ))
        })
    }
}
