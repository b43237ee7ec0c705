//! The session key of a lookup: which room a client call belongs to.
//!
//! ion's signal node forwards the client call's gRPC metadata as the `get` params. islb
//! reads, in order:
//!
//! 1. param `sid`: any Go scalar (a string, or an `int` read in its Go spelling);
//! 2. the `sid` claim of the JWT in param `authorization` (ion's signal passes the raw
//!    token; a `Bearer ` prefix is accepted too). Without a configured key the claims are
//!    only decoded (signal verified the token already); with a key, an HS256/HS384/HS512
//!    signature is verified, so are `exp` and `nbf` when present (with a minute of leeway
//!    for clock skew), and a token that fails is refused.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD_INDIFFERENT as B64;
use hmac::{Hmac, KeyInit, Mac};
use islb_gob::ValueMap;

use crate::Timestamp;
use crate::command::{Rejection, param_string};

/// Clock skew tolerated on `exp` and `nbf`, in milliseconds.
const LEEWAY_MS: u64 = 60_000;

/// Why a lookup's session key could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// A param of the wrong Go type.
    #[error(transparent)]
    Param(#[from] Rejection),
    /// The token is not a JWT (three base64url parts, a JSON header and claims).
    #[error("authorization is not a JWT: {0}")]
    Malformed(&'static str),
    /// The token's signature does not verify with the configured key, or uses an
    /// algorithm islb does not verify.
    #[error("authorization JWT refused: {0}")]
    Refused(&'static str),
}

/// A key to verify JWT signatures with (HMAC).
#[derive(Clone)]
pub struct JwtKey(Vec<u8>);

impl std::fmt::Debug for JwtKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("JwtKey(***)")
    }
}

impl JwtKey {
    /// A shared secret for HS256, HS384 and HS512.
    pub fn hmac(secret: impl Into<Vec<u8>>) -> Self {
        JwtKey(secret.into())
    }

    fn verify(&self, alg: &str, signed: &[u8], signature: &[u8]) -> Result<(), KeyError> {
        let ok = match alg {
            "HS256" => mac::<sha2::Sha256>(&self.0, signed, signature),
            "HS384" => mac::<sha2::Sha384>(&self.0, signed, signature),
            "HS512" => mac::<sha2::Sha512>(&self.0, signed, signature),
            _ => return Err(KeyError::Refused("unsupported algorithm (islb verifies HS256, HS384, HS512)")),
        };
        if ok { Ok(()) } else { Err(KeyError::Refused("bad signature")) }
    }
}

fn mac<D>(key: &[u8], signed: &[u8], signature: &[u8]) -> bool
where
    Hmac<D>: KeyInit + Mac,
    D: hmac::EagerHash,
{
    let Ok(mut m) = <Hmac<D> as KeyInit>::new_from_slice(key) else { return false };
    m.update(signed);
    m.verify_slice(signature).is_ok()
}

/// The session key of a lookup, if it names one; `now` is checked against a verified
/// token's `exp` and `nbf`.
pub fn session_key(params: &ValueMap, jwt_key: Option<&JwtKey>, now: Timestamp) -> Result<Option<String>, KeyError> {
    if let Some(sid) = param_string(params, "sid")?.filter(|s| !s.is_empty()) {
        return Ok(Some(sid));
    }
    let Some(token) = param_string(params, "authorization")? else { return Ok(None) };
    let token = token.trim();
    let token = token.strip_prefix("Bearer ").or_else(|| token.strip_prefix("bearer ")).unwrap_or(token).trim();
    if token.is_empty() {
        return Ok(None);
    }
    jwt_sid(token, jwt_key, now)
}

fn jwt_sid(token: &str, key: Option<&JwtKey>, now: Timestamp) -> Result<Option<String>, KeyError> {
    let mut parts = token.split('.');
    let (Some(header), Some(claims), Some(signature), None) = (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(KeyError::Malformed("expected three dot-separated parts"));
    };
    let decode = |p: &str| B64.decode(p).map_err(|_| KeyError::Malformed("a part is not base64url"));
    let header: serde_json::Value =
        serde_json::from_slice(&decode(header)?).map_err(|_| KeyError::Malformed("header is not JSON"))?;
    let claims: serde_json::Value =
        serde_json::from_slice(&decode(claims)?).map_err(|_| KeyError::Malformed("claims are not JSON"))?;
    if let Some(key) = key {
        let alg = header.get("alg").and_then(|a| a.as_str()).unwrap_or("none");
        let signed_len = token.len() - signature.len() - 1;
        key.verify(alg, &token.as_bytes()[..signed_len], &decode(signature)?)?;
        // NumericDate: seconds since the epoch (a float is allowed); anything else is refused.
        let at = |claim: &'static str| match claims.get(claim) {
            None => Ok(None),
            Some(v) => v
                .as_f64()
                .map(|s| Some((s.max(0.0) * 1000.0) as u64))
                .ok_or(KeyError::Refused("exp or nbf is not a number")),
        };
        if at("exp")?.is_some_and(|exp| exp.saturating_add(LEEWAY_MS) <= now.as_ms()) {
            return Err(KeyError::Refused("token expired (exp)"));
        }
        if at("nbf")?.is_some_and(|nbf| nbf > now.as_ms().saturating_add(LEEWAY_MS)) {
            return Err(KeyError::Refused("token not valid yet (nbf)"));
        }
    }
    Ok(match claims.get("sid") {
        Some(serde_json::Value::String(s)) if !s.is_empty() => Some(s.clone()),
        Some(serde_json::Value::Number(n)) => Some(n.to_string()),
        _ => None,
    })
}

