//! A strict, bounded PEM scanner (RFC 7468) for record fields.
//!
//! Records come from Redis or the certificate API, so they are untrusted,
//! and OpenSSL's PEM readers must not see them: given an encrypted key they
//! call the default password callback, which reads the terminal or nginx's
//! stdin and can block the fetcher thread for good. This scanner only finds
//! the blocks and decodes their base64; the DER then goes to OpenSSL's DER
//! decoders, which never ask for a passphrase. Encrypted keys are recognised
//! here (the label `ENCRYPTED PRIVATE KEY`, or RFC 1421 headers such as
//! `Proc-Type: 4,ENCRYPTED`) and refused with an error of their own.
//!
//! One pass over the input, no backtracking: time is linear in its length,
//! and the caller bounds the number of blocks.

/// What a block says it holds (the text between `BEGIN ` and `-----`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Label {
    /// An X.509 certificate.
    Certificate,
    /// An unencrypted PKCS#8 PrivateKeyInfo (RFC 5958).
    PrivateKey,
    /// A PKCS#1 RSAPrivateKey (OpenSSL's "traditional" RSA format).
    RsaPrivateKey,
    /// An RFC 5915 ECPrivateKey (OpenSSL's "traditional" EC format).
    EcPrivateKey,
    /// The curve, written before the key by `openssl ecparam -genkey`.
    EcParameters,
    /// Anything else, as written.
    Other(String),
}

impl Label {
    fn from_text(text: &str) -> Label {
        match text {
            "CERTIFICATE" => Label::Certificate,
            "PRIVATE KEY" => Label::PrivateKey,
            "RSA PRIVATE KEY" => Label::RsaPrivateKey,
            "EC PRIVATE KEY" => Label::EcPrivateKey,
            "EC PARAMETERS" => Label::EcParameters,
            other => Label::Other(other.to_owned()),
        }
    }

    pub fn as_str(&self) -> &str {
        match self {
            Label::Certificate => "CERTIFICATE",
            Label::PrivateKey => "PRIVATE KEY",
            Label::RsaPrivateKey => "RSA PRIVATE KEY",
            Label::EcPrivateKey => "EC PRIVATE KEY",
            Label::EcParameters => "EC PARAMETERS",
            Label::Other(text) => text,
        }
    }
}

/// One decoded block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Block {
    pub label: Label,
    pub der: Vec<u8>,
}

/// Why a field is not acceptable PEM. `as_str` feeds log lines; none of
/// them quotes the input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PemError {
    /// No `-----BEGIN ` line at all.
    NoBlocks,
    /// More blocks than the caller allows.
    TooManyBlocks,
    /// A block whose END line never comes (the input ends, or another
    /// BEGIN line follows first).
    Unterminated,
    /// A line starting with `-----BEGIN` or `-----END` (or, inside a
    /// block, with `-----`) that is not a well-formed boundary
    /// (`-----BEGIN LABEL-----`, RFC 7468 §3).
    BadBoundary,
    /// An END line outside any block.
    StrayEnd,
    /// The END label differs from the BEGIN label.
    LabelMismatch,
    /// The body is not canonical base64: a character outside the alphabet
    /// and whitespace, padding before the end, a length that is not a
    /// multiple of four, or non-zero bits in the last character.
    BadBase64,
    /// An encrypted private key: the label `ENCRYPTED PRIVATE KEY`, or
    /// RFC 1421 encapsulated headers (`Proc-Type: 4,ENCRYPTED`,
    /// `DEK-Info: ...`), which OpenSSL writes only for encrypted keys.
    Encrypted,
}

impl PemError {
    pub fn as_str(&self) -> &'static str {
        match self {
            PemError::NoBlocks => "no PEM block",
            PemError::TooManyBlocks => "too many PEM blocks",
            PemError::Unterminated => "PEM block without its END line",
            PemError::BadBoundary => "malformed PEM BEGIN or END line",
            PemError::StrayEnd => "PEM END line outside a block",
            PemError::LabelMismatch => "PEM END label differs from its BEGIN label",
            PemError::BadBase64 => "PEM body is not base64",
            PemError::Encrypted => "encrypted PEM block",
        }
    }
}

impl std::fmt::Display for PemError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::error::Error for PemError {}

