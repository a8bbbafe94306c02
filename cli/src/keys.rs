//! Private keys encrypted at rest, the CLI's side: the key-encryption
//! keys (`--key-encryption-key ID=FILE`, the same files and checks as the
//! module's `dyncert_key_decryption_key`), sealing a prepared record's key
//! fields (`put --encrypt-with`, `import --encrypt-with`) and `rewrap`,
//! which re-encrypts stored keys under another id with a compare-and-set
//! so that a concurrent `put` is never overwritten.

use std::collections::HashMap;
use std::path::Path;

use dyncert_core::directives;
use dyncert_core::keyref;
use dyncert_core::keywrap::{self, Keyring};

use crate::cert::Prepared;
use crate::error::CliError;
use crate::store::Store;

/// The fields that may hold a wrapped key.
pub const KEY_FIELDS: [&str; 4] = ["key", "key_der", "key_rsa", "key_der_rsa"];

/// Tries of a rewrap whose record changed between the read and the write.
const REWRAP_TRIES: usize = 5;

/// The keys of `--key-encryption-key ID=FILE` options: each file must not
/// be readable by everyone and must hold one AES-256 key (32 bytes, 64
/// hex digits or base64), each id once.
pub fn keyring(specs: &[String]) -> Result<Keyring, CliError> {
    let bad = |m: String| CliError::Input(format!("--key-encryption-key: {m}"));
    let mut ring = Keyring::new();
    for spec in specs {
        let (id, file) = spec
            .split_once('=')
            .ok_or_else(|| bad(format!("\"{}\" is not ID=FILE", spec.escape_default())))?;
        let id = directives::key_id(id.as_bytes()).map_err(|e| bad(e.to_string()))?;
        let path = Path::new(file);
        let meta = std::fs::metadata(path)
            .map_err(|e| bad(format!("cannot read key file \"{file}\": {e}")))?;
        let mode = std::os::unix::fs::PermissionsExt::mode(&meta.permissions());
        let key = directives::key_file_metadata(meta.is_file(), mode)
            .and_then(|()| read_bounded(path, directives::MAX_KEY_FILE_BYTES))
            .and_then(|c| directives::key_file(mode, &c))
            .map_err(|why| bad(format!("key file \"{file}\" {why}")))?;
        if !ring.insert(&id, key) {
            return Err(bad(format!("key id \"{id}\" is given twice")));
        }
    }
    Ok(ring)
}

/// At most `max` + 1 bytes of the file at `path` (enough to tell that it
/// is too long).
fn read_bounded(path: &Path, max: u64) -> Result<Vec<u8>, String> {
    use std::io::Read;
    let mut contents = Vec::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(max + 1).read_to_end(&mut contents))
        .map_err(|e| format!("cannot be read: {e}"))?;
    Ok(contents)
}

/// Checks that `id` can be encrypted with, before Redis is reached.
pub fn check_id(ring: &Keyring, id: &str, opt: &str) -> Result<(), CliError> {
    if ring.get(id).is_none() {
        return Err(CliError::Input(format!(
            "{opt} {}: no --key-encryption-key {}=FILE given",
            id.escape_default(),
            id.escape_default()
        )));
    }
    Ok(())
}

/// The record key an envelope of `name` is bound to.
pub fn aad(prefix: &str, name: &str) -> String {
    format!("{prefix}{name}")
}

/// Replaces the key fields of a prepared record with envelopes under
/// `id`, bound to the record's key (`prefix` + name).
pub fn seal_prepared(
    p: &mut Prepared,
    prefix: &str,
    id: &str,
    ring: &Keyring,
) -> Result<(), CliError> {
    let aad = aad(prefix, &p.name);
    for (field, value) in &mut p.fields {
        if KEY_FIELDS.contains(field) {
            *value = keywrap::seal(value, aad.as_bytes(), id, ring).ok_or_else(|| {
                CliError::Input(format!(
                    "cannot encrypt field \"{field}\" of \"{}\" (too large once encrypted?)",
                    p.name
                ))
            })?;
        }
    }
    Ok(())
}

