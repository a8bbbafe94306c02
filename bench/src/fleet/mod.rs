//! `dyncert-bench fleet ...`: the client side of `scripts/fleet-test.sh`.
//!
//! The script builds the fleet (network namespaces, HAProxy, terminators,
//! Redis) and kills or partitions its parts; this driver runs inside the
//! client namespace and does what a real client does, thousands of times:
//! full TLS handshakes with SNI, each checked against the served leaf's
//! subjectAltName. Every subcommand that judges a scenario prints one line
//!
//! ```text
//! RESULT PASS|FAIL <figures>
//! ```
//!
//! that the script puts in its table, and exits 1 on FAIL; the others
//! print `key=value` lines the script reads.
//!
//! Addresses are `IP:PORT`. `--direct IP,...` talks to terminators
//! without the balancer, sending the PROXY v2 header the balancer would
//! (with this namespace's own address as the source, `--from`).

mod conn;
mod load;
mod records;
mod sweep;
mod watch;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{SystemTime, UNIX_EPOCH};

pub use conn::Target;

const USAGE: &str = "usage: dyncert-bench fleet COMMAND [--flag value ...]
  (--redis IP:PORT: a single server, the primary, or any node of a Cluster)
  setup       --redis IP:PORT --names N --cold M --certs DIR
              N records n<i>.fleet.test and M records c<i>.fleet.test into Redis
              (pipelined), the default certificate into DIR
  sweep       (--to IP:PORT | --direct IP,.. --port P --from IP) --names PREFIX:START:COUNT
              [--concurrency C]: one handshake per name (per terminator with --direct)
  load        (--to IP:PORT | --direct IP --port P --from IP) --warm PREFIX:START:COUNT
              [--cold PREFIX:START:COUNT] --seconds S [--concurrency C]
              [--marks FILE --judge redis|terminator --fetch-timeout-ms T --up-means TEXT]
  invalidate  --redis IP:PORT --direct IP,.. --port P --from IP --name NAME [--rounds R]
              [--channel C] [--bound-ms B]
  publish     --redis IP:PORT --name NAME --serial S [--channel C]
  get         (--to IP:PORT | --direct IP --port P --from IP) --name NAME [--path P]
  wait-serial (--to IP:PORT | --direct IP --port P --from IP) --name NAME --serial HEX
              --timeout-ms T";

/// Parsed `--flag value` pairs.
pub struct Flags(HashMap<String, String>);

impl Flags {
    fn parse(argv: &[String]) -> Flags {
        let mut m = HashMap::new();
        let mut it = argv.iter();
        while let Some(flag) = it.next() {
            let Some(name) = flag.strip_prefix("--") else {
                usage(&format!("unexpected argument {flag:?}"))
            };
            let Some(v) = it.next() else {
                usage(&format!("{flag} needs a value"))
            };
            m.insert(name.to_owned(), v.clone());
        }
        Flags(m)
    }

    pub fn opt(&self, name: &str) -> Option<&str> {
        self.0.get(name).map(String::as_str)
    }

    pub fn req(&self, name: &str) -> &str {
        self.opt(name)
            .unwrap_or_else(|| usage(&format!("--{name} is required")))
    }

    pub fn num<T: std::str::FromStr>(&self, name: &str, default: T) -> T {
        match self.opt(name) {
            None => default,
            Some(v) => v
                .parse()
                .unwrap_or_else(|_| usage(&format!("--{name}: not a number: {v:?}"))),
        }
    }

    pub fn addr(&self, name: &str) -> SocketAddr {
        let v = self.req(name);
        v.parse()
            .unwrap_or_else(|_| usage(&format!("--{name}: not IP:PORT: {v:?}")))
    }

    /// `--to IP:PORT` (the balancer), or `--direct IP,.. --port P --from
    /// IP` (terminators, each behind a PROXY v2 header from `--from`).
    pub fn targets(&self) -> Vec<Target> {
        if self.opt("to").is_some() {
            return vec![Target::balancer(self.addr("to"))];
        }
        let port: u16 = self.num("port", 443);
        let from = self.req("from");
        let from = from
            .parse()
            .unwrap_or_else(|_| usage(&format!("--from: not an IP: {from:?}")));
        self.req("direct")
            .split(',')
            .map(|ip| {
                let ip = ip
                    .parse()
                    .unwrap_or_else(|_| usage(&format!("--direct: not an IP: {ip:?}")));
                Target::direct(SocketAddr::new(ip, port), from)
            })
            .collect()
    }

    /// `--NAME PREFIX:START:COUNT`: names `<PREFIX><i>.fleet.test`.
    pub fn names(&self, name: &str) -> Option<Vec<String>> {
        let v = self.opt(name)?;
        let mut it = v.split(':');
        let (Some(prefix), Some(start), Some(count), None) =
            (it.next(), it.next(), it.next(), it.next())
        else {
            usage(&format!("--{name}: expected PREFIX:START:COUNT, got {v:?}"))
        };
        let (Ok(start), Ok(count)) = (start.parse::<usize>(), count.parse::<usize>()) else {
            usage(&format!("--{name}: expected PREFIX:START:COUNT, got {v:?}"))
        };
        Some((start..start + count).map(|i| name_of(prefix, i)).collect())
    }
}

/// The host name of record `i` of a pool.
pub fn name_of(prefix: &str, i: usize) -> String {
    format!("{prefix}{i}.fleet.test")
}

fn usage(why: &str) -> ! {
    eprintln!("dyncert-bench fleet: {why}\n{USAGE}");
    std::process::exit(2)
}

/// Wall-clock milliseconds since the epoch: the script timestamps its
/// actions (`date +%s%3N`) on the same clock.
pub fn epoch_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Prints the scenario's verdict line and turns it into the exit status.
pub fn verdict(pass: bool, figures: &str) -> i32 {
    println!("RESULT {} {figures}", if pass { "PASS" } else { "FAIL" });
    i32::from(!pass)
}

/// Percentile (0..=100) of sorted values, nearest rank.
pub fn pct(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

pub fn run(argv: &[String]) -> i32 {
    let Some((cmd, rest)) = argv.split_first() else {
        usage("no command")
    };
    let f = Flags::parse(rest);
    match cmd.as_str() {
        "setup" => records::setup(&f),
        "publish" => records::publish_cmd(&f),
        "sweep" => sweep::run(&f),
        "load" => load::run(&f),
        "invalidate" => watch::invalidate(&f),
        "get" => watch::get(&f),
        "wait-serial" => watch::wait_serial(&f),
        other => usage(&format!("unknown command {other:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_nearest_rank() {
        let v = [1.0, 2.0, 3.0, 4.0];
        assert_eq!(pct(&v, 50.0), 2.0);
        assert_eq!(pct(&v, 100.0), 4.0);
        assert_eq!(pct(&v, 0.0), 1.0);
        assert!(pct(&[], 50.0).is_nan());
    }

    #[test]
    fn pools_are_named_by_prefix_and_index() {
        let f = Flags::parse(&["--warm".into(), "n:3:2".into()]);
        assert_eq!(f.names("warm").unwrap(), ["n3.fleet.test", "n4.fleet.test"]);
        assert!(f.names("cold").is_none());
    }
}
