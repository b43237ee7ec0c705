//! The encoder: one value in, one self-contained payload out, as a fresh Go
//! `gob.Encoder` writes it.
//!
//! Output layout: one message per type definition (in id order, ids from 65, the value's
//! own type first and then its field types depth first, as Go assigns them), then one
//! message with the value. Types only needed by `interface{}` values (`[]interface {}`,
//! `[]string`...) are defined up front too, after the static ones; Go's decoder accepts
//! definitions anywhere before their use. Maps are written in key order, so the output is
//! deterministic; for values without maps it is byte-identical to Go's.

use crate::types::*;
use crate::value::{Kind, Value, ValueMap};
use crate::wire::{insert_uint, put_bytes, put_float, put_int, put_uint};

/// A type definition to send.
enum Def {
    Struct { name: &'static str, fields: Vec<(&'static str, i64)> },
    Slice { name: &'static str, elem: i64 },
    Map { name: &'static str, key: i64, elem: i64 },
}

/// Type ids assigned for one payload, keyed by Go type name: those of the message's
/// static type tree (prepared once per message type) and those added for this value.
pub(crate) struct TypeReg {
    base: &'static [(&'static str, i64)],
    ids: Vec<(&'static str, i64, Option<Def>)>,
}

impl TypeReg {
    fn new(base: &'static [(&'static str, i64)]) -> Self {
        TypeReg { base, ids: Vec::new() }
    }

    /// The id of `name` if it has one already.
    pub(crate) fn get(&self, name: &str) -> Option<i64> {
        self.ids
            .iter()
            .map(|(n, id, _)| (*n, *id))
            .chain(self.base.iter().copied())
            .find(|(n, _)| *n == name)
            .map(|(_, id)| id)
    }

    /// Reserves the next id for `name` (its definition follows with [`TypeReg::define`]).
    pub(crate) fn reserve(&mut self, name: &'static str) -> i64 {
        let id = FIRST_USER_ID + (self.base.len() + self.ids.len()) as i64;
        self.ids.push((name, id, None));
        id
    }

    fn define(&mut self, id: i64, def: Def) {
        self.ids[(id - FIRST_USER_ID) as usize - self.base.len()].2 = Some(def);
    }

    pub(crate) fn define_struct(&mut self, id: i64, name: &'static str, fields: Vec<(&'static str, i64)>) {
        self.define(id, Def::Struct { name, fields });
    }

    /// The id of a slice type, defining it on first use.
    pub(crate) fn slice(
        &mut self,
        name: &'static str,
        wire_name: &'static str,
        elem: impl FnOnce(&mut Self) -> i64,
    ) -> i64 {
        if let Some(id) = self.get(name) {
            return id;
        }
        let id = self.reserve(name);
        let elem = elem(self);
        self.define(id, Def::Slice { name: wire_name, elem });
        id
    }

    /// The id of a `map[string]V` type, defining it on first use.
    pub(crate) fn map(&mut self, name: &'static str, elem: impl FnOnce(&mut Self) -> i64) -> i64 {
        if let Some(id) = self.get(name) {
            return id;
        }
        let id = self.reserve(name);
        let elem = elem(self);
        self.define(id, Def::Map { name, key: T_STRING, elem });
        id
    }

    /// Registers the type an `interface{}` holding `v` needs (and those of nested values).
    fn value(&mut self, v: &Value) {
        match v {
            Value::Slice(k, _) if *k != Kind::Uint8 => {
                let elem = crate::decode::kind_wire_id(*k);
                self.slice(k.go_slice_name(), "", |_| elem);
            }
            Value::List(items) => {
                self.slice("[]interface {}", "", |_| T_INTERFACE);
                items.iter().for_each(|v| self.value(v));
            }
            Value::Map(m) => self.value_map(m),
            _ => {}
        }
    }

    /// Registers `map[string]interface {}` and the types its values need.
    pub(crate) fn value_map(&mut self, m: &ValueMap) {
        self.map("map[string]interface {}", |_| T_INTERFACE);
        m.values().for_each(|v| self.value(v));
    }

    /// Writes every definition as its own message.
    fn write_defs(&self, out: &mut Vec<u8>) {
        for (_, id, def) in &self.ids {
            let start = out.len();
            put_int(out, -id);
            match def.as_ref().expect("every reserved type is defined") {
                Def::Struct { name, fields } => {
                    out.push(3); // wireType.StructT
                    common(out, name, *id);
                    out.push(1); // structType.Field
                    put_uint(out, fields.len() as u64);
                    for (fname, fid) in fields {
                        out.push(1);
                        put_bytes(out, fname.as_bytes());
                        out.push(1);
                        put_int(out, *fid);
                        out.push(0);
                    }
                    out.push(0);
                }
                Def::Slice { name, elem } => {
                    out.push(2); // wireType.SliceT
                    common(out, name, *id);
                    out.push(1);
                    put_int(out, *elem);
                    out.push(0);
                }
                Def::Map { name, key, elem } => {
                    out.push(4); // wireType.MapT
                    common(out, name, *id);
                    out.push(1);
                    put_int(out, *key);
                    out.push(1);
                    put_int(out, *elem);
                    out.push(0);
                }
            }
            out.push(0); // end of wireType
            let len = (out.len() - start) as u64;
            insert_uint(out, start, len);
        }
    }
}

