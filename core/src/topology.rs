//! Which Redis deployment a `dyncert_redis` (or `dyncert --redis`) URL
//! names, and the decisions that depend on it: one server (`redis://`,
//! `rediss://`, `unix:`), a Sentinel-managed primary (`sentinel://`) or a
//! Cluster (`cluster://`, `clusters://` over TLS); which commands may be
//! answered by a replica; whether a record and its expiry-index entry can
//! be written in one transaction; which primary (and replicas) the
//! sentinels agree on; and how a URL is shown in a log line (never with
//! its password).
//!
//! Pure: no I/O, no connection. The fetcher (`fetch::conn`) and the CLI
//! build the redis crate's clients from a [`Topology`].

#![forbid(unsafe_code)]

use std::fmt;

/// Most nodes listed in a `sentinel://` or `cluster://` URL.
pub const MAX_NODES: usize = 16;
/// Port of a Sentinel node listed without one.
pub const SENTINEL_PORT: u16 = 26379;
/// Port of a Cluster node listed without one.
pub const CLUSTER_PORT: u16 = 6379;

/// One `host:port` of a node list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    pub host: String,
    pub port: u16,
}

impl fmt::Display for Node {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

/// The ACL user and password of a URL, percent-decoded. `Debug` never
/// shows the password.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Auth {
    pub username: Option<String>,
    pub password: Option<String>,
}

impl fmt::Debug for Auth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Auth")
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "***"))
            .finish()
    }
}

/// A Redis deployment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Topology {
    /// One server: the URL goes to the redis crate as written (`redis://`,
    /// `rediss://`, `unix:`, `redis+unix:`), exactly as before Sentinel
    /// and Cluster support. `tls` for `rediss://`.
    Single { url: String, tls: bool },
    /// `sentinel://[user:pass@]s1[:port],s2.../service[/db]
    /// [?sentinel_username=U&sentinel_password=P]`: the sentinels are asked
    /// for the primary of `service`; `auth` is the primary's and replicas'
    /// credentials, `sentinel_auth` the sentinels' own (`requirepass` or an
    /// ACL user in sentinel.conf; none: asked without AUTH).
    Sentinel {
        sentinels: Vec<Node>,
        service: String,
        db: i64,
        auth: Auth,
        sentinel_auth: Auth,
    },
    /// `cluster://[user:pass@]n1[:port],n2...` (any subset of the nodes
    /// works: the others are discovered); `clusters://` is the same over
    /// TLS.
    Cluster {
        nodes: Vec<Node>,
        auth: Auth,
        tls: bool,
    },
}

/// Why a Redis URL is refused (the text never holds the password).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UrlError(pub String);

impl fmt::Display for UrlError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for UrlError {}

fn err<T>(msg: impl Into<String>) -> Result<T, UrlError> {
    Err(UrlError(msg.into()))
}

impl Topology {
    /// Parses the multi-node forms; any other URL is [`Topology::Single`],
    /// which the redis crate itself checks (see `fetch::check_redis_url`).
    pub fn parse(url: &str) -> Result<Topology, UrlError> {
        // The redis crate reads `#insecure` as "accept any certificate and
        // host name"; no fragment is of any use to a Redis URL. The text
        // after '#' is not shown: a password with an unencoded '#' would
        // be in it.
        if url.contains('#') {
            return err("a URL fragment (\"#...\") is not allowed in a Redis URL (\"#insecure\" would turn off TLS verification; a '#' in a password is written %23)");
        }
        let Some((scheme, rest)) = url.split_once("://") else {
            return Ok(Topology::Single {
                url: url.to_owned(),
                tls: false,
            });
        };
        match scheme.to_ascii_lowercase().as_str() {
            "sentinel" => parse_sentinel(rest),
            "cluster" => parse_cluster(rest, false),
            "clusters" => parse_cluster(rest, true),
            "sentinels" | "rediss+sentinel" => {
                err("Sentinel over TLS is not supported (the redis crate cannot give the nodes it discovers a private CA with native-tls)")
            }
            // The crate speaks TLS for both spellings.
            "rediss" | "valkeys" => Ok(Topology::Single {
                url: url.to_owned(),
                tls: true,
            }),
            _ => Ok(Topology::Single {
                url: url.to_owned(),
                tls: false,
            }),
        }
    }

