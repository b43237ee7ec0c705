//! Session tokens: the `sid` claim of the JWT a lookup carries in `authorization`, read
//! with [`jsonwebtoken`].
//!
//! Without a key ([`Verifier::unverified`]) the claims are only decoded: ion's signal
//! verified the token before it forwarded it. With keys, a token is accepted only if its
//! signature verifies with one of them:
//!
//! - an HMAC secret (`jwt-key`, `jwt-key-file`): HS256, HS384, HS512;
//! - a PEM public key (`jwt-public-key`): RSA (RS256/384/512, PS256/384/512), EC P-256 or
//!   P-384 (ES256, ES384), Ed25519 (EdDSA);
//! - a JWKS file (`jwt-jwks`): each key with its `kid`, algorithm and curve. A token whose
//!   `kid` is not in the file makes islb read the file again if it changed (at most every
//!   [`JWKS_RELOAD_EVERY`]), so rotating keys needs no restart.
//!
//! Its `exp` and `nbf` are then checked against the shell's clock with a minute of
//! leeway, and so are `aud` and `iss` when `jwt-audience` and `jwt-issuer` are set (the
//! claim is then required). The algorithm comes from the key, never from the token alone:
//! a token that names HS256 is never checked against a public key, nor `none` accepted.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD_INDIFFERENT as B64;
use islb_core::Timestamp;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, JwkSet, KeyAlgorithm, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey, Validation, errors::ErrorKind};
use serde::Deserialize;

/// Clock skew tolerated on `exp` and `nbf`, in milliseconds.
const LEEWAY_MS: u64 = 60_000;

/// How often, at most, an unknown `kid` makes islb read the JWKS file again.
pub const JWKS_RELOAD_EVERY: Duration = Duration::from_secs(10);

/// Why a token gave no sid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// The token is not a JWT (three base64url parts, a JSON header and claims).
    #[error("authorization is not a JWT: {0}")]
    Malformed(&'static str),
    /// The token does not verify with the configured keys, or fails a claim check.
    #[error("authorization JWT refused: {0}")]
    Refused(String),
}

/// Why the keys could not be loaded (one line, naming the file).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct KeyLoadError(String);

/// Where the keys and checks come from (the `jwt-*` options).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TokenSources {
    /// An HMAC secret.
    pub hmac: Option<Vec<u8>>,
    /// A PEM public key file.
    pub public_key: Option<PathBuf>,
    /// A JWKS file.
    pub jwks: Option<PathBuf>,
    /// Accepted audiences (any one of them); empty: `aud` is not checked.
    pub audience: Vec<String>,
    /// Accepted issuers; empty: `iss` is not checked.
    pub issuer: Vec<String>,
}

/// One verification key and the algorithms it verifies.
struct Key {
    kid: Option<String>,
    key: DecodingKey,
    algorithms: Vec<Algorithm>,
}

/// The JWKS file as last read.
struct Jwks {
    path: PathBuf,
    modified: Option<SystemTime>,
    keys: Arc<Vec<Key>>,
    checked_at: Option<Timestamp>,
}

/// Reads the sid of session tokens, verifying them when keys are configured.
pub struct Verifier {
    fixed: Vec<Key>,
    jwks: Option<RwLock<Jwks>>,
    /// Serialises reloads of the JWKS file.
    reloading: Mutex<()>,
    validation: Validation,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier").field("keys", &self.key_count()).finish_non_exhaustive()
    }
}

/// The claims islb reads.
#[derive(Deserialize)]
struct Claims {
    #[serde(default)]
    sid: Option<serde_json::Value>,
    #[serde(default)]
    exp: Option<serde_json::Value>,
    #[serde(default)]
    nbf: Option<serde_json::Value>,
}

impl Verifier {
    /// Decodes claims without verifying anything.
    pub fn unverified() -> Self {
        Verifier {
            fixed: Vec::new(),
            jwks: None,
            reloading: Mutex::new(()),
            validation: Validation::new(Algorithm::HS256),
        }
    }

