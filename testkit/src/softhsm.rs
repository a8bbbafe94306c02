//! A SoftHSM2 token of a test's own (config and token directory in a temp
//! dir), for the PKCS#11 key reference tests. Needs softhsm2, opensc
//! (pkcs11-tool) and libengine-pkcs11-openssl (`scripts/deps.sh
//! --pkcs11`); without them [`SoftHsm::start`] returns `None` and the test
//! skips, unless `DYNCERT_REQUIRE_PKCS11` is set: then it fails.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::module::nginx_bin;
use crate::pki::Leaf;
use crate::process::{write_file, TempDir};

/// SoftHSM2's PKCS#11 module (Debian's path).
pub const SOFTHSM_MODULE: &str = "/usr/lib/softhsm/libsofthsm2.so";
/// The pkcs11 OpenSSL engine (Debian's path).
pub const ENGINE_SO: &str = "/usr/lib/x86_64-linux-gnu/engines-3/pkcs11.so";
/// The user PIN of the token, also in [`SoftHsm::pin_file`].
pub const SOFTHSM_PIN: &str = "1234";

/// A SoftHSM2 token directory and its config; see the module's comment.
pub struct SoftHsm {
    pub dir: TempDir,
}

impl SoftHsm {
    /// The token's config and PIN file in a fresh temp dir (`tag`), before
    /// any token is initialised (see [`SoftHsm::init_token`]), or `None`
    /// when NGINX cannot load the engine or the tools, `files` or `tools`
    /// (on top of SoftHSM's and the engine's) are missing and the test may
    /// skip.
    pub fn start(tag: &str, files: &[&'static str], tools: &[&'static str]) -> Option<SoftHsm> {
        // Debian's engine is built for Debian's libcrypto (3.0); NGINX
        // built on another OpenSSL (test-openssl35.sh) cannot load it.
        let v = Command::new(nginx_bin()).arg("-V").output().unwrap();
        if !String::from_utf8_lossy(&v.stderr).contains("built with OpenSSL 3.0.") {
            eprintln!(
                "skipping: NGINX is not built on the system's OpenSSL 3.0 (the pkcs11 engine's)"
            );
            return None;
        }
        let missing: Vec<&str> = [SOFTHSM_MODULE, ENGINE_SO]
            .into_iter()
            .chain(files.iter().copied())
            .filter(|p| !Path::new(p).exists())
            .chain(
                ["softhsm2-util", "pkcs11-tool"]
                    .into_iter()
                    .chain(tools.iter().copied())
                    .filter(|t| Command::new(t).arg("--help").output().is_err()),
            )
            .collect();
        if !missing.is_empty() {
            if std::env::var_os("DYNCERT_REQUIRE_PKCS11").is_some() {
                panic!("DYNCERT_REQUIRE_PKCS11 is set but {missing:?} are missing (scripts/deps.sh --pkcs11)");
            }
            eprintln!("skipping: {missing:?} missing (scripts/deps.sh --pkcs11)");
            return None;
        }
        let dir = TempDir::new(tag);
        std::fs::create_dir_all(dir.path().join("tokens")).unwrap();
        write_file(
            &dir.path().join("softhsm2.conf"),
            format!(
                "directories.tokendir = {}/tokens\nobjectstore.backend = file\nlog.level = ERROR\n",
                dir.path().display()
            ),
        );
        write_file(&dir.path().join("pin"), format!("{SOFTHSM_PIN}\n"));
        Some(SoftHsm { dir })
    }

    /// A fresh token labelled "dyncert" (user PIN [`SOFTHSM_PIN`]).
    pub fn init_token(&self) {
        self.run(
            "softhsm2-util",
            &[
                "--init-token",
                "--free",
                "--label",
                "dyncert",
                "--pin",
                SOFTHSM_PIN,
                "--so-pin",
                "5678",
            ],
        );
    }

    /// The config file (`SOFTHSM2_CONF`).
    pub fn conf(&self) -> PathBuf {
        self.dir.path().join("softhsm2.conf")
    }

    /// The PIN file (`dyncert_key_references ... pin_file=`).
    pub fn pin_file(&self) -> PathBuf {
        self.dir.path().join("pin")
    }

    /// Runs `tool` on this token (`SOFTHSM2_CONF` set), panicking with its
    /// output when it fails.
    pub fn run(&self, tool: &str, args: &[&str]) {
        let out = Command::new(tool)
            .args(args)
            .env("SOFTHSM2_CONF", self.conf())
            .output()
            .unwrap_or_else(|e| panic!("{tool}: {e}"));
        assert!(
            out.status.success(),
            "{tool} {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Imports `leaf`'s private key (and its public half, which the
    /// engine reads the key's public point from) as object `label`,
    /// straight into SoftHSM.
    pub fn import(&self, leaf: &Leaf, id: &str, label: &str) {
        let key = &leaf.issued.key;
        let priv_der = self.dir.path().join(format!("{label}.key.der"));
        let pub_der = self.dir.path().join(format!("{label}.pub.der"));
        std::fs::write(&priv_der, key.private_key_to_pkcs8().unwrap()).unwrap();
        std::fs::write(&pub_der, key.public_key_to_der().unwrap()).unwrap();
        for (file, kind) in [(&priv_der, "privkey"), (&pub_der, "pubkey")] {
            self.run(
                "pkcs11-tool",
                &[
                    "--module",
                    SOFTHSM_MODULE,
                    "--login",
                    "--pin",
                    SOFTHSM_PIN,
                    "--write-object",
                    file.to_str().unwrap(),
                    "--type",
                    kind,
                    "--id",
                    id,
                    "--label",
                    label,
                ],
            );
        }
        // Only the token keeps the key from now on.
        std::fs::remove_file(&priv_der).unwrap();
        self.hand_to_workers();
    }

    /// Tests run as root, so nginx's workers run as `nobody`: the token's
    /// files (created 0600 by root) must be theirs, as a real HSM's
    /// device or token directory must be readable by the worker user.
    pub fn hand_to_workers(&self) {
        let root = Command::new("id").arg("-u").output().unwrap().stdout == b"0\n";
        if root {
            self.run(
                "chown",
                &["-R", "nobody", self.dir.path().to_str().unwrap()],
            );
        }
    }
}
