//! The binaries under test: the dyncert module and the NGINX it was
//! compiled against, found next to the running executable, and never
//! stale: before the first nginx with the module starts, the kit runs
//! `cargo build` for the profile of the running executable (once per
//! process). A test binary is compiled by `cargo test`, which does not
//! build the cdylib the tests load; without this step a plain `cargo test`
//! would run against whatever module an earlier build left behind.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Instant;

use crate::process::tail;

/// `target/<profile>` of the running executable: test binaries live in
/// `target/<profile>/deps/`, the benchmark in `target/<profile>/`.
pub fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    let dir = exe.parent().expect("executable in a directory");
    if dir.file_name().is_some_and(|n| n == "deps") {
        dir.parent().expect("target/<profile>/deps").to_path_buf()
    } else {
        dir.to_path_buf()
    }
}

/// The workspace this kit belongs to (where `cargo build` builds the
/// module).
pub fn workspace_dir() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
}

/// Makes sure the module and NGINX of this profile are built from the
/// current sources: runs `cargo build` (`--release` or `--profile` as the
/// running executable was built) once per process and panics, saying
/// why, when it fails. Skipped when `DYNCERT_MODULE` names the module to
/// test: whoever set it built it.
pub fn ensure_fresh_module() {
    static BUILT: OnceLock<Result<(), String>> = OnceLock::new();
    if let Err(why) = BUILT.get_or_init(build_module) {
        panic!("{why}");
    }
}

fn build_module() -> Result<(), String> {
    if std::env::var_os("DYNCERT_MODULE").is_some() {
        return Ok(());
    }
    let profile_dir = profile_dir();
    let target_dir = profile_dir
        .parent()
        .ok_or_else(|| format!("{} has no parent", profile_dir.display()))?;
    // The directory of the dev profile is `debug`; others have their name.
    let profile = match profile_dir.file_name().and_then(|n| n.to_str()) {
        Some("debug") => None,
        Some(p) => Some(p.to_string()),
        None => return Err(format!("no profile in {}", profile_dir.display())),
    };
    // The cargo running the tests, else the one that built this kit.
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| env!("CARGO").into());
    let mut cmd = Command::new(&cargo);
    cmd.arg("build")
        .arg("--manifest-path")
        .arg(workspace_dir().join("Cargo.toml"))
        .arg("--target-dir")
        .arg(target_dir);
    match profile.as_deref() {
        None => {}
        Some("release") => {
            cmd.arg("--release");
        }
        Some(p) => {
            cmd.args(["--profile", p]);
        }
    }
    // What `cargo test` sets for the test binary only: build scripts that
    // track OUT_DIR or CARGO_MANIFEST_DIR (ring, nginx-sys) would see them
    // change and rebuild everything after them, here and again at the next
    // plain `cargo build`.
    for (name, _) in std::env::vars_os() {
        let Some(name) = name.to_str() else { continue };
        if name == "OUT_DIR"
            || name == "CARGO_CRATE_NAME"
            || name == "CARGO_BIN_NAME"
            || name == "CARGO_PRIMARY_PACKAGE"
            || name == "CARGO_TARGET_TMPDIR"
            || name.starts_with("CARGO_PKG_")
            || name.starts_with("CARGO_MANIFEST_")
            || name == "DYNCERT_NGINX_BUILD_DIR"
        {
            cmd.env_remove(name);
        }
    }
    // The build flavour this kit was compiled in (scripts/openssl35.sh
    // --env: another OpenSSL, its rpath, the NGINX configure flags): the
    // rebuild must use it too, or running a flavour's binary without that
    // environment would rebuild its target directory against the system's
    // OpenSSL. cargo tracks these as inputs of this crate (option_env!).
    for (name, value) in FLAVOUR_ENV {
        if let Some(value) = value {
            cmd.env(name, value);
        }
    }
    let shown = format!(
        "`cargo build{}` in {}",
        match profile.as_deref() {
            None => String::new(),
            Some("release") => " --release".to_string(),
            Some(p) => format!(" --profile {p}"),
        },
        workspace_dir().display()
    );
    let started = Instant::now();
    let out = cmd.output().map_err(|e| {
        format!(
            "cannot run {shown} to build the module under test: {e}; \
             set DYNCERT_MODULE to test a module built by other means"
        )
    })?;
    if !out.status.success() {
        return Err(format!(
            "{shown} failed ({}) after {:.1}s; the tests never run against a stale module, \
             so fix the build (or set DYNCERT_MODULE to a module built by other means):\n{}",
            out.status,
            started.elapsed().as_secs_f64(),
            tail(&String::from_utf8_lossy(&out.stderr), 40)
        ));
    }
    Ok(())
}