/// Entry points for fuzzers, shared with the property tests.
pub mod fuzz_logic {
    use super::*;

    /// Reads `data` (as text) as a lookup's `authorization`, without a key and with one;
    /// panics only on a bug, never on bad input. With a key, a token is accepted only if
    /// its signature verifies.
    pub fn token(data: &[u8]) {
        let text = String::from_utf8_lossy(data).into_owned();
        let params: ValueMap =
            [("authorization".to_owned(), islb_gob::Value::String(text.clone()))].into_iter().collect();
        let now = Timestamp::from_ms(1_800_000_000_000);
        let _ = session_key(&params, None, now);
        let key = JwtKey::hmac(b"fuzz-key".to_vec());
        if let Ok(Some(_)) = session_key(&params, Some(&key), now) {
            let token = text.trim();
            let token = token.strip_prefix("Bearer ").or_else(|| token.strip_prefix("bearer ")).unwrap_or(token).trim();
            let (signed, signature) = token.rsplit_once('.').expect("three parts");
            let header = B64.decode(signed.split('.').next().expect("a header")).expect("base64");
            let alg =
                serde_json::from_slice::<serde_json::Value>(&header).expect("JSON")["alg"].as_str().map(str::to_owned);
            let sig = B64.decode(signature).expect("base64");
            assert!(
                key.verify(alg.as_deref().unwrap_or("none"), signed.as_bytes(), &sig).is_ok(),
                "accepted unverified: {text}"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use islb_gob::Value;
    use proptest::prelude::*;

    const NOW: Timestamp = Timestamp::from_ms(1_800_000_000_000);

    fn params(pairs: &[(&str, Value)]) -> ValueMap {
        pairs.iter().map(|(k, v)| ((*k).to_owned(), v.clone())).collect()
    }

    fn jwt(header: &str, claims: &str, key: Option<&[u8]>) -> String {
        let signed = format!("{}.{}", B64.encode(header), B64.encode(claims));
        let sig = match key {
            Some(k) => {
                let mut m = <Hmac<sha2::Sha256> as KeyInit>::new_from_slice(k).unwrap();
                m.update(signed.as_bytes());
                B64.encode(m.finalize().into_bytes())
            }
            None => String::new(),
        };
        format!("{signed}.{sig}")
    }

    #[test]
    fn the_sid_param_comes_first_in_any_scalar_type() {
        assert_eq!(session_key(&params(&[("sid", "room-1".into())]), None, NOW), Ok(Some("room-1".into())));
        assert_eq!(session_key(&params(&[("sid", Value::Int64(42))]), None, NOW), Ok(Some("42".into())));
        let t = jwt(r#"{"alg":"none"}"#, r#"{"sid":"from-jwt"}"#, None);
        assert_eq!(
            session_key(&params(&[("sid", "p".into()), ("authorization", t.into())]), None, NOW),
            Ok(Some("p".into()))
        );
        assert_eq!(session_key(&params(&[]), None, NOW), Ok(None));
        assert!(matches!(session_key(&params(&[("sid", Value::List(vec![]))]), None, NOW), Err(KeyError::Param(_))));
    }

    #[test]
    fn the_sid_claim_of_an_unverified_jwt_with_or_without_bearer() {
        // The token ionpeer's signal-sim sends: alg none, no signature.
        let t = jwt(r#"{"alg":"none","typ":"JWT"}"#, r#"{"sid":"room-7","uid":"u1","services":["rtc"]}"#, None);
        assert_eq!(session_key(&params(&[("authorization", t.clone().into())]), None, NOW), Ok(Some("room-7".into())));
        let bearer = format!("Bearer {t}");
        assert_eq!(session_key(&params(&[("authorization", bearer.into())]), None, NOW), Ok(Some("room-7".into())));
        let no_sid = jwt(r#"{"alg":"none"}"#, r#"{"uid":"u1"}"#, None);
        assert_eq!(session_key(&params(&[("authorization", no_sid.into())]), None, NOW), Ok(None));
        // ion's examples pass the literal "token".
        assert!(matches!(
            session_key(&params(&[("authorization", "token".into())]), None, NOW),
            Err(KeyError::Malformed(_))
        ));
    }

    #[test]
    fn with_a_key_the_signature_is_verified() {
        let key = JwtKey::hmac(b"s3cret".to_vec());
        let good = jwt(r#"{"alg":"HS256","typ":"JWT"}"#, r#"{"sid":"room-9"}"#, Some(b"s3cret"));
        assert_eq!(session_key(&params(&[("authorization", good.into())]), Some(&key), NOW), Ok(Some("room-9".into())));
        let forged = jwt(r#"{"alg":"HS256","typ":"JWT"}"#, r#"{"sid":"room-9"}"#, Some(b"guess"));
        assert_eq!(
            session_key(&params(&[("authorization", forged.into())]), Some(&key), NOW),
            Err(KeyError::Refused("bad signature"))
        );
        let unsigned = jwt(r#"{"alg":"none"}"#, r#"{"sid":"room-9"}"#, None);
        assert!(matches!(
            session_key(&params(&[("authorization", unsigned.into())]), Some(&key), NOW),
            Err(KeyError::Refused(_))
        ));
        assert_eq!(format!("{key:?}"), "JwtKey(***)");
    }

    #[test]
    fn with_a_key_exp_and_nbf_are_checked_with_a_minute_of_leeway() {
        let key = JwtKey::hmac(b"s3cret".to_vec());
        let now_s = NOW.as_ms() / 1000;
        let token = |claims: String| {
            let t = jwt(r#"{"alg":"HS256"}"#, &claims, Some(b"s3cret"));
            session_key(&params(&[("authorization", t.into())]), Some(&key), NOW)
        };
        let sid = Ok(Some("r".to_owned()));
        assert_eq!(token(format!(r#"{{"sid":"r","exp":{}}}"#, now_s + 10)), sid);
        assert_eq!(token(format!(r#"{{"sid":"r","exp":{}}}"#, now_s - 30)), sid, "within the leeway");
        assert_eq!(
            token(format!(r#"{{"sid":"r","exp":{}}}"#, now_s - 61)),
            Err(KeyError::Refused("token expired (exp)"))
        );
        assert_eq!(token(format!(r#"{{"sid":"r","nbf":{}}}"#, now_s + 30)), sid, "within the leeway");
        assert_eq!(
            token(format!(r#"{{"sid":"r","nbf":{}}}"#, now_s + 3600)),
            Err(KeyError::Refused("token not valid yet (nbf)"))
        );
        assert_eq!(
            token(format!(r#"{{"sid":"r","exp":"{}"}}"#, now_s + 10)),
            Err(KeyError::Refused("exp or nbf is not a number"))
        );
        // Without a key nothing is verified (ion's signal checked the token already).
        let old = jwt(r#"{"alg":"none"}"#, &format!(r#"{{"sid":"r","exp":{}}}"#, now_s - 3600), None);
        assert_eq!(session_key(&params(&[("authorization", old.into())]), None, NOW), sid);
    }

    fn json_value() -> impl Strategy<Value = serde_json::Value> {
        let leaf = prop_oneof![
            Just(serde_json::Value::Null),
            any::<bool>().prop_map(serde_json::Value::Bool),
            any::<i64>().prop_map(|n| serde_json::json!(n)),
            any::<f64>().prop_map(|f| serde_json::json!(f)),
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
            claims.remove("exp");
            claims.remove("nbf");
            if let Some(sid) = &sid {
                claims.insert("sid".into(), serde_json::Value::String(sid.clone()));
            } else {
                claims.remove("sid");
            }
            let header = serde_json::json!({ "alg": alg }).to_string();
            let key: &[u8] = if right_key { b"fuzz-key" } else { b"other-key" };
            let t = jwt(&header, &serde_json::Value::Object(claims).to_string(), Some(key));
            fuzz_logic::token(t.as_bytes());
            let p = params(&[("authorization", t.into())]);
            // Unverified: the claim as it is.
            prop_assert_eq!(session_key(&p, None, NOW), Ok(sid.clone()));
            // Verified: only the right key and an HMAC algorithm (jwt() signs with HS256).
            let got = session_key(&p, Some(&JwtKey::hmac(b"fuzz-key".to_vec())), NOW);
            if right_key && alg == "HS256" {
                prop_assert_eq!(got, Ok(sid));
            } else {
                prop_assert!(matches!(got, Err(KeyError::Refused(_))), "{:?}", got);
            }
        }
    }

    #[test]
    fn deeply_nested_claims_are_malformed_not_a_stack_overflow() {
        let deep = format!("{}1{}", "[".repeat(100_000), "]".repeat(100_000));
        let t = jwt(r#"{"alg":"none"}"#, &deep, None);
        assert_eq!(
            session_key(&params(&[("authorization", t.clone().into())]), None, NOW),
            Err(KeyError::Malformed("claims are not JSON"))
        );
        fuzz_logic::token(t.as_bytes());
    }
}
