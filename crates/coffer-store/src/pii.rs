//! Personal data at rest (S6, issue 14 item 4): envelope encryption of user fields and a blind
//! index for look-ups by e-mail.
//!
//! Each sealed field has its own random 256-bit data key. The value is encrypted with it under
//! AES-256-GCM, and the data key is wrapped by a key-encryption key (KEK) that a [`KeyProvider`]
//! holds: [`LocalKeyProvider`] keeps it in memory from configuration (`COFFER_PII_KEY`); a KMS
//! implements the same trait, and the data keys are then the only thing it ever sees. Both
//! encryptions take the record id and the field name as associated data, so a sealed value
//! copied into another record or another field does not open. The sealed value names its KEK by
//! id: a record written under an older key still opens while that key is configured
//! (`COFFER_PII_KEYS_PREVIOUS`), which is how keys rotate.
//!
//! Look-ups cannot decrypt every record, so the e-mail is also stored as a blind index: the
//! HMAC-SHA256 of its normalised form under a separate key (`COFFER_PII_INDEX_KEY`), unique in
//! the database. Equal e-mails give equal indexes; without the index key, nobody can test a guess.
//!
//! Pure: no IO and no driver types here (the store writes [`Sealed`] as a sub-document).

use std::sync::Arc;

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Key, Nonce};
use hmac::{Hmac, Mac};
use rand::RngCore;
use secrecy::{ExposeSecret, SecretBox};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Bytes of a key-encryption key, a data key and the blind-index key.
pub const KEY_BYTES: usize = 32;

/// Fewest distinct byte values a configured key may have: 32 random bytes have about 30, so a
/// key with fewer than 16 was typed or derived from something small, not drawn at random.
pub const KEY_DISTINCT_BYTES_MIN: usize = 16;

const NONCE_BYTES: usize = 12;

/// Version of the sealed format (and of the associated data's layout).
pub const SEALED_VERSION: u32 = 1;

/// Why a configured key is refused (the message never shows the key).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KeyError {
    #[error("not {} hexadecimal digits ({KEY_BYTES} bytes)", KEY_BYTES * 2)]
    NotHex,
    #[error("one short pattern repeated, not a random key")]
    Repeated,
    #[error("too few distinct bytes (low entropy), not a random key")]
    LowEntropy,
}

/// Why a value could not be sealed or opened.
#[derive(Debug, thiserror::Error)]
pub enum PiiError {
    #[error("no PII keys are configured (COFFER_PII_KEY, COFFER_PII_INDEX_KEY)")]
    NotConfigured,
    #[error(
        "{what} is sealed under key {key_id}, which is not configured (COFFER_PII_KEY, COFFER_PII_KEYS_PREVIOUS)"
    )]
    UnknownKey { what: String, key_id: String },
    #[error("{what} does not decrypt under key {key_id}: a wrong key, or a value altered or moved from another record")]
    Undecryptable { what: String, key_id: String },
    #[error("{what} is not a sealed value of version {SEALED_VERSION}: {why}")]
    Malformed { what: String, why: &'static str },
    #[error("the key provider failed: {0}")]
    Provider(String),
}

/// 32 secret bytes that are wiped when dropped.
pub struct SecretKey(SecretBox<[u8; KEY_BYTES]>);

impl SecretKey {
    /// A fresh random key (the operating system's generator).
    pub fn random() -> SecretKey {
        let mut bytes = Box::new([0u8; KEY_BYTES]);
        rand::rngs::OsRng.fill_bytes(bytes.as_mut());
        SecretKey(SecretBox::new(bytes))
    }

