//! `--profile DIR`: where a handshake's server CPU goes, by phase.
//!
//! During every measured slice, `perf record` samples the nginx worker
//! (all its threads) on the `cpu-clock` software event with DWARF call
//! chains; hardware counters are not needed, so it works in VMs. After the
//! run each configuration's samples are read back with `perf script` and
//! every sample is given to one phase: walking its call chain from the
//! leaf outwards, the first frame that names a phase wins (so `malloc`
//! called while installing the certificate counts as installing). The
//! phase's share of the samples times the configuration's measured server
//! CPU per handshake gives microseconds per handshake.
//!
//! A sample's call chain is first cut at the innermost frame that enters
//! the handshake (`BOUNDARIES`; OpenSSL's own frames may have no symbol,
//! nginx's always have): dyncert's peek handler hands the connection to
//! nginx's `ngx_http_ssl_handshake` (which creates the SSL object, as it
//! does without dyncert), so the frames outside that belong to every
//! handshake sample and say nothing about it. The sample then
//! belongs to the first phase in `PHASES` order that any remaining frame
//! names: `malloc` under `SSL_use_PrivateKey` is installing,
//! SHA-256 under `EVP_DigestSign` is signing, a `sendmsg` under the record
//! layer is the kernel, and `ngx_` only takes what nothing else named.
//!
//! The phase rules are plain data below and unit-tested: they are what the
//! README's breakdown means.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

/// A phase and the frame names that mark it (substring of the symbol, or
/// of the DSO when the pattern starts with `dso:`), in priority order.
pub const PHASES: &[(&str, &[&str])] = &[
    ("peek: parse the ClientHello", &["clienthello"]),
    (
        "install",
        &[
            "SSL_use_certificate",
            "SSL_use_PrivateKey",
            "SSL_use_cert_and_key",
            "SSL_set1_chain",
            "SSL_set0_chain",
            "SSL_add1_chain_cert",
            "ssl_cert_add1_chain_cert",
            "SSL_certs_clear",
            "SSL_set_SSL_CTX",
            "SSL_check_private_key",
            "ssl_set_cert",
            "ssl_set_pkey",
        ],
    ),
    ("dyncert lookup", &["dyncert_core::", "select_certificate"]),
    ("peek: events, hand-off", &["shell::peek", "dyncert_peek"]),
    ("dyncert, other", &["dso:libngx_http_dyncert_module"]),
    (
        "sign",
        &[
            "tls_construct_cert_verify",
            "EVP_DigestSign",
            "ECDSA_",
            "ecdsa_",
            "ossl_ecdsa",
            "ecp_nistz256",
            "p256",
        ],
    ),
    (
        "key exchange",
        &[
            "x25519",
            "X25519",
            "ecx_",
            "mlkem",
            "ml_kem",
            "EVP_PKEY_derive",
            "EVP_PKEY_encapsulate",
            "EVP_PKEY_keygen",
            "tls_parse_ctos_key_share",
            "tls_construct_stoc_key_share",
        ],
    ),
    (
        "certificate message",
        &[
            "tls_construct_server_certificate",
            "ssl3_output_cert_chain",
            "tls_output_cert_chain",
            "ssl_add_cert_chain",
            "i2d_X509",
        ],
    ),
    ("kernel", &["dso:[kernel"]),
    (
        "key schedule, record layer",
        &[
            "tls13_",
            "ssl3_",
            "tls_write_records",
            "tls_get_more_records",
            "EVP_Cipher",
            "aes_",
            "AES_",
            "gcm_",
            "chacha",
            "HKDF",
            "hkdf",
            "EVP_Digest",
            "SHA256",
            "SHA512",
            "sha256_",
            "sha512_",
        ],
    ),
    (
        "handshake state machine, other OpenSSL",
        &["dso:libssl", "dso:libcrypto"],
    ),
    ("nginx", &["ngx_"]),
];

/// Frames that enter the TLS handshake; what calls them is cut off.
pub const BOUNDARIES: &[&str] = &[
    "ngx_http_ssl_handshake",
    "ngx_ssl_handshake",
    "SSL_do_handshake",
    "SSL_accept",
];

/// What no rule names.
pub const OTHER: &str = "other";

/// One call-chain frame: symbol and DSO as `perf script` prints them.
#[derive(Debug, Clone, PartialEq)]
pub struct Frame {
    pub sym: String,
    pub dso: String,
}

