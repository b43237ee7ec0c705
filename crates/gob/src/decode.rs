//! The decoder: one payload in, one typed value (or an [`Error`]) out.
//!
//! It follows Go's `encoding/gob` decoder step by step, so that it accepts what Go accepts:
//! type definitions are read until a value's type id comes (a "type sequence"); a value
//! may continue in the next message when an `interface{}` inside it needed a new type
//! definition (Go's encoder flushes the message there); struct fields are matched by
//! name, unknown ones skipped; types are checked for compatibility before any value is
//! read, including fields the data leaves out, as Go compiles its decoder.

use std::cell::RefCell;
use std::collections::HashMap;

use litemap::LiteMap;
use std::sync::Arc;

use crate::error::{Error, ErrorKind, Result};
use crate::types::*;
use crate::value::{Kind, Value};
use crate::wire::Reader;

/// Limits that keep hostile input cheap.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// The largest payload accepted, in bytes (default 1 MiB, NATS's default max payload).
    pub max_size: usize,
    /// The deepest nesting of values accepted (default 64).
    pub max_depth: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { max_size: 1 << 20, max_depth: 64 }
    }
}

/// The type definitions known while decoding one payload: those of a cached, identical
/// prefix of definition messages, and those read here.
#[derive(Default)]
struct Types {
    base: Option<Table>,
    extra: HashMap<i64, WireType>,
}

impl Types {
    fn get(&self, id: &i64) -> Option<&WireType> {
        self.extra.get(id).or_else(|| self.base.as_ref().and_then(|b| b.get(id)))
    }

    fn contains_key(&self, id: &i64) -> bool {
        self.get(id).is_some()
    }

    fn insert(&mut self, id: i64, wt: WireType) {
        self.extra.insert(id, wt);
    }
}

/// How many parsed definition prefixes each thread keeps. Every message from one Go node
/// starts with the same definitions (a fresh encoder per message), so a few entries serve
/// a whole cluster's keep-alives; hostile input can only evict entries.
const PREFIX_CACHE_ENTRIES: usize = 16;

/// A parsed table of type definitions, shared by every payload with the same prefix.
type Table = Arc<HashMap<i64, WireType>>;

/// Prefix bytes with their parsed table, and the next entry to replace when full.
type PrefixCache = (Vec<(Box<[u8]>, Table)>, usize);

thread_local! {
    static PREFIX_CACHE: RefCell<PrefixCache> = const { RefCell::new((Vec::new(), 0)) };
}

fn cached_prefix(prefix: &[u8]) -> Option<Table> {
    PREFIX_CACHE.with(|c| c.borrow().0.iter().find(|(p, _)| **p == *prefix).map(|(_, t)| t.clone()))
}

fn cache_prefix(prefix: &[u8], table: Table) {
    PREFIX_CACHE.with(|c| {
        let (entries, next) = &mut *c.borrow_mut();
        let entry = (prefix.into(), table);
        if entries.len() < PREFIX_CACHE_ENTRIES {
            entries.push(entry);
        } else {
            entries[*next] = entry;
            *next = (*next + 1) % PREFIX_CACHE_ENTRIES;
        }
    });
}

/// The length of the leading messages that are type definitions (0 if none or unreadable).
fn definitions_prefix(payload: &[u8]) -> usize {
    let mut r = Reader::new(payload);
    loop {
        let start = r.pos();
        if start == payload.len() || r.next_message().is_err() {
            return start;
        }
        match r.int() {
            Ok(id) if id < 0 => r.skip(r.left() as u64).expect("within the message"),
            _ => return start,
        }
    }
}

/// Decoder state for one payload.
pub(crate) struct Dec<'a> {
    pub(crate) r: Reader<'a>,
    types: Types,
    depth: usize,
    max_depth: usize,
}