    /// A configured key: exactly [`KEY_BYTES`] bytes of hex, not a repeated pattern, at least
    /// [`KEY_DISTINCT_BYTES_MIN`] distinct bytes.
    pub fn from_hex(text: &str) -> Result<SecretKey, KeyError> {
        let mut bytes = Box::new([0u8; KEY_BYTES]);
        hex::decode_to_slice(text.trim(), bytes.as_mut()).map_err(|_| KeyError::NotHex)?;
        let key = SecretKey(SecretBox::new(bytes));
        let exposed = key.0.expose_secret();
        if crate::audit::is_repeated_pattern(exposed) {
            return Err(KeyError::Repeated);
        }
        let distinct = exposed.iter().collect::<std::collections::BTreeSet<_>>().len();
        if distinct < KEY_DISTINCT_BYTES_MIN {
            return Err(KeyError::LowEntropy);
        }
        Ok(key)
    }

    fn bytes(&self) -> &[u8; KEY_BYTES] {
        self.0.expose_secret()
    }

    /// A short public name of the key (a hash with a purpose label: reveals nothing of it).
    fn id(&self, purpose: &str) -> String {
        let digest = Sha256::digest([purpose.as_bytes(), b":", self.bytes()].concat());
        hex::encode(&digest[..8])
    }

    fn same_as(&self, other: &SecretKey) -> bool {
        self.bytes() == other.bytes()
    }
}

/// A data key wrapped by a KEK, and the KEK's id.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WrappedKey {
    pub key_id: String,
    pub bytes: Vec<u8>,
}

/// The KMS interface: wraps and unwraps data keys with key-encryption keys it holds; the KEKs
/// never leave it. `context` is associated data the unwrap must be given again.
#[async_trait::async_trait]
pub trait KeyProvider: Send + Sync + 'static {
    /// The id of the KEK new data keys are wrapped with.
    fn current_key_id(&self) -> String;
    async fn wrap(&self, data_key: &SecretKey, context: &[u8]) -> Result<WrappedKey, PiiError>;
    /// The data key of `wrapped`; `what` names the value in errors (never its content).
    async fn unwrap(&self, wrapped: &WrappedKey, context: &[u8], what: &str) -> Result<SecretKey, PiiError>;
}

/// KEKs from configuration: the current one wraps, it and the previous ones unwrap.
pub struct LocalKeyProvider {
    current: (String, SecretKey),
    previous: Vec<(String, SecretKey)>,
}

impl LocalKeyProvider {
    pub fn new(current: SecretKey, previous: Vec<SecretKey>) -> LocalKeyProvider {
        let named = |key: SecretKey| (key.id("coffer-pii-kek"), key);
        LocalKeyProvider {
            current: named(current),
            previous: previous.into_iter().map(named).collect(),
        }
    }

    fn key(&self, id: &str) -> Option<&SecretKey> {
        std::iter::once(&self.current)
            .chain(&self.previous)
            .find(|(key_id, _)| key_id == id)
            .map(|(_, key)| key)
    }

    fn holds(&self, other: &SecretKey) -> bool {
        std::iter::once(&self.current)
            .chain(&self.previous)
            .any(|(_, key)| key.same_as(other))
    }
}

#[async_trait::async_trait]
impl KeyProvider for LocalKeyProvider {
    fn current_key_id(&self) -> String {
        self.current.0.clone()
    }

    async fn wrap(&self, data_key: &SecretKey, context: &[u8]) -> Result<WrappedKey, PiiError> {
        let (key_id, kek) = &self.current;
        let aad = [
            b"coffer-pii-wrap:v1:".as_slice(),
            key_id.as_bytes(),
            b"\0",
            context,
        ]
        .concat();
        Ok(WrappedKey {
            key_id: key_id.clone(),
            bytes: seal_bytes(kek, data_key.bytes(), &aad),
        })
    }

    async fn unwrap(&self, wrapped: &WrappedKey, context: &[u8], what: &str) -> Result<SecretKey, PiiError> {
        let Some(kek) = self.key(&wrapped.key_id) else {
            return Err(PiiError::UnknownKey {
                what: what.into(),
                key_id: wrapped.key_id.clone(),
            });
        };
        let aad = [
            b"coffer-pii-wrap:v1:".as_slice(),
            wrapped.key_id.as_bytes(),
            b"\0",
            context,
        ]
        .concat();
        let undecryptable = || PiiError::Undecryptable {
            what: what.into(),
            key_id: wrapped.key_id.clone(),
        };
        let opened = open_bytes(kek, &wrapped.bytes, &aad).ok_or_else(undecryptable)?;
        let mut bytes = Box::new([0u8; KEY_BYTES]);
        if opened.len() != KEY_BYTES {
            return Err(undecryptable());
        }
        bytes.copy_from_slice(&opened);
        Ok(SecretKey(SecretBox::new(bytes)))
    }
}