/// The phase of one sample (frames leaf first).
pub fn phase_of(frames: &[Frame]) -> &'static str {
    let names = |f: &Frame, m: &str| match m.strip_prefix("dso:") {
        Some(d) => f.dso.contains(d),
        None => f.sym.contains(m),
    };
    let inner = match frames
        .iter()
        .position(|f| BOUNDARIES.iter().any(|b| f.sym.contains(b)))
    {
        Some(i) => &frames[..=i],
        None => frames,
    };
    PHASES
        .iter()
        .find(|(_, marks)| inner.iter().any(|f| marks.iter().any(|m| names(f, m))))
        .map_or(OTHER, |(phase, _)| phase)
}

/// Parses `perf script -F ip,sym,dso` output into samples (frames leaf
/// first). Samples are separated by blank lines; a frame line is
/// `ADDR SYM (DSO)` (SYM may contain spaces; `[unknown]` stays).
pub fn parse_script(text: &str) -> Vec<Vec<Frame>> {
    let mut samples = Vec::new();
    let mut cur: Vec<Frame> = Vec::new();
    for line in text.lines() {
        let t = line.trim();
        if t.is_empty() {
            if !cur.is_empty() {
                samples.push(std::mem::take(&mut cur));
            }
            continue;
        }
        let Some((addr, rest)) = t.split_once(' ') else {
            continue;
        };
        if !addr.chars().all(|c| c.is_ascii_hexdigit()) {
            continue; // a sample header line
        }
        let (sym, dso) = match rest.rfind(" (") {
            Some(i) if rest.ends_with(')') => (&rest[..i], &rest[i + 2..rest.len() - 1]),
            _ => (rest, ""),
        };
        let sym = sym.split("+0x").next().unwrap_or(sym).trim();
        cur.push(Frame {
            sym: sym.to_owned(),
            dso: dso.to_owned(),
        });
    }
    if !cur.is_empty() {
        samples.push(cur);
    }
    samples
}

/// Samples per phase, and per leaf symbol.
#[derive(Debug, Default)]
pub struct Breakdown {
    pub samples: u64,
    pub phases: BTreeMap<&'static str, u64>,
    pub leaves: BTreeMap<String, u64>,
}

pub fn breakdown(samples: &[Vec<Frame>]) -> Breakdown {
    let mut b = Breakdown::default();
    for s in samples {
        b.samples += 1;
        *b.phases.entry(phase_of(s)).or_default() += 1;
        if let Some(leaf) = s.first() {
            let dso = Path::new(&leaf.dso)
                .file_name()
                .map(|f| f.to_string_lossy().into_owned())
                .unwrap_or_default();
            *b.leaves.entry(format!("{} ({dso})", leaf.sym)).or_default() += 1;
        }
    }
    b
}

/// Records slices into `dir/<slug>.<n>.data`.
pub struct Profiler {
    dir: PathBuf,
}

pub fn slug(label: &str) -> String {
    label
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect()
}

