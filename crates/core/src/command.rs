//! From a decoded discovery [`Request`] to a validated [`Command`], or a [`Rejection`]
//! saying what was wrong (sent back as `Response.Reason`).

use islb_gob::{Node, Request, Value, ValueMap};

/// `save` or `update`: both register a node and refresh its expiry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteAction {
    /// `save`: a node comes up.
    Save,
    /// `update`: a keep-alive (every 2 s from ion nodes).
    Update,
}

impl WriteAction {
    /// The wire action string.
    pub fn as_str(self) -> &'static str {
        match self {
            WriteAction::Save => "save",
            WriteAction::Update => "update",
        }
    }
}

/// A request the registry can carry out.
#[derive(Debug, Clone, PartialEq)]
pub enum Command {
    /// Register or keep alive a node.
    Write {
        /// `save` or `update`.
        action: WriteAction,
        /// The node as sent.
        node: Node,
    },
    /// A node goes away.
    Delete {
        /// The node as sent (only its key matters).
        node: Node,
    },
    /// List the nodes of a service (`*` for all).
    Get(Lookup),
}

/// A `get`: the service and what the params say.
#[derive(Debug, Clone, PartialEq)]
pub struct Lookup {
    /// The service, `*` for every service.
    pub service: String,
    /// `nid` param: only this node (absent or `*`: any).
    pub nid: Option<String>,
    /// The params as sent (a client call's metadata when signal asks).
    pub params: ValueMap,
}

/// The param an operator tool sets on `get *` to also list placed services.
pub const PARAM_INCLUDE_PLACED: &str = "islb-all";

impl Lookup {
    /// Whether the caller asked to see placed services too (param `islb-all`, any true-ish
    /// value).
    pub fn include_placed(&self) -> bool {
        match self.params.get(PARAM_INCLUDE_PLACED) {
            Some(Value::Bool(b)) => *b,
            Some(Value::String(s)) => matches!(s.as_str(), "1" | "true" | "yes"),
            Some(v) => v.as_u64().is_some_and(|n| n != 0),
            None => false,
        }
    }

    /// Whether an operator tool asks for every node of a placed service without placing
    /// anything: `islb-all` as a Go bool. Client metadata, which ion's signal forwards as
    /// the params, is always a string, so a client cannot ask for it.
    pub fn operator_listing(&self) -> bool {
        matches!(self.params.get(PARAM_INCLUDE_PLACED), Some(Value::Bool(true)))
    }
}

/// Why a request was refused. The text is what the requester reads in `Reason`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    /// The action is not one of save, update, delete, get.
    #[error("unknown action {0:?} (expected save, update, delete or get)")]
    UnknownAction(String),
    /// A node field that must be set is empty.
    #[error("empty {0}: a node needs DC, Service and NID")]
    EmptyField(&'static str),
    /// A node field that would break NATS subjects.
    #[error("invalid {field} {value:?}: must not contain whitespace, '*' or '>'")]
    BadToken {
        /// Which field.
        field: &'static str,
        /// Its value.
        value: String,
    },
    /// A param that must be a string (or a scalar) is something else.
    #[error("param {name:?} must be a string, got a Go {go_type}")]
    BadParam {
        /// The param name.
        name: &'static str,
        /// The Go type received.
        go_type: &'static str,
    },
}

impl Rejection {
    /// A short, fixed label for metrics (`reason` label).
    pub fn label(&self) -> &'static str {
        match self {
            Rejection::UnknownAction(_) => "unknown_action",
            Rejection::EmptyField(_) => "empty_field",
            Rejection::BadToken { .. } => "bad_token",
            Rejection::BadParam { .. } => "bad_param",
        }
    }
}

fn check_token(field: &'static str, value: &str) -> Result<(), Rejection> {
    if value.is_empty() {
        return Err(Rejection::EmptyField(field));
    }
    if value.chars().any(|c| c.is_whitespace() || c == '*' || c == '>' || c.is_control()) {
        return Err(Rejection::BadToken { field, value: value.to_owned() });
    }
    Ok(())
}

/// Checks a node's identity: DC, Service and NID set and usable as subject tokens.
pub fn check_node(node: &Node) -> Result<(), Rejection> {
    check_token("DC", &node.dc)?;
    check_token("Service", &node.service)?;
    check_token("NID", &node.nid)
}

/// A param read as a string: Go strings as they are, other scalars (an `int` sid) in
/// their Go spelling; lists, maps and nil are refused.
pub fn param_string(params: &ValueMap, name: &'static str) -> Result<Option<String>, Rejection> {
    match params.get(name) {
        None | Some(Value::Nil) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(v @ (Value::Bytes(_) | Value::Slice(..) | Value::List(_) | Value::Map(_))) => {
            Err(Rejection::BadParam { name, go_type: v.go_type() })
        }
        Some(v) => Ok(Some(v.to_string())),
    }
}

