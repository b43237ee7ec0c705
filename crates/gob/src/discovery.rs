//! The five types of ion's node-discovery protocol (nats-discovery v0.3.0), with Go's
//! field names on the wire (gob matches struct fields by name).
//!
//! ```go
//! type Request struct { Action Action; Node Node; Service string; Params map[string]interface{} }
//! type Response struct { Success bool; Reason string }
//! type GetResponse struct { Nodes []Node }
//! type Node struct { DC string; Service string; NID string; RPC RPC; ExtraInfo map[string]interface{} }
//! type RPC struct { Protocol string; Addr string; Params map[string]string }
//! ```

use crate::decode::{Dec, Decode, Limits};
use crate::encode::{Enc, Encode, TypeReg};
use crate::error::Result;
use crate::value::{StringMap, ValueMap};

/// How a node is reached (`RPC` in Go).
#[derive(Debug, Clone, Default, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct Rpc {
    /// `grpc`, `nats-grpc` or `json-rpc` (ion uses `nats-grpc`).
    #[cfg_attr(feature = "serde", serde(rename = "Protocol"))]
    pub protocol: String,
    /// The address; for `nats-grpc`, the node's NATS URL.
    #[cfg_attr(feature = "serde", serde(rename = "Addr"))]
    pub addr: String,
    /// Free-form parameters.
    #[cfg_attr(feature = "serde", serde(rename = "Params"))]
    pub params: StringMap,
}

/// One registered node (`Node` in Go); its key is `DC.NID`.
#[derive(Debug, Clone, Default, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct Node {
    /// Data centre.
    #[cfg_attr(feature = "serde", serde(rename = "DC"))]
    pub dc: String,
    /// Service name: `rtc`, `signal`, `room`, `islb`...
    #[cfg_attr(feature = "serde", serde(rename = "Service"))]
    pub service: String,
    /// Node id, e.g. `sfu-AbC123`.
    #[cfg_attr(feature = "serde", serde(rename = "NID"))]
    pub nid: String,
    /// How to reach it.
    #[cfg_attr(feature = "serde", serde(rename = "RPC"))]
    pub rpc: Rpc,
    /// Anything else the node reports, with Go types kept.
    #[cfg_attr(feature = "serde", serde(rename = "ExtraInfo"))]
    pub extra_info: ValueMap,
}

impl Node {
    /// The node's key, `DC + "." + NID` (Go's `Node.ID()`).
    pub fn id(&self) -> String {
        format!("{}.{}", self.dc, self.nid)
    }
}

/// A message to the registry (`Request` in Go): save, update, delete or get.
#[derive(Debug, Clone, Default, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct Request {
    /// `save`, `update`, `delete` or `get`.
    #[cfg_attr(feature = "serde", serde(rename = "Action"))]
    pub action: String,
    /// The node (save, update, delete, and registry events).
    #[cfg_attr(feature = "serde", serde(rename = "Node"))]
    pub node: Node,
    /// The service looked up (get); `*` for all.
    #[cfg_attr(feature = "serde", serde(rename = "Service"))]
    pub service: String,
    /// Lookup parameters (get), e.g. a client call's metadata.
    #[cfg_attr(feature = "serde", serde(rename = "Params"))]
    pub params: ValueMap,
}

/// The reply to save, update and delete (`Response` in Go).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct Response {
    /// Whether the registry accepted the request.
    #[cfg_attr(feature = "serde", serde(rename = "Success"))]
    pub success: bool,
    /// Why not, when it did not.
    #[cfg_attr(feature = "serde", serde(rename = "Reason"))]
    pub reason: String,
}

/// The reply to get (`GetResponse` in Go).
#[derive(Debug, Clone, Default, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct GetResponse {
    /// The nodes found; ion's callers use the first.
    #[cfg_attr(feature = "serde", serde(rename = "Nodes"))]
    pub nodes: Vec<Node>,
}

