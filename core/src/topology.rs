//! Which Redis deployment a `dyncert_redis` (or `dyncert --redis`) URL
//! names, and the decisions that depend on it: one server (`redis://`,
//! `rediss://`, `unix:`), a Sentinel-managed primary (`sentinel://`) or a
//! Cluster (`cluster://`, `clusters://` over TLS); which commands may be
//! answered by a replica; whether a record and its expiry-index entry can
//! be written in one transaction; and how a URL is shown in a log line
//! (never with its password).
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
    /// `sentinel://[user:pass@]s1[:port],s2.../service[/db]`: the
    /// sentinels are asked for the primary of `service`; the credentials
    /// are the primary's and replicas' (sentinels are asked without AUTH).
    Sentinel {
        sentinels: Vec<Node>,
        service: String,
        db: i64,
        auth: Auth,
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
            "rediss" => Ok(Topology::Single {
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

fn parse_sentinel(rest: &str) -> Result<Topology, UrlError> {
    let (authority, tail) = split_authority(rest);
    let (auth, list) = parse_auth(authority)?;
    let sentinels = parse_nodes(list, SENTINEL_PORT)?;
    if tail.contains(['?', '#']) {
        return err("query parameters are not supported in sentinel:// URLs");
    }
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
/// so does the value of a `password=` query parameter. Also for URLs that
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

/// `password=...` (and `pass=`, `secret=`) values in a query string.
fn redact_query(tail: &str) -> String {
    let Some(q) = tail.find('?') else {
        return tail.to_owned();
    };
    let (path, query) = tail.split_at(q + 1);
    let parts: Vec<String> = query
        .split('&')
        .map(|kv| match kv.split_once('=') {
            Some((k, _))
                if ["password", "pass", "secret"]
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

/// Whether every command of a request only reads (so a replica may answer
/// it when the primary cannot): the commands the fetcher sends for a
/// record or an ACME challenge.
pub fn is_read_only<'a>(commands: impl IntoIterator<Item = &'a [u8]>) -> bool {
    const READS: [&[u8]; 7] = [
        b"EXISTS", b"HSTRLEN", b"HMGET", b"HGETALL", b"GET", b"STRLEN", b"PING",
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
        assert!(!is_read_only(cmds(&["MULTI", "DEL", "HSET", "EXEC"])));
        assert!(!is_read_only(cmds(&["HMGET", "ZADD"])));
        assert!(!is_read_only(cmds(&[])));
    }
}
