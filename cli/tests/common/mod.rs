//! The CLI runner the `dyncert` test files share: run the binary against a
//! Redis and keep what it said.

use std::path::Path;
use std::process::Command;

use dyncert_testkit::Redis;

pub struct Out {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Out {
    /// Checks the command exited 0; on failure shows its output and `what`
    /// (the command, or the CA's log).
    #[track_caller]
    pub fn assert_ok(&self, what: &str) {
        assert_eq!(
            self.code, 0,
            "{what}: exit {}\nstdout: {}\nstderr: {}",
            self.code, self.stdout, self.stderr
        );
    }
}

/// Runs the CLI against `redis`.
pub fn dyncert(redis: &Redis, args: &[&str]) -> Out {
    dyncert_at(&redis.url(), args)
}

/// `dyncert --redis URL ARGS...`, for a Redis that need not exist.
pub fn dyncert_at(url: &str, args: &[&str]) -> Out {
    let out = Command::new(env!("CARGO_BIN_EXE_dyncert"))
        .arg("--redis")
        .arg(url)
        .args(args)
        .output()
        .expect("run dyncert");
    Out {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// `put NAME --cert CRT --key KEY`, the arguments.
pub fn put_args<'a>(name: &'a str, crt: &'a Path, key: &'a Path) -> Vec<&'a str> {
    vec![
        "put",
        name,
        "--cert",
        crt.to_str().unwrap(),
        "--key",
        key.to_str().unwrap(),
    ]
}

/// `dyncert put NAME --cert CRT --key KEY EXTRA...`.
pub fn put(redis: &Redis, name: &str, crt: &Path, key: &Path, extra: &[&str]) -> Out {
    let mut args = put_args(name, crt, key);
    args.extend_from_slice(extra);
    dyncert(redis, &args)
}
