//! MONITOR on a test's Redis: every command the module sent, parsed, and
//! the questions the tests ask of them (how many fetches of a name, in
//! which order names were looked up).

use std::io::{BufRead, BufReader, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use crate::net::IO_TIMEOUT;
use crate::process::{poll, STARTUP_DEADLINE};
use crate::redis::{encode_command, read_reply, redis_command, Reply, DEFAULT_PREFIX};

/// One command seen by MONITOR.
#[derive(Debug, Clone)]
pub struct Observed {
    pub raw: String,
    pub args: Vec<String>,
}

impl Observed {
    pub fn command(&self) -> String {
        self.args
            .first()
            .map(|a| a.to_uppercase())
            .unwrap_or_default()
    }

    /// `dyncert:cert:<name>` keys among the arguments, as names.
    pub fn cert_names(&self) -> Vec<String> {
        self.args
            .iter()
            .filter_map(|a| a.strip_prefix(DEFAULT_PREFIX).map(str::to_string))
            .collect()
    }
}

/// Parses a MONITOR line: `1700000000.123 [0 127.0.0.1:5555] "HGETALL" "k"`,
/// arguments quoted with C-style escapes (`sdscatrepr`).
fn parse_monitor_line(line: &str) -> Observed {
    let mut args = Vec::new();
    let start = line.find("] ").map(|i| i + 2).unwrap_or(0);
    let bytes = &line.as_bytes()[start..];
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] != b'"' {
            i += 1;
            continue;
        }
        i += 1;
        let mut cur = Vec::new();
        while i < bytes.len() && bytes[i] != b'"' {
            if bytes[i] == b'\\' && i + 1 < bytes.len() {
                i += 1;
                match bytes[i] {
                    b'n' => cur.push(b'\n'),
                    b'r' => cur.push(b'\r'),
                    b't' => cur.push(b'\t'),
                    b'a' => cur.push(7),
                    b'b' => cur.push(8),
                    b'x' if i + 2 < bytes.len() => {
                        let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("3f");
                        cur.push(u8::from_str_radix(hex, 16).unwrap_or(b'?'));
                        i += 2;
                    }
                    other => cur.push(other),
                }
            } else {
                cur.push(bytes[i]);
            }
            i += 1;
        }
        i += 1;
        args.push(String::from_utf8_lossy(&cur).into_owned());
    }
    Observed {
        raw: line.to_string(),
        args,
    }
}

/// A MONITOR connection read by a background thread.
pub struct Monitor {
    port: u16,
    stream: TcpStream,
    lines: Arc<Mutex<Vec<String>>>,
    reader: Option<JoinHandle<()>>,
}