    /// Whether connections use TLS (the `dyncert_redis_tls_*` settings
    /// apply).
    pub fn is_tls(&self) -> bool {
        match self {
            Topology::Single { tls, .. } | Topology::Cluster { tls, .. } => *tls,
            Topology::Sentinel { .. } => false,
        }
    }

    /// Whether several keys of different hash slots can be written in one
    /// MULTI/EXEC. Not in a Cluster: a record (`dyncert:cert:<name>`) and
    /// the expiry index (`dyncert:expiry`) live in different slots, so
    /// the record is written in its own transaction and the index entry
    /// after it, as a separate command (a crash in between leaves a
    /// record without its index entry, which `dyncert index rebuild`
    /// repairs; never an index entry without its record).
    pub fn spans_slots_in_transactions(&self) -> bool {
        !matches!(self, Topology::Cluster { .. })
    }

    /// The nodes a log line names when no single node is known.
    pub fn shown_nodes(&self) -> String {
        match self {
            Topology::Single { url, .. } => redact_redis_url(url),
            Topology::Sentinel {
                sentinels, service, ..
            } => format!("sentinel {} (service \"{service}\")", join(sentinels)),
            Topology::Cluster { nodes, .. } => format!("cluster {}", join(nodes)),
        }
    }
}

fn join(nodes: &[Node]) -> String {
    nodes
        .iter()
        .map(Node::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

/// `[user:pass@]nodes` and the rest (path, query).
fn split_authority(rest: &str) -> (&str, &str) {
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    (&rest[..end], &rest[end..])
}

fn parse_auth(authority: &str) -> Result<(Auth, &str), UrlError> {
    let Some(at) = authority.rfind('@') else {
        return Ok((Auth::default(), authority));
    };
    let (userinfo, nodes) = (&authority[..at], &authority[at + 1..]);
    let (user, pass) = match userinfo.split_once(':') {
        Some((u, p)) => (u, Some(p)),
        None => ("", Some(userinfo)),
    };
    let decode = |s: &str, what: &str| {
        percent_decode(s).ok_or_else(|| UrlError(format!("invalid percent-encoding in the {what}")))
    };
    let username = if user.is_empty() {
        None
    } else {
        Some(decode(user, "user name")?)
    };
    let password = match pass {
        Some(p) if !p.is_empty() => Some(decode(p, "password")?),
        _ => None,
    };
    Ok((Auth { username, password }, nodes))
}

fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

fn parse_nodes(list: &str, default_port: u16) -> Result<Vec<Node>, UrlError> {
    if list.is_empty() {
        return err("no node listed");
    }
    let mut nodes = Vec::new();
    for item in list.split(',') {
        if nodes.len() == MAX_NODES {
            return err(format!("more than {MAX_NODES} nodes"));
        }
        nodes.push(parse_node(item, default_port)?);
    }
    Ok(nodes)
}

fn parse_node(item: &str, default_port: u16) -> Result<Node, UrlError> {
    let bad = || UrlError(format!("invalid node \"{}\"", item.escape_default()));
    let (host, port) = if let Some(v6) = item.strip_prefix('[') {
        let (host, after) = v6.split_once(']').ok_or_else(bad)?;
        if host.is_empty()
            || !host
                .chars()
                .all(|c| c.is_ascii_hexdigit() || c == ':' || c == '.')
        {
            return Err(bad());
        }
        match after {
            "" => (host, None),
            p => (host, Some(p.strip_prefix(':').ok_or_else(bad)?)),
        }
    } else {
        match item.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (item, None),
        }
    };
    let host_ok = !host.is_empty()
        && host.len() <= 253
        && (host.contains(':')
            || host
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_')));
    if !host_ok {
        return Err(bad());
    }
    let port = match port {
        None => default_port,
        Some(p) => match p.parse::<u16>() {
            Ok(n) if n > 0 && p.bytes().all(|b| b.is_ascii_digit()) => n,
            _ => return Err(bad()),
        },
    };
    Ok(Node {
        host: host.to_owned(),
        port,
    })
}

/// The query of a `sentinel://` URL: the sentinels' own credentials.
fn parse_sentinel_query(query: Option<&str>) -> Result<Auth, UrlError> {
    let mut auth = Auth::default();
    let Some(query) = query else {
        return Ok(auth);
    };
    for kv in query.split('&') {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        let slot = match k {
            "sentinel_username" => &mut auth.username,
            "sentinel_password" => &mut auth.password,
            _ => {
                return err(format!(
                    "unknown parameter \"{}\" in a sentinel:// URL (known: sentinel_username, sentinel_password)",
                    k.escape_default()
                ))
            }
        };
        if slot.is_some() {
            return err(format!("duplicate parameter \"{k}\" in a sentinel:// URL"));
        }
        let v = percent_decode(v)
            .filter(|v| !v.is_empty())
            .ok_or_else(|| UrlError(format!("invalid or empty value of \"{k}\"")))?;
        *slot = Some(v);
    }
    if auth.username.is_some() && auth.password.is_none() {
        return err("sentinel_username needs sentinel_password");
    }
    Ok(auth)
}

fn parse_sentinel(rest: &str) -> Result<Topology, UrlError> {
    let (authority, tail) = split_authority(rest);
    let (auth, list) = parse_auth(authority)?;
    let sentinels = parse_nodes(list, SENTINEL_PORT)?;
    let (tail, query) = match tail.split_once('?') {
        Some((path, query)) => (path, Some(query)),
        None => (tail, None),
    };
    let sentinel_auth = parse_sentinel_query(query)?;
    let mut parts = tail.strip_prefix('/').unwrap_or("").split('/');
    let service = parts.next().unwrap_or("");
    if service.is_empty()
        || service.len() > 64
        || !service
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_'))
    {
        return err("a sentinel:// URL names the service: sentinel://host:26379/SERVICE[/DB]");
    }
    let db = match parts.next() {
        None | Some("") => 0,
        Some(d) => match d.parse::<i64>() {
            Ok(n) if (0..=65535).contains(&n) && d.bytes().all(|b| b.is_ascii_digit()) => n,
            _ => return err(format!("invalid database \"{}\"", d.escape_default())),
        },
    };
    if parts.next().is_some() {
        return err("a sentinel:// URL's path is /SERVICE[/DB]");
    }
    Ok(Topology::Sentinel {
        sentinels,
        service: service.to_owned(),
        db,
        auth,
        sentinel_auth,
    })
}

fn parse_cluster(rest: &str, tls: bool) -> Result<Topology, UrlError> {
    let (authority, tail) = split_authority(rest);
    let (auth, list) = parse_auth(authority)?;
    let nodes = parse_nodes(list, CLUSTER_PORT)?;
    if tail.contains(['?', '#']) {
        return err("query parameters are not supported in cluster:// URLs");
    }
    // A cluster has database 0 only.
    if !matches!(tail, "" | "/" | "/0") {
        return err("a cluster has database 0 only: cluster://host:port,host:port");
    }
    Ok(Topology::Cluster { nodes, auth, tls })
}

/// A Redis URL fit for a log line or an `nginx -t` error: the user info's
/// password (or a user info that is only a password) becomes `***`, and
/// so does the value of a `password=` (or `sentinel_password=`) query
/// parameter. Also for URLs that
/// do not parse: whatever precedes the host's `@` is hidden.
pub fn redact_redis_url(url: &str) -> String {
    let (scheme, rest) = match url.find("://") {
        Some(i) => (&url[..i + 3], &url[i + 3..]),
        None => ("", url),
    };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    let authority = match authority.rfind('@') {
        None => authority.to_owned(),
        Some(at) => {
            let userinfo = &authority[..at];
            let shown = match userinfo.split_once(':') {
                Some((user, _)) => format!("{user}:***"),
                None if userinfo.is_empty() => String::new(),
                None => "***".to_owned(),
            };
            format!("{shown}{}", &authority[at..])
        }
    };
    format!("{scheme}{authority}{}", redact_query(tail))
}

/// `password=...` (and `pass=`, `secret=`, `sentinel_password=`) values in
/// a query string.
fn redact_query(tail: &str) -> String {
    let Some(q) = tail.find('?') else {
        return tail.to_owned();
    };
    let (path, query) = tail.split_at(q + 1);
    let parts: Vec<String> = query
        .split('&')
        .map(|kv| match kv.split_once('=') {
            Some((k, _))
                if ["password", "pass", "secret", "sentinel_password"]
                    .iter()
                    .any(|s| k.eq_ignore_ascii_case(s)) =>
            {
                format!("{k}=***")
            }
            _ => kv.to_owned(),
        })
        .collect();
    format!("{path}{}", parts.join("&"))
}

/// How many of `listed` sentinels must name the same primary: a majority
/// of those listed in the URL (not of those that answered), so one
/// sentinel that lies, or is reconfigured by whoever reaches its port,
/// never decides alone.
pub fn sentinel_majority(listed: usize) -> usize {
    listed / 2 + 1
}

/// What one listed sentinel answered to `SENTINEL GET-MASTER-ADDR-BY-NAME`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SentinelAnswer {
    Primary(Node),
    /// Nil: the sentinel does not monitor the service.
    Unknown,
    /// No answer in time, a refused connection or AUTH, a garbled reply.
    Failed,
}

/// The sentinels did not agree on a primary: every answer, for the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NoMajority {
    pub service: String,
    pub answers: Vec<(Node, SentinelAnswer)>,
}