/// A type the decoder can fill: Go's `compatibleType` as [`Decode::check`] and the value
/// decoding as [`Decode::decode`].
pub(crate) trait Decode: Sized {
    /// The Go type, for error messages.
    fn go_name() -> String;
    /// Fails unless a value of wire type `id` can be decoded into `Self` (what Go checks
    /// when it compiles a decoder). `top` is set for the outermost value only.
    fn check(d: &Dec<'_>, id: i64, top: bool) -> Result<()>;
    /// Decodes one value of the (checked) wire type `id`.
    fn decode(d: &mut Dec<'_>, id: i64) -> Result<Self>;
}

/// Decodes one payload holding one value of a struct type `T`.
pub(crate) fn decode<T: Decode>(payload: &[u8], limits: &Limits) -> Result<T> {
    if payload.len() > limits.max_size {
        return Err(Error::new(0, ErrorKind::TooLarge { size: payload.len(), limit: limits.max_size }));
    }
    let mut d = Dec { r: Reader::new(payload), types: Types::default(), depth: 0, max_depth: limits.max_depth };
    let prefix = &payload[..definitions_prefix(payload)];
    let cached = if prefix.is_empty() { None } else { cached_prefix(prefix) };
    if let Some(table) = &cached {
        d.types.base = Some(table.clone());
        d.r.seek_message_boundary(prefix.len());
    }
    let at = d.r.pos();
    let id = d.type_sequence(false)?;
    if cached.is_none() && !prefix.is_empty() {
        // The definitions just read are exactly the prefix's: they become the cached table.
        let table: Table = Arc::new(std::mem::take(&mut d.types.extra));
        cache_prefix(prefix, table.clone());
        d.types.base = Some(table);
    }
    d.check_defined(id, &mut Vec::new()).map_err(|k| Error::new(at, k))?;
    T::check(&d, id, true)?;
    T::decode(&mut d, id)
}

/// What skipping a value of a composite wire type needs to know.
enum Shape {
    Array { elem: i64, len: u64 },
    Slice { elem: i64 },
    Map { key: i64, elem: i64 },
    Struct { fields: usize },
    Encoded,
}

impl<'a> Dec<'a> {
    fn err(&self, kind: ErrorKind) -> Error {
        self.r.err(kind)
    }

    pub(crate) fn wire(&self, id: i64) -> Option<&WireType> {
        self.types.get(&id)
    }

    /// A readable name of wire type `id`.
    pub(crate) fn describe(&self, id: i64) -> String {
        if let Some(n) = builtin_name(id) {
            return n.to_owned();
        }
        match self.types.get(&id) {
            Some(wt) if !wt.name().is_empty() => wt.name().to_owned(),
            Some(WireType::Slice { elem, .. }) => format!("[]{}", self.describe_shallow(*elem)),
            Some(WireType::Array { elem, len, .. }) => {
                format!("[{len}]{}", self.describe_shallow(*elem))
            }
            Some(WireType::Map { key, elem, .. }) => {
                format!("map[{}]{}", self.describe_shallow(*key), self.describe_shallow(*elem))
            }
            Some(_) => format!("type {id}"),
            None => format!("undefined type {id}"),
        }
    }

    fn describe_shallow(&self, id: i64) -> String {
        builtin_name(id)
            .map(str::to_owned)
            .or_else(|| self.types.get(&id).map(|w| w.name().to_owned()).filter(|n| !n.is_empty()))
            .unwrap_or_else(|| format!("type {id}"))
    }

    pub(crate) fn mismatch(&self, local: impl Into<String>, id: i64) -> Error {
        self.err(ErrorKind::TypeMismatch { local: local.into(), remote: self.describe(id) })
    }

    /// Reads type definitions until a value's type id; Go's `decodeTypeSequence`.
    pub(crate) fn type_sequence(&mut self, in_interface: bool) -> Result<i64> {
        loop {
            if self.r.at_message_end() {
                self.r.next_message()?;
            }
            let at = self.r.pos();
            let id = self.r.int()?;
            if id >= 0 {
                return Ok(id);
            }
            let id = id.checked_neg().ok_or_else(|| Error::new(at, ErrorKind::UnknownTypeId(id)))?;
            if id < FIRST_USER_ID || self.types.contains_key(&id) {
                return Err(Error::new(at, ErrorKind::DuplicateType(id)));
            }
            let wt = parse_wire_type(&mut self.r)?;
            self.types.insert(id, wt);
            if !self.r.at_message_end() {
                if !in_interface {
                    return Err(self.err(ErrorKind::ExtraData));
                }
                // Inside an interface value a delimited value may follow; its count is not needed.
                self.r.uint()?;
            }
        }
    }

    /// Fails when `id` or any type it refers to is undefined (Go's compile-time check,
    /// which also covers fields the local type does not have).
    pub(crate) fn check_defined(&self, id: i64, seen: &mut Vec<i64>) -> Result<(), ErrorKind> {
        if builtin_name(id).is_some() || seen.contains(&id) {
            return Ok(());
        }
        let wt = self.types.get(&id).ok_or(ErrorKind::UnknownTypeId(id))?;
        seen.push(id);
        match wt {
            WireType::Array { elem, .. } | WireType::Slice { elem, .. } => self.check_defined(*elem, seen),
            WireType::Map { key, elem, .. } => {
                self.check_defined(*key, seen)?;
                self.check_defined(*elem, seen)
            }
            WireType::Struct { fields, .. } => {
                for (name, fid) in fields {
                    if name.is_empty() {
                        return Err(ErrorKind::InvalidTypeDefinition("struct field without a name"));
                    }
                    self.check_defined(*fid, seen)?;
                }
                Ok(())
            }
            WireType::Encoded { .. } => Ok(()),
        }
    }

    fn enter(&mut self) -> Result<()> {
        self.depth += 1;
        if self.depth > self.max_depth {
            return Err(self.err(ErrorKind::TooDeep(self.max_depth)));
        }
        Ok(())
    }

    fn leave(&mut self) {
        self.depth -= 1;
    }

    /// Checks a local struct against wire type `id`: it must be a struct, every field both
    /// sides name must be compatible, and at the top level at least one must match.
    pub(crate) fn check_struct(
        &self,
        id: i64,
        local: &'static str,
        fields: &[(&'static str, CheckFn)],
        top: bool,
    ) -> Result<()> {
        let Some(WireType::Struct { fields: wire_fields, .. }) = self.types.get(&id) else {
            return Err(self.mismatch(local, id));
        };
        let mut matched = 0;
        for (name, fid) in wire_fields {
            if let Some((_, check)) = fields.iter().find(|(n, _)| n == name) {
                check(self, *fid, false).map_err(|e| match e.kind {
                    ErrorKind::TypeMismatch { local: l, remote } => {
                        self.err(ErrorKind::TypeMismatch { local: format!("{local}.{name} ({l})"), remote })
                    }
                    _ => e,
                })?;
                matched += 1;
            }
        }
        if top && matched == 0 && !fields.is_empty() && !wire_fields.is_empty() {
            return Err(self.err(ErrorKind::NoFieldsMatched(local)));
        }
        Ok(())
    }

    /// Decodes the fields of a struct value of wire type `id`: `f(dec, local_name, field_id)`
    /// for each field the local struct has (by name), skipping the others.
    pub(crate) fn decode_struct(
        &mut self,
        id: i64,
        local_fields: &[&'static str],
        mut f: impl FnMut(&mut Self, &'static str, i64) -> Result<()>,
    ) -> Result<()> {
        self.enter()?;
        let nfields = match self.types.get(&id) {
            Some(WireType::Struct { fields, .. }) => fields.len(),
            _ => return Err(self.mismatch("struct", id)),
        };
        let mut field: i64 = -1;
        while let Some(i) = self.r.next_field(&mut field, nfields)? {
            let (local, fid) = match self.types.get(&id) {
                Some(WireType::Struct { fields, .. }) => {
                    let (name, fid) = &fields[i];
                    (local_fields.iter().find(|n| *n == name).copied(), *fid)
                }
                _ => unreachable!("checked above"),
            };
            match local {
                Some(name) => f(self, name, fid)?,
                None => self.skip(fid)?,
            }
        }
        self.leave();
        Ok(())
    }

    /// Skips one value of wire type `id` (Go's ignore operations).
    pub(crate) fn skip(&mut self, id: i64) -> Result<()> {
        match id {
            T_BOOL | T_INT | T_UINT | T_FLOAT => self.r.uint().map(drop),
            T_COMPLEX => {
                self.r.uint()?;
                self.r.uint().map(drop)
            }
            T_BYTES | T_STRING => self.r.bytes().map(drop),
            T_INTERFACE => self.skip_interface(),
            _ => {
                // Only the shape is copied out (no names, no field lists): a newer peer's
                // unknown fields are skipped in every keep-alive.
                let shape = match self.types.get(&id) {
                    Some(WireType::Array { elem, len, .. }) => Shape::Array { elem: *elem, len: *len },
                    Some(WireType::Slice { elem, .. }) => Shape::Slice { elem: *elem },
                    Some(WireType::Map { key, elem, .. }) => Shape::Map { key: *key, elem: *elem },
                    Some(WireType::Struct { fields, .. }) => Shape::Struct { fields: fields.len() },
                    Some(WireType::Encoded { .. }) => Shape::Encoded,
                    None => return Err(self.err(ErrorKind::UnknownTypeId(id))),
                };
                self.enter()?;
                match shape {
                    Shape::Array { elem, len } => {
                        let got = self.r.uint()?;
                        if got != len {
                            return Err(self.err(ErrorKind::ArrayLength { expected: len, got }));
                        }
                        if got > self.r.left() as u64 {
                            return Err(self.err(ErrorKind::LengthTooLarge { len: got, left: self.r.left() }));
                        }
                        for _ in 0..got {
                            self.skip(elem)?;
                        }
                    }
                    Shape::Slice { elem } => {
                        for _ in 0..self.r.count(1)? {
                            self.skip(elem)?;
                        }
                    }
                    Shape::Map { key, elem } => {
                        for _ in 0..self.r.count(2)? {
                            self.skip(key)?;
                            self.skip(elem)?;
                        }
                    }
                    Shape::Struct { fields } => {
                        let mut field: i64 = -1;
                        while let Some(i) = self.r.next_field(&mut field, fields)? {
                            let fid = match self.types.get(&id) {
                                Some(WireType::Struct { fields, .. }) => fields[i].1,
                                _ => unreachable!("a struct above"),
                            };
                            self.skip(fid)?;
                        }
                    }
                    Shape::Encoded => {
                        self.r.bytes()?;
                    }
                }
                self.leave();
                Ok(())
            }
        }
    }

    /// Skips an `interface{}` value by its byte count, as Go's `ignoreInterface` does.
    fn skip_interface(&mut self) -> Result<()> {
        if self.r.bytes()?.is_empty() {
            return Ok(());
        }
        self.type_sequence(true)?;
        let n = self.r.uint()?;
        self.r.skip(n)
    }

    /// Decodes an `interface{}` value into a [`Value`] (Go's `decodeInterface`).
    pub(crate) fn interface(&mut self) -> Result<Value> {
        let at = self.r.pos();
        let name = self.r.bytes()?;
        if name.is_empty() {
            return Ok(Value::Nil);
        }
        let Some(concrete) = Concrete::from_name(name) else {
            let name = String::from_utf8_lossy(name).into_owned();
            return Err(Error::new(at, ErrorKind::UnregisteredInterfaceType(name)));
        };
        let id_at = self.r.pos();
        let id = self.type_sequence(true)?;
        self.check_defined(id, &mut Vec::new()).map_err(|k| Error::new(id_at, k))?;
        // The byte count of the value; only needed to skip it.
        self.r.uint()?;
        let delta = self.r.uint()?;
        if delta != 0 {
            return Err(self.err(ErrorKind::BadSingletonDelta(delta)));
        }
        self.enter()?;
        let v = self.concrete(concrete, id)?;
        self.leave();
        Ok(v)
    }

    fn concrete(&mut self, c: Concrete, id: i64) -> Result<Value> {
        match c {
            Concrete::Scalar(k) => {
                if id != kind_wire_id(k) {
                    return Err(self.mismatch(k.go_name(), id));
                }
                self.scalar(k)
            }
            Concrete::Bytes => {
                if id != T_BYTES {
                    return Err(self.mismatch("[]uint8", id));
                }
                Ok(Value::Bytes(self.r.bytes()?.to_vec()))
            }
            Concrete::Slice(k) => match self.types.get(&id) {
                Some(WireType::Slice { elem, .. }) if *elem == kind_wire_id(k) => {
                    let n = self.r.count(1)?;
                    let mut items = Vec::with_capacity(n);
                    for _ in 0..n {
                        items.push(self.scalar(k)?);
                    }
                    Ok(Value::Slice(k, items))
                }
                _ => Err(self.mismatch(k.go_slice_name(), id)),
            },
            Concrete::List => match self.types.get(&id) {
                Some(WireType::Slice { elem: T_INTERFACE, .. }) => {
                    let n = self.r.count(1)?;
                    let mut items = Vec::with_capacity(n);
                    for _ in 0..n {
                        items.push(self.interface()?);
                    }
                    Ok(Value::List(items))
                }
                _ => Err(self.mismatch("[]interface {}", id)),
            },
            Concrete::Map => match self.types.get(&id) {
                Some(WireType::Map { key: T_STRING, elem: T_INTERFACE, .. }) => {
                    let n = self.r.count(2)?;
                    let mut entries = Vec::with_capacity(n.min(64));
                    for _ in 0..n {
                        let k = self.string()?;
                        let v = self.interface()?;
                        entries.push((k, v));
                    }
                    Ok(Value::Map(sorted_map(entries)))
                }
                _ => Err(self.mismatch("map[string]interface {}", id)),
            },
        }
    }

    /// One scalar of kind `k` (its wire type already checked), with Go's range checks.
    fn scalar(&mut self, k: Kind) -> Result<Value> {
        let at = self.r.pos();
        let range = |ty: &'static str| Error::new(at, ErrorKind::OutOfRange(ty));
        Ok(match k {
            Kind::Bool => Value::Bool(self.r.uint()? != 0),
            Kind::Int => Value::Int(self.r.int()?),
            Kind::Int64 => Value::Int64(self.r.int()?),
            Kind::Int8 => Value::Int8(i8::try_from(self.r.int()?).map_err(|_| range("int8"))?),
            Kind::Int16 => Value::Int16(i16::try_from(self.r.int()?).map_err(|_| range("int16"))?),
            Kind::Int32 => Value::Int32(i32::try_from(self.r.int()?).map_err(|_| range("int32"))?),
            Kind::Uint => Value::Uint(self.r.uint()?),
            Kind::Uint64 => Value::Uint64(self.r.uint()?),
            Kind::Uintptr => Value::Uintptr(self.r.uint()?),
            Kind::Uint8 => Value::Uint8(u8::try_from(self.r.uint()?).map_err(|_| range("uint8"))?),
            Kind::Uint16 => Value::Uint16(u16::try_from(self.r.uint()?).map_err(|_| range("uint16"))?),
            Kind::Uint32 => Value::Uint32(u32::try_from(self.r.uint()?).map_err(|_| range("uint32"))?),
            Kind::Float64 => Value::Float64(self.r.float()?),
            Kind::Float32 => Value::Float32(float32(self.r.float()?).ok_or_else(|| range("float32"))?),
            Kind::Complex128 => Value::Complex128(self.r.float()?, self.r.float()?),
            Kind::Complex64 => {
                let re = float32(self.r.float()?).ok_or_else(|| range("complex64"))?;
                let im = float32(self.r.float()?).ok_or_else(|| range("complex64"))?;
                Value::Complex64(re, im)
            }
            Kind::String => Value::String(self.string()?),
        })
    }

    /// A Go string. Go does not require UTF-8; invalid sequences become U+FFFD here.
    pub(crate) fn string(&mut self) -> Result<String> {
        let b = self.r.bytes()?;
        Ok(match std::str::from_utf8(b) {
            Ok(s) => s.to_owned(),
            Err(_) => String::from_utf8_lossy(b).into_owned(),
        })
    }
}

/// Go's float64-to-float32 conversion check: finite values beyond float32's range fail.
fn float32(v: f64) -> Option<f32> {
    if v.is_finite() && v.abs() > f64::from(f32::MAX) { None } else { Some(v as f32) }
}

/// The predefined wire type of a scalar kind.
pub(crate) fn kind_wire_id(k: Kind) -> i64 {
    match k {
        Kind::Bool => T_BOOL,
        Kind::Int | Kind::Int8 | Kind::Int16 | Kind::Int32 | Kind::Int64 => T_INT,
        Kind::Uint | Kind::Uint8 | Kind::Uint16 | Kind::Uint32 | Kind::Uint64 | Kind::Uintptr => T_UINT,
        Kind::Float32 | Kind::Float64 => T_FLOAT,
        Kind::Complex64 | Kind::Complex128 => T_COMPLEX,
        Kind::String => T_STRING,
    }
}

/// The Go types an `interface{}` may hold here, by registered name.
#[derive(Clone, Copy)]
enum Concrete {
    Scalar(Kind),
    Bytes,
    Slice(Kind),
    List,
    Map,
}

impl Concrete {
    fn from_name(name: &[u8]) -> Option<Concrete> {
        let name = std::str::from_utf8(name).ok()?;
        match name {
            "[]uint8" => return Some(Concrete::Bytes),
            "[]interface {}" => return Some(Concrete::List),
            "map[string]interface {}" => return Some(Concrete::Map),
            _ => {}
        }
        Kind::ALL.iter().find_map(|&k| {
            if k.go_name() == name {
                Some(Concrete::Scalar(k))
            } else if k.go_slice_name() == name {
                Some(Concrete::Slice(k))
            } else {
                None
            }
        })
    }
}

/// A compatibility check for one local field type.
pub(crate) type CheckFn = fn(&Dec<'_>, i64, bool) -> Result<()>;

impl Decode for String {
    fn go_name() -> String {
        "string".into()
    }
    fn check(d: &Dec<'_>, id: i64, _: bool) -> Result<()> {
        if id == T_STRING { Ok(()) } else { Err(d.mismatch("string", id)) }
    }
    fn decode(d: &mut Dec<'_>, _: i64) -> Result<Self> {
        d.string()
    }
}

impl Decode for bool {
    fn go_name() -> String {
        "bool".into()
    }
    fn check(d: &Dec<'_>, id: i64, _: bool) -> Result<()> {
        if id == T_BOOL { Ok(()) } else { Err(d.mismatch("bool", id)) }
    }
    fn decode(d: &mut Dec<'_>, _: i64) -> Result<Self> {
        Ok(d.r.uint()? != 0)
    }
}

impl Decode for Value {
    fn go_name() -> String {
        "interface {}".into()
    }
    fn check(d: &Dec<'_>, id: i64, _: bool) -> Result<()> {
        if id == T_INTERFACE { Ok(()) } else { Err(d.mismatch("interface {}", id)) }
    }
    fn decode(d: &mut Dec<'_>, _: i64) -> Result<Self> {
        d.interface()
    }
}

/// A map of decoded entries, sorted once in place (a later duplicate key wins, as in Go):
/// O(n log n) whatever order the peer sent, and no second allocation.
fn sorted_map<V>(mut entries: Vec<(String, V)>) -> LiteMap<String, V> {
    if !entries.is_sorted_by(|a, b| a.0 < b.0) {
        entries.sort_by(|a, b| a.0.cmp(&b.0)); // stable: duplicates keep their order
        // `dedup_by` keeps the first of equal keys: give it the later value.
        entries.dedup_by(|later, earlier| {
            let same = later.0 == earlier.0;
            if same {
                std::mem::swap(&mut later.1, &mut earlier.1);
            }
            same
        });
    }
    LiteMap::from_sorted_store_unchecked(entries)
}

impl<V: Decode> Decode for LiteMap<String, V> {
    fn go_name() -> String {
        format!("map[string]{}", V::go_name())
    }
    fn check(d: &Dec<'_>, id: i64, _: bool) -> Result<()> {
        match d.wire(id) {
            Some(WireType::Map { key, elem, .. }) if *key == T_STRING => V::check(d, *elem, false),
            _ => Err(d.mismatch(Self::go_name(), id)),
        }
    }
    fn decode(d: &mut Dec<'_>, id: i64) -> Result<Self> {
        let Some(&WireType::Map { elem, .. }) = d.wire(id) else {
            return Err(d.mismatch(Self::go_name(), id));
        };
        d.enter()?;
        let n = d.r.count(2)?;
        let mut entries = Vec::with_capacity(n.min(64));
        for _ in 0..n {
            let k = d.string()?;
            let v = V::decode(d, elem)?;
            entries.push((k, v));
        }
        d.leave();
        Ok(sorted_map(entries))
    }
}

impl<T: Decode> Decode for Vec<T> {
    fn go_name() -> String {
        format!("[]{}", T::go_name())
    }
    fn check(d: &Dec<'_>, id: i64, _: bool) -> Result<()> {
        match d.wire(id) {
            Some(WireType::Slice { elem, .. }) => T::check(d, *elem, false),
            _ => Err(d.mismatch(Self::go_name(), id)),
        }
    }
    fn decode(d: &mut Dec<'_>, id: i64) -> Result<Self> {
        let Some(&WireType::Slice { elem, .. }) = d.wire(id) else {
            return Err(d.mismatch(Self::go_name(), id));
        };
        d.enter()?;
        let n = d.r.count(1)?;
        let mut items = Vec::with_capacity(n.min(1024));
        for _ in 0..n {
            items.push(T::decode(d, elem)?);
        }
        d.leave();
        Ok(items)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn map_entries_are_sorted_once_and_a_later_duplicate_wins() {
        let entries: Vec<(String, u8)> = [("b", 1), ("a", 2), ("b", 3), ("c", 4), ("b", 5), ("a", 6)]
            .iter()
            .map(|(k, v)| ((*k).to_owned(), *v))
            .collect();
        let map = super::sorted_map(entries);
        assert_eq!(map.iter().map(|(k, v)| (k.as_str(), *v)).collect::<Vec<_>>(), [("a", 6), ("b", 5), ("c", 4)]);
        let sorted = super::sorted_map(vec![("x".to_owned(), 1u8), ("y".to_owned(), 2)]);
        assert_eq!(sorted.len(), 2);
    }
}
