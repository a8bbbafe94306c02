//! A small certificate API playing the contract dyncert expects:
//! `GET /certs/<name>` answers 200 `{"crt": PEM chain, "key": PEM key}`,
//! or 404 for a name it does not know. HTTP/1.1 with keep-alive, one
//! thread per connection (the module keeps a small pool).

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

pub struct ApiServer {
    pub port: u16,
    pub found: Arc<AtomicU64>,
    pub not_found: Arc<AtomicU64>,
}

impl ApiServer {
    /// Serves `bodies` (name → JSON body) on a free loopback port, from
    /// threads that inherit the caller's CPU pinning.
    pub fn start(bodies: HashMap<String, String>) -> ApiServer {
        let listener = TcpListener::bind("127.0.0.1:0").expect("api listener");
        let port = listener.local_addr().unwrap().port();
        let bodies = Arc::new(bodies);
        let found = Arc::new(AtomicU64::new(0));
        let not_found = Arc::new(AtomicU64::new(0));
        let (f, nf) = (found.clone(), not_found.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                let (bodies, f, nf) = (bodies.clone(), f.clone(), nf.clone());
                std::thread::spawn(move || serve(conn, &bodies, &f, &nf));
            }
        });
        ApiServer {
            port,
            found,
            not_found,
        }
    }
}

fn serve(conn: TcpStream, bodies: &HashMap<String, String>, found: &AtomicU64, nf: &AtomicU64) {
    conn.set_nodelay(true).ok();
    let mut out = conn.try_clone().expect("clone");
    let mut r = BufReader::new(conn);
    let mut line = String::new();
    loop {
        line.clear();
        if r.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let path = line.split_whitespace().nth(1).unwrap_or("").to_owned();
        // Skip the headers; a GET has no body.
        loop {
            let mut h = String::new();
            if r.read_line(&mut h).unwrap_or(0) == 0 {
                return;
            }
            if h == "\r\n" || h == "\n" {
                break;
            }
        }
        let body = path.strip_prefix("/certs/").and_then(|n| bodies.get(n));
        let resp = match body {
            Some(b) => {
                found.fetch_add(1, Ordering::Relaxed);
                format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\
                     Content-Length: {}\r\n\r\n{b}",
                    b.len()
                )
            }
            None => {
                nf.fetch_add(1, Ordering::Relaxed);
                "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n".to_owned()
            }
        };
        if out.write_all(resp.as_bytes()).is_err() {
            return;
        }
    }
}