/// `CommonType{Name, Id}` as the first field (delta 1) of a type definition.
fn common(out: &mut Vec<u8>, name: &str, id: i64) {
    out.push(1);
    if name.is_empty() {
        out.push(2);
    } else {
        out.push(1);
        put_bytes(out, name.as_bytes());
        out.push(1);
    }
    put_int(out, id);
    out.push(0);
}

/// A type the encoder can write.
pub(crate) trait Encode {
    /// The wire type id of `Self`, registering its definitions on first use.
    fn register(reg: &mut TypeReg) -> i64;
    /// Registers what `interface{}` values inside this value need.
    fn register_values(&self, _reg: &mut TypeReg) {}
    /// Whether Go would leave this value out as a struct field (zero values are not sent).
    fn is_zero(&self) -> bool;
    /// Writes the value (without a field delta).
    fn encode(&self, e: &mut Enc<'_>);
}

/// Encoder state: the output and the type ids of this payload.
pub(crate) struct Enc<'a> {
    pub(crate) out: &'a mut Vec<u8>,
    pub(crate) reg: &'a TypeReg,
}

/// The fixed part of a message type's encoding: its static type tree's ids and the
/// bytes of their definitions, computed once per type.
pub(crate) struct Prepared {
    names: Vec<(&'static str, i64)>,
    defs: Vec<u8>,
    id: i64,
}

impl Prepared {
    pub(crate) fn new<T: Encode>() -> Self {
        let mut reg = TypeReg::new(&[]);
        let id = T::register(&mut reg);
        let mut defs = Vec::new();
        reg.write_defs(&mut defs);
        Prepared { names: reg.ids.iter().map(|(n, id, _)| (*n, *id)).collect(), defs, id }
    }
}

/// Appends the payload for `v` (a struct whose fixed part is `prepared`) to `out`.
pub(crate) fn encode_into<T: Encode>(v: &T, prepared: &'static Prepared, out: &mut Vec<u8>) {
    let mut reg = TypeReg::new(&prepared.names);
    v.register_values(&mut reg);
    out.extend_from_slice(&prepared.defs);
    reg.write_defs(out);
    let start = out.len();
    put_int(out, prepared.id);
    v.encode(&mut Enc { out, reg: &reg });
    let len = (out.len() - start) as u64;
    insert_uint(out, start, len);
}

impl Enc<'_> {
    /// Writes struct field number `index` with its delta from `last`, unless Go would
    /// leave it out (a zero value).
    pub(crate) fn field(&mut self, last: &mut i64, index: i64, v: &impl Encode) {
        if v.is_zero() {
            return;
        }
        put_uint(self.out, (index - *last) as u64);
        *last = index;
        v.encode(self);
    }

    fn interface(&mut self, v: &Value) {
        let name = v.go_type();
        put_bytes(self.out, name.as_bytes());
        if matches!(v, Value::Nil) {
            return;
        }
        let id = match v {
            Value::Bytes(_) | Value::Slice(Kind::Uint8, _) => T_BYTES,
            Value::Slice(k, _) => self.reg.get(k.go_slice_name()).expect("registered"),
            Value::List(_) => self.reg.get("[]interface {}").expect("registered"),
            Value::Map(_) => self.reg.get("map[string]interface {}").expect("registered"),
            v => crate::decode::kind_wire_id(v.kind().expect("scalar")),
        };
        put_int(self.out, id);
        let at = self.out.len();
        self.out.push(0); // singleton field delta
        self.concrete(v);
        let n = (self.out.len() - at) as u64;
        insert_uint(self.out, at, n);
    }

