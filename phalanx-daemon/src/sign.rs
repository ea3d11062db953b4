//! HMAC-SHA256 signatures as `sha256=<hex>` header values: one scheme for
//! webhook bodies and for requests between peers, each signing its own
//! message (a body; a timestamp, a newline and a body).

use hmac::{Hmac, Mac as _};
use sha2::Sha256;

/// What a signature header value starts with.
pub const PREFIX: &str = "sha256=";

fn mac(secret: &[u8], parts: &[&[u8]]) -> Hmac<Sha256> {
    // HMAC accepts keys of any length; new_from_slice cannot fail for it.
    let mut m = match Hmac::<Sha256>::new_from_slice(secret) {
        Ok(m) => m,
        Err(_) => unreachable!("HMAC takes keys of any length"),
    };
    for p in parts {
        m.update(p);
    }
    m
}

/// `sha256=<hex of HMAC-SHA256(secret, the parts one after another)>`.
pub fn sign(secret: &[u8], parts: &[&[u8]]) -> String {
    let tag = mac(secret, parts).finalize().into_bytes();
    format!("{PREFIX}{}", hex::encode(tag))
}

/// Whether `header` is the signature of the parts (constant-time
/// comparison); anything but `sha256=` and 64 hex digits is not.
pub fn verify(secret: &[u8], parts: &[&[u8]], header: &str) -> bool {
    let mut tag = [0u8; 32];
    let decoded = header
        .strip_prefix(PREFIX)
        .is_some_and(|h| hex::decode_to_slice(h, &mut tag).is_ok());
    decoded && mac(secret, parts).verify_slice(&tag).is_ok()
}

/// `bytes` bytes of the OS's randomness in hex: session ids and nonces.
pub fn random_hex(bytes: usize) -> Result<String, getrandom::Error> {
    let mut raw = vec![0u8; bytes];
    getrandom::getrandom(&mut raw)?;
    Ok(hex::encode(raw))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_sign_as_one_message_and_verify() {
        let whole = sign(b"key", &[b"12\nbody"]);
        assert_eq!(whole, sign(b"key", &[b"12", b"\n", b"body"]));
        assert!(verify(b"key", &[b"12\nbody"], &whole));
        assert!(!verify(b"other", &[b"12\nbody"], &whole));
        assert!(!verify(b"key", &[b"13\nbody"], &whole));
        assert!(!verify(b"key", &[b"12\nbody"], &whole[PREFIX.len()..]));
        assert!(!verify(b"key", &[b"12\nbody"], &whole[..whole.len() - 2]));
        let upper = format!("{PREFIX}{}", whole[PREFIX.len()..].to_uppercase());
        assert!(verify(b"key", &[b"12\nbody"], &upper), "hex of either case");
    }
}
