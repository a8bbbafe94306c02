//! Exposes the directory of the NGINX that nginx-sys built from the same
//! sources, so tests, the demo and the benchmark run the exact binary the
//! module was compiled against (a module only loads into the same version).
fn main() {
    println!("cargo:rerun-if-changed=build.rs");
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