const BEGIN: &[u8] = b"-----BEGIN";
const END: &[u8] = b"-----END";
const DASHES: &[u8] = b"-----";
/// RFC 5958 §3: PKCS#8 EncryptedPrivateKeyInfo.
const ENCRYPTED_PKCS8: &str = "ENCRYPTED PRIVATE KEY";

/// Finds and decodes every PEM block of `input`, at most `max_blocks`.
///
/// Lines end in LF or CRLF. Lines outside blocks are ignored (OpenSSL
/// writes "Bag Attributes" and the like before them), except boundary
/// lines, which must be well-formed. Inside a block only base64 and
/// whitespace are allowed, with padding only at the end. Never panics.
pub fn parse(input: &[u8], max_blocks: usize) -> Result<Vec<Block>, PemError> {
    let mut blocks = Vec::new();
    let mut open: Option<(&str, Base64)> = None;
    for line in input.split(|&b| b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let Some((label, body)) = open.as_mut() else {
            if line.starts_with(BEGIN) {
                let label = boundary_label(line, BEGIN)?;
                if label == ENCRYPTED_PKCS8 {
                    return Err(PemError::Encrypted);
                }
                if blocks.len() >= max_blocks {
                    return Err(PemError::TooManyBlocks);
                }
                open = Some((label, Base64::default()));
            } else if line.starts_with(END) {
                return Err(PemError::StrayEnd);
            }
            continue;
        };
        if line.starts_with(END) {
            if boundary_label(line, END)? != *label {
                return Err(PemError::LabelMismatch);
            }
            blocks.push(Block {
                label: Label::from_text(label),
                der: body.finish()?,
            });
            open = None;
        } else if line.starts_with(BEGIN) {
            return Err(PemError::Unterminated);
        } else if line.starts_with(DASHES) {
            return Err(PemError::BadBoundary);
        } else if !body.started && line.contains(&b':') {
            // RFC 1421 §4.4 headers come first in the body; ':' is not
            // base64, so later on it is simply a bad character.
            return Err(PemError::Encrypted);
        } else {
            body.push(line)?;
        }
    }
    if open.is_some() {
        return Err(PemError::Unterminated);
    }
    if blocks.is_empty() {
        return Err(PemError::NoBlocks);
    }
    Ok(blocks)
}

/// The label of a boundary line `<keyword> LABEL-----`, trailing blanks
/// allowed (RFC 7468 §3 `preeb`/`posteb`, `label`).
fn boundary_label<'a>(line: &'a [u8], keyword: &[u8]) -> Result<&'a str, PemError> {
    let rest = line
        .strip_prefix(keyword)
        .and_then(|r| r.strip_prefix(b" "))
        .ok_or(PemError::BadBoundary)?;
    let end = rest
        .iter()
        .rposition(|&b| b != b' ' && b != b'\t')
        .map_or(0, |i| i + 1);
    let label = rest
        .get(..end)
        .and_then(|r| r.strip_suffix(DASHES))
        .ok_or(PemError::BadBoundary)?;
    if !valid_label(label) {
        return Err(PemError::BadBoundary);
    }
    // Valid labels are printable ASCII, so this cannot fail.
    std::str::from_utf8(label).map_err(|_| PemError::BadBoundary)
}

/// RFC 7468 §3: `label = [ labelchar *( ["-" / SP] labelchar ) ]`, where
/// `labelchar` is printable ASCII except '-'.
fn valid_label(label: &[u8]) -> bool {
    let mut after_separator = true;
    for &b in label {
        let separator = b == b'-' || b == b' ';
        if separator && after_separator {
            return false;
        }
        if !separator && !(0x21..=0x7e).contains(&b) {
            return false;
        }
        after_separator = separator;
    }
    label.is_empty() || !after_separator
}

/// Incremental strict base64 decoder (RFC 4648 §4, canonical only).
#[derive(Default)]
struct Base64 {
    out: Vec<u8>,
    /// Sextets of the current quantum, most significant first.
    acc: u32,
    /// How many sextets `acc` holds (0..=3 between calls).
    sextets: u8,
    /// '=' characters seen; nothing but more '=' and whitespace may follow.
    pad: u8,
    /// Any non-whitespace character seen.
    started: bool,
}

