//! HMAC-SHA256 request signatures: the signer joins the configured parts of the request with
//! `\n` (method, path with query, header values, the body's SHA-256 in hex), signs that with
//! the shared secret and sends the MAC in hex in a header.
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

#[derive(Clone, PartialEq)]
pub enum Part {
    Method,
    Path,
    Header(String),
    BodySha256,
}

impl Part {
    pub fn parse(text: &str) -> Result<Part, String> {
        match text {
            "method" => Ok(Part::Method),
            "path" => Ok(Part::Path),
            "body-sha256" => Ok(Part::BodySha256),
            _ => match text.strip_prefix("header:") {
                Some(name) if !name.is_empty() => Ok(Part::Header(name.to_ascii_lowercase())),
                _ => Err(format!("signed part {text:?} is not method, path, body-sha256 or header:NAME")),
            },
        }
    }
}

/// Checks `signature` (hex) over `parts` (the body's place given as `None`) and `body`.
pub fn verify(secret: &[u8], parts: &[Option<String>], body: &[u8], signature: &str) -> Result<(), &'static str> {
    let signature = decode_hex(signature.trim()).ok_or("signature is not hex")?;
    let digest = hex(&Sha256::digest(body));
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes any key size");
    for (i, part) in parts.iter().enumerate() {
        if i > 0 {
            mac.update(b"\n");
        }
        mac.update(part.as_deref().unwrap_or(&digest).as_bytes());
    }
    mac.verify_slice(&signature).map_err(|_| "bad signature")
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn decode_hex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) || !text.is_ascii() {
        return None;
    }
    (0..text.len()).step_by(2).map(|i| u8::from_str_radix(&text[i..i + 2], 16).ok()).collect()
}
