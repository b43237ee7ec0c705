//! `interface{}` values that keep their Go type.
//!
//! A Go node may put any registered type into `Node.ExtraInfo` or `Request.Params`. Gob
//! sends such a value with the name of its concrete Go type, and a Go decoder rebuilds that
//! exact type: an `int8` stays an `int8`. [`Value`] keeps the type too, so islb can forward
//! a node's `ExtraInfo` to Go watchers unchanged.

use std::fmt;

/// A map of `interface{}` values keyed by string, as `map[string]interface{}` in Go.
/// Sorted, so encoding is deterministic.
pub type ValueMap = litemap::LiteMap<String, Value>;

/// A Go `map[string]string` (RPC params), kept as one sorted `Vec` like [`ValueMap`].
pub type StringMap = litemap::LiteMap<String, String>;

/// The scalar Go types that may stand alone in an `interface{}` or be the element of a
/// registered slice type (`[]int`, `[]string`...).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[allow(missing_docs)]
pub enum Kind {
    Bool,
    Int,
    Int8,
    Int16,
    Int32,
    Int64,
    Uint,
    Uint8,
    Uint16,
    Uint32,
    Uint64,
    Uintptr,
    Float32,
    Float64,
    Complex64,
    Complex128,
    String,
}

impl Kind {
    /// Every kind, in Go's registration order.
    pub const ALL: [Kind; 17] = [
        Kind::Int,
        Kind::Int8,
        Kind::Int16,
        Kind::Int32,
        Kind::Int64,
        Kind::Uint,
        Kind::Uint8,
        Kind::Uint16,
        Kind::Uint32,
        Kind::Uint64,
        Kind::Float32,
        Kind::Float64,
        Kind::Complex64,
        Kind::Complex128,
        Kind::Uintptr,
        Kind::Bool,
        Kind::String,
    ];

    /// The Go type name (`reflect.Type.String()`), which is also its gob registration name.
    pub fn go_name(self) -> &'static str {
        match self {
            Kind::Bool => "bool",
            Kind::Int => "int",
            Kind::Int8 => "int8",
            Kind::Int16 => "int16",
            Kind::Int32 => "int32",
            Kind::Int64 => "int64",
            Kind::Uint => "uint",
            Kind::Uint8 => "uint8",
            Kind::Uint16 => "uint16",
            Kind::Uint32 => "uint32",
            Kind::Uint64 => "uint64",
            Kind::Uintptr => "uintptr",
            Kind::Float32 => "float32",
            Kind::Float64 => "float64",
            Kind::Complex64 => "complex64",
            Kind::Complex128 => "complex128",
            Kind::String => "string",
        }
    }

    /// The name of the Go slice type of this element (`[]int`...); `[]uint8` is `[]byte`.
    pub fn go_slice_name(self) -> &'static str {
        match self {
            Kind::Bool => "[]bool",
            Kind::Int => "[]int",
            Kind::Int8 => "[]int8",
            Kind::Int16 => "[]int16",
            Kind::Int32 => "[]int32",
            Kind::Int64 => "[]int64",
            Kind::Uint => "[]uint",
            Kind::Uint8 => "[]uint8",
            Kind::Uint16 => "[]uint16",
            Kind::Uint32 => "[]uint32",
            Kind::Uint64 => "[]uint64",
            Kind::Uintptr => "[]uintptr",
            Kind::Float32 => "[]float32",
            Kind::Float64 => "[]float64",
            Kind::Complex64 => "[]complex64",
            Kind::Complex128 => "[]complex128",
            Kind::String => "[]string",
        }
    }

    /// Whether `v` is a value of this kind.
    pub fn matches(self, v: &Value) -> bool {
        v.kind() == Some(self)
    }
}