    fn concrete(&mut self, v: &Value) {
        let out = &mut *self.out;
        match v {
            Value::Nil => {}
            Value::Bool(b) => put_uint(out, u64::from(*b)),
            Value::Int(i) | Value::Int64(i) => put_int(out, *i),
            Value::Int8(i) => put_int(out, (*i).into()),
            Value::Int16(i) => put_int(out, (*i).into()),
            Value::Int32(i) => put_int(out, (*i).into()),
            Value::Uint(u) | Value::Uint64(u) | Value::Uintptr(u) => put_uint(out, *u),
            Value::Uint8(u) => put_uint(out, (*u).into()),
            Value::Uint16(u) => put_uint(out, (*u).into()),
            Value::Uint32(u) => put_uint(out, (*u).into()),
            Value::Float32(f) => put_float(out, (*f).into()),
            Value::Float64(f) => put_float(out, *f),
            Value::Complex64(r, i) => {
                put_float(out, (*r).into());
                put_float(out, (*i).into());
            }
            Value::Complex128(r, i) => {
                put_float(out, *r);
                put_float(out, *i);
            }
            Value::String(s) => put_bytes(out, s.as_bytes()),
            Value::Bytes(b) => put_bytes(out, b),
            Value::Slice(Kind::Uint8, items) => {
                let bytes: Vec<u8> = items.iter().map(|v| if let Value::Uint8(b) = v { *b } else { 0 }).collect();
                put_bytes(out, &bytes);
            }
            Value::Slice(k, items) => {
                // Items of another kind cannot be sent in a []T; they go out as T's zero value.
                put_uint(out, items.len() as u64);
                for item in items {
                    if k.matches(item) {
                        self.concrete(item);
                    } else {
                        self.concrete(&zero(*k));
                    }
                }
            }
            Value::List(items) => {
                put_uint(out, items.len() as u64);
                for item in items {
                    self.interface(item);
                }
            }
            Value::Map(m) => self.value_map(m),
        }
    }

    pub(crate) fn value_map(&mut self, m: &ValueMap) {
        put_uint(self.out, m.len() as u64);
        for (k, v) in m {
            put_bytes(self.out, k.as_bytes());
            self.interface(v);
        }
    }
}

fn zero(k: Kind) -> Value {
    match k {
        Kind::Bool => Value::Bool(false),
        Kind::Int => Value::Int(0),
        Kind::Int8 => Value::Int8(0),
        Kind::Int16 => Value::Int16(0),
        Kind::Int32 => Value::Int32(0),
        Kind::Int64 => Value::Int64(0),
        Kind::Uint => Value::Uint(0),
        Kind::Uint8 => Value::Uint8(0),
        Kind::Uint16 => Value::Uint16(0),
        Kind::Uint32 => Value::Uint32(0),
        Kind::Uint64 => Value::Uint64(0),
        Kind::Uintptr => Value::Uintptr(0),
        Kind::Float32 => Value::Float32(0.0),
        Kind::Float64 => Value::Float64(0.0),
        Kind::Complex64 => Value::Complex64(0.0, 0.0),
        Kind::Complex128 => Value::Complex128(0.0, 0.0),
        Kind::String => Value::String(String::new()),
    }
}

impl Encode for String {
    fn register(_: &mut TypeReg) -> i64 {
        T_STRING
    }
    fn is_zero(&self) -> bool {
        self.is_empty()
    }
    fn encode(&self, e: &mut Enc<'_>) {
        put_bytes(e.out, self.as_bytes());
    }
}

impl Encode for bool {
    fn register(_: &mut TypeReg) -> i64 {
        T_BOOL
    }
    fn is_zero(&self) -> bool {
        !*self
    }
    fn encode(&self, e: &mut Enc<'_>) {
        put_uint(e.out, u64::from(*self));
    }
}

impl Encode for crate::value::StringMap {
    fn register(reg: &mut TypeReg) -> i64 {
        reg.map("map[string]string", |_| T_STRING)
    }
    fn is_zero(&self) -> bool {
        self.is_empty()
    }
    fn encode(&self, e: &mut Enc<'_>) {
        put_uint(e.out, self.len() as u64);
        for (k, v) in self {
            put_bytes(e.out, k.as_bytes());
            put_bytes(e.out, v.as_bytes());
        }
    }
}

impl Encode for ValueMap {
    fn register(reg: &mut TypeReg) -> i64 {
        reg.map("map[string]interface {}", |_| T_INTERFACE)
    }
    fn register_values(&self, reg: &mut TypeReg) {
        self.values().for_each(|v| reg.value(v));
    }
    fn is_zero(&self) -> bool {
        self.is_empty()
    }
    fn encode(&self, e: &mut Enc<'_>) {
        e.value_map(self);
    }
}