impl Base64 {
    fn push(&mut self, line: &[u8]) -> Result<(), PemError> {
        let line = self.push_quanta(line);
        for &c in line {
            if is_whitespace(c) {
                continue;
            }
            self.started = true;
            if c == b'=' {
                self.pad += 1;
                // "x=" or "=" alone, or more than a quantum's worth.
                if self.sextets < 2 || self.sextets + self.pad > 4 {
                    return Err(PemError::BadBase64);
                }
                continue;
            }
            if self.pad > 0 {
                return Err(PemError::BadBase64);
            }
            self.acc = (self.acc << 6) | u32::from(sextet(c).ok_or(PemError::BadBase64)?);
            self.sextets += 1;
            if self.sextets == 4 {
                self.out.extend_from_slice(&self.acc.to_be_bytes()[1..]);
                self.acc = 0;
                self.sextets = 0;
            }
        }
        Ok(())
    }

    /// The fast path: whole quanta of four alphabet characters at a
    /// quantum boundary, three bytes each, by table. Returns what it left
    /// (from the first quantum holding anything else) for the
    /// character-by-character path, which judges it.
    fn push_quanta<'a>(&mut self, line: &'a [u8]) -> &'a [u8] {
        if self.sextets != 0 || self.pad != 0 {
            return line;
        }
        if line.len() >= 4 && self.out.capacity() == 0 {
            // A certificate's DER is typically 0.5-1.5 KiB.
            self.out.reserve(1024);
        }
        let mut rest = line;
        while let [a, b, c, d, tail @ ..] = rest {
            let s = [a, b, c, d].map(|&x| SEXTETS[usize::from(x)]);
            if s.contains(&NOT_SEXTET) {
                break;
            }
            let q = s.iter().fold(0u32, |acc, &x| (acc << 6) | u32::from(x));
            self.out.extend_from_slice(&q.to_be_bytes()[1..]);
            self.started = true;
            rest = tail;
        }
        rest
    }

    fn finish(&mut self) -> Result<Vec<u8>, PemError> {
        // The bits below the last full byte must be zero, or two bodies
        // would decode to the same DER.
        match (self.sextets, self.pad) {
            (0, 0) => {}
            // 12 bits hold one byte, 18 bits hold two.
            (2, 2) if self.acc & 0xf == 0 => {
                self.out
                    .extend_from_slice(&(self.acc >> 4).to_be_bytes()[3..]);
            }
            (3, 1) if self.acc & 0x3 == 0 => {
                self.out
                    .extend_from_slice(&(self.acc >> 2).to_be_bytes()[2..]);
            }
            _ => return Err(PemError::BadBase64),
        }
        Ok(std::mem::take(&mut self.out))
    }
}

/// RFC 7468 §3 `W`: space, tab, CR, LF, VT, FF.
fn is_whitespace(c: u8) -> bool {
    matches!(c, b' ' | b'\t' | b'\r' | b'\n' | 0x0b | 0x0c)
}

const fn sextet(c: u8) -> Option<u8> {
    match c {
        b'A'..=b'Z' => Some(c - b'A'),
        b'a'..=b'z' => Some(c - b'a' + 26),
        b'0'..=b'9' => Some(c - b'0' + 52),
        b'+' => Some(62),
        b'/' => Some(63),
        _ => None,
    }
}

/// [`sextet`] as a table, [`NOT_SEXTET`] where it is None.
const SEXTETS: [u8; 256] = {
    let mut t = [NOT_SEXTET; 256];
    let mut c = 0;
    while c < 256 {
        if let Some(v) = sextet(c as u8) {
            t[c] = v;
        }
        c += 1;
    }
    t
};
const NOT_SEXTET: u8 = 0xff;

#[cfg(test)]
mod tests {
    use super::*;

    fn one(input: &[u8]) -> Result<Block, PemError> {
        let mut blocks = parse(input, 8)?;
        assert_eq!(blocks.len(), 1);
        Ok(blocks.remove(0))
    }

    #[test]
    fn certificate_block_decodes_to_its_der() {
        let b = one(b"-----BEGIN CERTIFICATE-----\nTWFu\n-----END CERTIFICATE-----\n").unwrap();
        assert_eq!(b.label, Label::Certificate);
        assert_eq!(b.der, b"Man");
    }