/// AES-256-GCM of `plaintext` under `key` with a fresh random nonce: nonce ‖ ciphertext ‖ tag.
fn seal_bytes(key: &SecretKey, plaintext: &[u8], aad: &[u8]) -> Vec<u8> {
    let cipher = Aes256Gcm::new(Key::<Aes256Gcm>::from_slice(key.bytes()));
    let mut nonce = [0u8; NONCE_BYTES];
    rand::rngs::OsRng.fill_bytes(&mut nonce);
    let sealed = cipher
        .encrypt(Nonce::from_slice(&nonce), Payload { msg: plaintext, aad })
        .expect("AES-GCM encrypts any message shorter than 64 GiB");
    [nonce.as_slice(), &sealed].concat()
}

fn open_bytes(key: &SecretKey, sealed: &[u8], aad: &[u8]) -> Option<Vec<u8>> {
    if sealed.len() < NONCE_BYTES + 16 {
        return None;
    }
    let (nonce, ciphertext) = sealed.split_at(NONCE_BYTES);
    let cipher = Aes256Gcm::new(Key::<Aes256Gcm>::from_slice(key.bytes()));
    cipher
        .decrypt(Nonce::from_slice(nonce), Payload { msg: ciphertext, aad })
        .ok()
}

/// A sealed field as stored: the wrapped data key and the value encrypted under it (hex).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sealed {
    pub v: u32,
    /// The id of the KEK that wrapped the data key.
    pub kek_id: String,
    /// The wrapped data key: nonce ‖ ciphertext ‖ tag.
    pub dek: String,
    /// The value under the data key: nonce ‖ ciphertext ‖ tag.
    pub ct: String,
}

/// The HMAC key of the blind index.
pub struct IndexKey(SecretKey);

impl IndexKey {
    pub fn new(key: SecretKey) -> IndexKey {
        IndexKey(key)
    }

    /// The blind index of an e-mail (hex HMAC-SHA256 of its normalised form).
    pub fn email_index(&self, email: &str) -> String {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(self.0.bytes()).expect("any key length");
        mac.update(b"coffer-email-index:v1:");
        mac.update(normalise_email(email).as_bytes());
        hex::encode(mac.finalize().into_bytes())
    }
}

/// The form e-mails are compared in (and stored in): lower-cased, as accounts always were.
pub fn normalise_email(email: &str) -> String {
    email.to_lowercase()
}

/// The keys of the personal data a store holds: a [`KeyProvider`] and the blind-index key.
#[derive(Clone)]
pub struct PiiKeys(Arc<(Arc<dyn KeyProvider>, IndexKey)>);

impl std::fmt::Debug for PiiKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PiiKeys")
            .field("current_kek", &self.0 .0.current_key_id())
            .finish_non_exhaustive()
    }
}

/// Which configured key is refused, and why.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PiiKeysError {
    #[error("{setting} is refused: {error}")]
    Weak { setting: &'static str, error: KeyError },
    #[error("COFFER_PII_INDEX_KEY is refused: it must differ from every PII encryption key")]
    IndexKeyReused,
}

impl PiiKeys {
    pub fn new(provider: Arc<dyn KeyProvider>, index: IndexKey) -> PiiKeys {
        PiiKeys(Arc::new((provider, index)))
    }

