//! Exposes the directory of the NGINX that nginx-sys built from the same
//! sources, so tests, the demo and the benchmark run the exact binary the
//! module was compiled against (a module only loads into the same version).
fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    // nginx-sys's `ngx_feature` cfg values (as ngx's own build script
    // forwards them), so code that reads an optional module's structures
    // (`http_v3`) compiles only where its bindings exist.
    if let Ok(check) = std::env::var("DEP_NGINX_FEATURES_CHECK") {
        println!("cargo::rustc-check-cfg=cfg(ngx_feature, values({check}))");
    }
    if let Ok(features) = std::env::var("DEP_NGINX_FEATURES") {
        for feature in features.split(',').filter(|f| !f.is_empty()) {
            println!("cargo::rustc-cfg=ngx_feature=\"{feature}\"");
        }
    }
    if let Ok(dir) = std::env::var("DEP_NGINX_BUILD_DIR") {
        println!("cargo:rustc-env=DYNCERT_NGINX_BUILD_DIR={dir}");
        // A stable path for scripts: target/nginx-build-dir.txt
        if let Ok(out) = std::env::var("OUT_DIR") {
            let out = std::path::PathBuf::from(out);
            // OUT_DIR = target/<profile>/build/dyncert-<hash>/out
            if let Some(profile_dir) = out.ancestors().nth(3) {
                let _ = std::fs::write(profile_dir.join("nginx-build-dir.txt"), &dir);
            }
        }
    }
}
