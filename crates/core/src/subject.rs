//! Per-session NATS subjects: the sid as one subject token, one-to-one.
//!
//! A sid made only of ASCII letters, digits and `-` (most room names: `room-7`) is its
//! own token. Any other sid is `_` followed by the unpadded base64url of its UTF-8 bytes
//! (`a.b` is `_YS5i`). The two forms never meet (a plain token has no `_`, an encoded
//! one starts with it), so two sids never share a subject and one sid never spans
//! several tokens; subscribers outside islb compute the same ([`session_token`]).

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;

/// The token of session `sid` in a subject.
pub fn session_token(sid: &str) -> String {
    let plain = !sid.is_empty() && sid.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
    if plain { sid.to_owned() } else { format!("_{}", B64.encode(sid)) }
}

/// The sid a token stands for (`None` for a token [`session_token`] never makes).
pub fn sid_of_token(token: &str) -> Option<String> {
    match token.strip_prefix('_') {
        Some(encoded) => {
            let sid = String::from_utf8(B64.decode(encoded).ok()?).ok()?;
            (session_token(&sid) == token).then_some(sid)
        }
        None => (session_token(token) == token).then(|| token.to_owned()),
    }
}

/// `islb.session.<token>`: a session's moves and releases.
pub fn session_subject(sid: &str) -> String {
    format!("islb.session.{}", session_token(sid))
}

/// `islb.placed.<token>`: a session placed for the first time (for live views such as
/// the console's; no node needs it).
pub fn placed_subject(sid: &str) -> String {
    format!("islb.placed.{}", session_token(sid))
}

/// `islb.stream-event.<token>`: a session's stream events, between replicas.
pub fn stream_event_subject(sid: &str) -> String {
    format!("islb.stream-event.{}", session_token(sid))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn plain_room_names_stay_readable_and_the_rest_is_encoded() {
        assert_eq!(session_token("room-7"), "room-7");
        assert_eq!(session_token("a.b"), "_YS5i");
        assert_eq!(session_subject("a.b"), "islb.session._YS5i");
        assert_eq!(stream_event_subject("room-7"), "islb.stream-event.room-7");
        let rooms = ["a.b", "a_b", "a b", "a*b", "a>b", "ab", "_YS5i", ""];
        let tokens: std::collections::HashSet<String> = rooms.iter().map(|r| session_token(r)).collect();
        assert_eq!(tokens.len(), rooms.len(), "one subject per room: {tokens:?}");
        assert_eq!(sid_of_token("_YS5i").as_deref(), Some("a.b"));
        assert_eq!(sid_of_token("_"), Some(String::new()));
        assert_eq!(sid_of_token("_cm9vbS03"), None, "room-7 is never encoded");
        assert_eq!(sid_of_token("a.b"), None);
    }

    proptest! {
        #[test]
        fn every_sid_is_one_valid_token_and_comes_back(sid in ".{0,40}", other in ".{0,40}") {
            let t = session_token(&sid);
            prop_assert!(!t.is_empty());
            prop_assert!(t.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'), "{}", t);
            prop_assert_eq!(sid_of_token(&t), Some(sid.clone()));
            if sid != other {
                prop_assert_ne!(t, session_token(&other));
            }
        }
    }
}