impl fmt::Display for NoMajority {
    /// `no 2 of the 3 sentinels name one primary of "mymaster":
    /// 10.0.0.9:6379 (s1:26379), 10.0.0.5:6379 (s2:26379), no answer
    /// (s3:26379)`: sentinels that gave the same answer are grouped.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let listed = self.answers.len();
        write!(
            f,
            "no {} of the {listed} sentinels name one primary of \"{}\":",
            sentinel_majority(listed),
            self.service
        )?;
        let mut groups: Vec<(&SentinelAnswer, Vec<&Node>)> = Vec::new();
        for (sentinel, answer) in &self.answers {
            match groups.iter_mut().find(|(a, _)| *a == answer) {
                Some((_, from)) => from.push(sentinel),
                None => groups.push((answer, vec![sentinel])),
            }
        }
        for (i, (answer, from)) in groups.iter().enumerate() {
            let sep = if i == 0 { " " } else { ", " };
            let from = from
                .iter()
                .map(|n| n.to_string())
                .collect::<Vec<_>>()
                .join(" ");
            match answer {
                SentinelAnswer::Primary(n) => write!(f, "{sep}{n} ({from})")?,
                SentinelAnswer::Unknown => write!(f, "{sep}unknown service ({from})")?,
                SentinelAnswer::Failed => write!(f, "{sep}no answer ({from})")?,
            }
        }
        Ok(())
    }
}

