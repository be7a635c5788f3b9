//! Webhook signing secrets: made (`whsec_` + base64 of 32 random bytes),
//! stored encrypted (AES-256-GCM under DELIVERY_SECRET_KEY) and used to sign
//! as Standard Webhooks specify.

use aes_gcm::{
    Aes256Gcm, Nonce,
    aead::{Aead, KeyInit},
};
use base64::{Engine as _, engine::general_purpose::STANDARD};
use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::Sha256;

/// The prefix of a Standard Webhooks secret.
pub(crate) const PREFIX: &str = "whsec_";
const NONCE_BYTES: usize = 12;

/// The key that encrypts webhook secrets at rest; never printed.
#[derive(Clone)]
pub struct SecretKey(Box<[u8; 32]>);

impl std::fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretKey([REDACTED])")
    }
}

impl SecretKey {
    /// Base64 of 32 bytes (`openssl rand -base64 32`).
    pub fn from_base64(raw: &str) -> Result<Self, String> {
        super::config::decode_key(raw).map(|bytes| Self(Box::new(bytes)))
    }

    /// A random nonce, then the ciphertext of `plain`.
    pub(crate) fn encrypt(&self, plain: &str) -> Vec<u8> {
        let mut nonce = [0u8; NONCE_BYTES];
        rand::rng().fill_bytes(&mut nonce);
        let cipher = Aes256Gcm::new_from_slice(self.0.as_slice()).expect("a 32-byte key");
        let sealed = cipher.encrypt(Nonce::from_slice(&nonce), plain.as_bytes()).expect("AES-GCM encrypts");
        [nonce.as_slice(), &sealed].concat()
    }

    /// The secret [`Self::encrypt`] sealed; an error when another key sealed it or the bytes were altered.
    pub(crate) fn decrypt(&self, sealed: &[u8]) -> Result<String, anyhow::Error> {
        anyhow::ensure!(sealed.len() > NONCE_BYTES, "a sealed secret is too short");
        let (nonce, body) = sealed.split_at(NONCE_BYTES);
        let cipher = Aes256Gcm::new_from_slice(self.0.as_slice()).expect("a 32-byte key");
        let plain = cipher.decrypt(Nonce::from_slice(nonce), body).map_err(|_| {
            anyhow::anyhow!("cannot decrypt a webhook secret: DELIVERY_SECRET_KEY is not the key that sealed it")
        })?;
        Ok(String::from_utf8(plain)?)
    }
}

/// A new signing secret.
pub(crate) fn generate() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    format!("{PREFIX}{}", STANDARD.encode(bytes))
}

/// `v1,<signature>` by each secret, space-separated: the `webhook-signature` header.
pub(crate) fn signature_header(secrets: &[String], id: &str, timestamp: i64, body: &[u8]) -> String {
    secrets.iter().filter_map(|secret| sign(secret, id, timestamp, body)).collect::<Vec<_>>().join(" ")
}

/// `v1,` and base64 of HMAC-SHA256 over `id.timestamp.body`, keyed by the secret's decoded bytes.
fn sign(secret: &str, id: &str, timestamp: i64, body: &[u8]) -> Option<String> {
    let key = STANDARD.decode(secret.strip_prefix(PREFIX).unwrap_or(secret)).ok()?;
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&key).expect("HMAC takes any key length");
    mac.update(format!("{id}.{timestamp}.").as_bytes());
    mac.update(body);
    Some(format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes())))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> SecretKey {
        SecretKey::from_base64(&STANDARD.encode([9u8; 32])).unwrap()
    }

    #[test]
    fn secrets_look_like_standard_webhooks_ones() {
        let secret = generate();
        assert!(secret.starts_with(PREFIX));
        assert_eq!(STANDARD.decode(&secret[PREFIX.len()..]).unwrap().len(), 32);
        assert_ne!(secret, generate());
    }

    #[test]
    fn sealed_secrets_open_only_with_their_key() {
        let secret = generate();
        let sealed = key().encrypt(&secret);
        assert!(!sealed.windows(6).any(|w| w == PREFIX.as_bytes()));
        assert_eq!(key().decrypt(&sealed).unwrap(), secret);
        let other = SecretKey::from_base64(&STANDARD.encode([1u8; 32])).unwrap();
        assert!(other.decrypt(&sealed).is_err());
        let mut altered = sealed;
        *altered.last_mut().unwrap() ^= 1;
        assert!(key().decrypt(&altered).is_err());
        assert_eq!(format!("{:?}", key()), "SecretKey([REDACTED])");
    }

    #[test]
    fn signs_as_the_standard_webhooks_example() {
        // The example of the Standard Webhooks specification.
        let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw".to_owned();
        let body = br#"{"test": 2432232314}"#;
        let header = signature_header(&[secret], "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body);
        assert_eq!(header, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
    }

    #[test]
    fn two_live_secrets_give_two_signatures() {
        let header = signature_header(&[generate(), generate()], "id", 1, b"{}");
        assert_eq!(header.split(' ').count(), 2);
        assert!(header.split(' ').all(|s| s.starts_with("v1,")));
    }
}