impl Command {
    /// Validates a decoded request.
    pub fn parse(req: Request) -> Result<Command, Rejection> {
        match req.action.as_str() {
            "save" | "update" => {
                check_node(&req.node)?;
                let action = if req.action == "save" { WriteAction::Save } else { WriteAction::Update };
                Ok(Command::Write { action, node: req.node })
            }
            "delete" => {
                check_node(&req.node)?;
                Ok(Command::Delete { node: req.node })
            }
            "get" => {
                let nid = param_string(&req.params, "nid")?.filter(|n| n != "*" && !n.is_empty());
                Ok(Command::Get(Lookup { service: req.service, nid, params: req.params }))
            }
            other => Err(Rejection::UnknownAction(other.to_owned())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(dc: &str, svc: &str, nid: &str) -> Node {
        Node { dc: dc.into(), service: svc.into(), nid: nid.into(), ..Node::default() }
    }

    fn req(action: &str, node: Node) -> Request {
        Request { action: action.into(), node, ..Request::default() }
    }

    #[test]
    fn actions_map_to_commands() {
        let n = node("dc1", "rtc", "sfu-1");
        assert!(matches!(Command::parse(req("save", n.clone())), Ok(Command::Write { action: WriteAction::Save, .. })));
        assert!(matches!(
            Command::parse(req("update", n.clone())),
            Ok(Command::Write { action: WriteAction::Update, .. })
        ));
        assert!(matches!(Command::parse(req("delete", n)), Ok(Command::Delete { .. })));
        let get = Request { action: "get".into(), service: "rtc".into(), ..Request::default() };
        assert!(
            matches!(Command::parse(get), Ok(Command::Get(Lookup { ref service, nid: None, .. })) if service == "rtc")
        );
    }

    #[test]
    fn unknown_actions_and_empty_ids_are_rejected_with_a_reason() {
        let err = Command::parse(req("explode", node("dc1", "rtc", "a"))).unwrap_err();
        assert_eq!(err.to_string(), "unknown action \"explode\" (expected save, update, delete or get)");
        assert_eq!(Command::parse(req("save", node("dc1", "rtc", ""))).unwrap_err(), Rejection::EmptyField("NID"));
        assert_eq!(Command::parse(req("save", node("", "rtc", "a"))).unwrap_err(), Rejection::EmptyField("DC"));
        assert_eq!(Command::parse(req("delete", node("dc1", "", "a"))).unwrap_err(), Rejection::EmptyField("Service"));
        assert_eq!(Command::parse(req("", Node::default())).unwrap_err(), Rejection::UnknownAction(String::new()));
    }

    #[test]
    fn ids_that_would_break_subjects_are_rejected() {
        for bad in ["a b", "a*", "x>", "tab\t", "nl\n"] {
            let err = Command::parse(req("save", node("dc1", "rtc", bad))).unwrap_err();
            assert!(matches!(err, Rejection::BadToken { field: "NID", .. }), "{bad:?}: {err}");
        }
        // Dots are fine: a NID may span subject tokens, watchers use `>`.
        assert!(Command::parse(req("save", node("dc1", "rtc", "sfu.1"))).is_ok());
    }

    #[test]
    fn get_params_sid_and_nid_accept_any_scalar_and_refuse_containers() {
        let mut params = ValueMap::new();
        params.insert("nid".into(), Value::Int64(7));
        let get = Request { action: "get".into(), service: "rtc".into(), params, ..Request::default() };
        let Ok(Command::Get(lookup)) = Command::parse(get) else { panic!() };
        assert_eq!(lookup.nid.as_deref(), Some("7"));

        let mut params = ValueMap::new();
        params.insert("nid".into(), Value::List(vec![]));
        let get = Request { action: "get".into(), service: "rtc".into(), params, ..Request::default() };
        assert_eq!(Command::parse(get).unwrap_err(), Rejection::BadParam { name: "nid", go_type: "[]interface {}" });

        let mut params = ValueMap::new();
        params.insert("nid".into(), "*".into());
        let get = Request { action: "get".into(), service: "rtc".into(), params, ..Request::default() };
        assert!(matches!(Command::parse(get), Ok(Command::Get(Lookup { nid: None, .. }))));
    }

    #[test]
    fn include_placed_reads_true_ish_values() {
        let mut l = Lookup { service: "*".into(), nid: None, params: ValueMap::new() };
        assert!(!l.include_placed());
        l.params.insert(PARAM_INCLUDE_PLACED.into(), Value::Bool(true));
        assert!(l.include_placed());
        l.params.insert(PARAM_INCLUDE_PLACED.into(), "true".into());
        assert!(l.include_placed());
        l.params.insert(PARAM_INCLUDE_PLACED.into(), Value::Int(0));
        assert!(!l.include_placed());
    }
}