/// A Go `interface{}` value of one of the types gob registers by default, plus the two
/// that ion nodes register (`[]interface {}` and `map[string]interface {}`).
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// A nil interface.
    Nil,
    /// `bool`
    Bool(bool),
    /// `int` (64-bit on every platform ion runs on)
    Int(i64),
    /// `int8`
    Int8(i8),
    /// `int16`
    Int16(i16),
    /// `int32`
    Int32(i32),
    /// `int64`
    Int64(i64),
    /// `uint`
    Uint(u64),
    /// `uint8`
    Uint8(u8),
    /// `uint16`
    Uint16(u16),
    /// `uint32`
    Uint32(u32),
    /// `uint64`
    Uint64(u64),
    /// `uintptr`
    Uintptr(u64),
    /// `float32`
    Float32(f32),
    /// `float64`
    Float64(f64),
    /// `complex64` (real, imaginary)
    Complex64(f32, f32),
    /// `complex128` (real, imaginary)
    Complex128(f64, f64),
    /// `string`
    String(String),
    /// `[]byte` (`[]uint8`)
    Bytes(Vec<u8>),
    /// A slice of a scalar type, e.g. `[]string` or `[]int64`; every item is of that kind.
    Slice(Kind, Vec<Value>),
    /// `[]interface {}`
    List(Vec<Value>),
    /// `map[string]interface {}`
    Map(ValueMap),
}

impl Value {
    /// The scalar kind of this value, `None` for nil, bytes, slices, lists and maps.
    pub fn kind(&self) -> Option<Kind> {
        Some(match self {
            Value::Bool(_) => Kind::Bool,
            Value::Int(_) => Kind::Int,
            Value::Int8(_) => Kind::Int8,
            Value::Int16(_) => Kind::Int16,
            Value::Int32(_) => Kind::Int32,
            Value::Int64(_) => Kind::Int64,
            Value::Uint(_) => Kind::Uint,
            Value::Uint8(_) => Kind::Uint8,
            Value::Uint16(_) => Kind::Uint16,
            Value::Uint32(_) => Kind::Uint32,
            Value::Uint64(_) => Kind::Uint64,
            Value::Uintptr(_) => Kind::Uintptr,
            Value::Float32(_) => Kind::Float32,
            Value::Float64(_) => Kind::Float64,
            Value::Complex64(..) => Kind::Complex64,
            Value::Complex128(..) => Kind::Complex128,
            Value::String(_) => Kind::String,
            _ => return None,
        })
    }

    /// The Go type name, as gob sends it for an `interface{}` (empty for nil).
    pub fn go_type(&self) -> &'static str {
        match self {
            Value::Nil => "",
            Value::Bytes(_) => "[]uint8",
            Value::Slice(k, _) => k.go_slice_name(),
            Value::List(_) => "[]interface {}",
            Value::Map(_) => "map[string]interface {}",
            v => v.kind().map(Kind::go_name).unwrap_or(""),
        }
    }

    /// The string, if this is a Go `string`.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::String(s) => Some(s),
            _ => None,
        }
    }

    /// The value as a float when it is any Go number (for load figures a node reports).
    pub fn as_f64(&self) -> Option<f64> {
        Some(match *self {
            Value::Int(i) | Value::Int64(i) => i as f64,
            Value::Int8(i) => i.into(),
            Value::Int16(i) => i.into(),
            Value::Int32(i) => i.into(),
            Value::Uint(u) | Value::Uint64(u) | Value::Uintptr(u) => u as f64,
            Value::Uint8(u) => u.into(),
            Value::Uint16(u) => u.into(),
            Value::Uint32(u) => u.into(),
            Value::Float32(f) => f.into(),
            Value::Float64(f) => f,
            _ => return None,
        })
    }

    /// The value as an unsigned integer when it is a non-negative whole Go number.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            Value::Uint(u) | Value::Uint64(u) | Value::Uintptr(u) => Some(u),
            Value::Uint8(u) => Some(u.into()),
            Value::Uint16(u) => Some(u.into()),
            Value::Uint32(u) => Some(u.into()),
            Value::Int(i) | Value::Int64(i) => u64::try_from(i).ok(),
            Value::Int8(i) => u64::try_from(i).ok(),
            Value::Int16(i) => u64::try_from(i).ok(),
            Value::Int32(i) => u64::try_from(i).ok(),
            Value::Float32(f) if f >= 0.0 && f.fract() == 0.0 => Some(f as u64),
            Value::Float64(f) if f >= 0.0 && f.fract() == 0.0 && f < 1.9e19 => Some(f as u64),
            _ => None,
        }
    }
}