    /// Loads the keys `sources` name; unverified when it names none.
    pub fn load(sources: &TokenSources) -> Result<Self, KeyLoadError> {
        let mut fixed = Vec::new();
        if let Some(secret) = &sources.hmac {
            let key = DecodingKey::from_secret(secret).map_err(|e| KeyLoadError(format!("HMAC secret: {e}")))?;
            fixed.push(Key { kid: None, key, algorithms: family(Algorithm::HS256) });
        }
        if let Some(path) = &sources.public_key {
            fixed.push(pem_key(path)?);
        }
        let jwks = match &sources.jwks {
            Some(path) => {
                let (keys, modified) = read_jwks(path)?;
                Some(RwLock::new(Jwks { path: path.clone(), modified, keys: Arc::new(keys), checked_at: None }))
            }
            None => None,
        };
        if fixed.is_empty() && jwks.is_none() {
            if !sources.audience.is_empty() || !sources.issuer.is_empty() {
                return Err(KeyLoadError(
                    "jwt-audience and jwt-issuer need a key to verify tokens with (jwt-key, jwt-key-file, jwt-public-key or jwt-jwks)".into(),
                ));
            }
            return Ok(Verifier::unverified());
        }
        let mut validation = Validation::new(Algorithm::HS256);
        // exp and nbf are checked against the shell's clock, not the system's.
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.required_spec_claims.clear();
        validation.validate_aud = !sources.audience.is_empty();
        if validation.validate_aud {
            validation.set_audience(&sources.audience);
            validation.required_spec_claims.insert("aud".into());
        }
        if !sources.issuer.is_empty() {
            validation.set_issuer(&sources.issuer);
            validation.required_spec_claims.insert("iss".into());
        }
        Ok(Verifier { fixed, jwks, reloading: Mutex::new(()), validation })
    }

    /// Whether tokens are verified (any key configured).
    pub fn verifies(&self) -> bool {
        !self.fixed.is_empty() || self.jwks.is_some()
    }

    fn key_count(&self) -> usize {
        self.fixed.len() + self.jwks.as_ref().map_or(0, |j| j.read().unwrap_or_else(|e| e.into_inner()).keys.len())
    }

    /// The sid claim of `token` (none if it has none); `now` is checked against a verified
    /// token's `exp` and `nbf`.
    pub fn sid(&self, token: &str, now: Timestamp) -> Result<Option<String>, TokenError> {
        let (header, claims) = structure(token)?;
        if !self.verifies() {
            return Ok(sid_claim(&claims));
        }
        let alg = header.get("alg").and_then(|a| a.as_str()).unwrap_or("none");
        let alg: Algorithm =
            alg.parse().map_err(|_| TokenError::Refused(format!("algorithm {alg:?} is not accepted")))?;
        let kid = header.get("kid").and_then(|k| k.as_str());
        let claims = self.verified(token, alg, kid, now)?;
        let at = |claim: &Option<serde_json::Value>| match claim {
            None => Ok(None),
            // NumericDate: seconds since the epoch (a float is allowed); anything else is refused.
            Some(v) => v
                .as_f64()
                .map(|s| Some((s.max(0.0) * 1000.0) as u64))
                .ok_or_else(|| TokenError::Refused("exp or nbf is not a number".into())),
        };
        if at(&claims.exp)?.is_some_and(|exp| exp.saturating_add(LEEWAY_MS) <= now.as_ms()) {
            return Err(TokenError::Refused("token expired (exp)".into()));
        }
        if at(&claims.nbf)?.is_some_and(|nbf| nbf > now.as_ms().saturating_add(LEEWAY_MS)) {
            return Err(TokenError::Refused("token not valid yet (nbf)".into()));
        }
        Ok(claims.sid.as_ref().and_then(sid_value))
    }

    /// The claims of `token` once one key of its algorithm (and `kid`) verifies it.
    fn verified(&self, token: &str, alg: Algorithm, kid: Option<&str>, now: Timestamp) -> Result<Claims, TokenError> {
        // A token with a `kid` is verified only by keys with that `kid` or none.
        let fits =
            |k: &&Key| k.algorithms.contains(&alg) && (kid.is_none() || k.kid.is_none() || k.kid.as_deref() == kid);
        let mut jwks = self.jwks_keys();
        if !self.fixed.iter().chain(jwks.iter()).any(|k| fits(&k)) {
            if kid.is_some() && self.reload_jwks(now) {
                jwks = self.jwks_keys();
            }
            if !self.fixed.iter().chain(jwks.iter()).any(|k| fits(&k)) {
                let which = kid.map_or_else(String::new, |k| format!(" and kid {k:?}"));
                return Err(TokenError::Refused(format!("no key for algorithm {alg:?}{which}")));
            }
        }
        let mut validation = self.validation.clone();
        validation.algorithms = vec![alg];
        for key in self.fixed.iter().chain(jwks.iter()).filter(fits) {
            match jsonwebtoken::decode::<Claims>(token, &key.key, &validation) {
                Ok(data) => return Ok(data.claims),
                Err(e) if not_this_key(e.kind()) => {}
                Err(e) => return Err(TokenError::Refused(refusal(e.kind()))),
            }
        }
        Err(TokenError::Refused("bad signature".into()))
    }

    /// The JWKS keys as last read (a shared list: nothing is copied).
    fn jwks_keys(&self) -> Arc<Vec<Key>> {
        self.jwks.as_ref().map_or_else(Arc::default, |j| j.read().unwrap_or_else(|e| e.into_inner()).keys.clone())
    }