/// A discovery message that can be read from and written to gob.
pub trait Message: Sized {
    /// Decodes one payload with the default [`Limits`].
    fn from_gob(payload: &[u8]) -> Result<Self> {
        Self::from_gob_with(payload, &Limits::default())
    }
    /// Decodes one payload with the given limits.
    fn from_gob_with(payload: &[u8], limits: &Limits) -> Result<Self>;
    /// Encodes as a fresh Go encoder would (type definitions included).
    fn to_gob(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(512);
        self.write_gob(&mut out);
        out
    }
    /// Appends the encoding to `out`.
    fn write_gob(&self, out: &mut Vec<u8>);
}

/// Implements [`Decode`], [`Encode`] and [`Message`] for a struct with Go field names.
macro_rules! gob_struct {
    ($ty:ident, $go:literal, $($field:ident: $fty:ty = $goname:literal),+ $(,)?) => {
        impl Decode for $ty {
            fn go_name() -> String {
                $go.into()
            }
            fn check(d: &Dec<'_>, id: i64, top: bool) -> Result<()> {
                d.check_struct(id, $go, &[$(($goname, <$fty as Decode>::check)),+], top)
            }
            fn decode(d: &mut Dec<'_>, id: i64) -> Result<Self> {
                let mut v = Self::default();
                d.decode_struct(id, &[$($goname),+], |d, name, fid| {
                    match name {
                        $($goname => v.$field = <$fty as Decode>::decode(d, fid)?,)+
                        _ => unreachable!("only local field names are passed"),
                    }
                    Ok(())
                })?;
                Ok(v)
            }
        }

        impl Encode for $ty {
            fn register(reg: &mut TypeReg) -> i64 {
                if let Some(id) = reg.get($go) {
                    return id;
                }
                let id = reg.reserve($go);
                let fields = vec![$(($goname, <$fty as Encode>::register(reg))),+];
                reg.define_struct(id, $go, fields);
                id
            }
            fn register_values(&self, reg: &mut TypeReg) {
                $(self.$field.register_values(reg);)+
            }
            fn is_zero(&self) -> bool {
                false
            }
            fn encode(&self, e: &mut Enc<'_>) {
                let mut last = -1;
                let mut index = -1;
                $(
                    index += 1;
                    e.field(&mut last, index, &self.$field);
                )+
                e.out.push(0);
            }
        }

        impl Message for $ty {
            fn from_gob_with(payload: &[u8], limits: &Limits) -> Result<Self> {
                crate::decode::decode(payload, limits)
            }
            fn write_gob(&self, out: &mut Vec<u8>) {
                static PREPARED: std::sync::OnceLock<crate::encode::Prepared> = std::sync::OnceLock::new();
                crate::encode::encode_into(self, PREPARED.get_or_init(crate::encode::Prepared::new::<Self>), out)
            }
        }
    };
}

gob_struct!(Rpc, "RPC", protocol: String = "Protocol", addr: String = "Addr", params: StringMap = "Params");
gob_struct!(
    Node,
    "Node",
    dc: String = "DC",
    service: String = "Service",
    nid: String = "NID",
    rpc: Rpc = "RPC",
    extra_info: ValueMap = "ExtraInfo",
);
gob_struct!(Request, "Request", action: String = "Action", node: Node = "Node", service: String = "Service", params: ValueMap = "Params");
gob_struct!(Response, "Response", success: bool = "Success", reason: String = "Reason");
gob_struct!(GetResponse, "GetResponse", nodes: Vec<Node> = "Nodes");

impl Encode for Vec<Node> {
    fn register(reg: &mut TypeReg) -> i64 {
        reg.slice("[]discovery.Node", "[]discovery.Node", Node::register)
    }
    fn register_values(&self, reg: &mut TypeReg) {
        self.iter().for_each(|n| n.register_values(reg));
    }
    fn is_zero(&self) -> bool {
        self.is_empty()
    }
    fn encode(&self, e: &mut Enc<'_>) {
        crate::wire::put_uint(e.out, self.len() as u64);
        self.iter().for_each(|n| n.encode(e));
    }
}