impl From<&str> for Value {
    fn from(s: &str) -> Self {
        Value::String(s.to_owned())
    }
}

impl From<String> for Value {
    fn from(s: String) -> Self {
        Value::String(s)
    }
}

impl fmt::Display for Value {
    /// Go's `fmt.Sprint` style, for logs and tables.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Nil => write!(f, "<nil>"),
            Value::Bool(b) => write!(f, "{b}"),
            Value::Int(i) | Value::Int64(i) => write!(f, "{i}"),
            Value::Int8(i) => write!(f, "{i}"),
            Value::Int16(i) => write!(f, "{i}"),
            Value::Int32(i) => write!(f, "{i}"),
            Value::Uint(u) | Value::Uint64(u) | Value::Uintptr(u) => write!(f, "{u}"),
            Value::Uint8(u) => write!(f, "{u}"),
            Value::Uint16(u) => write!(f, "{u}"),
            Value::Uint32(u) => write!(f, "{u}"),
            Value::Float32(x) => write!(f, "{x}"),
            Value::Float64(x) => write!(f, "{x}"),
            Value::Complex64(r, i) => write!(f, "({r}{i:+}i)"),
            Value::Complex128(r, i) => write!(f, "({r}{i:+}i)"),
            Value::String(s) => write!(f, "{s}"),
            Value::Bytes(b) => write!(f, "{b:?}"),
            Value::Slice(_, items) | Value::List(items) => {
                write!(f, "[")?;
                for (i, v) in items.iter().enumerate() {
                    if i > 0 {
                        write!(f, " ")?;
                    }
                    write!(f, "{v}")?;
                }
                write!(f, "]")
            }
            Value::Map(m) => {
                write!(f, "map[")?;
                for (i, (k, v)) in m.iter().enumerate() {
                    if i > 0 {
                        write!(f, " ")?;
                    }
                    write!(f, "{k}:{v}")?;
                }
                write!(f, "]")
            }
        }
    }
}

#[cfg(feature = "serde")]
impl serde::Serialize for Value {
    /// Plain JSON, as Go's `encoding/json` writes an `interface{}` (bytes as base64 are
    /// written as an array of numbers here; complex numbers as `[re, im]`).
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Value::Nil => s.serialize_none(),
            Value::Bool(b) => s.serialize_bool(*b),
            Value::Int(i) | Value::Int64(i) => s.serialize_i64(*i),
            Value::Int8(i) => s.serialize_i8(*i),
            Value::Int16(i) => s.serialize_i16(*i),
            Value::Int32(i) => s.serialize_i32(*i),
            Value::Uint(u) | Value::Uint64(u) | Value::Uintptr(u) => s.serialize_u64(*u),
            Value::Uint8(u) => s.serialize_u8(*u),
            Value::Uint16(u) => s.serialize_u16(*u),
            Value::Uint32(u) => s.serialize_u32(*u),
            Value::Float32(x) => s.serialize_f32(*x),
            Value::Float64(x) => s.serialize_f64(*x),
            Value::Complex64(r, i) => (r, i).serialize(s),
            Value::Complex128(r, i) => (r, i).serialize(s),
            Value::String(x) => s.serialize_str(x),
            Value::Bytes(b) => b.serialize(s),
            Value::Slice(_, items) | Value::List(items) => items.serialize(s),
            Value::Map(m) => m.serialize(s),
        }
    }
}
