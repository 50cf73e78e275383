//! JWT verification: compact JWS with HS256 (shared secret) or RS256 (RSA public key), then
//! the time claims against the host clock and the optional issuer and audience.
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use hmac::{Hmac, Mac};
use rsa::pkcs1::DecodeRsaPublicKey;
use rsa::pkcs1v15::{Signature, VerifyingKey};
use rsa::pkcs8::DecodePublicKey;
use rsa::signature::Verifier;
use rsa::RsaPublicKey;
use serde_json::{Map, Value};
use sha2::Sha256;

pub struct Keys {
    pub hs256: Option<Vec<u8>>,
    pub rs256: Option<VerifyingKey<Sha256>>,
}

pub struct Rules {
    pub issuer: Option<String>,
    pub audience: Option<String>,
    pub leeway_seconds: u64,
}

/// Reads an RSA public key from PEM (`PUBLIC KEY` or `RSA PUBLIC KEY`). Line breaks inside
/// the armor are optional, so a key fits on one line of a JSON string.
pub fn rsa_public_key(pem: &str) -> Result<VerifyingKey<Sha256>, String> {
    let armored = || {
        let rest = pem.trim().strip_prefix("-----BEGIN ")?;
        let (label, rest) = rest.split_once("-----")?;
        let (body, end) = rest.split_once("-----END ")?;
        (end == format!("{label}-----")).then_some((label, body))
    };
    let (label, body) = armored().ok_or("rs256_public_key is not PEM (-----BEGIN PUBLIC KEY----- ...)")?;
    let base64: String = body.chars().filter(|c| !c.is_whitespace()).collect();
    let der = STANDARD.decode(base64).map_err(|e| format!("rs256_public_key: bad base64: {e}"))?;
    let key = match label {
        "PUBLIC KEY" => RsaPublicKey::from_public_key_der(&der).map_err(|e| e.to_string()),
        "RSA PUBLIC KEY" => RsaPublicKey::from_pkcs1_der(&der).map_err(|e| e.to_string()),
        other => Err(format!("a {other} is not an RSA public key")),
    };
    key.map(VerifyingKey::new).map_err(|e| format!("rs256_public_key: {e}"))
}

/// Verifies `token` at `now` (Unix seconds); answers its claims or why it is refused.
pub fn verify(token: &str, keys: &Keys, rules: &Rules, now: u64) -> Result<Map<String, Value>, String> {
    let mut parts = token.split('.');
    let (Some(header), Some(payload), Some(signature), None) = (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err("malformed token".into());
    };
    let decode = |part: &str| URL_SAFE_NO_PAD.decode(part).map_err(|_| "malformed token".to_string());
    let header: Value = serde_json::from_slice(&decode(header)?).map_err(|_| "malformed token header")?;
    let signing_input = &token[..token.len() - signature.len() - 1];
    let signature = decode(signature)?;
    match header.get("alg").and_then(Value::as_str) {
        Some("HS256") => {
            let secret = keys.hs256.as_ref().ok_or("HS256 tokens are not accepted")?;
            let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes any key size");
            mac.update(signing_input.as_bytes());
            mac.verify_slice(&signature).map_err(|_| "bad signature")?;
        }
        Some("RS256") => {
            let key = keys.rs256.as_ref().ok_or("RS256 tokens are not accepted")?;
            let signature = Signature::try_from(signature.as_slice()).map_err(|_| "bad signature")?;
            key.verify(signing_input.as_bytes(), &signature).map_err(|_| "bad signature")?;
        }
        Some(_) => return Err("unsupported alg".into()),
        None => return Err("token header has no alg".into()),
    }
    let Ok(Value::Object(claims)) = serde_json::from_slice(&decode(payload)?) else {
        return Err("malformed token claims".into());
    };
    check_claims(&claims, rules, now)?;
    Ok(claims)
}

fn check_claims(claims: &Map<String, Value>, rules: &Rules, now: u64) -> Result<(), String> {
    let time = |name: &str| claims.get(name).map(|v| v.as_f64().ok_or(format!("claim {name} is not a number")));
    let exp = time("exp").ok_or("token has no exp")??;
    if now as f64 > exp + rules.leeway_seconds as f64 {
        return Err("token expired".into());
    }
    if let Some(nbf) = time("nbf").transpose()? {
        if ((now + rules.leeway_seconds) as f64) < nbf {
            return Err("token not yet valid".into());
        }
    }
    if let Some(issuer) = &rules.issuer {
        if claims.get("iss").and_then(Value::as_str) != Some(issuer) {
            return Err("wrong issuer".into());
        }
    }
    if let Some(audience) = &rules.audience {
        let ours = |v: &Value| v.as_str() == Some(audience);
        let matches = match claims.get("aud") {
            Some(Value::Array(list)) => list.iter().any(ours),
            Some(aud) => ours(aud),
            None => false,
        };
        if !matches {
            return Err("wrong audience".into());
        }
    }
    Ok(())
}