/// A key field's rewrap: (field, value read, new value).
pub type FieldChange = (&'static str, Vec<u8>, Vec<u8>);

/// What `rewrap` did to one record.
#[derive(Debug, PartialEq, Eq)]
pub enum Rewrapped {
    /// These fields were re-encrypted.
    Done(Vec<&'static str>),
    /// Every key field was already under the id (or is a key reference).
    Already,
}

/// The new values of the key fields of `fields` (one record's HGETALL)
/// under `to`: (field, value read, new value), for the fields not already
/// under `to`. A field that does not decrypt is an error naming the
/// reason, never the bytes.
pub fn rewrap_plan(
    fields: &HashMap<String, Vec<u8>>,
    aad: &str,
    to: &str,
    ring: &Keyring,
) -> Result<Vec<FieldChange>, keywrap::KeyWrapError> {
    let mut plan = Vec::new();
    for field in KEY_FIELDS {
        let Some(old) = fields.get(field).filter(|v| !v.is_empty()) else {
            continue;
        };
        let plain = if keywrap::is_envelope(old) {
            if keywrap::parse(old)?.id == to {
                continue;
            }
            keywrap::open(old, aad.as_bytes(), ring)?
        } else if keyref::is_reference(old) {
            // A key in a device: nothing to encrypt.
            continue;
        } else {
            old.clone()
        };
        let new = keywrap::seal(&plain, aad.as_bytes(), to, ring)
            .ok_or(keywrap::KeyWrapError::Malformed)?;
        plan.push((field, old.clone(), new));
    }
    Ok(plan)
}

/// Re-encrypts the key fields of the record `name` under `to`: read,
/// re-encrypt, and write only if the fields still hold what was read (a
/// concurrent `put` wins; the record is then read again).
pub fn rewrap(
    store: &mut Store,
    prefix: &str,
    name: &str,
    to: &str,
    ring: &Keyring,
) -> Result<Rewrapped, CliError> {
    let aad = aad(prefix, name);
    for _ in 0..REWRAP_TRIES {
        let fields = store.fields(name)?;
        if fields.is_empty() {
            return Err(CliError::Absent(name.to_owned()));
        }
        let plan = rewrap_plan(&fields, &aad, to, ring).map_err(|e| CliError::refused(name, e))?;
        if plan.is_empty() {
            return Ok(Rewrapped::Already);
        }
        if store.replace_fields_if(name, &plan)? {
            return Ok(Rewrapped::Done(plan.iter().map(|(f, _, _)| *f).collect()));
        }
    }
    Err(CliError::Redis(format!(
        "\"{name}\" kept changing while it was rewrapped ({REWRAP_TRIES} tries)"
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ring() -> Keyring {
        let mut r = Keyring::new();
        r.insert("old", [1; 32]);
        r.insert("new", [2; 32]);
        r
    }

    #[test]
    fn plans_rewrap_plain_and_other_ids_and_skip_the_rest() {
        let aad = "dyncert:cert:a.example";
        let pem = b"-----BEGIN PRIVATE KEY-----\nX\n-----END PRIVATE KEY-----\n".to_vec();
        let under_old = keywrap::seal(&pem, aad.as_bytes(), "old", &ring()).unwrap();
        let under_new = keywrap::seal(&[0x30, 1, 2], aad.as_bytes(), "new", &ring()).unwrap();
        let fields = HashMap::from([
            ("crt".to_owned(), b"C".to_vec()),
            ("key".to_owned(), under_old.clone()),
            ("key_der".to_owned(), under_new),
        ]);
        let plan = rewrap_plan(&fields, aad, "new", &ring()).unwrap();
        assert_eq!(plan.len(), 1, "key_der is already under new");
        let (field, old, new) = &plan[0];
        assert_eq!((*field, old), ("key", &under_old));
        assert_eq!(keywrap::open(new, aad.as_bytes(), &ring()).unwrap(), pem);
        assert!(new.starts_with(b"dyncert:v1:new:"));

        let plain = HashMap::from([("key".to_owned(), pem.clone())]);
        let plan = rewrap_plan(&plain, aad, "old", &ring()).unwrap();
        assert_eq!(plan.len(), 1);
        let reference =
            HashMap::from([("key".to_owned(), b"engine:pkcs11:pkcs11:object=k".to_vec())]);
        assert!(rewrap_plan(&reference, aad, "old", &ring())
            .unwrap()
            .is_empty());
        // Bound to another record: refused, not rewrapped.
        assert_eq!(
            rewrap_plan(&fields, "dyncert:cert:b.example", "old", &ring()).unwrap_err(),
            keywrap::KeyWrapError::BadTag
        );
    }
}
