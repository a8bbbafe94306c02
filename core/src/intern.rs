//! Sharing of intermediate certificates between cached records.
//!
//! Most customer certificates chain to a handful of intermediates, but
//! every record carries its own PEM copy. Parsed, an intermediate costs
//! about 5 KiB of OpenSSL heap; sharing one object per distinct DER cuts
//! a cached ECDSA certificate from ~12 KiB to ~7 KiB.

use std::collections::HashMap;
use std::sync::Mutex;

use openssl::x509::X509;

/// Most distinct intermediates remembered (each kept alive by the table).
pub const MAX_INTERNED: usize = 4096;

/// DER -> one shared parsed certificate. `X509` is reference-counted, so
/// a clone is a pointer copy.
#[derive(Default)]
pub struct Interner {
    table: Mutex<HashMap<Vec<u8>, X509>>,
}

impl Interner {
    /// Replaces each certificate of `chain` by the shared object with the
    /// same DER, remembering new ones while there is room.
    pub fn share(&self, chain: &mut [X509]) {
        let Ok(mut table) = self.table.lock() else {
            return;
        };
        for cert in chain.iter_mut() {
            let Ok(der) = cert.to_der() else {
                continue;
            };
            if let Some(shared) = table.get(&der) {
                *cert = shared.clone();
            } else if table.len() < MAX_INTERNED {
                table.insert(der, cert.clone());
            }
        }
    }

    pub fn len(&self) -> usize {
        self.table.lock().map(|t| t.len()).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::validate::testpki::{key, leaf};
    use foreign_types::ForeignType;

    #[test]
    fn equal_intermediates_become_one_object() {
        let ca = leaf(&["ca.example"], &key(), -1, 30);
        let der = ca.to_der().unwrap();
        let mut a = vec![X509::from_der(&der).unwrap()];
        let mut b = vec![X509::from_der(&der).unwrap()];
        assert_ne!(a[0].as_ptr(), b[0].as_ptr(), "parsed twice: two objects");
        let i = Interner::default();
        i.share(&mut a);
        i.share(&mut b);
        assert_eq!(a[0].as_ptr(), b[0].as_ptr(), "shared after interning");
        assert_eq!(i.len(), 1);
    }

    #[test]
    fn different_certificates_stay_distinct() {
        let i = Interner::default();
        let mut one = vec![leaf(&["one.example"], &key(), -1, 30)];
        let mut two = vec![leaf(&["two.example"], &key(), -1, 30)];
        i.share(&mut one);
        i.share(&mut two);
        assert_ne!(one[0].as_ptr(), two[0].as_ptr());
        assert_eq!(i.len(), 2);
    }
}