    #[test]
    fn padding_decodes_one_and_two_final_bytes() {
        let b = one(b"-----BEGIN X-----\nTWFuTWE=\n-----END X-----").unwrap();
        assert_eq!(b.der, b"ManMa");
        let b = one(b"-----BEGIN X-----\nTWFuTQ==\n-----END X-----").unwrap();
        assert_eq!(b.der, b"ManM");
        let b = one(b"-----BEGIN X-----\n-----END X-----").unwrap();
        assert_eq!(b.der, b"", "an empty body is an empty block");
    }

    #[test]
    fn crlf_and_lf_lines_give_the_same_blocks() {
        let lf = b"-----BEGIN CERTIFICATE-----\nTWFu\nTWFu\n-----END CERTIFICATE-----\n";
        let crlf = b"-----BEGIN CERTIFICATE-----\r\nTWFu\r\nTWFu\r\n-----END CERTIFICATE-----\r\n";
        assert_eq!(parse(lf, 1), parse(crlf, 1));
        assert_eq!(one(crlf).unwrap().der, b"ManMan");
    }

    #[test]
    fn text_around_blocks_is_ignored() {
        let input = b"Bag Attributes\n    localKeyID: 01 02\nsubject=/CN=x\n\
            -----BEGIN CERTIFICATE-----\nTWFu\n-----END CERTIFICATE-----\n\
            between: blocks\n\
            -----BEGIN PRIVATE KEY-----\nTWE=\n-----END PRIVATE KEY-----\ntrailer";
        let blocks = parse(input, 2).unwrap();
        assert_eq!(blocks.len(), 2);
        assert_eq!(blocks[0].label, Label::Certificate);
        assert_eq!(blocks[1].label, Label::PrivateKey);
        assert_eq!(blocks[1].der, b"Ma");
    }

    #[test]
    fn whitespace_inside_the_body_and_after_boundaries_is_allowed() {
        let input = b"-----BEGIN X-----  \n  TW Fu\t\n\n\x0bTWE\r=\n-----END X-----\t\n";
        assert_eq!(one(input).unwrap().der, b"ManMa");
    }

    #[test]
    fn known_labels_are_named_and_others_kept_as_written() {
        for (text, label) in [
            ("CERTIFICATE", Label::Certificate),
            ("PRIVATE KEY", Label::PrivateKey),
            ("RSA PRIVATE KEY", Label::RsaPrivateKey),
            ("EC PRIVATE KEY", Label::EcPrivateKey),
            ("EC PARAMETERS", Label::EcParameters),
            ("X509 CRL", Label::Other("X509 CRL".into())),
            ("", Label::Other(String::new())),
        ] {
            let input = format!("-----BEGIN {text}-----\nTWFu\n-----END {text}-----\n");
            let b = one(input.as_bytes()).unwrap();
            assert_eq!(b.label.as_str(), text);
            assert_eq!(b.label, label);
        }
    }

    #[test]
    fn body_outside_strict_base64_is_refused() {
        for body in [
            &b"TW!u"[..],
            b"TWF",
            b"TWFuT",
            b"TQ=",
            b"T===",
            b"====",
            b"TWFu=",
            b"TQ==TWFu",
            b"TQ=x",
            b"TWE==",
            b"TR==",
            b"TWF=",
            b"TW-u",
            b"TW\0u",
            b"TWFu\xc3\xa9",
        ] {
            let mut input = b"-----BEGIN X-----\n".to_vec();
            input.extend_from_slice(body);
            input.extend_from_slice(b"\n-----END X-----\n");
            assert_eq!(parse(&input, 1), Err(PemError::BadBase64), "{body:?}");
        }
    }

