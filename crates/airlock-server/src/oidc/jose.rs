//! The JOSE airlock needs, and no more: ES256 signing of its own identity tokens, and RS256 or
//! ES256 verification of forge ID tokens, with ring (no `rsa` crate: RUSTSEC-2023-0071).
//!
//! **Invariant:** a verifying key carries the one algorithm it may verify (an RSA key RS256, a
//! P-256 key ES256); a token's header `alg` must equal it and its `kid` must name the key.
//! `none`, `HS*` and every other algorithm are refused before any key is looked at, so neither
//! "alg: none" nor HMAC with a public key as the secret can pass. Key material is never
//! `Debug`.

use std::fmt;

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use base64::Engine;
use ring::rand::SystemRandom;
use ring::signature::{self, EcdsaKeyPair, KeyPair};
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};

/// Longest token accepted (GitHub's are about 1.5 KiB).
pub const MAX_TOKEN_BYTES: usize = 16 * 1024;

/// Why a token or key was refused (safe to show: never carries key material).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JoseError(pub String);

impl fmt::Display for JoseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

fn err<T>(m: impl Into<String>) -> Result<T, JoseError> {
    Err(JoseError(m.into()))
}

/// The algorithms airlock verifies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Alg {
    /// ECDSA P-256 with SHA-256.
    Es256,
    /// RSASSA-PKCS1-v1_5 with SHA-256, 2048 to 8192 bits.
    Rs256,
}

impl Alg {
    fn name(self) -> &'static str {
        match self {
            Alg::Es256 => "ES256",
            Alg::Rs256 => "RS256",
        }
    }
}

enum Material {
    /// Uncompressed P-256 point.
    Ec(Vec<u8>),
    Rsa {
        n: Vec<u8>,
        e: Vec<u8>,
    },
}

/// A public key from a JWKS, with the one algorithm it verifies.
pub struct VerifyingKey {
    kid: String,
    alg: Alg,
    material: Material,
}

impl fmt::Debug for VerifyingKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "VerifyingKey({} {})", self.kid, self.alg.name())
    }
}

fn b64_field(jwk: &Value, name: &str) -> Result<Vec<u8>, JoseError> {
    let s = jwk
        .get(name)
        .and_then(Value::as_str)
        .ok_or_else(|| JoseError(format!("JWK without `{name}`")))?;
    B64URL
        .decode(s)
        .map_err(|_| JoseError(format!("JWK `{name}` is not base64url")))
}

impl VerifyingKey {
    /// Reads one JWK. Its `kid` is required; a declared `alg` or `use` must agree with the key.
    pub fn from_jwk(jwk: &Value) -> Result<VerifyingKey, JoseError> {
        let kid = match jwk.get("kid").and_then(Value::as_str) {
            Some(k) if !k.is_empty() && k.len() <= 200 => k.to_owned(),
            _ => return err("JWK without a `kid`"),
        };
        if let Some(u) = jwk.get("use") {
            if u != "sig" {
                return err(format!("JWK {kid} is not a signing key (use {u})"));
            }
        }
        let (alg, material) = match jwk.get("kty").and_then(Value::as_str) {
            Some("EC") => {
                if jwk.get("crv").and_then(Value::as_str) != Some("P-256") {
                    return err(format!("JWK {kid}: only the P-256 curve is accepted"));
                }
                let (x, y) = (b64_field(jwk, "x")?, b64_field(jwk, "y")?);
                if x.len() != 32 || y.len() != 32 {
                    return err(format!("JWK {kid}: a P-256 coordinate is 32 bytes"));
                }
                let mut point = vec![4u8];
                point.extend_from_slice(&x);
                point.extend_from_slice(&y);
                (Alg::Es256, Material::Ec(point))
            }
            Some("RSA") => {
                let (n, e) = (b64_field(jwk, "n")?, b64_field(jwk, "e")?);
                (Alg::Rs256, Material::Rsa { n, e })
            }
            other => return err(format!("JWK {kid}: unsupported key type {other:?}")),
        };
        if let Some(a) = jwk.get("alg") {
            if a.as_str() != Some(alg.name()) {
                return err(format!("JWK {kid}: alg {a} does not fit its key type"));
            }
        }
        Ok(VerifyingKey { kid, alg, material })
    }

    /// The key's id.
    pub fn kid(&self) -> &str {
        &self.kid
    }

