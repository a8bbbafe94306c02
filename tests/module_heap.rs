//! The module's Rust code allocates from its own heap (mimalloc, linked
//! into the module), apart from the glibc heap that nginx and OpenSSL
//! share (README: "The module's own heap"). Two properties of the built
//! module keep that safe, and a dependency update or a feature flag could
//! break either without any test of behaviour noticing at once:
//!
//! - It replaces no allocator of the process. A module that exported
//!   `malloc` or `free` (mimalloc's `override` feature) would hand libraries
//!   resolved after it a second allocator, and memory allocated by one
//!   would be freed by the other.
//! - It needs no static TLS. nginx `dlopen()`s the module after start-up,
//!   where initial-exec thread-local storage only fits while glibc's spare
//!   room lasts (and not at all on some libcs): mimalloc must be built with
//!   local-dynamic TLS.

use std::process::Command;

use dyncert_testkit::module_path;

/// The C allocator's entry points.
const ALLOCATOR: [&str; 10] = [
    "malloc",
    "free",
    "calloc",
    "realloc",
    "reallocarray",
    "posix_memalign",
    "aligned_alloc",
    "memalign",
    "valloc",
    "malloc_usable_size",
];

fn run(tool: &str, args: &[&str]) -> String {
    let out = Command::new(tool)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{tool}: {e} (binutils)"));
    assert!(
        out.status.success(),
        "{tool} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn the_module_defines_none_of_the_processs_allocator_functions() {
    let module = module_path();
    let module = module.to_str().unwrap();
    let defined = run("nm", &["-D", "--defined-only", module]);
    let names: Vec<&str> = defined
        .lines()
        .filter_map(|l| l.split_whitespace().last())
        .map(|n| n.split('@').next().unwrap_or(n))
        .collect();
    // The listing is the module's real export table (nginx looks the
    // module's descriptor up in it).
    assert!(
        names.contains(&"ngx_http_dyncert_module"),
        "no module descriptor among the exports: {defined}"
    );
    for f in ALLOCATOR {
        assert!(
            !names.contains(&f),
            "the module exports {f}: it would replace the allocator of nginx and OpenSSL"
        );
    }
}

#[test]
fn the_module_needs_no_static_thread_local_storage() {
    let module = module_path();
    let dynamic = run("readelf", &["-d", module.to_str().unwrap()]);
    assert!(
        dynamic.contains("(NEEDED)"),
        "readelf printed no dynamic section: {dynamic}"
    );
    let flags: Vec<&str> = dynamic.lines().filter(|l| l.contains("FLAGS")).collect();
    assert!(
        !flags.iter().any(|l| l.contains("STATIC_TLS")),
        "the module is marked STATIC_TLS (initial-exec thread-locals), which a dlopen()ed \
         module may not get: {flags:?}"
    );
}