impl Monitor {
    pub(crate) fn start(port: u16) -> Monitor {
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let mut stream = TcpStream::connect_timeout(&addr, IO_TIMEOUT).expect("connect MONITOR");
        stream
            .write_all(&encode_command(&["MONITOR"]))
            .expect("send MONITOR");
        let mut reader = BufReader::new(stream.try_clone().unwrap());
        stream.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        // MONITOR answers +OK once it is active: nothing before that point
        // is captured, so wait for it.
        match read_reply(&mut reader) {
            Ok(Reply::Status(s)) if s == "OK" => {}
            other => panic!("MONITOR: {other:?}"),
        }
        stream.set_read_timeout(None).unwrap();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&lines);
        let reader = thread::spawn(move || {
            let mut line = String::new();
            loop {
                line.clear();
                match reader.read_line(&mut line) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {
                        let l = line.trim_end_matches("\r\n");
                        let l = l.strip_prefix('+').unwrap_or(l);
                        sink.lock().unwrap().push(l.to_string());
                    }
                }
            }
        });
        Monitor {
            port,
            stream,
            lines,
            reader: Some(reader),
        }
    }

    /// Waits until every command the server executed before this call has
    /// been captured: Redis runs commands one at a time in arrival order,
    /// so once our own marker shows up, everything before it is in.
    pub fn sync(&self) {
        static SEQ: AtomicU64 = AtomicU64::new(0);
        let marker = format!(
            "dyncert-test-marker-{}",
            SEQ.fetch_add(1, Ordering::Relaxed)
        );
        redis_command(self.port, &["ECHO", &marker]).expect("ECHO marker");
        let seen = poll(STARTUP_DEADLINE, Duration::from_millis(10), || {
            self.lines
                .lock()
                .unwrap()
                .iter()
                .any(|l| l.contains(&marker))
                .then_some(())
        });
        assert!(seen.is_some(), "MONITOR did not show marker {marker}");
    }

    /// Everything captured so far, minus our own markers.
    pub fn observed(&self) -> Vec<Observed> {
        self.lines
            .lock()
            .unwrap()
            .iter()
            .filter(|l| !l.contains("dyncert-test-marker-"))
            .map(|l| parse_monitor_line(l))
            .collect()
    }

    /// Commands other than the ones a test issues itself to set up records,
    /// and other than each worker's invalidation subscription (made once
    /// at start, whenever the worker gets to it: not a lookup).
    pub fn module_commands(&self) -> Vec<Observed> {
        self.observed()
            .into_iter()
            .filter(|o| {
                !matches!(
                    o.command().as_str(),
                    "HSET" | "DEL" | "ECHO" | "MONITOR" | "SUBSCRIBE"
                )
            })
            .collect()
    }

    /// How many commands of any kind the module sent about `name`.
    pub fn commands_about(&self, name: &str) -> usize {
        self.module_commands()
            .iter()
            .filter(|o| o.cert_names().iter().any(|n| n == name))
            .count()
    }

    /// Fetches of the record of `name`: commands that read the certificate
    /// itself. A fetch may come with cheap probes (EXISTS, HSTRLEN to bound
    /// sizes) and may read the fields in one or two commands; reading `crt`
    /// happens exactly once per fetch in each of those shapes.
    pub fn fetches_of(&self, name: &str) -> usize {
        self.fetched_names().iter().filter(|n| *n == name).count()
    }

    /// Names whose record was read, in order, once per fetch.
    pub fn fetched_names(&self) -> Vec<String> {
        self.module_commands()
            .iter()
            .filter(|o| match o.command().as_str() {
                "HGETALL" => true,
                "HMGET" | "HGET" => o.args[2..].iter().any(|f| f == "crt"),
                _ => false,
            })
            .flat_map(|o| o.cert_names())
            .collect()
    }

    /// Commands that read a record (or probe it), as (name, signature):
    /// the command and its arguments after the key.
    fn reads(&self) -> Vec<(String, String)> {
        const READS: [&str; 8] = [
            "EXISTS", "HGETALL", "HMGET", "HGET", "HSTRLEN", "HLEN", "HEXISTS", "TYPE",
        ];
        self.module_commands()
            .iter()
            .filter(|o| READS.contains(&o.command().as_str()))
            .flat_map(|o| {
                let sig = format!(
                    "{} {}",
                    o.command(),
                    o.args.get(2..).unwrap_or(&[]).join(" ")
                );
                o.cert_names().into_iter().map(move |n| (n, sig.clone()))
            })
            .collect()
    }

    /// Lookups of names, in the order they started, once per lookup, also
    /// for records that do not exist (where a module that probes first
    /// never reads `crt`): the module runs the same commands in the same
    /// order for every lookup, so the command that opened the first lookup
    /// of a name marks the start of each of its lookups.
    pub fn lookup_order(&self) -> Vec<String> {
        let reads = self.reads();
        let mut opener: std::collections::HashMap<String, String> = Default::default();
        for (name, sig) in &reads {
            opener.entry(name.clone()).or_insert_with(|| sig.clone());
        }
        reads
            .into_iter()
            .filter(|(name, sig)| opener.get(name) == Some(sig))
            .map(|(name, _)| name)
            .collect()
    }

    /// How many times the record of `name` was looked up (see
    /// `lookup_order`).
    pub fn lookups_of(&self, name: &str) -> usize {
        self.lookup_order().iter().filter(|n| *n == name).count()
    }

    pub fn dump(&self) -> String {
        self.lines.lock().unwrap().join("\n")
    }
}

impl Drop for Monitor {
    fn drop(&mut self) {
        let _ = self.stream.shutdown(Shutdown::Both);
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
    }
}

impl crate::redis::Redis {
    /// Starts capturing every command the server executes (MONITOR).
    pub fn monitor(&self) -> Monitor {
        Monitor::start(self.port)
    }
}