/// The environment of the build this kit was compiled in that decides
/// which OpenSSL everything links (see build_module).
const FLAVOUR_ENV: [(&str, Option<&str>); 7] = [
    ("OPENSSL_DIR", option_env!("OPENSSL_DIR")),
    ("OPENSSL_LIB_DIR", option_env!("OPENSSL_LIB_DIR")),
    ("OPENSSL_INCLUDE_DIR", option_env!("OPENSSL_INCLUDE_DIR")),
    ("OPENSSL_NO_VENDOR", option_env!("OPENSSL_NO_VENDOR")),
    ("NGX_CFLAGS", option_env!("NGX_CFLAGS")),
    ("NGX_LDFLAGS", option_env!("NGX_LDFLAGS")),
    ("RUSTFLAGS", option_env!("RUSTFLAGS")),
];

/// The NGINX binary the module was compiled against: `DYNCERT_NGINX_BIN`,
/// else the nginx-sys build directory that build.rs records in
/// `target/<profile>/nginx-build-dir.txt`.
pub fn nginx_bin() -> PathBuf {
    if let Some(bin) = std::env::var_os("DYNCERT_NGINX_BIN") {
        return PathBuf::from(bin);
    }
    ensure_fresh_module();
    let record = profile_dir().join("nginx-build-dir.txt");
    let dir = fs::read_to_string(&record).unwrap_or_else(|e| {
        panic!(
            "{}: {e}; `cargo build` writes it (or set DYNCERT_NGINX_BIN)",
            record.display()
        )
    });
    let bin = PathBuf::from(dir.trim()).join("nginx");
    assert!(
        bin.is_file(),
        "no nginx binary at {} (named by {}); run `cargo build` or set DYNCERT_NGINX_BIN",
        bin.display(),
        record.display()
    );
    bin
}

/// The built module, as an absolute path (`load_module` resolves relative
/// paths against the prefix, which is a temp dir here): `DYNCERT_MODULE`,
/// else `target/<profile>/libngx_http_dyncert_module.so`, freshly built.
pub fn module_path() -> PathBuf {
    if let Some(m) = std::env::var_os("DYNCERT_MODULE") {
        let m = PathBuf::from(m);
        return if m.is_absolute() {
            m
        } else {
            std::env::current_dir().unwrap().join(m)
        };
    }
    ensure_fresh_module();
    let m = profile_dir().join("libngx_http_dyncert_module.so");
    assert!(
        m.is_file(),
        "module {} not found after `cargo build`",
        m.display()
    );
    m
}

/// The NGINX under test and the OpenSSL it runs on, for report headers:
/// "nginx/1.28.3, OpenSSL 3.5.5 27 Jan 2026". The OpenSSL is the one
/// `nginx -V` says it was built with (and, when that differs, the one it
/// runs with); when this process (the module's tests, the benchmark) links
/// another OpenSSL than NGINX, both are named, since rows measured on a
/// mixed pair would say nothing about either.
pub fn nginx_and_openssl() -> String {
    let out = std::process::Command::new(nginx_bin())
        .arg("-V")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stderr).into_owned())
        .unwrap_or_default();
    let nginx = out
        .lines()
        .find_map(|l| l.strip_prefix("nginx version: "))
        .unwrap_or("nginx (version unknown)")
        .to_owned();
    let ours = openssl::version::version();
    let built = out
        .lines()
        .find_map(|l| l.strip_prefix("built with "))
        .map(str::trim)
        .unwrap_or("an unknown OpenSSL");
    // "OpenSSL 3.5.5 27 Jan 2026" or "OpenSSL 3.0.19 ... (running with ...)".
    let server = match built.split_once(" (running with ") {
        Some((b, r)) => format!("{b}, running with {}", r.trim_end_matches(')')),
        None => built.to_owned(),
    };
    if server.starts_with(ours) || server.contains(&format!("running with {ours}")) {
        format!("{nginx}, {server}")
    } else {
        format!("{nginx}, {server} (this program links {ours})")
    }
}
