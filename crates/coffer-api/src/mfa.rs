//! Staff MFA (S1): TOTP, RFC 6238 (HMAC-SHA-1, 6 digits, 30-second steps, the parameters every
//! authenticator app supports). Every staff role (support, finance, engineering, admin) logs in
//! with a code; users and the `payment` service account do not. A code is accepted within one
//! step of the server's clock and at most once: a login records the step it used, and a code of
//! that step or an earlier one is refused (RFC 6238 §5.2).

use coffer_store::Role;
use rand::RngCore;
use secrecy::{ExposeSecret, SecretString};
use totp_rs::{Algorithm, TOTP};

/// The issuer authenticator apps show.
pub const ISSUER: &str = "Coffer";
/// Seconds per code.
pub const STEP_SECONDS: u64 = 30;
const DIGITS: usize = 6;
/// 160 bits, the key length RFC 4226 recommends for HMAC-SHA-1.
const SECRET_BYTES: usize = 20;

/// Whether `role` must log in with a TOTP code.
pub fn required_for(role: Role) -> bool {
    matches!(
        role,
        Role::Support | Role::Finance | Role::Engineering | Role::Admin
    )
}

/// A new random secret, base32 (as authenticator apps take it).
pub fn new_secret() -> SecretString {
    let mut bytes = [0u8; SECRET_BYTES];
    rand::thread_rng().fill_bytes(&mut bytes);
    let encoded = base32_encode(&bytes);
    SecretString::from(encoded)
}

fn base32_encode(bytes: &[u8]) -> String {
    totp_rs::Secret::Raw(bytes.to_vec()).to_encoded().to_string()
}

fn totp(secret: &SecretString, account: &str) -> Option<TOTP> {
    let bytes = totp_rs::Secret::Encoded(secret.expose_secret().to_string())
        .to_bytes()
        .ok()?;
    // Skew 0: the caller tries the neighbouring steps itself, to learn which one matched.
    TOTP::new(
        Algorithm::SHA1,
        DIGITS,
        0,
        STEP_SECONDS,
        bytes,
        Some(ISSUER.to_string()),
        account.to_string(),
    )
    .ok()
}

/// The `otpauth://` URI to enroll `secret` in an authenticator app (shown once, never logged).
pub fn provisioning_uri(secret: &SecretString, email: &str) -> Option<String> {
    // A label may not hold ':'; an e-mail address does not in practice.
    let account = email.replace(':', "");
    totp(secret, &account).map(|t| t.get_url())
}

/// The code of `secret` at `unix_seconds` (tests and the CLI's self-check).
pub fn code_at(secret: &SecretString, unix_seconds: u64) -> Option<String> {
    totp(secret, "").map(|t| t.generate(unix_seconds))
}

/// The step (`unix_seconds / 30`) whose code `code` is, within one step of `now`.
pub fn matching_step(secret: &SecretString, code: &str, now: u64) -> Option<i64> {
    if code.len() != DIGITS || !code.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let totp = totp(secret, "")?;
    let current = now / STEP_SECONDS;
    [current.saturating_sub(1), current, current + 1]
        .into_iter()
        .find(|step| totp.check(code, step * STEP_SECONDS))
        .map(|step| step as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 6238 Appendix B, SHA-1: the 20-byte key "12345678901234567890", 8 digits there; the
    /// 6-digit code is its last six digits.
    #[test]
    fn codes_match_the_rfc_6238_test_vectors() {
        let secret = SecretString::from(base32_encode(b"12345678901234567890"));
        for (time, eight_digits) in [
            (59, "94287082"),
            (1111111109, "07081804"),
            (2000000000, "69279037"),
        ] {
            assert_eq!(code_at(&secret, time).unwrap(), eight_digits[2..]);
        }
    }

    #[test]
    fn a_code_matches_within_one_step_and_names_its_step() {
        let secret = new_secret();
        let now = 1_700_000_000;
        let code = code_at(&secret, now).unwrap();
        assert_eq!(matching_step(&secret, &code, now), Some((now / 30) as i64));
        assert_eq!(matching_step(&secret, &code, now + 30), Some((now / 30) as i64));
        assert_eq!(matching_step(&secret, &code, now + 90), None);
        assert_eq!(matching_step(&secret, "12345", now), None);
        assert!(provisioning_uri(&secret, "admin@example.com")
            .unwrap()
            .starts_with("otpauth://totp/Coffer:admin%40example.com?secret="));
    }
}
