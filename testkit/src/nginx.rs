//! The real NGINX built from the same sources as the module, in a prefix of
//! its own: `Nginx::start` runs it (foreground master, workers, error.log
//! at `info`), `Nginx::config_test` runs `nginx -t`, both from an
//! `http {}` template and one `NginxOpts`.
//!
//! A running nginx is stopped on Drop, and fails the test then if its
//! error.log reports trouble (a crashed worker, an `alert` or `emerg`)
//! the test did not announce with `expect_log`; a failing test prints the
//! tail of the log.

use std::collections::BTreeSet;
use std::fs;
use std::net::{SocketAddr, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::api::CertApi;
use crate::client::{tls_burst, Exchange, Request};
use crate::module::{module_path, nginx_bin};
use crate::pki::{Leaf, Pki};
use crate::process::{
    child_pids, die_with_parent, free_port, poll, signal, tail, wait_exit, write_file, TempDir,
    STARTUP_DEADLINE,
};
use crate::redis::Redis;

/// How an nginx is run, beyond its `http {}` block: the main context the
/// kit writes above it, the placeholders filled in the template, and the
/// process's environment and stdin. `NginxOpts::new()` is one worker with
/// the module, `worker_connections 256`, error.log at `info` (client
/// mistakes are INFO in nginx, and the module's warnings must be
/// visible), a free port for `@PORT@`.
#[derive(Clone, Debug)]
pub struct NginxOpts {
    workers: u32,
    load_module: bool,
    /// Other dynamic modules (absolute paths), each loaded before or after
    /// dyncert's.
    modules_before: Vec<PathBuf>,
    modules_after: Vec<PathBuf>,
    event_method: Option<String>,
    worker_connections: u32,
    error_log_level: String,
    worker_cpu_affinity: Option<String>,
    port: Option<u16>,
    vars: Vec<(String, String)>,
    env: Vec<(String, String)>,
    stdin_pipe: bool,
    helpers: u32,
    prefix: Option<PathBuf>,
    /// A command nginx runs under (`valgrind ...`), nginx's path appended.
    launcher: Vec<String>,
    /// How long a stop waits for nginx to exit after SIGTERM.
    stop_timeout: Duration,
}

impl Default for NginxOpts {
    fn default() -> NginxOpts {
        NginxOpts {
            workers: 1,
            load_module: true,
            modules_before: Vec::new(),
            modules_after: Vec::new(),
            event_method: None,
            worker_connections: 256,
            error_log_level: "info".to_string(),
            worker_cpu_affinity: None,
            port: None,
            vars: Vec::new(),
            env: Vec::new(),
            stdin_pipe: false,
            helpers: 0,
            prefix: None,
            launcher: Vec::new(),
            stop_timeout: Duration::from_secs(5),
        }
    }
}

impl NginxOpts {
    pub fn new() -> NginxOpts {
        NginxOpts::default()
    }

    /// `worker_processes`.
    pub fn workers(mut self, n: u32) -> NginxOpts {
        self.workers = n;
        self
    }

    /// Plain NGINX: no `load_module` of dyncert.
    pub fn without_module(mut self) -> NginxOpts {
        self.load_module = false;
        self
    }

    /// `load_module PATH;` for another dynamic module, after dyncert's
    /// (before it with `first`): the order of `load_module` lines is the
    /// order of the modules' phase handlers unless a module sets its own.
    pub fn other_module(mut self, path: &Path, first: bool) -> NginxOpts {
        if first {
            self.modules_before.push(path.to_path_buf());
        } else {
            self.modules_after.push(path.to_path_buf());
        }
        self
    }

    /// `use METHOD;` in the `events {}` block (nginx's default otherwise).
    pub fn event_method(mut self, method: &str) -> NginxOpts {
        self.event_method = Some(method.to_string());
        self
    }

    pub fn worker_connections(mut self, n: u32) -> NginxOpts {
        self.worker_connections = n;
        self
    }

    /// The level of the `error_log` directive (`info` unless set).
    pub fn error_log_level(mut self, level: &str) -> NginxOpts {
        self.error_log_level = level.to_string();
        self
    }

    /// `worker_cpu_affinity MASK;` (the benchmark pins its worker).
    pub fn worker_cpu_affinity(mut self, mask: &str) -> NginxOpts {
        self.worker_cpu_affinity = Some(mask.to_string());
        self
    }

    /// The port `@PORT@` stands for and `start` waits on (a free one
    /// unless set).
    pub fn port(mut self, port: u16) -> NginxOpts {
        self.port = Some(port);
        self
    }

    /// Fills the placeholder `@NAME@` of the template with `value`.
    pub fn var(mut self, name: &str, value: impl ToString) -> NginxOpts {
        self.vars.push((name.to_string(), value.to_string()));
        self
    }

    /// `@REDIS@`: the `dyncert_redis` URL of `redis` (which need not be
    /// running).
    pub fn redis(self, redis: &Redis) -> NginxOpts {
        self.var("REDIS", redis.url())
    }

    /// `@API@`: the quoted URL template of `api` (which need not be
    /// running); `@API_CA@`: the file of the CA of its certificate.
    pub fn api(self, api: &CertApi) -> NginxOpts {
        self.var("API", format!("\"{}\"", api.url_template()))
            .var("API_CA", api.ca_file().display())
    }

    /// An environment variable of the nginx process (read at configuration
    /// time, e.g. by `dyncert_allow env=VAR`).
    pub fn env(mut self, name: &str, value: &str) -> NginxOpts {
        self.env.push((name.to_string(), value.to_string()));
        self
    }

    /// nginx's stdin is a pipe nobody writes to and nobody closes (as
    /// under `docker run -i`), instead of /dev/null.
    pub fn stdin_pipe(mut self) -> NginxOpts {
        self.stdin_pipe = true;
        self
    }

    /// Child processes of the master besides the workers that `start`
    /// waits for (a cache manager and a cache loader with
    /// `proxy_cache_path`).
    pub fn helpers(mut self, n: u32) -> NginxOpts {
        self.helpers = n;
        self
    }

    /// Runs nginx in this prefix directory, which stays after Drop (a temp
    /// dir, removed unless the test fails, otherwise).
    pub fn prefix(mut self, dir: &Path) -> NginxOpts {
        self.prefix = Some(dir.to_path_buf());
        self
    }

    /// `master_process off`: the started process serves connections itself
    /// (no workers; `Nginx::master_pid` is the serving process). For
    /// running nginx under a tool that cannot follow a fork, like
    /// callgrind's instrumentation switch.
    pub fn single_process(mut self) -> NginxOpts {
        self.workers = 0;
        self
    }

    /// Runs nginx as the last argument of `command` (e.g. `valgrind
    /// --tool=callgrind`).
    pub fn launcher(mut self, command: &[&str]) -> NginxOpts {
        self.launcher = command.iter().map(|s| s.to_string()).collect();
        self
    }

    /// How long stopping waits for nginx to exit after SIGTERM before it
    /// kills it and fails (5 s by default; a process under valgrind with
    /// many names takes longer to free them).
    pub fn stop_timeout(mut self, t: Duration) -> NginxOpts {
        self.stop_timeout = t;
        self
    }

    /// The main context above the `http {}` block: foreground master with
    /// workers, a pid file and error.log in `prefix`.
    fn main_conf(&self, prefix: &Path) -> String {
        let mut s = String::new();
        for m in &self.modules_before {
            s.push_str(&format!("load_module {};\n", m.display()));
        }
        if self.load_module {
            s.push_str(&format!("load_module {};\n", module_path().display()));
        }
        for m in &self.modules_after {
            s.push_str(&format!("load_module {};\n", m.display()));
        }
        s.push_str(&format!("worker_processes {};\n", self.workers.max(1)));
        if let Some(mask) = &self.worker_cpu_affinity {
            s.push_str(&format!("worker_cpu_affinity {mask};\n"));
        }
        let event_method = self
            .event_method
            .as_ref()
            .map(|m| format!(" use {m};"))
            .unwrap_or_default();
        s.push_str(&format!(
            "daemon off;\n\
             master_process {master};\n\
             error_log {prefix}/error.log {level};\n\
             pid {prefix}/nginx.pid;\n\
             events {{ worker_connections {connections};{event_method} }}\n",
            prefix = prefix.display(),
            level = self.error_log_level,
            // No workers: the master serves (single_process).
            master = if self.workers == 0 { "off" } else { "on" },
            connections = self.worker_connections,
        ));
        s
    }

    /// `template` with `@PORT@` and the placeholders of `var` filled in.
    fn render(&self, template: &str, port: u16) -> String {
        let mut vars: Vec<(&str, &str)> = vec![];
        let port = port.to_string();
        vars.push(("PORT", &port));
        vars.extend(self.vars.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        render(template, &vars)
    }
}

/// Replaces `@NAME@` placeholders in a config template (nginx configs are
/// full of braces, which `format!` would need doubled).
pub fn render(template: &str, vars: &[(&str, &str)]) -> String {
    let mut s = template.to_string();
    for (k, v) in vars {
        s = s.replace(&format!("@{k}@"), v);
    }
    assert!(
        !s.contains("@PORT@") && !s.contains("@REDIS@") && !s.contains("@API@"),
        "unfilled placeholder in:\n{s}"
    );
    s
}

/// The prefix nginx runs in: a kept directory, or a temp dir.
enum Prefix {
    Temp(TempDir),
    Kept(PathBuf),
}

impl Prefix {
    fn new(opts: &NginxOpts, tag: &str) -> Prefix {
        match &opts.prefix {
            Some(dir) => Prefix::Kept(dir.clone()),
            None => Prefix::Temp(TempDir::new(tag)),
        }
    }

    fn path(&self) -> &Path {
        match self {
            Prefix::Temp(t) => t.path(),
            Prefix::Kept(p) => p,
        }
    }

    /// Writes conf/nginx.conf (main context and `http`) and the default
    /// certificate next to it.
    fn write(&self, pki: &Pki, main: &str, http: &str) {
        let conf_dir = self.path().join("conf");
        pki.write_default(&conf_dir);
        fs::create_dir_all(self.path().join("logs")).unwrap();
        write_file(&conf_dir.join("nginx.conf"), format!("{main}{http}"));
    }
}

/// A running nginx master (and its workers) in a prefix of its own.
pub struct Nginx {
    pub port: u16,
    pub workers: u32,
    /// Child processes besides the workers (cache manager and loader).
    helpers: u32,
    prefix: Prefix,
    child: Option<Child>,
    /// The write end of nginx's stdin when it is a pipe, kept open.
    _stdin: Option<ChildStdin>,
    /// The main context above the `http {}` block, and the options whose
    /// placeholders it fills (for `write_http`).
    main: String,
    opts: NginxOpts,
    /// Parts of error.log lines a test caused on purpose (see `expect_log`).
    expected: Vec<String>,
}

impl Nginx {
    /// Writes the main context of `opts` and `http_template` (placeholders
    /// filled) into PREFIX/conf/nginx.conf with the default certificate
    /// next to it, starts nginx, and waits until all workers run and the
    /// port accepts connections.
    pub fn start(pki: &Pki, http_template: &str, opts: NginxOpts) -> Nginx {
        let mut nginx = Nginx::spawn(pki, http_template, opts);
        nginx.wait_ready();
        nginx
    }

    /// `start` without the wait: returns as soon as the master process
    /// exists (the benchmark times how long the first handshake takes).
    pub fn spawn(pki: &Pki, http_template: &str, opts: NginxOpts) -> Nginx {
        let port = opts.port.unwrap_or_else(free_port);
        let prefix = Prefix::new(&opts, "nginx");
        let main = opts.main_conf(prefix.path());
        prefix.write(pki, &main, &opts.render(http_template, port));

        let stdout = fs::File::create(prefix.path().join("stdout.log")).unwrap();
        let mut cmd = match opts.launcher.split_first() {
            Some((program, args)) => {
                let mut c = Command::new(program);
                c.args(args).arg(nginx_bin());
                c
            }
            None => Command::new(nginx_bin()),
        };
        cmd.arg("-p")
            .arg(prefix.path())
            .args(["-c", "conf/nginx.conf", "-e"])
            .arg(prefix.path().join("error.log"))
            .stdin(if opts.stdin_pipe {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .envs(opts.env.iter().map(|(k, v)| (k, v)))
            .stdout(stdout.try_clone().unwrap())
            .stderr(stdout)
            // Own process group: Drop can reap workers even if the master
            // was killed before it could stop them.
            .process_group(0);
        die_with_parent(&mut cmd);
        let mut child = cmd.spawn().expect("spawn nginx");
        let stdin = child.stdin.take();
        Nginx {
            port,
            workers: opts.workers,
            helpers: opts.helpers,
            prefix,
            child: Some(child),
            _stdin: stdin,
            main,
            opts,
            expected: Vec::new(),
        }
    }

    /// `nginx -t` for the main context of `opts` and `http_template`, with
    /// the default certificate in the conf dir.
    pub fn config_test(pki: &Pki, http_template: &str, opts: NginxOpts) -> ConfigTest {
        let port = opts.port.unwrap_or_else(free_port);
        let prefix = Prefix::new(&opts, "nginx-t");
        let main = opts.main_conf(prefix.path());
        prefix.write(pki, &main, &opts.render(http_template, port));
        ConfigTest::run(prefix.path(), &opts.env)
    }

    /// `nginx -t -p PREFIX -c conf/nginx.conf` on a prefix that the caller
    /// has filled.
    pub fn config_test_prefix(prefix: &Path) -> ConfigTest {
        ConfigTest::run(prefix, &[])
    }

    pub fn master_pid(&self) -> u32 {
        self.child.as_ref().expect("nginx is stopped").id()
    }

    pub fn prefix(&self) -> &Path {
        self.prefix.path()
    }

    pub fn conf_path(&self) -> PathBuf {
        self.prefix().join("conf/nginx.conf")
    }

    /// Current worker pids (and helpers, and old workers still exiting
    /// after a reload).
    pub fn worker_pids(&self) -> BTreeSet<u32> {
        child_pids(self.master_pid())
    }

    /// The pid of the only worker.
    pub fn worker_pid(&self) -> u32 {
        let workers = self.worker_pids();
        assert_eq!(workers.len(), 1, "not one worker: {workers:?}");
        *workers.first().unwrap()
    }

    fn exited(&mut self) -> Option<String> {
        let child = self.child.as_mut()?;
        match child.try_wait() {
            Ok(Some(status)) => Some(format!("nginx master exited: {status}")),
            _ => None,
        }
    }

    /// Waits until every worker (and helper) runs and the port accepts
    /// connections.
    pub fn wait_ready(&mut self) {
        let start = Instant::now();
        loop {
            if let Some(why) = self.exited() {
                panic!("{why}\n{}", self.logs());
            }
            let workers = self.worker_pids().len() as u32;
            let addr: SocketAddr = ([127, 0, 0, 1], self.port).into();
            if workers == self.workers + self.helpers
                && TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
            {
                return;
            }
            if start.elapsed() > STARTUP_DEADLINE {
                panic!(
                    "nginx not ready after {STARTUP_DEADLINE:?} ({workers} workers)\n{}",
                    self.logs()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Reloads the configuration (SIGHUP, what `nginx -s reload` sends) and
    /// waits until a full set of new workers replaced the old ones.
    pub fn reload(&mut self) {
        let old = self.worker_pids();
        assert!(signal(self.master_pid(), libc::SIGHUP), "SIGHUP nginx");
        let workers = self.workers as usize;
        let ok = poll(STARTUP_DEADLINE, Duration::from_millis(20), || {
            let now = self.worker_pids();
            (now.len() == workers && now.is_disjoint(&old)).then_some(())
        });
        if ok.is_none() {
            panic!(
                "reload: workers {:?} did not replace {old:?}\n{}",
                self.worker_pids(),
                self.logs()
            );
        }
        if let Some(why) = self.exited() {
            panic!("{why}\n{}", self.logs());
        }
    }

    /// Runs `nginx -s reload` for this prefix, as an operator does (it
    /// parses the whole configuration before it signals the master), and
    /// returns once that command exits: the new workers may not be up yet.
    pub fn nginx_s_reload(&self) {
        let out = Command::new(nginx_bin())
            .arg("-p")
            .arg(self.prefix())
            .args(["-c", "conf/nginx.conf", "-e"])
            .arg(self.prefix().join("error.log"))
            .args(["-s", "reload"])
            .stdin(Stdio::null())
            .output()
            .expect("run nginx -s reload");
        assert!(
            out.status.success(),
            "nginx -s reload failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Replaces the `http {}` block of nginx.conf with `http_template`,
    /// its placeholders filled as at the start (the main context stays);
    /// nginx reads it at the next `reload`.
    pub fn write_http(&self, http_template: &str) {
        let http = self.opts.render(http_template, self.port);
        write_file(&self.conf_path(), format!("{}{http}", self.main));
    }

    /// Reloads a configuration that must fail to load: sends SIGHUP, waits
    /// for a new error.log line containing `failure`, and asserts that
    /// nginx kept its old cycle (same workers, master alive). Announce the
    /// failure's own log lines with `expect_log` first.
    pub fn reload_failing(&mut self, failure: &str) {
        let old = self.worker_pids();
        let count = |log: &str| log.lines().filter(|l| l.contains(failure)).count();
        let before = count(&self.error_log());
        assert!(signal(self.master_pid(), libc::SIGHUP), "SIGHUP nginx");
        let seen = poll(STARTUP_DEADLINE, Duration::from_millis(20), || {
            (count(&self.error_log()) > before).then_some(())
        });
        if seen.is_none() {
            panic!("reload: no {failure:?} in error.log\n{}", self.logs());
        }
        if let Some(why) = self.exited() {
            panic!("{why}\n{}", self.logs());
        }
        assert_eq!(
            self.worker_pids(),
            old,
            "a failed reload replaced the workers\n{}",
            self.logs()
        );
    }

    /// Writes `html/<dir>index.html` under the prefix for each of `dirs`
    /// (`""` for the root, else ending in `/`), with the body
    /// `index_page(dir)`: content for `root html;` locations, which the
    /// access phase guards (a `return` would answer in the rewrite phase,
    /// before it).
    pub fn write_index_pages(&self, dirs: &[&str]) {
        for d in dirs {
            write_file(
                &self.prefix().join("html").join(d).join("index.html"),
                index_page(d),
            );
        }
    }

    /// Bursts of requests for `sni` until every current worker has answered
    /// (the body must carry `pid=$pid`); panics after `deadline`. Returns
    /// every response, for the caller to check what each worker served.
    pub fn hit_every_worker(&self, sni: &str, deadline: Duration) -> Vec<Exchange> {
        let workers = self.worker_pids();
        let mut seen = BTreeSet::new();
        let mut all = Vec::new();
        let start = Instant::now();
        while !workers.is_subset(&seen) {
            if start.elapsed() > deadline {
                panic!(
                    "only workers {seen:?} of {workers:?} answered for {sni} within {deadline:?}\n{}",
                    self.logs()
                );
            }
            for r in tls_burst(self.port, sni, 8) {
                let r = r.unwrap_or_else(|e| panic!("{sni}: {e}\n{}", self.logs()));
                seen.insert(r.pid());
                all.push(r);
            }
        }
        all
    }

    /// One request to the TLS listener with SNI `sni`, panicking when the
    /// handshake or the request fails.
    pub fn get_sni(&self, sni: &str) -> Exchange {
        Request::default()
            .sni(sni)
            .https(self.port)
            .unwrap_or_else(|e| panic!("TLS request with SNI {sni} failed: {e}"))
    }

    /// Asks until `sni` is served `leaf` (a fetch may be under way, or the
    /// negative entry of a failed one must run out), for at most
    /// `deadline`.
    pub fn wait_served(&self, pki: &Pki, sni: &str, leaf: &Leaf, deadline: Duration) -> Exchange {
        let start = Instant::now();
        loop {
            let r = self.get_sni(sni);
            if r.tls().leaf_serial == leaf.serial_hex {
                r.assert_served(leaf, pki);
                return r;
            }
            assert!(
                start.elapsed() < deadline,
                "{sni} still gets serial {} (body {:?}); log:\n{}",
                r.tls().leaf_serial,
                r.body,
                tail(&self.error_log(), 80)
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn error_log(&self) -> String {
        fs::read_to_string(self.prefix().join("error.log")).unwrap_or_default()
    }

    /// Waits until error.log has a line for which `pred` holds.
    pub fn wait_for_log_line(
        &self,
        deadline: Duration,
        pred: impl Fn(&str) -> bool,
    ) -> Option<String> {
        poll(deadline, Duration::from_millis(20), || {
            self.error_log()
                .lines()
                .find(|l| pred(l))
                .map(str::to_string)
        })
    }

    /// Tail of error.log and everything nginx wrote to stdout/stderr.
    pub fn logs(&self) -> String {
        let out = fs::read_to_string(self.prefix().join("stdout.log")).unwrap_or_default();
        format!(
            "---- nginx error.log ({}) ----\n{}\n---- nginx stdout/stderr ----\n{}",
            self.prefix().display(),
            tail(&self.error_log(), 80),
            tail(&out, 20)
        )
    }

    /// Tells `health()` that error.log lines containing `part` are the
    /// test's doing (a reload that fails at `bind()`, a worker it killed),
    /// not trouble. Keep `part` specific: a port, a pid.
    pub fn expect_log(&mut self, part: impl Into<String>) {
        self.expected.push(part.into());
    }

    /// Problems that fail any test: the master died, a worker crashed (the
    /// master respawns it, so requests alone would not notice), or an
    /// `alert`/`emerg` (a bug, by the house logging rules), except lines
    /// announced with `expect_log`.
    pub fn health(&mut self) -> Result<(), String> {
        if let Some(why) = self.exited() {
            return Err(why);
        }
        let log = self.error_log();
        let bad: Vec<&str> = log
            .lines()
            .filter(|l| {
                l.contains("exited on signal")
                    || l.contains("[alert]")
                    || l.contains("[emerg]")
                    || l.contains("panic")
            })
            .filter(|l| !self.expected.iter().any(|e| l.contains(e.as_str())))
            .collect();
        if bad.is_empty() {
            Ok(())
        } else {
            Err(format!(
                "nginx error.log reports trouble:\n{}",
                bad.join("\n")
            ))
        }
    }

    /// Asserts `health()`; call at the end of a test for a clear message.
    pub fn assert_healthy(&mut self) {
        if let Err(e) = self.health() {
            panic!("{e}\n{}", self.logs());
        }
    }

    /// Stops nginx, then asserts `health()` over the whole error.log,
    /// including what the workers logged while exiting (which Drop, checking
    /// before it stops nginx, does not see).
    pub fn stop_and_assert_healthy(&mut self) {
        self.shutdown();
        self.assert_healthy();
    }

    fn shutdown(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let pid = child.id();
        // Fast shutdown (SIGTERM); a master stuck in a worker's exit hook
        // is killed with its whole process group.
        signal(pid, libc::SIGTERM);
        let timeout = self.opts.stop_timeout;
        let clean = wait_exit(&mut child, timeout);
        signal(pid, libc::SIGKILL);
        let pgid = libc::pid_t::try_from(pid).unwrap();
        // SAFETY: kill(2) on the process group nginx was started in
        // (process_group(0) made its pgid equal to its pid): only the master
        // and its workers are in it.
        unsafe {
            libc::kill(-pgid, libc::SIGKILL);
        }
        let _ = child.wait();
        if !clean && !std::thread::panicking() {
            panic!(
                "nginx did not stop within {timeout:?} of SIGTERM\n{}",
                self.logs()
            );
        }
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("{}", self.logs());
            self.shutdown();
            return;
        }
        let health = self.health();
        self.shutdown();
        if let Err(e) = health {
            panic!("{e}\n{}", self.logs());
        }
    }
}

/// The body `Nginx::write_index_pages` writes for `dir`.
pub fn index_page(dir: &str) -> String {
    format!("page /{dir}\n")
}

/// Result of `nginx -t`.
pub struct ConfigTest {
    pub ok: bool,
    /// stderr and stdout of `nginx -t` plus the error.log it wrote.
    pub output: String,
}

impl ConfigTest {
    fn run(prefix: &Path, env: &[(String, String)]) -> ConfigTest {
        fs::create_dir_all(prefix.join("logs")).unwrap();
        let out: Output = Command::new(nginx_bin())
            .envs(env.iter().map(|(k, v)| (k, v)))
            .arg("-t")
            .arg("-p")
            .arg(prefix)
            .args(["-c", "conf/nginx.conf", "-e"])
            .arg(prefix.join("error.log"))
            .stdin(Stdio::null())
            .output()
            .expect("run nginx -t");
        let log = fs::read_to_string(prefix.join("error.log")).unwrap_or_default();
        ConfigTest {
            ok: out.status.success(),
            output: format!(
                "{}{}{}",
                String::from_utf8_lossy(&out.stderr),
                String::from_utf8_lossy(&out.stdout),
                log
            ),
        }
    }
}
