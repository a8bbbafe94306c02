//! Writing to nginx's error log, one helper per level. The level says whose
//! fault a line reports: a client's mistake INFO, a policy denial ERR,
//! Redis or API trouble WARN, a bug ALERT. A line is formatted only when
//! the log's level lets it through, into nginx's own fixed-size buffer.
//!
//! [`debug!`] lines trace dyncert's decisions: what the peek read, parks and
//! resumes, which cache tier served a handshake, fetches starting and
//! ending, the tenant policy's verdict. Like nginx's `ngx_log_debug*`, they
//! exist only in an nginx built `--with-debug` (the `ngx` crate then sets
//! `ngx::log::DEBUG`), show with `error_log ... debug;` (or `debug_http`),
//! and otherwise compile to nothing: not even their arguments are
//! evaluated.

use core::fmt;
use core::ptr::NonNull;

use ngx::ffi::{
    ngx_connection_t, ngx_cycle_t, ngx_log_t, NGX_LOG_ALERT, NGX_LOG_EMERG, NGX_LOG_ERR,
    NGX_LOG_INFO, NGX_LOG_NOTICE, NGX_LOG_WARN,
};

/// An nginx log: a connection's (nginx adds the client and server to its
/// lines) or a cycle's.
#[derive(Clone, Copy)]
pub struct Log(NonNull<ngx_log_t>);

impl Log {
    /// The current cycle's log, for lines about the worker as a whole. nginx
    /// keeps it valid for the life of the process once it has started, and
    /// only the event loop thread writes to it.
    pub fn cycle() -> Log {
        Log(ngx::log::ngx_cycle_log())
    }

    /// The log of `cycle` (a cycle being loaded or initialised).
    pub fn of_cycle(cycle: &ngx_cycle_t) -> Log {
        NonNull::new(cycle.log).map_or_else(Log::cycle, Log)
    }

    /// The log of a live connection (nginx sets it at accept, for the
    /// connection's whole life).
    pub fn of(c: &ngx_connection_t) -> Log {
        NonNull::new(c.log).map_or_else(Log::cycle, Log)
    }

    pub fn as_ptr(self) -> *mut ngx_log_t {
        self.0.as_ptr()
    }

    /// A configuration that cannot be applied (the reload is refused).
    pub fn emerg(self, args: fmt::Arguments<'_>) {
        self.write(NGX_LOG_EMERG, args);
    }

    /// A bug in dyncert.
    pub fn alert(self, args: fmt::Arguments<'_>) {
        self.write(NGX_LOG_ALERT, args);
    }

    /// A request refused by policy.
    pub fn err(self, args: fmt::Arguments<'_>) {
        self.write(NGX_LOG_ERR, args);
    }

    /// Trouble with Redis, the API or a record.
    pub fn warn(self, args: fmt::Arguments<'_>) {
        self.write(NGX_LOG_WARN, args);
    }

    /// Something the operator may want to know, nobody's fault.
    pub fn notice(self, args: fmt::Arguments<'_>) {
        self.write(NGX_LOG_NOTICE, args);
    }

    /// A client's mistake.
    pub fn info(self, args: fmt::Arguments<'_>) {
        self.write(NGX_LOG_INFO, args);
    }

    fn write(self, level: u32, args: fmt::Arguments<'_>) {
        ngx::ngx_log_error!(level, self.as_ptr(), "{}", args);
    }
}

/// `debug!(log, "format", args...)`: a debug line on a [`Log`], under the
/// http debug mask like nginx's own http modules. Formatted only in a
/// `--with-debug` nginx and when the log's level asks for debug lines;
/// without `--with-debug` the whole statement is dead code.
/// Writes a line the core produced, at the level it says, to the cycle's
/// log.
pub fn core_line(level: dyncert_core::worker::Level, msg: &str) {
    use dyncert_core::worker::Level;
    match level {
        Level::Alert => Log::cycle().alert(format_args!("{msg}")),
        Level::Warn => Log::cycle().warn(format_args!("{msg}")),
        Level::Info => Log::cycle().info(format_args!("{msg}")),
        Level::Debug => debug!(Log::cycle(), "{msg}"),
    }
}

macro_rules! debug {
    ($log:expr, $($arg:tt)+) => {
        if ::ngx::log::DEBUG {
            ::ngx::ngx_log_debug!(
                mask: ::ngx::log::DebugMask::Http,
                $crate::shell::log::Log::as_ptr($log),
                $($arg)+
            );
        }
    };
}
pub(crate) use debug;