impl std::error::Error for NoMajority {}

/// The primary of `service` when a majority of the listed sentinels
/// (`answers` holds one entry per listed sentinel) name the same address;
/// otherwise no primary, and every answer for the log line.
pub fn agreed_primary(
    service: &str,
    answers: &[(Node, SentinelAnswer)],
) -> Result<Node, NoMajority> {
    let needed = sentinel_majority(answers.len());
    for (_, answer) in answers {
        if let SentinelAnswer::Primary(p) = answer {
            let votes = answers
                .iter()
                .filter(|(_, a)| matches!(a, SentinelAnswer::Primary(q) if q == p))
                .count();
            if votes >= needed {
                return Ok(p.clone());
            }
        }
    }
    Err(NoMajority {
        service: service.to_owned(),
        answers: answers.to_vec(),
    })
}

/// A replica as one entry of `SENTINEL REPLICAS <service>` (field, value
/// pairs) describes it, unless that sentinel flags it down (`s_down`,
/// `o_down`). Its link to the primary may be down: replicas are read
/// exactly when the primary does not answer.
pub fn healthy_replica(fields: &[(String, String)]) -> Option<Node> {
    let get = |k: &str| fields.iter().find(|(f, _)| f == k).map(|(_, v)| v.as_str());
    let flags = get("flags")?;
    if flags.split(',').any(|f| matches!(f, "s_down" | "o_down")) {
        return None;
    }
    announced_node(get("ip")?, get("port")?)
}

/// Most replicas taken from one sentinel's answer.
pub const REPLICAS_MAX: usize = 64;