    /// Keys from configuration: the current KEK, earlier KEKs (still opening what they sealed)
    /// and the index key, each checked; the error names the setting, never a value.
    pub fn local(current: &str, previous: &[&str], index: &str) -> Result<PiiKeys, PiiKeysError> {
        let weak = |setting| move |error| PiiKeysError::Weak { setting, error };
        let current = SecretKey::from_hex(current).map_err(weak("COFFER_PII_KEY"))?;
        let previous = previous
            .iter()
            .map(|text| SecretKey::from_hex(text))
            .collect::<Result<Vec<_>, _>>()
            .map_err(weak("COFFER_PII_KEYS_PREVIOUS"))?;
        let index = SecretKey::from_hex(index).map_err(weak("COFFER_PII_INDEX_KEY"))?;
        let provider = LocalKeyProvider::new(current, previous);
        if provider.holds(&index) {
            return Err(PiiKeysError::IndexKeyReused);
        }
        Ok(PiiKeys::new(Arc::new(provider), IndexKey::new(index)))
    }

    pub fn current_key_id(&self) -> String {
        self.0 .0.current_key_id()
    }

    /// The blind index of `email`.
    pub fn email_index(&self, email: &str) -> String {
        self.0 .1.email_index(email)
    }

    /// Seals `value` as field `field` of record `record_id` under a fresh data key.
    pub async fn seal(&self, record_id: &str, field: &str, value: &str) -> Result<Sealed, PiiError> {
        let context = context(record_id, field);
        let data_key = SecretKey::random();
        let wrapped = self.0 .0.wrap(&data_key, &context).await?;
        Ok(Sealed {
            v: SEALED_VERSION,
            kek_id: wrapped.key_id,
            dek: hex::encode(wrapped.bytes),
            ct: hex::encode(seal_bytes(&data_key, value.as_bytes(), &context)),
        })
    }

    /// Opens field `field` of record `record_id`; a value sealed for another record or field, a
    /// wrong or missing KEK, or an altered byte is an error, never a wrong value.
    pub async fn open(&self, record_id: &str, field: &str, sealed: &Sealed) -> Result<String, PiiError> {
        let what = format!("the {field} of record {record_id}");
        let malformed = |why| PiiError::Malformed {
            what: what.clone(),
            why,
        };
        if sealed.v != SEALED_VERSION {
            return Err(malformed("unknown version"));
        }
        let wrapped = WrappedKey {
            key_id: sealed.kek_id.clone(),
            bytes: hex::decode(&sealed.dek).map_err(|_| malformed("the data key is not hex"))?,
        };
        let ciphertext = hex::decode(&sealed.ct).map_err(|_| malformed("the value is not hex"))?;
        let context = context(record_id, field);
        let data_key = self.0 .0.unwrap(&wrapped, &context, &what).await?;
        let undecryptable = || PiiError::Undecryptable {
            what: what.clone(),
            key_id: sealed.kek_id.clone(),
        };
        let plain = open_bytes(&data_key, &ciphertext, &context).ok_or_else(undecryptable)?;
        String::from_utf8(plain).map_err(|_| undecryptable())
    }
}