    fn verify(&self, message: &[u8], sig: &[u8]) -> bool {
        match &self.material {
            Material::Ec(point) => {
                signature::UnparsedPublicKey::new(&signature::ECDSA_P256_SHA256_FIXED, point)
                    .verify(message, sig)
                    .is_ok()
            }
            Material::Rsa { n, e } => signature::RsaPublicKeyComponents { n, e }
                .verify(&signature::RSA_PKCS1_2048_8192_SHA256, message, sig)
                .is_ok(),
        }
    }
}

/// Reads a JWKS document: the usable signing keys (others, e.g. encryption keys, are skipped).
/// An error if none is usable.
pub fn parse_jwks(bytes: &[u8]) -> Result<Vec<VerifyingKey>, JoseError> {
    let doc: Value =
        serde_json::from_slice(bytes).map_err(|_| JoseError("the JWKS is not JSON".into()))?;
    let keys = doc
        .get("keys")
        .and_then(Value::as_array)
        .ok_or_else(|| JoseError("the JWKS has no `keys` array".into()))?;
    let usable: Vec<VerifyingKey> = keys
        .iter()
        .take(100)
        .filter_map(|k| VerifyingKey::from_jwk(k).ok())
        .collect();
    if usable.is_empty() {
        return err("the JWKS holds no usable RS256 or ES256 signing key");
    }
    Ok(usable)
}

/// A token split into its parts, signature not yet checked.
pub struct Unverified {
    /// The header's `alg`.
    pub alg: String,
    /// The header's `kid`.
    pub kid: Option<String>,
    /// The claims, unverified: read only to pick the issuer.
    pub claims: Map<String, Value>,
    signing_input: Vec<u8>,
    signature: Vec<u8>,
}

fn json_part(part: &str, what: &str) -> Result<Map<String, Value>, JoseError> {
    let bytes = B64URL
        .decode(part)
        .map_err(|_| JoseError(format!("the token's {what} is not base64url")))?;
    match serde_json::from_slice(&bytes) {
        Ok(Value::Object(m)) => Ok(m),
        _ => err(format!("the token's {what} is not a JSON object")),
    }
}

/// Splits a compact JWS. Refuses anything but three base64url parts within
/// [`MAX_TOKEN_BYTES`].
pub fn decode(token: &str) -> Result<Unverified, JoseError> {
    if token.len() > MAX_TOKEN_BYTES {
        return err(format!("the token is longer than {MAX_TOKEN_BYTES} bytes"));
    }
    let parts: Vec<&str> = token.split('.').collect();
    let [h, c, s] = parts.as_slice() else {
        return err("not a signed JWT (three dot-separated parts)");
    };
    let header = json_part(h, "header")?;
    let claims = json_part(c, "claims")?;
    let signature = B64URL
        .decode(s)
        .map_err(|_| JoseError("the token's signature is not base64url".into()))?;
    Ok(Unverified {
        alg: header
            .get("alg")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned(),
        kid: header.get("kid").and_then(Value::as_str).map(str::to_owned),
        claims,
        signing_input: format!("{h}.{c}").into_bytes(),
        signature,
    })
}

impl Unverified {
    /// Checks the signature with the key the header's `kid` names, under that key's one
    /// algorithm; returns the claims.
    pub fn verify(self, keys: &[VerifyingKey]) -> Result<Map<String, Value>, JoseError> {
        let alg = match self.alg.as_str() {
            "ES256" => Alg::Es256,
            "RS256" => Alg::Rs256,
            "" => return err("the token's header names no alg"),
            other => {
                return err(format!(
                    "alg {other:?} is refused: only RS256 and ES256 tokens are accepted"
                ))
            }
        };
        let Some(kid) = self.kid.as_deref() else {
            return err("the token's header names no kid");
        };
        let Some(key) = keys.iter().find(|k| k.kid == kid) else {
            return err(format!("no key {kid:?} in the issuer's JWKS"));
        };
        if key.alg != alg {
            return err(format!(
                "key {kid} verifies {} only; the token says {}",
                key.alg.name(),
                alg.name()
            ));
        }
        if !key.verify(&self.signing_input, &self.signature) {
            return err(format!("the signature does not verify with key {kid}"));
        }
        Ok(self.claims)
    }
}