/// A node as a sentinel announces it (`GET-MASTER-ADDR-BY-NAME`, an entry
/// of `REPLICAS`): an IP address or a host name (at most 253 bytes of
/// letters, digits, `-`, `_` and dots, no empty label) and a port from 1.
/// Anything else is no answer: a sentinel may be anyone's, and what it
/// says ends up in connections, credentials and log lines.
pub fn announced_node(host: &str, port: &str) -> Option<Node> {
    let port = port.parse::<u16>().ok().filter(|p| *p > 0)?;
    let is_ip = host.parse::<std::net::IpAddr>().is_ok();
    let is_name = !host.is_empty()
        && host.len() <= 253
        && host.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        });
    (is_ip || is_name).then(|| Node {
        host: host.to_owned(),
        port,
    })
}

/// The replicas a majority of the listed sentinels (one entry of
/// `answers` per listed sentinel; `None`: it did not answer) see healthy,
/// in the order the sentinels first name them. A replica only a minority
/// names is never connected to (it would receive the credentials).
pub fn agreed_replicas(answers: &[Option<Vec<Node>>]) -> Vec<Node> {
    let needed = sentinel_majority(answers.len());
    let mut agreed: Vec<Node> = Vec::new();
    for node in answers.iter().flatten().flatten() {
        if agreed.contains(node) {
            continue;
        }
        let votes = answers
            .iter()
            .filter(|a| a.as_ref().is_some_and(|list| list.contains(node)))
            .count();
        if votes >= needed {
            agreed.push(node.clone());
        }
    }
    agreed
}