    #[test]
    fn malformed_boundaries_are_refused() {
        for input in [
            &b"-----BEGIN CERTIFICATE----\nTWFu\n-----END CERTIFICATE-----\n"[..],
            b"-----BEGINCERTIFICATE-----\nTWFu\n-----END CERTIFICATE-----\n",
            b"-----BEGIN CERTIFICATE-----x\nTWFu\n-----END CERTIFICATE-----\n",
            b"-----BEGIN  CERTIFICATE-----\nTWFu\n-----END  CERTIFICATE-----\n",
            b"-----BEGIN CERTIFICATE -----\nTWFu\n-----END CERTIFICATE -----\n",
            b"-----BEGIN A--B-----\nTWFu\n-----END A--B-----\n",
            b"-----BEGIN A\tB-----\nTWFu\n-----END A\tB-----\n",
            b"-----BEGIN \xc3\xa9-----\nTWFu\n-----END \xc3\xa9-----\n",
            b"-----BEGIN X-----\nTWFu\n-----END X----\n",
            b"-----BEGIN X-----\nTWFu\n-----ENDX-----\n",
            b"-----BEGIN X-----\nTWFu\n-----X-----\n",
        ] {
            assert_eq!(
                parse(input, 1),
                Err(PemError::BadBoundary),
                "{:?}",
                String::from_utf8_lossy(input)
            );
        }
    }

    #[test]
    fn end_label_must_match_begin_label() {
        assert_eq!(
            parse(
                b"-----BEGIN CERTIFICATE-----\nTWFu\n-----END PRIVATE KEY-----\n",
                1
            ),
            Err(PemError::LabelMismatch)
        );
        assert_eq!(
            parse(b"-----BEGIN X-----\nTWFu\n-----END x-----\n", 1),
            Err(PemError::LabelMismatch),
            "labels are case-sensitive"
        );
    }

    #[test]
    fn unterminated_blocks_and_stray_ends_are_refused() {
        assert_eq!(
            parse(b"-----BEGIN X-----\nTWFu\n", 1),
            Err(PemError::Unterminated)
        );
        assert_eq!(
            parse(
                b"-----BEGIN X-----\nTWFu\n-----BEGIN X-----\nTWFu\n-----END X-----\n",
                2
            ),
            Err(PemError::Unterminated)
        );
        assert_eq!(
            parse(
                b"-----END X-----\n-----BEGIN X-----\nTWFu\n-----END X-----\n",
                2
            ),
            Err(PemError::StrayEnd)
        );
        assert_eq!(
            parse(
                b"-----BEGIN X-----\nTWFu\n-----END X-----\n-----END X-----\n",
                2
            ),
            Err(PemError::StrayEnd)
        );
    }

    #[test]
    fn input_without_blocks_is_refused() {
        for input in [
            &b""[..],
            b"junk",
            b"\n\n",
            b" -----BEGIN X-----\nTWFu\n -----END X-----",
        ] {
            assert_eq!(parse(input, 8), Err(PemError::NoBlocks), "{input:?}");
        }
    }

    #[test]
    fn more_blocks_than_allowed_are_refused() {
        let block = b"-----BEGIN X-----\nTWFu\n-----END X-----\n";
        let three = block.repeat(3);
        assert_eq!(parse(&three, 3).map(|b| b.len()), Ok(3));
        assert_eq!(parse(&three, 2), Err(PemError::TooManyBlocks));
        assert_eq!(parse(block, 0), Err(PemError::TooManyBlocks));
    }

    #[test]
    fn encrypted_keys_are_recognised_in_both_forms() {
        assert_eq!(
            parse(
                b"-----BEGIN ENCRYPTED PRIVATE KEY-----\nTWFu\n-----END ENCRYPTED PRIVATE KEY-----\n",
                8
            ),
            Err(PemError::Encrypted)
        );
        assert_eq!(
            parse(
                b"-----BEGIN RSA PRIVATE KEY-----\r\nProc-Type: 4,ENCRYPTED\r\n\
                  DEK-Info: AES-256-CBC,00112233445566778899AABBCCDDEEFF\r\n\r\n\
                  TWFu\r\n-----END RSA PRIVATE KEY-----\r\n",
                8
            ),
            Err(PemError::Encrypted)
        );
        // Behind an unencrypted block too: the whole field is refused.
        assert_eq!(
            parse(
                b"-----BEGIN CERTIFICATE-----\nTWFu\n-----END CERTIFICATE-----\n\
                  -----BEGIN EC PRIVATE KEY-----\nDEK-Info: X\n\nTWFu\n-----END EC PRIVATE KEY-----\n",
                8
            ),
            Err(PemError::Encrypted)
        );
        // After base64 has started a ':' is just a bad character.
        assert_eq!(
            parse(b"-----BEGIN X-----\nTWFu\na:b\n-----END X-----\n", 8),
            Err(PemError::BadBase64)
        );
    }