/// Checks `exp` (required), `nbf` and `iat` (if present) against `now` (seconds), with
/// `leeway` seconds for clock skew.
pub fn check_times(claims: &Map<String, Value>, now: i64, leeway: i64) -> Result<(), JoseError> {
    let num = |k: &str| {
        claims.get(k).map(|v| {
            v.as_i64()
                .ok_or_else(|| JoseError(format!("`{k}` is not a whole number")))
        })
    };
    match num("exp").transpose()? {
        None => return err("the token has no `exp`"),
        Some(exp) if exp + leeway < now => {
            return err(format!("the token expired {} s ago", now - exp))
        }
        _ => {}
    }
    if let Some(nbf) = num("nbf").transpose()? {
        if nbf - leeway > now {
            return err(format!(
                "the token is not valid for another {} s (nbf)",
                nbf - now
            ));
        }
    }
    if let Some(iat) = num("iat").transpose()? {
        if iat - leeway > now {
            return err("the token was issued in the future (iat)");
        }
    }
    Ok(())
}

/// Whether `aud` (a string or an array of strings) holds `audience`.
pub fn has_audience(claims: &Map<String, Value>, audience: &str) -> bool {
    match claims.get("aud") {
        Some(Value::String(a)) => a == audience,
        Some(Value::Array(a)) => a.iter().any(|v| v.as_str() == Some(audience)),
        _ => false,
    }
}

/// airlock's issuer key: ES256 over P-256. Not `Debug`, not `Clone`, not serialisable.
pub struct SigningKey {
    kid: String,
    pair: EcdsaKeyPair,
    rng: SystemRandom,
}

/// A fresh key: its PKCS#8 private key (to store), public JWK and `kid`.
pub struct GeneratedKey {
    /// PKCS#8 document.
    pub pkcs8: Vec<u8>,
    /// Public JWK, with `kid`, `alg` and `use`.
    pub public_jwk: Value,
    /// RFC 7638 thumbprint of the public key.
    pub kid: String,
}

