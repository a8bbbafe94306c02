//! ACME HTTP-01 (RFC 8555 §8.3) request rules: which paths are challenge
//! requests and which tokens may become part of a Redis key.

/// The path prefix CAs request.
pub const CHALLENGE_PREFIX: &str = "/.well-known/acme-challenge/";

/// Longest token accepted (RFC 8555 requires at least 128 bits of
/// entropy, 22+ base64url characters; real ones are 43).
pub const MAX_TOKEN: usize = 128;

/// The token of a challenge path, if `path` is one. The token itself may
/// still be invalid (see [`valid_token`]).
pub fn challenge_token(path: &[u8]) -> Option<&[u8]> {
    path.strip_prefix(CHALLENGE_PREFIX.as_bytes())
}

/// base64url alphabet without padding, 1..=MAX_TOKEN bytes: anything else
/// is answered without any lookup.
pub fn valid_token(token: &[u8]) -> bool {
    !token.is_empty()
        && token.len() <= MAX_TOKEN
        && token
            .iter()
            .all(|&b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn challenge_paths_yield_their_token() {
        assert_eq!(
            challenge_token(b"/.well-known/acme-challenge/abc_DEF-123"),
            Some(&b"abc_DEF-123"[..])
        );
        assert_eq!(challenge_token(b"/.well-known/acme-challenge"), None);
        assert_eq!(challenge_token(b"/index.html"), None);
    }

    #[test]
    fn only_base64url_tokens_of_bounded_length_are_valid() {
        assert!(valid_token(b"LoqXcYV8q5ONbJQxbmR7SCTNo3tiAXDfowyjxAjEuX0"));
        assert!(!valid_token(b""));
        assert!(!valid_token(b"abc/../x"));
        assert!(!valid_token(b"abc.def"));
        assert!(!valid_token(b"abc=="));
        assert!(!valid_token(b"a b"));
        assert!(!valid_token(b"*"));
        assert!(!valid_token("é".as_bytes()));
        assert!(!valid_token(&[b'a'; MAX_TOKEN + 1]));
        assert!(valid_token(&[b'a'; MAX_TOKEN]));
    }
}
