//! The session key of a lookup: which room a client call belongs to.
//!
//! ion's signal node forwards the client call's gRPC metadata as the `get` params. islb
//! reads, in order:
//!
//! 1. param `sid`: any Go scalar (a string, or an `int` read in its Go spelling);
//! 2. the token in param `authorization` (ion's signal passes the raw JWT; a `Bearer `
//!    prefix is accepted too), whose `sid` claim the shell reads (and verifies, when keys
//!    are configured).

use islb_gob::ValueMap;

use crate::command::{Rejection, param_string};

/// What a lookup names its session by.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionKey {
    /// The `sid` param.
    Sid(String),
    /// The token in `authorization` (without `Bearer `), whose `sid` claim names it.
    Token(String),
}

/// The session key of a lookup, if it names one.
pub fn session_key(params: &ValueMap) -> Result<Option<SessionKey>, Rejection> {
    if let Some(sid) = param_string(params, "sid")?.filter(|s| !s.is_empty()) {
        return Ok(Some(SessionKey::Sid(sid)));
    }
    let Some(token) = param_string(params, "authorization")? else { return Ok(None) };
    let token = token.trim();
    let token = match (token.get(..6), token.get(6..)) {
        (Some(scheme), Some(rest))
            if scheme.eq_ignore_ascii_case("bearer") && rest.chars().next().is_none_or(char::is_whitespace) =>
        {
            rest.trim()
        }
        _ => token,
    };
    Ok((!token.is_empty()).then(|| SessionKey::Token(token.to_owned())))
}

#[cfg(test)]
mod tests {
    use super::*;
    use islb_gob::Value;

    fn params(pairs: &[(&str, Value)]) -> ValueMap {
        pairs.iter().map(|(k, v)| ((*k).to_owned(), v.clone())).collect()
    }

    #[test]
    fn the_sid_param_comes_first_in_any_scalar_type() {
        assert_eq!(session_key(&params(&[("sid", "room-1".into())])), Ok(Some(SessionKey::Sid("room-1".into()))));
        assert_eq!(session_key(&params(&[("sid", Value::Int64(42))])), Ok(Some(SessionKey::Sid("42".into()))));
        assert_eq!(
            session_key(&params(&[("sid", "p".into()), ("authorization", "a.b.c".into())])),
            Ok(Some(SessionKey::Sid("p".into())))
        );
        assert_eq!(session_key(&params(&[])), Ok(None));
        assert!(session_key(&params(&[("sid", Value::List(vec![]))])).is_err());
        assert!(session_key(&params(&[("authorization", Value::Int64(1))])).is_ok(), "an int reads as its spelling");
        assert!(session_key(&params(&[("authorization", Value::List(vec![]))])).is_err());
    }

    #[test]
    fn the_token_with_or_without_bearer() {
        let t = |s: &str| Ok(Some(SessionKey::Token(s.into())));
        assert_eq!(session_key(&params(&[("authorization", "a.b.c".into())])), t("a.b.c"));
        assert_eq!(session_key(&params(&[("authorization", " Bearer a.b.c ".into())])), t("a.b.c"));
        assert_eq!(session_key(&params(&[("authorization", "bearer a.b.c".into())])), t("a.b.c"));
        assert_eq!(session_key(&params(&[("authorization", "BEARER\ta.b.c".into())])), t("a.b.c"));
        assert_eq!(session_key(&params(&[("authorization", "Bearerx.b.c".into())])), t("Bearerx.b.c"));
        assert_eq!(session_key(&params(&[("authorization", "Bearer".into())])), Ok(None));
        assert_eq!(session_key(&params(&[("authorization", "Bearer  ".into())])), Ok(None));
        assert_eq!(session_key(&params(&[("sid", "".into()), ("authorization", "".into())])), Ok(None));
    }
}