/// Generates an ES256 key pair.
pub fn generate_es256() -> Result<GeneratedKey, JoseError> {
    let rng = SystemRandom::new();
    let alg = &signature::ECDSA_P256_SHA256_FIXED_SIGNING;
    let doc = EcdsaKeyPair::generate_pkcs8(alg, &rng)
        .map_err(|_| JoseError("generating a P-256 key failed".into()))?;
    let pair = EcdsaKeyPair::from_pkcs8(alg, doc.as_ref(), &rng)
        .map_err(|_| JoseError("reading the generated key failed".into()))?;
    let point = pair.public_key().as_ref();
    let (x, y) = (B64URL.encode(&point[1..33]), B64URL.encode(&point[33..65]));
    // RFC 7638: the required members in lexicographic order, no whitespace.
    let thumb = format!(r#"{{"crv":"P-256","kty":"EC","x":"{x}","y":"{y}"}}"#);
    let kid = B64URL.encode(Sha256::digest(thumb.as_bytes()));
    Ok(GeneratedKey {
        pkcs8: doc.as_ref().to_vec(),
        public_jwk: json!({"kty": "EC", "crv": "P-256", "x": x, "y": y, "kid": kid, "alg": "ES256", "use": "sig"}),
        kid,
    })
}

impl SigningKey {
    /// Reads a stored key.
    pub fn from_pkcs8(kid: &str, pkcs8: &[u8]) -> Result<SigningKey, JoseError> {
        let rng = SystemRandom::new();
        let pair =
            EcdsaKeyPair::from_pkcs8(&signature::ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8, &rng)
                .map_err(|_| JoseError(format!("stored OIDC key {kid} is not a P-256 key")))?;
        Ok(SigningKey {
            kid: kid.to_owned(),
            pair,
            rng,
        })
    }

    /// The key's id.
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// A compact JWS of `claims` (`typ: JWT`, `alg: ES256`, this `kid`).
    pub fn sign(&self, claims: &Value) -> Result<String, JoseError> {
        let header = json!({"alg": "ES256", "typ": "JWT", "kid": self.kid});
        let input = format!(
            "{}.{}",
            B64URL.encode(header.to_string()),
            B64URL.encode(claims.to_string())
        );
        let sig = self
            .pair
            .sign(&self.rng, input.as_bytes())
            .map_err(|_| JoseError("signing failed".into()))?;
        Ok(format!("{input}.{}", B64URL.encode(sig.as_ref())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn signed() -> (SigningKey, Vec<VerifyingKey>) {
        let g = generate_es256().unwrap();
        let key = SigningKey::from_pkcs8(&g.kid, &g.pkcs8).unwrap();
        (key, vec![VerifyingKey::from_jwk(&g.public_jwk).unwrap()])
    }

    fn forge(header: Value, claims: Value, sig: &[u8]) -> String {
        format!(
            "{}.{}.{}",
            B64URL.encode(header.to_string()),
            B64URL.encode(claims.to_string()),
            B64URL.encode(sig)
        )
    }

    #[test]
    fn a_signed_token_verifies_and_a_changed_one_does_not() {
        let (key, keys) = signed();
        let t = key.sign(&json!({"sub": "x", "exp": 1})).unwrap();
        let claims = decode(&t).unwrap().verify(&keys).unwrap();
        assert_eq!(claims["sub"], "x");
        let parts: Vec<&str> = t.split('.').collect();
        let other = B64URL.encode(json!({"sub": "y", "exp": 1}).to_string());
        let tampered = format!("{}.{other}.{}", parts[0], parts[2]);
        let e = decode(&tampered).unwrap().verify(&keys).unwrap_err();
        assert!(e.0.contains("does not verify"), "{e}");
    }

    #[test]
    fn none_hmac_and_unknown_algorithms_and_kids_are_refused() {
        let (key, keys) = signed();
        let claims = json!({"sub": "x"});
        for alg in ["none", "HS256", "HS512", "PS256", "ES384", "RS512", ""] {
            let t = forge(
                json!({"alg": alg, "kid": key.kid()}),
                claims.clone(),
                b"sig",
            );
            let e = decode(&t).unwrap().verify(&keys).unwrap_err();
            assert!(
                e.0.contains("refused") || e.0.contains("no alg"),
                "{alg}: {e}"
            );
        }
        // The header's alg may only pick the key's own algorithm.
        let t = forge(
            json!({"alg": "RS256", "kid": key.kid()}),
            claims.clone(),
            b"sig",
        );
        assert!(decode(&t)
            .unwrap()
            .verify(&keys)
            .unwrap_err()
            .0
            .contains("ES256 only"));
        let t = forge(
            json!({"alg": "ES256", "kid": "other"}),
            claims.clone(),
            b"sig",
        );
        assert!(decode(&t)
            .unwrap()
            .verify(&keys)
            .unwrap_err()
            .0
            .contains("no key"));
        let t = forge(json!({"alg": "ES256"}), claims, b"sig");
        assert!(decode(&t)
            .unwrap()
            .verify(&keys)
            .unwrap_err()
            .0
            .contains("no kid"));
    }

    #[test]
    fn malformed_tokens_and_jwks_are_errors_not_panics() {
        for t in [
            "",
            ".",
            "..",
            "a.b.c",
            "a.b.c.d",
            "%%%.e30.",
            &"a".repeat(MAX_TOKEN_BYTES + 1),
        ] {
            assert!(decode(t).is_err(), "{t:.20}");
        }
        for j in [
            &b""[..],
            b"[]",
            b"{}",
            br#"{"keys":{}}"#,
            br#"{"keys":[{"kty":"oct","k":"c2VjcmV0","kid":"a"}]}"#,
            br#"{"keys":[{"kty":"EC","crv":"P-384","x":"AA","y":"AA","kid":"a"}]}"#,
            br#"{"keys":[{"kty":"RSA","n":"AQAB","e":"AQAB","kid":"a","alg":"HS256"}]}"#,
        ] {
            assert!(parse_jwks(j).is_err(), "{}", String::from_utf8_lossy(j));
        }
    }

    #[test]
    fn times_and_audiences() {
        let c = |v: Value| v.as_object().unwrap().clone();
        assert!(check_times(&c(json!({"exp": 100})), 100, 0).is_ok());
        assert!(check_times(&c(json!({"exp": 100})), 131, 30)
            .unwrap_err()
            .0
            .contains("expired"));
        assert!(check_times(&c(json!({})), 0, 0).is_err());
        assert!(check_times(&c(json!({"exp": 200, "nbf": 150})), 100, 30)
            .unwrap_err()
            .0
            .contains("nbf"));
        assert!(check_times(&c(json!({"exp": "200"})), 100, 0).is_err());
        assert!(has_audience(&c(json!({"aud": ["a", "b"]})), "b"));
        assert!(!has_audience(&c(json!({"aud": "ab"})), "a"));
    }
}
