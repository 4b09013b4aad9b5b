//! Salted SHA-256 password hashes: `sha256$<salt hex>$<hex(sha256(salt ++ password))>`.

use sha2::{Digest, Sha256};

/// The scheme tag that starts every stored hash.
const SCHEME: &str = "sha256";

/// A parsed password hash: the salt and the expected digest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PasswordHash {
    salt: Vec<u8>,
    digest: [u8; 32],
}

impl PasswordHash {
    /// Parses `sha256$<salt hex>$<64 hex digits>`; `None` for anything else.
    pub(crate) fn parse(stored: &str) -> Option<PasswordHash> {
        let mut parts = stored.split('$');
        let (scheme, salt, digest) = (parts.next()?, parts.next()?, parts.next()?);
        if scheme != SCHEME || parts.next().is_some() {
            return None;
        }
        let salt = hex::decode(salt).ok()?;
        let digest = hex::decode(digest).ok()?.try_into().ok()?;
        Some(PasswordHash { salt, digest })
    }

    /// The hash of a plain-text password from the config (unsalted: it is only compared in
    /// memory, so that plain and hashed users are checked the same, constant-time way).
    pub(crate) fn plain(password: &str) -> PasswordHash {
        PasswordHash { salt: Vec::new(), digest: digest(&[], password) }
    }

    /// True when `password` hashes to the stored digest; the comparison takes the same time
    /// wherever the first difference is.
    pub(crate) fn verify(&self, password: &str) -> bool {
        constant_time_eq(&digest(&self.salt, password), &self.digest)
    }
}

/// SHA-256 of the salt bytes followed by the password bytes.
fn digest(salt: &[u8], password: &str) -> [u8; 32] {
    Sha256::new().chain_update(salt).chain_update(password.as_bytes()).finalize().into()
}

/// Compares two digests without an early exit.
fn constant_time_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    core::hint::black_box(diff) == 0
}

/// Hashes `password` for a `users.N.password_hash` entry:
/// `sha256$<salt hex>$<hex(sha256(salt bytes ++ password bytes))>`.
///
/// The rule has no source of randomness, so the caller supplies the salt: use 16 random bytes,
/// a different salt for every user.
pub fn hash_password(password: &str, salt: &[u8]) -> String {
    format!("{SCHEME}${}${}", hex::encode(salt), hex::encode(digest(salt, password)))
}

/// True when `password` matches `stored_hash` (made by [`hash_password`]). The digests are
/// compared in constant time; a malformed hash matches no password.
pub fn verify_password(stored_hash: &str, password: &str) -> bool {
    PasswordHash::parse(stored_hash).is_some_and(|hash| hash.verify(password))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_vector_with_a_zero_salt_verifies() {
        let stored = hash_password("secret", &[0u8; 16]);
        assert!(stored.starts_with("sha256$00000000000000000000000000000000$"));
        assert_eq!(stored.len(), "sha256$".len() + 32 + 1 + 64);
        assert!(verify_password(&stored, "secret"));
    }

    #[test]
    fn hash_is_sha256_of_salt_then_password() {
        // sha256("abc") is the FIPS 180-2 test vector; salt "a" + password "bc" gives it too.
        assert_eq!(
            hash_password("bc", b"a"),
            "sha256$61$ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn wrong_password_fails() {
        let stored = hash_password("secret", &[7u8; 16]);
        assert!(!verify_password(&stored, "Secret"));
        assert!(!verify_password(&stored, ""));
        assert!(!verify_password(&stored, "secret "));
    }

    #[test]
    fn different_salts_give_different_hashes() {
        assert_ne!(hash_password("secret", &[0u8; 16]), hash_password("secret", &[1u8; 16]));
    }

    #[test]
    fn malformed_hashes_fail_without_panicking() {
        let good = hash_password("secret", &[0u8; 16]);
        let digest = good.rsplit('$').next().unwrap_or_default();
        let cases = [
            String::new(),
            "secret".into(),
            "sha256".into(),
            "sha256$".into(),
            "sha256$$".into(),
            format!("md5$00${digest}"),
            format!("sha256$0${digest}"),
            format!("sha256$zz${digest}"),
            format!("sha256$00${}", &digest[..62]),
            format!("sha256$00${digest}00"),
            format!("{good}$extra"),
            "sha256$00$é".into(),
        ];
        for stored in &cases {
            assert!(!verify_password(stored, "secret"), "{stored:?}");
            assert!(PasswordHash::parse(stored).is_none(), "{stored:?}");
        }
    }

    #[test]
    fn uppercase_hex_is_accepted() {
        let stored = hash_password("secret", &[0xab; 16]).to_uppercase().replacen("SHA256", "sha256", 1);
        assert!(verify_password(&stored, "secret"));
    }

    #[test]
    fn plain_passwords_verify_like_hashes() {
        let hash = PasswordHash::plain("p=q==");
        assert!(hash.verify("p=q=="));
        assert!(!hash.verify("p=q="));
    }
}