    /// Reads the JWKS file again if it changed and was not checked in the last
    /// [`JWKS_RELOAD_EVERY`]; whether its keys were replaced. A file that no longer reads
    /// keeps the keys last read (and says why in the log).
    fn reload_jwks(&self, now: Timestamp) -> bool {
        let Some(jwks) = &self.jwks else { return false };
        let _one = self.reloading.lock().unwrap_or_else(|e| e.into_inner());
        let (path, modified) = {
            let mut j = jwks.write().unwrap_or_else(|e| e.into_inner());
            let every = JWKS_RELOAD_EVERY.as_millis() as u64;
            if j.checked_at.is_some_and(|at| now.as_ms() < at.as_ms().saturating_add(every)) {
                return false;
            }
            j.checked_at = Some(now);
            (j.path.clone(), j.modified)
        };
        let now_modified = std::fs::metadata(&path).and_then(|m| m.modified()).ok();
        if now_modified.is_some() && now_modified == modified {
            return false;
        }
        match read_jwks(&path) {
            Ok((keys, modified)) => {
                tracing::info!(file = %path.display(), keys = keys.len(), "JWKS file read again (a token named an unknown kid)");
                let mut j = jwks.write().unwrap_or_else(|e| e.into_inner());
                j.keys = Arc::new(keys);
                j.modified = modified;
                true
            }
            Err(e) => {
                tracing::warn!(error = %e, "JWKS file changed but does not read; keeping the keys read before");
                false
            }
        }
    }
}

/// Whether an error means only that this key does not verify the token (another may).
fn not_this_key(kind: &ErrorKind) -> bool {
    matches!(
        kind,
        ErrorKind::InvalidSignature
            | ErrorKind::InvalidEcdsaKey
            | ErrorKind::InvalidEddsaKey
            | ErrorKind::InvalidRsaKey(_)
            | ErrorKind::InvalidAlgorithm
            | ErrorKind::InvalidKeyFormat
    )
}

/// What a failed claim check says.
fn refusal(kind: &ErrorKind) -> String {
    match kind {
        ErrorKind::InvalidAudience => "aud is not an accepted audience".into(),
        ErrorKind::InvalidIssuer => "iss is not an accepted issuer".into(),
        ErrorKind::MissingRequiredClaim(c) => format!("claim {c} is required"),
        ErrorKind::InvalidClaimFormat(c) => format!("claim {c} has the wrong type"),
        ErrorKind::Base64(_) => "a part is not base64url".into(),
        ErrorKind::Json(_) | ErrorKind::Utf8(_) => "header or claims do not parse".into(),
        other => format!("{other:?}"),
    }
}

/// The header and claims of a token shaped as a JWT, before any verification.
fn structure(token: &str) -> Result<(serde_json::Value, serde_json::Value), TokenError> {
    let mut parts = token.split('.');
    let (Some(header), Some(claims), Some(signature), None) = (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(TokenError::Malformed("expected three dot-separated parts"));
    };
    let decode = |p: &str| B64.decode(p).map_err(|_| TokenError::Malformed("a part is not base64url"));
    decode(signature)?;
    let header: serde_json::Value =
        serde_json::from_slice(&decode(header)?).map_err(|_| TokenError::Malformed("header is not JSON"))?;
    let claims: serde_json::Value =
        serde_json::from_slice(&decode(claims)?).map_err(|_| TokenError::Malformed("claims are not JSON"))?;
    if !header.is_object() {
        return Err(TokenError::Malformed("header is not a JSON object"));
    }
    Ok((header, claims))
}

/// The sid claim of decoded claims.
fn sid_claim(claims: &serde_json::Value) -> Option<String> {
    claims.get("sid").and_then(sid_value)
}