/// The associated data of a field: binds its ciphertext (and its wrapped key) to the record and
/// the field name.
fn context(record_id: &str, field: &str) -> Vec<u8> {
    format!("coffer-pii:v{SEALED_VERSION}\0{record_id}\0{field}").into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "f785bfc7a835fe409d6d2fdacf30eaf8a37f83380bae165d41e13d5246c07e22";
    const B: &str = "aa26230b0c18cac1296e0441306d7b72871d418c96eb742f0961e10af055c879";
    const INDEX: &str = "df0b738a2203f1a1be06d77b755261ae8cc89b81d1dd5447418a570f5efff240";

    #[tokio::test]
    async fn a_sealed_value_opens_only_in_its_own_record_and_field() {
        let keys = PiiKeys::local(A, &[], INDEX).unwrap();
        let sealed = keys.seal("user-1", "email", "alice@example.com").await.unwrap();
        assert!(!sealed.ct.contains(&hex::encode("alice")));
        assert_eq!(
            keys.open("user-1", "email", &sealed).await.unwrap(),
            "alice@example.com"
        );
        for (record, field) in [("user-2", "email"), ("user-1", "totp_secret")] {
            let error = keys.open(record, field, &sealed).await.unwrap_err();
            assert!(matches!(error, PiiError::Undecryptable { .. }), "{error}");
        }
        let mut altered = sealed.clone();
        let last = altered.ct.pop().unwrap();
        altered.ct.push(if last == '0' { '1' } else { '0' });
        assert!(matches!(
            keys.open("user-1", "email", &altered).await.unwrap_err(),
            PiiError::Undecryptable { .. }
        ));
        // Two seals of one value share nothing: fresh data keys and nonces.
        let again = keys.seal("user-1", "email", "alice@example.com").await.unwrap();
        assert_ne!((&again.dek, &again.ct), (&sealed.dek, &sealed.ct));
    }

    #[tokio::test]
    async fn a_rotated_key_still_opens_what_it_sealed_and_an_unknown_one_is_named() {
        let old = PiiKeys::local(A, &[], INDEX).unwrap();
        let sealed = old.seal("u", "email", "bob@example.com").await.unwrap();
        let rotated = PiiKeys::local(B, &[A], INDEX).unwrap();
        assert_ne!(rotated.current_key_id(), old.current_key_id());
        assert_eq!(
            rotated.open("u", "email", &sealed).await.unwrap(),
            "bob@example.com"
        );
        assert_eq!(
            rotated.seal("u", "email", "x").await.unwrap().kek_id,
            rotated.current_key_id()
        );
        let without = PiiKeys::local(B, &[], INDEX).unwrap();
        let error = without.open("u", "email", &sealed).await.unwrap_err();
        assert!(matches!(error, PiiError::UnknownKey { .. }));
        let text = error.to_string();
        assert!(
            text.contains(&old.current_key_id()) && text.contains("COFFER_PII_KEYS_PREVIOUS"),
            "{text}"
        );
        assert!(!text.contains("bob"));
    }

    #[test]
    fn the_blind_index_ignores_case_and_depends_on_its_key() {
        let keys = PiiKeys::local(A, &[], INDEX).unwrap();
        let index = keys.email_index("Alice@Example.com");
        assert_eq!(index, keys.email_index("alice@example.com"));
        assert_ne!(index, keys.email_index("alice@example.org"));
        assert_eq!(index.len(), 64);
        let other = PiiKeys::local(A, &[], B).unwrap();
        assert_ne!(index, other.email_index("alice@example.com"));
    }

    #[test]
    fn weak_keys_are_refused_naming_the_setting_never_the_value() {
        let refused = |current: &str, previous: &[&str], index: &str| {
            PiiKeys::local(current, previous, index).unwrap_err().to_string()
        };
        let zeros = "00".repeat(32);
        let counting: String = (0u8..32).map(|b| format!("{:02x}", b % 8)).collect();
        for (text, setting, why) in [
            (refused("abc", &[], INDEX), "COFFER_PII_KEY", "hexadecimal"),
            (refused(&zeros, &[], INDEX), "COFFER_PII_KEY", "repeated"),
            (refused(&counting, &[], INDEX), "COFFER_PII_KEY", "repeated"),
            (
                refused(A, &["zz"], INDEX),
                "COFFER_PII_KEYS_PREVIOUS",
                "hexadecimal",
            ),
            (refused(A, &[], &zeros), "COFFER_PII_INDEX_KEY", "repeated"),
            (refused(A, &[], A), "COFFER_PII_INDEX_KEY", "differ"),
            (refused(B, &[A], A), "COFFER_PII_INDEX_KEY", "differ"),
        ] {
            assert!(text.contains(setting) && text.contains(why), "{text}");
            assert!(!text.contains(&zeros) && !text.contains(A), "{text}");
        }
        // Eleven byte values, not periodic: typed, not drawn.
        let low: String = (0u8..31).map(|b| format!("{:02x}", b % 10)).collect::<String>() + "ff";
        assert_eq!(SecretKey::from_hex(&low).err(), Some(KeyError::LowEntropy));
    }
}