    #[test]
    fn every_prefix_and_byte_flip_of_a_chain_parses_without_panic() {
        let input: &[u8] = b"Bag Attributes\r\n-----BEGIN CERTIFICATE-----\r\nTWFuTWE=\r\n\
            -----END CERTIFICATE-----\r\n-----BEGIN EC PARAMETERS-----\nTQ==\n\
            -----END EC PARAMETERS-----\n";
        let first_end = b"-----END CERTIFICATE-----";
        let complete = input.windows(first_end.len()).position(|w| w == first_end);
        let complete = complete.unwrap() + first_end.len();
        for cut in 0..input.len() {
            let r = parse(&input[..cut], 8);
            if cut < complete {
                assert!(r.is_err(), "prefix of {cut} bytes has no complete block");
            }
        }
        for i in 0..input.len() {
            for flip in [0x01, 0x20, 0x80, 0xff] {
                let mut v = input.to_vec();
                v[i] ^= flip;
                let _ = parse(&v, 8);
            }
        }
    }

    /// The fast path gives what the character-by-character one gives,
    /// wherever lines break, whitespace falls or a bad character sits.
    #[test]
    fn quanta_by_table_agree_with_character_by_character() {
        const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        fn encode(der: &[u8]) -> Vec<u8> {
            let mut out = Vec::new();
            for chunk in der.chunks(3) {
                let mut q = [0u8; 3];
                q[..chunk.len()].copy_from_slice(chunk);
                let n = u32::from_be_bytes([0, q[0], q[1], q[2]]);
                for i in 0..=chunk.len() {
                    out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize]);
                }
                out.resize(out.len() + 3 - chunk.len(), b'=');
            }
            out
        }
        fn slow(body: &[&[u8]]) -> Result<Vec<u8>, PemError> {
            let mut b = Base64::default();
            for line in body {
                for &c in *line {
                    // One character at a time never reaches a whole quantum.
                    b.push(&[c])?;
                }
            }
            b.finish()
        }
        fn fast(body: &[&[u8]]) -> Result<Vec<u8>, PemError> {
            let mut b = Base64::default();
            for line in body {
                b.push(line)?;
            }
            b.finish()
        }
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut next = |m: usize| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed % m as u64) as usize
        };
        for round in 0..3000 {
            let der: Vec<u8> = (0..next(200)).map(|_| next(256) as u8).collect();
            let mut text = encode(&der);
            // Whitespace, and now and then a character outside the alphabet.
            for _ in 0..next(4) {
                let at = next(text.len() + 1);
                text.insert(at, [b' ', b'\t', b'\r', b'\n'][next(4)]);
            }
            if round % 3 == 0 && !text.is_empty() {
                let at = next(text.len());
                text[at] = [b'*', b'=', b'-', 0x80, b'A'][next(5)];
            }
            let mut lines: Vec<&[u8]> = Vec::new();
            let mut rest = &text[..];
            while !rest.is_empty() {
                let (line, tail) = rest.split_at(next(rest.len()) + 1);
                lines.push(line);
                rest = tail;
            }
            let (f, s) = (fast(&lines), slow(&lines));
            assert_eq!(f, s, "round {round}: {:?}", String::from_utf8_lossy(&text));
            if round % 3 != 0 {
                assert_eq!(f.as_deref(), Ok(&der[..]), "round {round}");
            }
        }
    }

    #[test]
    fn large_inputs_take_one_pass() {
        // 4 MiB of body and 1 MiB of BEGIN lines: quadratic work would
        // not finish in a test's time.
        let mut big = b"-----BEGIN X-----\n".to_vec();
        big.extend(b"QUFB".repeat(1 << 20));
        big.extend_from_slice(b"\n-----END X-----\n");
        assert_eq!(one(&big).unwrap().der.len(), 3 << 20);
        let begins = b"-----BEGIN X-----\n".repeat(1 << 16);
        assert_eq!(parse(&begins, 8), Err(PemError::Unterminated));
        let blocks = b"-----BEGIN X-----\n-----END X-----\n".repeat(1 << 15);
        assert_eq!(parse(&blocks, 8), Err(PemError::TooManyBlocks));
    }
}