/// Whether every command of a request only reads (so a replica may answer
/// it when the primary cannot): the commands the fetcher sends for a
/// record or an ACME challenge.
pub fn is_read_only<'a>(commands: impl IntoIterator<Item = &'a [u8]>) -> bool {
    // EVAL_RO: Redis refuses a script that writes (the scripted record
    // read only reads).
    const READS: [&[u8]; 8] = [
        b"EXISTS", b"HSTRLEN", b"HMGET", b"HGETALL", b"GET", b"STRLEN", b"PING", b"EVAL_RO",
    ];
    let mut any = false;
    for c in commands {
        any = true;
        if !READS.iter().any(|r| r.eq_ignore_ascii_case(c)) {
            return false;
        }
    }
    any
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sentinel_announces_only_addresses_and_host_names() {
        let node = |h: &str, p: &str| announced_node(h, p).map(|n| (n.host, n.port));
        assert_eq!(node("10.0.0.5", "6379"), Some(("10.0.0.5".into(), 6379)));
        assert_eq!(node("::1", "6380"), Some(("::1".into(), 6380)));
        assert_eq!(
            node("redis-1.internal", "6379"),
            Some(("redis-1.internal".into(), 6379))
        );
        for (host, port) in [
            ("", "6379"),
            ("10.0.0.5", "0"),
            ("10.0.0.5", "65536"),
            ("10.0.0.5", "x"),
            ("a..b", "6379"),
            ("10.0.0.1\n2026/12/03 [emerg] forged", "6379"),
            ("host name", "6379"),
            ("h\"q", "6379"),
        ] {
            assert_eq!(node(host, port), None, "{host:?} {port:?}");
        }
        assert_eq!(node(&"a".repeat(254), "6379"), None);
        assert_eq!(node(&format!("{}.b", "a".repeat(64)), "6379"), None);
    }

    fn node(h: &str, p: u16) -> Node {
        Node {
            host: h.into(),
            port: p,
        }
    }

    #[test]
    fn single_server_urls_are_handed_over_as_written() {
        for (url, tls) in [
            ("redis://127.0.0.1:6379/0", false),
            ("rediss://app:pw@redis.internal:6380/0", true),
            ("unix:///run/redis.sock", false),
            ("redis+unix:///run/redis.sock?db=1", false),
            ("REDISS://h", true),
            ("valkeys://h:6380/0", true),
            ("valkey://h/0", false),
            ("valkey+unix:///run/valkey.sock", false),
        ] {
            assert_eq!(
                Topology::parse(url),
                Ok(Topology::Single {
                    url: url.into(),
                    tls
                }),
                "{url}"
            );
        }
    }

    #[test]
    fn sentinel_urls_name_the_sentinels_the_service_and_the_database() {
        let t = Topology::parse("sentinel://s1:26379,s2,[::1]:26380/mymaster/3").unwrap();
        assert_eq!(
            t,
            Topology::Sentinel {
                sentinels: vec![node("s1", 26379), node("s2", 26379), node("::1", 26380)],
                service: "mymaster".into(),
                db: 3,
                auth: Auth::default(),
                sentinel_auth: Auth::default(),
            }
        );
        assert!(!t.is_tls());
        assert!(t.spans_slots_in_transactions());
        assert_eq!(
            t.shown_nodes(),
            "sentinel s1:26379,s2:26379,[::1]:26380 (service \"mymaster\")"
        );
        let Topology::Sentinel { auth, db, .. } =
            Topology::parse("sentinel://app:p%40ss@s1/m").unwrap()
        else {
            panic!()
        };
        assert_eq!(db, 0);
        assert_eq!(auth.username.as_deref(), Some("app"));
        assert_eq!(auth.password.as_deref(), Some("p@ss"));
        assert!(!format!("{auth:?}").contains("p@ss"));
        for bad in [
            "sentinel://s1:26379",
            "sentinel://s1:26379/",
            "sentinel:///m",
            "sentinel://s1:0/m",
            "sentinel://s1:99999/m",
            "sentinel://s1:+1/m",
            "sentinel://s 1/m",
            "sentinel://s1/m/x",
            "sentinel://s1/m/0/extra",
            "sentinel://s1/m?x=1",
            "sentinel://s1/m?sentinel_password=",
            "sentinel://s1/m?sentinel_password=a&sentinel_password=b",
            "sentinel://s1/m?sentinel_username=u",
            "sentinel://s1/m?sentinel_password=%zz",
            "sentinel://s1/m#insecure",
            "sentinel://s1,,s2/m",
            "sentinel://[::1/m",
            "sentinels://s1/m",
        ] {
            assert!(Topology::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn cluster_urls_list_nodes_and_have_database_zero_only() {
        let t = Topology::parse("cluster://u:pw@n1:7000,n2:7001,n3").unwrap();
        assert_eq!(
            t,
            Topology::Cluster {
                nodes: vec![node("n1", 7000), node("n2", 7001), node("n3", 6379)],
                auth: Auth {
                    username: Some("u".into()),
                    password: Some("pw".into())
                },
                tls: false,
            }
        );
        assert!(!t.spans_slots_in_transactions());
        assert_eq!(t.shown_nodes(), "cluster n1:7000,n2:7001,n3:6379");
        assert!(Topology::parse("clusters://n1:7000/0").unwrap().is_tls());
        let many = (0..17)
            .map(|i| format!("n{i}"))
            .collect::<Vec<_>>()
            .join(",");
        for bad in [
            "cluster://".to_owned(),
            "cluster://n1/1".into(),
            "cluster://n1?x".into(),
            "cluster://n1:%41".into(),
            format!("cluster://{many}"),
            "cluster://u:%zz@n1".into(),
        ] {
            assert!(Topology::parse(&bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn passwords_never_reach_messages_in_any_form() {
        let cases = [
            (
                "redis://:s3cret@127.0.0.1:6379/0",
                "redis://:***@127.0.0.1:6379/0",
            ),
            (
                "rediss://app:s3cret@redis.internal/2?protocol=resp3",
                "rediss://app:***@redis.internal/2?protocol=resp3",
            ),
            ("redis://s3cret@host", "redis://***@host"),
            ("redis://u:a@b@host/0", "redis://u:***@host/0"),
            ("not a url :s3cret@x", "not a url :***@x"),
            ("redis://127.0.0.1/0", "redis://127.0.0.1/0"),
            ("redis://h/p@th", "redis://h/p@th"),
            (
                "sentinel://app:s3cret@s1:26379,s2:26379/mymaster/0",
                "sentinel://app:***@s1:26379,s2:26379/mymaster/0",
            ),
            (
                "cluster://app:s3cret@n1:7000,n2:7001",
                "cluster://app:***@n1:7000,n2:7001",
            ),
            (
                "cluster://u:s3cret@n1:7000,u:s3cret@n2:7001",
                "cluster://u:***@n2:7001",
            ),
            (
                "redis://h/0?password=s3cret&protocol=resp3",
                "redis://h/0?password=***&protocol=resp3",
            ),
        ];
        for (url, shown) in cases {
            assert_eq!(redact_redis_url(url), shown, "{url}");
            assert!(!redact_redis_url(url).contains("s3cret"), "{url}");
        }
        // Refusals do not echo the password either.
        for url in [
            "sentinel://u:s3cret@s1",
            "cluster://u:s3cret@n1/5",
            "cluster://u:s3cret@bad host",
        ] {
            let e = Topology::parse(url).unwrap_err();
            assert!(!e.to_string().contains("s3cret"), "{e}");
        }
    }

    #[test]
    fn only_reads_may_go_to_a_replica() {
        let cmds = |v: &[&'static str]| v.iter().map(|s| s.as_bytes()).collect::<Vec<_>>();
        assert!(is_read_only(cmds(&["EXISTS", "HSTRLEN", "hstrlen"])));
        assert!(is_read_only(cmds(&["HMGET"])));
        assert!(is_read_only(cmds(&["STRLEN", "GET"])));
        assert!(is_read_only(cmds(&["EVAL_RO"])));
        assert!(!is_read_only(cmds(&["EVAL"])));
        assert!(!is_read_only(cmds(&["MULTI", "DEL", "HSET", "EXEC"])));
        assert!(!is_read_only(cmds(&["HMGET", "ZADD"])));
        assert!(!is_read_only(cmds(&[])));
    }

    #[test]
    fn a_url_fragment_is_refused_since_insecure_turns_off_tls_verification() {
        for url in [
            "rediss://localhost:6379/0#insecure",
            "rediss://u:s3cret@localhost:6379/0#insecure",
            "valkeys://localhost:6379/0#insecure",
            "redis://h/0#",
            "unix:///run/redis.sock#insecure",
            "sentinel://s1/m/0#insecure",
            "clusters://n1:7000#insecure",
            "redis://:s3c#ret@h/0",
        ] {
            let e = Topology::parse(url).unwrap_err();
            assert!(e.to_string().contains("fragment"), "{url}: {e}");
            assert!(!e.to_string().contains("s3c"), "{url}: {e}");
        }
        // `dyncert_redis_tls_*` apply to valkeys:// as to rediss://.
        assert!(Topology::parse("valkeys://h:6380/0").unwrap().is_tls());
        assert!(!Topology::parse("valkey://h:6379/0").unwrap().is_tls());
    }

    #[test]
    fn sentinel_urls_carry_the_sentinels_own_credentials_in_the_query() {
        let url = "sentinel://app:pw@s1,s2/m/1?sentinel_username=watch&sentinel_password=s3%26cret";
        let Topology::Sentinel {
            auth,
            sentinel_auth,
            db,
            ..
        } = Topology::parse(url).unwrap()
        else {
            panic!()
        };
        assert_eq!(db, 1);
        assert_eq!(auth.password.as_deref(), Some("pw"));
        assert_eq!(sentinel_auth.username.as_deref(), Some("watch"));
        assert_eq!(sentinel_auth.password.as_deref(), Some("s3&cret"));
        let Topology::Sentinel { sentinel_auth, .. } =
            Topology::parse("sentinel://s1/m?sentinel_password=only").unwrap()
        else {
            panic!()
        };
        assert_eq!(sentinel_auth.username, None);
        assert_eq!(sentinel_auth.password.as_deref(), Some("only"));
        let shown = redact_redis_url(url);
        assert_eq!(
            shown,
            "sentinel://app:***@s1,s2/m/1?sentinel_username=watch&sentinel_password=***"
        );
        let e = Topology::parse("sentinel://s1/m?sentinel_pasword=s3cret").unwrap_err();
        assert!(e.to_string().contains("sentinel_pasword"), "{e}");
        assert!(!e.to_string().contains("s3cret"), "{e}");
    }

    fn votes(v: &[(u16, Option<u16>)]) -> Vec<(Node, SentinelAnswer)> {
        v.iter()
            .map(|(s, p)| {
                let answer = match p {
                    Some(0) => SentinelAnswer::Unknown,
                    Some(p) => SentinelAnswer::Primary(node("10.0.0.1", *p)),
                    None => SentinelAnswer::Failed,
                };
                (node("s", *s), answer)
            })
            .collect()
    }

    #[test]
    fn a_primary_needs_a_majority_of_the_listed_sentinels() {
        assert_eq!(sentinel_majority(1), 1);
        assert_eq!(sentinel_majority(2), 2);
        assert_eq!(sentinel_majority(3), 2);
        assert_eq!(sentinel_majority(4), 3);
        assert_eq!(sentinel_majority(5), 3);
        let p = |port| Ok(node("10.0.0.1", port));
        // One liar out of three, wherever it is listed.
        assert_eq!(
            agreed_primary("m", &votes(&[(1, Some(9)), (2, Some(6)), (3, Some(6))])),
            p(6)
        );
        assert_eq!(
            agreed_primary("m", &votes(&[(1, Some(6)), (2, Some(9)), (3, Some(6))])),
            p(6)
        );
        // Two of three agree, the third is down: enough.
        assert_eq!(
            agreed_primary("m", &votes(&[(1, None), (2, Some(6)), (3, Some(6))])),
            p(6)
        );
        assert_eq!(agreed_primary("m", &votes(&[(1, Some(6))])), p(6));
        // A majority of those listed, not of those that answered.
        for v in [
            vec![(1, None), (2, None), (3, Some(6))],
            vec![(1, Some(9)), (2, None), (3, Some(6))],
            vec![(1, Some(9)), (2, Some(0)), (3, Some(6))],
            vec![(1, Some(6)), (2, Some(9))],
            vec![(1, Some(6)), (2, Some(6)), (3, Some(9)), (4, Some(9))],
            vec![(1, Some(0)), (2, Some(0)), (3, Some(0))],
        ] {
            assert!(agreed_primary("m", &votes(&v)).is_err(), "{v:?}");
        }
        // The same host on another port is another primary.
        let e = agreed_primary("mymaster", &votes(&[(1, Some(9)), (2, Some(6)), (3, None)]))
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "no 2 of the 3 sentinels name one primary of \"mymaster\": \
             10.0.0.1:9 (s:1), 10.0.0.1:6 (s:2), no answer (s:3)"
        );
        let e = agreed_primary(
            "m",
            &votes(&[
                (1, Some(9)),
                (2, Some(6)),
                (3, Some(9)),
                (4, Some(0)),
                (5, Some(6)),
            ]),
        )
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "no 3 of the 5 sentinels name one primary of \"m\": \
             10.0.0.1:9 (s:1 s:3), 10.0.0.1:6 (s:2 s:5), unknown service (s:4)"
        );
    }

    #[test]
    fn replicas_need_a_majority_of_the_listed_sentinels_too() {
        let fields = |ip: &str, port: &str, flags: &str, link: &str| {
            [
                ("name", "x"),
                ("ip", ip),
                ("port", port),
                ("flags", flags),
                ("master-link-status", link),
            ]
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect::<Vec<_>>()
        };
        assert_eq!(
            healthy_replica(&fields("10.0.0.2", "6380", "slave", "ok")),
            Some(node("10.0.0.2", 6380))
        );
        assert_eq!(
            healthy_replica(&fields("10.0.0.2", "6380", "slave", "err")),
            Some(node("10.0.0.2", 6380))
        );
        for f in [
            fields("10.0.0.2", "6380", "s_down,slave", "ok"),
            fields("10.0.0.2", "6380", "slave,o_down", "ok"),
            fields("10.0.0.2", "0", "slave", "ok"),
            fields("10.0.0.2", "x", "slave", "ok"),
            fields("", "6380", "slave", "ok"),
            vec![],
        ] {
            assert_eq!(healthy_replica(&f), None, "{f:?}");
        }
        let a = node("10.0.0.2", 1);
        let b = node("10.0.0.3", 1);
        let rogue = node("10.6.6.6", 1);
        assert_eq!(
            agreed_replicas(&[
                Some(vec![rogue.clone(), a.clone()]),
                Some(vec![a.clone(), b.clone()]),
                Some(vec![b.clone(), a.clone()]),
            ]),
            [a.clone(), b.clone()]
        );
        assert_eq!(
            agreed_replicas(&[Some(vec![rogue.clone()]), None, Some(vec![a.clone()])]),
            []
        );
        assert_eq!(
            agreed_replicas(&[None, Some(vec![a.clone()]), Some(vec![a.clone()])]),
            [a]
        );
    }
}