/// A sid claim: a non-empty string, or a number in its JSON spelling.
fn sid_value(v: &serde_json::Value) -> Option<String> {
    match v {
        serde_json::Value::String(s) if !s.is_empty() => Some(s.clone()),
        serde_json::Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// The algorithms of `alg`'s family.
fn family(alg: Algorithm) -> Vec<Algorithm> {
    alg.family().algorithms().to_vec()
}

/// A PEM public key: RSA, EC or Ed25519, tried in that order.
fn pem_key(path: &Path) -> Result<Key, KeyLoadError> {
    let pem = std::fs::read(path).map_err(|e| KeyLoadError(format!("cannot read {}: {e}", path.display())))?;
    let text = String::from_utf8_lossy(&pem);
    if text.contains("PRIVATE KEY") {
        return Err(KeyLoadError(format!(
            "{} holds a private key: give islb the public key only (openssl pkey -pubout)",
            path.display()
        )));
    }
    type Read = fn(&[u8]) -> jsonwebtoken::errors::Result<DecodingKey>;
    let tries: [(Read, Algorithm); 3] = [
        (DecodingKey::from_rsa_pem, Algorithm::RS256),
        (DecodingKey::from_ec_pem, Algorithm::ES256),
        (DecodingKey::from_ed_pem, Algorithm::EdDSA),
    ];
    tries
        .iter()
        .find_map(|(read, alg)| read(&pem).ok().map(|key| Key { kid: None, key, algorithms: family(*alg) }))
        .ok_or_else(|| {
            KeyLoadError(format!("{} is not a PEM public key (RSA, EC P-256/P-384 or Ed25519)", path.display()))
        })
}

/// The keys of a JWKS file (those for signatures), and when it was modified.
fn read_jwks(path: &Path) -> Result<(Vec<Key>, Option<SystemTime>), KeyLoadError> {
    let text = std::fs::read(path).map_err(|e| KeyLoadError(format!("cannot read {}: {e}", path.display())))?;
    let modified = std::fs::metadata(path).and_then(|m| m.modified()).ok();
    let set: JwkSet =
        serde_json::from_slice(&text).map_err(|e| KeyLoadError(format!("{} is not a JWKS: {e}", path.display())))?;
    let keys: Vec<Key> = set.keys.iter().filter_map(jwk_key).collect();
    if keys.is_empty() {
        return Err(KeyLoadError(format!("{} has no signature key islb can use", path.display())));
    }
    Ok((keys, modified))
}

/// A JWK as a verification key; none for encryption keys and unknown kinds.
fn jwk_key(jwk: &Jwk) -> Option<Key> {
    if matches!(jwk.common.public_key_use, Some(PublicKeyUse::Encryption | PublicKeyUse::Other(_))) {
        return None;
    }
    let algorithms = match jwk.common.key_algorithm {
        Some(alg) => vec![signature_algorithm(alg)?],
        None => match &jwk.algorithm {
            AlgorithmParameters::RSA(_) => family(Algorithm::RS256),
            AlgorithmParameters::EllipticCurve(p) => match p.curve {
                EllipticCurve::P256 => vec![Algorithm::ES256],
                EllipticCurve::P384 => vec![Algorithm::ES384],
                _ => return None,
            },
            AlgorithmParameters::OctetKeyPair(p) if p.curve == EllipticCurve::Ed25519 => vec![Algorithm::EdDSA],
            AlgorithmParameters::OctetKey(_) => family(Algorithm::HS256),
            _ => return None,
        },
    };
    let key = DecodingKey::from_jwk(jwk).ok()?;
    Some(Key { kid: jwk.common.key_id.clone(), key, algorithms })
}

/// The signature algorithm a JWK's `alg` names (none for encryption algorithms).
fn signature_algorithm(alg: KeyAlgorithm) -> Option<Algorithm> {
    Some(match alg {
        KeyAlgorithm::HS256 => Algorithm::HS256,
        KeyAlgorithm::HS384 => Algorithm::HS384,
        KeyAlgorithm::HS512 => Algorithm::HS512,
        KeyAlgorithm::ES256 => Algorithm::ES256,
        KeyAlgorithm::ES384 => Algorithm::ES384,
        KeyAlgorithm::RS256 => Algorithm::RS256,
        KeyAlgorithm::RS384 => Algorithm::RS384,
        KeyAlgorithm::RS512 => Algorithm::RS512,
        KeyAlgorithm::PS256 => Algorithm::PS256,
        KeyAlgorithm::PS384 => Algorithm::PS384,
        KeyAlgorithm::PS512 => Algorithm::PS512,
        KeyAlgorithm::EdDSA => Algorithm::EdDSA,
        _ => return None,
    })
}

/// Entry points for fuzzers, shared with the property tests.
pub mod fuzz_logic {
    use super::*;

    /// Reads `data` (as text) as a session token, without a key and with an HMAC key;
    /// panics only on a bug, never on bad input. With the key, a token is accepted only if
    /// its signature verifies.
    pub fn token(data: &[u8]) {
        let text = String::from_utf8_lossy(data).into_owned();
        let now = Timestamp::from_ms(1_800_000_000_000);
        let _ = Verifier::unverified().sid(&text, now);
        let sources = TokenSources { hmac: Some(b"fuzz-key".to_vec()), ..TokenSources::default() };
        let verifier = Verifier::load(&sources).expect("an HMAC key loads");
        if verifier.sid(&text, now).is_ok() {
            let (message, signature) = text.rsplit_once('.').expect("three parts");
            let header: serde_json::Value =
                serde_json::from_slice(&B64.decode(message.split('.').next().expect("a header")).expect("base64"))
                    .expect("JSON");
            let alg: Algorithm = header["alg"].as_str().expect("an alg").parse().expect("a known alg");
            let key = DecodingKey::from_secret(b"fuzz-key").expect("a key");
            assert!(
                jsonwebtoken::crypto::verify(signature, message.as_bytes(), &key, alg).unwrap_or(false),
                "accepted unverified: {text}"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{EncodingKey, Header, encode};
    use proptest::prelude::*;
    use serde_json::json;

    const NOW: Timestamp = Timestamp::from_ms(1_800_000_000_000);
    const NOW_S: u64 = 1_800_000_000;

    fn secret_key(secret: &[u8]) -> EncodingKey {
        EncodingKey::from_secret(secret).unwrap()
    }

    fn hmac(secret: &[u8]) -> Verifier {
        Verifier::load(&TokenSources { hmac: Some(secret.to_vec()), ..TokenSources::default() }).unwrap()
    }

    /// A token of `header` and `claims` (JSON text) signed with HS256 and `key`, or unsigned.
    fn raw(header: &str, claims: &str, key: Option<&[u8]>) -> String {
        let signed = format!("{}.{}", B64.encode(header), B64.encode(claims));
        let sig = match key {
            Some(k) => jsonwebtoken::crypto::sign(signed.as_bytes(), &secret_key(k), Algorithm::HS256).unwrap(),
            None => String::new(),
        };
        format!("{signed}.{sig}")
    }

    fn signed(alg: Algorithm, kid: Option<&str>, claims: &serde_json::Value, key: &EncodingKey) -> String {
        let mut header = Header::new(alg);
        header.kid = kid.map(str::to_owned);
        encode(&header, claims, key).unwrap()
    }

    fn refused(r: Result<Option<String>, TokenError>) -> String {
        match r {
            Err(TokenError::Refused(why)) => why,
            other => panic!("not refused: {other:?}"),
        }
    }

    #[test]
    fn unverified_tokens_give_their_sid_claim() {
        // The token gopeer's signal-sim sends: alg none, no signature.
        let v = Verifier::unverified();
        assert!(!v.verifies());
        let t = raw(r#"{"alg":"none","typ":"JWT"}"#, r#"{"sid":"room-7","uid":"u1","services":["rtc"]}"#, None);
        assert_eq!(v.sid(&t, NOW), Ok(Some("room-7".into())));
        assert_eq!(v.sid(&raw(r#"{"alg":"none"}"#, r#"{"sid":42}"#, None), NOW), Ok(Some("42".into())));
        assert_eq!(v.sid(&raw(r#"{"alg":"none"}"#, r#"{"uid":"u1"}"#, None), NOW), Ok(None));
        assert_eq!(v.sid(&raw(r#"{"alg":"none"}"#, r#"{"sid":""}"#, None), NOW), Ok(None));
        // Without a key nothing is checked, not even exp (ion's signal checked the token).
        let old = raw(r#"{"alg":"none"}"#, &format!(r#"{{"sid":"r","exp":{}}}"#, NOW_S - 3600), None);
        assert_eq!(v.sid(&old, NOW), Ok(Some("r".into())));
        // ion's examples pass the literal "token".
        assert_eq!(v.sid("token", NOW), Err(TokenError::Malformed("expected three dot-separated parts")));
        assert_eq!(v.sid("a.b.c.d", NOW), Err(TokenError::Malformed("expected three dot-separated parts")));
        assert_eq!(v.sid("!.e30.", NOW), Err(TokenError::Malformed("a part is not base64url")));
        assert_eq!(v.sid(&raw("[1]", "{}", None), NOW), Err(TokenError::Malformed("header is not a JSON object")));
    }

    #[test]
    fn with_an_hmac_key_only_a_good_signature_of_an_hmac_algorithm_passes() {
        let v = hmac(b"s3cret");
        assert!(v.verifies());
        let good = raw(r#"{"alg":"HS256","typ":"JWT"}"#, r#"{"sid":"room-9"}"#, Some(b"s3cret"));
        assert_eq!(v.sid(&good, NOW), Ok(Some("room-9".into())));
        let forged = raw(r#"{"alg":"HS256","typ":"JWT"}"#, r#"{"sid":"room-9"}"#, Some(b"guess"));
        assert_eq!(refused(v.sid(&forged, NOW)), "bad signature");
        let unsigned = raw(r#"{"alg":"none"}"#, r#"{"sid":"room-9"}"#, None);
        assert_eq!(refused(v.sid(&unsigned, NOW)), "algorithm \"none\" is not accepted");
        // An RS256 header is never checked against the HMAC secret (algorithm confusion).
        let confused = raw(r#"{"alg":"RS256"}"#, r#"{"sid":"room-9"}"#, Some(b"s3cret"));
        assert_eq!(refused(v.sid(&confused, NOW)), "no key for algorithm RS256");
        for alg in [Algorithm::HS384, Algorithm::HS512] {
            let t = signed(alg, None, &json!({"sid": "r"}), &secret_key(b"s3cret"));
            assert_eq!(v.sid(&t, NOW), Ok(Some("r".into())), "{alg:?}");
        }
        assert_eq!(format!("{v:?}"), "Verifier { keys: 1, .. }", "no secret in Debug");
    }

    #[test]
    fn exp_and_nbf_are_checked_on_the_given_clock_with_a_minute_of_leeway() {
        let v = hmac(b"s3cret");
        let key = secret_key(b"s3cret");
        let token = |claims: serde_json::Value| v.sid(&signed(Algorithm::HS256, None, &claims, &key), NOW);
        let sid = Ok(Some("r".to_owned()));
        assert_eq!(token(json!({"sid": "r", "exp": NOW_S + 10})), sid);
        assert_eq!(token(json!({"sid": "r", "exp": NOW_S - 30})), sid, "within the leeway");
        assert_eq!(token(json!({"sid": "r", "exp": (NOW_S + 10) as f64 + 0.5})), sid, "a float");
        assert_eq!(refused(token(json!({"sid": "r", "exp": NOW_S - 61}))), "token expired (exp)");
        assert_eq!(token(json!({"sid": "r", "nbf": NOW_S + 30})), sid, "within the leeway");
        assert_eq!(refused(token(json!({"sid": "r", "nbf": NOW_S + 3600}))), "token not valid yet (nbf)");
        assert_eq!(refused(token(json!({"sid": "r", "exp": (NOW_S + 10).to_string()}))), "exp or nbf is not a number");
    }

    #[test]
    fn audience_and_issuer_when_set_are_required_and_checked() {
        let sources = TokenSources {
            hmac: Some(b"k".to_vec()),
            audience: vec!["ion".into(), "ion-staging".into()],
            issuer: vec!["https://id.example".into()],
            ..TokenSources::default()
        };
        let v = Verifier::load(&sources).unwrap();
        let key = secret_key(b"k");
        let token = |claims: serde_json::Value| v.sid(&signed(Algorithm::HS256, None, &claims, &key), NOW);
        let iss = "https://id.example";
        assert_eq!(token(json!({"sid": "r", "aud": "ion", "iss": iss})), Ok(Some("r".into())));
        assert_eq!(token(json!({"sid": "r", "aud": ["other", "ion-staging"], "iss": iss})), Ok(Some("r".into())));
        assert_eq!(refused(token(json!({"sid": "r", "aud": "other", "iss": iss}))), "aud is not an accepted audience");
        assert_eq!(refused(token(json!({"sid": "r", "aud": "ion", "iss": "evil"}))), "iss is not an accepted issuer");
        assert_eq!(refused(token(json!({"sid": "r", "iss": iss}))), "claim aud is required");
        assert_eq!(refused(token(json!({"sid": "r", "aud": "ion"}))), "claim iss is required");
        assert!(
            refused(token(json!({"sid": "r", "aud": 7, "iss": iss}))).starts_with("claim aud"),
            "a number is no audience"
        );
        // Without the options, a token's aud and iss are whatever they are.
        assert_eq!(
            hmac(b"k").sid(&signed(Algorithm::HS256, None, &json!({"sid": "r", "aud": "x"}), &key), NOW),
            Ok(Some("r".into()))
        );
        // Checks without a key to verify with would check nothing: refused at start.
        let no_key = TokenSources { audience: vec!["ion".into()], ..TokenSources::default() };
        assert!(Verifier::load(&no_key).unwrap_err().to_string().contains("need a key"));
    }

    /// Key pairs made by openssl in `dir`: (algorithm, private key PEM path, public key PEM path).
    fn key_pairs(dir: &Path) -> Vec<(Algorithm, PathBuf, PathBuf)> {
        islb_testkit::make_signing_keys(dir)
            .into_iter()
            .map(|(name, private, public)| {
                let alg = match name {
                    "rsa" => Algorithm::RS256,
                    "ec256" => Algorithm::ES256,
                    "ec384" => Algorithm::ES384,
                    "ed25519" => Algorithm::EdDSA,
                    other => panic!("unexpected key {other}"),
                };
                (alg, private, public)
            })
            .collect()
    }

    fn encoding_key(alg: Algorithm, private: &Path) -> EncodingKey {
        let pem = std::fs::read(private).unwrap();
        match alg.family() {
            jsonwebtoken::AlgorithmFamily::Rsa => EncodingKey::from_rsa_pem(&pem),
            jsonwebtoken::AlgorithmFamily::Ec => EncodingKey::from_ec_pem(&pem),
            jsonwebtoken::AlgorithmFamily::Ed => EncodingKey::from_ed_pem(&pem),
            jsonwebtoken::AlgorithmFamily::Hmac => unreachable!(),
        }
        .unwrap()
    }

    #[test]
    fn pem_public_keys_verify_rs256_ps256_es256_es384_and_eddsa() {
        let (dir, others) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let others = key_pairs(others.path());
        for (alg, private, public) in key_pairs(dir.path()) {
            let v =
                Verifier::load(&TokenSources { public_key: Some(public.clone()), ..TokenSources::default() }).unwrap();
            let key = encoding_key(alg, &private);
            let t = signed(alg, None, &json!({"sid": "room-1", "exp": NOW_S + 60}), &key);
            assert_eq!(v.sid(&t, NOW), Ok(Some("room-1".into())), "{alg:?}");
            if alg == Algorithm::RS256 {
                let pss = signed(Algorithm::PS256, None, &json!({"sid": "room-1"}), &key);
                assert_eq!(v.sid(&pss, NOW), Ok(Some("room-1".into())), "PS256");
            }
            // Signed by another key of the same kind: refused.
            let (_, other, _) = others.iter().find(|(a, _, _)| *a == alg).unwrap();
            let forged = signed(alg, None, &json!({"sid": "room-1"}), &encoding_key(alg, other));
            assert_eq!(refused(v.sid(&forged, NOW)), "bad signature", "{alg:?}");
            // An HS256 token made with the public key as its secret: refused (confusion).
            let secret = secret_key(&std::fs::read(&public).unwrap());
            let hs = signed(Algorithm::HS256, None, &json!({"sid": "x"}), &secret);
            assert_eq!(refused(v.sid(&hs, NOW)), "no key for algorithm HS256");
        }
    }

    #[test]
    fn a_private_key_or_a_file_that_is_no_key_is_refused_at_load() {
        let dir = tempfile::tempdir().unwrap();
        let (_, private, _) = key_pairs(dir.path()).remove(0);
        let load =
            |path: &Path| Verifier::load(&TokenSources { public_key: Some(path.into()), ..TokenSources::default() });
        assert!(load(&private).unwrap_err().to_string().contains("holds a private key"));
        let junk = dir.path().join("junk.pem");
        std::fs::write(&junk, "hello").unwrap();
        assert!(load(&junk).unwrap_err().to_string().contains("is not a PEM public key"));
        assert!(load(&dir.path().join("missing.pem")).unwrap_err().to_string().contains("cannot read"));
        let jwks = |text: &str| {
            std::fs::write(dir.path().join("k.json"), text).unwrap();
            Verifier::load(&TokenSources { jwks: Some(dir.path().join("k.json")), ..TokenSources::default() })
        };
        assert!(jwks("{").unwrap_err().to_string().contains("is not a JWKS"));
        assert!(jwks(r#"{"keys":[]}"#).unwrap_err().to_string().contains("no signature key"));
    }

    /// A JWKS of `keys` (algorithm, private key, kid).
    fn jwks(keys: &[(Algorithm, &Path, &str)]) -> String {
        let keys: Vec<Jwk> = keys
            .iter()
            .map(|(alg, private, kid)| {
                let mut jwk = Jwk::from_encoding_key(&encoding_key(*alg, private), *alg).unwrap();
                jwk.common.key_id = Some((*kid).to_owned());
                jwk
            })
            .collect();
        serde_json::to_string(&JwkSet { keys }).unwrap()
    }

    #[test]
    fn a_jwks_picks_the_key_by_kid_and_is_read_again_for_an_unknown_kid() {
        let dir = tempfile::tempdir().unwrap();
        let pairs = key_pairs(dir.path());
        let find = |alg| pairs.iter().find(|(a, _, _)| *a == alg).map(|(_, p, _)| p.as_path()).unwrap();
        let (rsa, ec, ed) = (find(Algorithm::RS256), find(Algorithm::ES256), find(Algorithm::EdDSA));
        let file = dir.path().join("jwks.json");
        std::fs::write(&file, jwks(&[(Algorithm::RS256, rsa, "r1"), (Algorithm::ES256, ec, "e1")])).unwrap();
        let v = Verifier::load(&TokenSources { jwks: Some(file.clone()), ..TokenSources::default() }).unwrap();
        let claims = json!({"sid": "room-2"});
        let sid = Ok(Some("room-2".to_owned()));
        assert_eq!(
            v.sid(&signed(Algorithm::RS256, Some("r1"), &claims, &encoding_key(Algorithm::RS256, rsa)), NOW),
            sid
        );
        assert_eq!(
            v.sid(&signed(Algorithm::ES256, Some("e1"), &claims, &encoding_key(Algorithm::ES256, ec)), NOW),
            sid
        );
        // No kid: any key of the algorithm may verify.
        assert_eq!(v.sid(&signed(Algorithm::ES256, None, &claims, &encoding_key(Algorithm::ES256, ec)), NOW), sid);
        // A kid of the file on another key's token: refused.
        let wrong = signed(Algorithm::RS256, Some("e1"), &claims, &encoding_key(Algorithm::RS256, rsa));
        assert_eq!(refused(v.sid(&wrong, NOW)), "no key for algorithm RS256 and kid \"e1\"");

        // The identity provider rotates in an Ed25519 key: the first token naming it makes
        // islb read the file again.
        let ed_token = signed(Algorithm::EdDSA, Some("d2"), &claims, &encoding_key(Algorithm::EdDSA, ed));
        assert!(refused(v.sid(&ed_token, NOW)).starts_with("no key"), "not in the file yet");
        std::thread::sleep(Duration::from_millis(20));
        std::fs::write(&file, jwks(&[(Algorithm::RS256, rsa, "r1"), (Algorithm::EdDSA, ed, "d2")])).unwrap();
        let soon = Timestamp::from_ms(NOW.as_ms() + 1_000);
        assert!(refused(v.sid(&ed_token, soon)).starts_with("no key"), "read at most every 10 s");
        let later = Timestamp::from_ms(NOW.as_ms() + JWKS_RELOAD_EVERY.as_millis() as u64);
        assert_eq!(v.sid(&ed_token, later), sid);
        let retired = signed(Algorithm::ES256, Some("e1"), &claims, &encoding_key(Algorithm::ES256, ec));
        assert!(refused(v.sid(&retired, later)).starts_with("no key"), "a key gone from the file is gone");

        // A file that no longer reads keeps the keys read before.
        std::fs::write(&file, "{ not json").unwrap();
        let much_later = Timestamp::from_ms(later.as_ms() + 60_000);
        assert!(refused(v.sid(&retired, much_later)).starts_with("no key"));
        assert_eq!(v.sid(&ed_token, much_later), sid);
    }

    #[test]
    fn jwks_encryption_keys_are_left_out_and_oct_keys_are_hmac() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("jwks.json");
        let secret = B64.encode(b"an hmac secret");
        let text = json!({"keys": [
            {"kty": "oct", "kid": "h1", "k": secret},
            {"kty": "oct", "kid": "enc", "use": "enc", "k": secret},
        ]});
        std::fs::write(&file, text.to_string()).unwrap();
        let v = Verifier::load(&TokenSources { jwks: Some(file), ..TokenSources::default() }).unwrap();
        let key = secret_key(b"an hmac secret");
        assert_eq!(v.sid(&signed(Algorithm::HS256, Some("h1"), &json!({"sid": "s"}), &key), NOW), Ok(Some("s".into())));
        let enc = signed(Algorithm::HS256, Some("enc"), &json!({"sid": "s"}), &key);
        assert!(refused(v.sid(&enc, NOW)).starts_with("no key"));
    }

    fn json_value() -> impl Strategy<Value = serde_json::Value> {
        let leaf = prop_oneof![
            Just(serde_json::Value::Null),
            any::<bool>().prop_map(serde_json::Value::Bool),
            any::<i64>().prop_map(|n| json!(n)),
            any::<f64>().prop_map(|f| json!(f)),
            ".{0,20}".prop_map(serde_json::Value::String),
        ];
        leaf.prop_recursive(4, 32, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(serde_json::Value::Array),
                prop::collection::btree_map("[a-z]{1,5}", inner, 0..4)
                    .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

        #[test]
        fn arbitrary_text_never_panics(data in prop::collection::vec(any::<u8>(), 0..512)) {
            fuzz_logic::token(&data);
            let dotted: Vec<u8> = data.iter().map(|b| if b % 7 == 0 { b'.' } else { *b }).collect();
            fuzz_logic::token(&dotted);
        }

        #[test]
        fn tokens_of_any_claims_are_read_and_only_the_right_key_verifies(
            alg in prop_oneof![Just("HS256".to_owned()), Just("HS384".to_owned()), Just("none".to_owned()), Just("RS256".to_owned()), ".{0,8}"],
            claims in json_value(),
            sid in prop::option::of("[a-z0-9-]{1,12}"),
            right_key in any::<bool>(),
        ) {
            let mut claims = match claims { serde_json::Value::Object(m) => m, other => [("x".to_owned(), other)].into_iter().collect() };
            for reserved in ["exp", "nbf", "aud", "iss"] {
                claims.remove(reserved);
            }
            if let Some(sid) = &sid {
                claims.insert("sid".into(), serde_json::Value::String(sid.clone()));
            } else {
                claims.remove("sid");
            }
            let header = json!({ "alg": alg }).to_string();
            let key: &[u8] = if right_key { b"fuzz-key" } else { b"other-key" };
            let t = raw(&header, &serde_json::Value::Object(claims).to_string(), Some(key));
            fuzz_logic::token(t.as_bytes());
            // Unverified: the claim as it is.
            prop_assert_eq!(Verifier::unverified().sid(&t, NOW), Ok(sid.clone()));
            // Verified: only the right key and an HMAC algorithm (raw() signs with HS256).
            let got = hmac(b"fuzz-key").sid(&t, NOW);
            if right_key && alg == "HS256" {
                prop_assert_eq!(got, Ok(sid));
            } else {
                prop_assert!(matches!(got, Err(TokenError::Refused(_))), "{:?}", got);
            }
        }
    }

    #[test]
    fn deeply_nested_claims_are_malformed_not_a_stack_overflow() {
        let deep = format!("{}1{}", "[".repeat(100_000), "]".repeat(100_000));
        let t = raw(r#"{"alg":"none"}"#, &deep, None);
        assert_eq!(Verifier::unverified().sid(&t, NOW), Err(TokenError::Malformed("claims are not JSON")));
        fuzz_logic::token(t.as_bytes());
    }
}