impl Profiler {
    pub fn new(dir: &Path) -> Result<Profiler, String> {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let ok = Command::new("perf")
            .arg("--version")
            .stdout(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        if !ok {
            return Err("--profile needs perf (Debian: linux-perf)".into());
        }
        Ok(Profiler {
            dir: dir.to_owned(),
        })
    }

    /// Starts sampling `pid` for one slice of `label`.
    pub fn start(&self, label: &str, slice: usize, pid: u32) -> Option<Child> {
        let out = self.dir.join(format!("{}.{slice}.data", slug(label)));
        Command::new("perf")
            .args(["record", "-q", "-e", "cpu-clock", "-F", "1999"])
            .args(["--call-graph", "dwarf,16384", "-p", &pid.to_string(), "-o"])
            .arg(&out)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .ok()
    }

    /// Stops a slice's sampling (SIGINT: perf writes its file and exits).
    pub fn stop(&self, child: Option<Child>) {
        if let Some(mut c) = child {
            // SAFETY: kill(2) on the pid of a child we spawned and have not
            // waited for, so it cannot have been reused.
            unsafe { libc::kill(c.id() as i32, libc::SIGINT) };
            let _ = c.wait();
        }
    }

    /// Every slice of `label`, read back and broken down.
    pub fn read(&self, label: &str) -> Breakdown {
        let prefix = format!("{}.", slug(label));
        let mut all = Vec::new();
        let mut files: Vec<PathBuf> = std::fs::read_dir(&self.dir)
            .map(|d| {
                d.filter_map(|e| e.ok().map(|e| e.path()))
                    .filter(|p| {
                        p.file_name()
                            .and_then(|f| f.to_str())
                            .is_some_and(|f| f.starts_with(&prefix) && f.ends_with(".data"))
                    })
                    .collect()
            })
            .unwrap_or_default();
        files.sort();
        for f in files {
            let out = Command::new("perf")
                .args(["script", "--no-inline", "-F", "ip,sym,dso", "-i"])
                .arg(&f)
                .stderr(Stdio::null())
                .output();
            if let Ok(o) = out {
                all.extend(parse_script(&String::from_utf8_lossy(&o.stdout)));
            }
        }
        breakdown(&all)
    }
}

/// The report: µs per handshake by phase for each configuration, then the
/// top leaf symbols of each.
pub fn report(rows: &[(String, f64, Breakdown)]) -> String {
    use std::fmt::Write;
    let mut phases: Vec<&str> = PHASES.iter().map(|(p, _)| *p).collect();
    phases.push(OTHER);
    let mut s = String::new();
    let _ = writeln!(
        s,
        "\nWhere the server CPU of a handshake goes (perf cpu-clock samples of the worker, DWARF call chains; us per handshake = share of samples x measured CPU per handshake)\n"
    );
    let _ = write!(s, "{:<40}", "phase");
    for (label, _, _) in rows {
        let _ = write!(s, " {:>14}", truncate(label, 14));
    }
    let _ = writeln!(s);
    for p in &phases {
        let _ = write!(s, "{p:<40}");
        for (_, us, b) in rows {
            let n = b.phases.get(p).copied().unwrap_or(0);
            let _ = write!(s, " {:>14.1}", us * n as f64 / (b.samples.max(1)) as f64);
        }
        let _ = writeln!(s);
    }
    let _ = write!(s, "{:<40}", "total (measured), samples");
    for (_, us, b) in rows {
        let _ = write!(s, " {:>14}", format!("{us:.0} ({})", b.samples));
    }
    let _ = writeln!(s);
    for (label, us, b) in rows {
        let _ = writeln!(s, "\n{label}: top functions by own samples");
        let mut top: Vec<(&String, &u64)> = b.leaves.iter().collect();
        top.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
        for (sym, n) in top.into_iter().take(15) {
            let _ = writeln!(
                s,
                "  {:>6.1} us  {:>5.1}%  {sym}",
                us * *n as f64 / b.samples.max(1) as f64,
                100.0 * *n as f64 / b.samples.max(1) as f64
            );
        }
    }
    s
}

/// `dyncert-bench profile-report DIR LABEL=US...`: the report again from
/// kept recordings, with each configuration's measured CPU per handshake
/// (so the phase rules can change without measuring again).
pub fn report_cmd(args: &[String]) -> i32 {
    let usage = "usage: dyncert-bench profile-report DIR 'LABEL=US_PER_HANDSHAKE'...";
    let Some((dir, rows)) = args.split_first() else {
        eprintln!("{usage}");
        return 2;
    };
    let p = Profiler {
        dir: PathBuf::from(dir),
    };
    let mut out = Vec::new();
    for r in rows {
        let Some((label, us)) = r
            .rsplit_once('=')
            .and_then(|(l, u)| Some((l, u.parse().ok()?)))
        else {
            eprintln!("{usage}");
            return 2;
        };
        out.push((label.to_owned(), us, p.read(label)));
    }
    println!("{}", report(&out));
    0
}

fn truncate(s: &str, n: usize) -> String {
    s.chars().take(n).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(sym: &str, dso: &str) -> Frame {
        Frame {
            sym: sym.into(),
            dso: dso.into(),
        }
    }

    #[test]
    fn the_first_phase_any_frame_names_decides() {
        let install = [
            f("malloc", "/lib/libc.so.6"),
            f("SSL_use_PrivateKey", "/lib/libssl.so.3"),
            f(
                "ngx_http_dyncert_cert_cb",
                "/m/libngx_http_dyncert_module.so",
            ),
        ];
        assert_eq!(phase_of(&install), "install");
        let sign = [
            f("ecp_nistz256_ord_sqr_mont", "/lib/libcrypto.so.3"),
            f("EVP_DigestSign", "/lib/libcrypto.so.3"),
            f("tls_construct_cert_verify", "/lib/libssl.so.3"),
        ];
        assert_eq!(phase_of(&sign), "sign");
        let hash_for_the_signature = [
            f("sha256_block_data_order", "/lib/libcrypto.so.3"),
            f("EVP_DigestSign", "/lib/libcrypto.so.3"),
            f("ngx_ssl_handshake", "/nginx"),
        ];
        assert_eq!(phase_of(&hash_for_the_signature), "sign");
        let send = [
            f("tcp_sendmsg", "[kernel.kallsyms]"),
            f("ssl3_write_bytes", "/lib/libssl.so.3"),
            f("ngx_ssl_handshake", "/nginx"),
        ];
        assert_eq!(phase_of(&send), "kernel");
        assert_eq!(
            phase_of(&[f("ngx_epoll_process_events", "/nginx")]),
            "nginx"
        );
        // Under the peek handler, only what is outside the handshake is
        // the peek.
        let m = "/m/libngx_http_dyncert_module.so";
        let in_handshake = [
            f("[unknown]", "/lib/libssl.so.3"),
            f("SSL_do_handshake", "/lib/libssl.so.3"),
            f("ngx_ssl_handshake", "/nginx"),
            f("dyncert::shell::peek::hand_off", m),
            f("dyncert::shell::peek::ngx_http_dyncert_peek_handler", m),
        ];
        assert_eq!(
            phase_of(&in_handshake),
            "handshake state machine, other OpenSSL"
        );
        let peeking = [
            f("tcp_recvmsg", "[kernel.kallsyms]"),
            f("recv", "/lib/libc.so.6"),
            f("dyncert::shell::peek::ngx_http_dyncert_peek_handler", m),
        ];
        assert_eq!(phase_of(&peeking), "peek: events, hand-off");
        let ssl_new = [
            f("SSL_new", "/lib/libssl.so.3"),
            f("ngx_ssl_create_connection", "/nginx"),
            f("ngx_http_ssl_handshake", "/nginx"),
            f("dyncert::shell::peek::hand_off", m),
        ];
        assert_eq!(phase_of(&ssl_new), "handshake state machine, other OpenSSL");
        let lookup = [
            f("memcmp", "/lib/libc.so.6"),
            f("dyncert::cache::get", "/m/libngx_http_dyncert_module.so"),
        ];
        assert_eq!(phase_of(&lookup), "dyncert, other");
        let lru = [
            f(
                "dyncert_core::lru::Lru<T>::get",
                "/m/libngx_http_dyncert_module.so",
            ),
            f(
                "dyncert::shell::peek::ngx_http_dyncert_peek_handler",
                "/m/libngx_http_dyncert_module.so",
            ),
        ];
        assert_eq!(phase_of(&lru), "dyncert lookup");
        assert_eq!(phase_of(&[f("write", "[kernel.kallsyms]")]), "kernel");
        assert_eq!(phase_of(&[f("[unknown]", "[unknown]")]), OTHER);
    }

    #[test]
    fn perf_script_output_is_read_leaf_first() {
        let text = "nginx 12 \n\
            \tffffffff813eab80 up_read ([kernel.kallsyms])\n\
            \t    b0ab6 SSL_do_handshake+0x12 (/usr/lib/libssl.so.3)\n\
            \n\
            nginx 13 \n\
            \t    9069 operator new (/usr/lib/libstdc++.so.6)\n";
        let s = parse_script(text);
        assert_eq!(s.len(), 2);
        assert_eq!(s[0][0], f("up_read", "[kernel.kallsyms]"));
        assert_eq!(s[0][1], f("SSL_do_handshake", "/usr/lib/libssl.so.3"));
        assert_eq!(s[1][0], f("operator new", "/usr/lib/libstdc++.so.6"));
        let b = breakdown(&s);
        assert_eq!(b.samples, 2);
        assert_eq!(b.phases.get("kernel"), Some(&1));
        assert_eq!(b.leaves.get("up_read (kernel.kallsyms])"), None);
        assert_eq!(b.leaves.get("up_read ([kernel.kallsyms])"), Some(&1));
    }
}
