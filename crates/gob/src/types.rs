//! Wire types: the predefined type ids and the type definitions a message carries.
//!
//! A definition is itself a gob value of Go's `wireType` struct (predefined id 16):
//!
//! ```text
//! wireType   { ArrayT *arrayType; SliceT *sliceType; StructT *structType; MapT *mapType;
//!              GobEncoderT, BinaryMarshalerT, TextMarshalerT *gobEncoderType }
//! CommonType { Name string; Id int }
//! arrayType  { CommonType; Elem int; Len int }
//! sliceType  { CommonType; Elem int }
//! structType { CommonType; Field []struct{ Name string; Id int } }
//! mapType    { CommonType; Key int; Elem int }
//! gobEncoderType { CommonType }
//! ```

use crate::error::{ErrorKind, Result};
use crate::wire::Reader;

/// Go `bool`.
pub(crate) const T_BOOL: i64 = 1;
/// Every signed integer width.
pub(crate) const T_INT: i64 = 2;
/// Every unsigned integer width and `uintptr`.
pub(crate) const T_UINT: i64 = 3;
/// `float32` and `float64`.
pub(crate) const T_FLOAT: i64 = 4;
/// `[]byte`.
pub(crate) const T_BYTES: i64 = 5;
/// `string`.
pub(crate) const T_STRING: i64 = 6;
/// `complex64` and `complex128`.
pub(crate) const T_COMPLEX: i64 = 7;
/// `interface{}`.
pub(crate) const T_INTERFACE: i64 = 8;
/// The first id a message may define.
pub(crate) const FIRST_USER_ID: i64 = 65;

/// The name of a predefined type, for error messages.
pub(crate) fn builtin_name(id: i64) -> Option<&'static str> {
    Some(match id {
        T_BOOL => "bool",
        T_INT => "int",
        T_UINT => "uint",
        T_FLOAT => "float",
        T_BYTES => "[]byte",
        T_STRING => "string",
        T_COMPLEX => "complex",
        T_INTERFACE => "interface",
        _ => return None,
    })
}

/// A type definition received on the wire.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum WireType {
    Array {
        name: String,
        elem: i64,
        len: u64,
    },
    Slice {
        name: String,
        elem: i64,
    },
    Struct {
        name: String,
        fields: Vec<(String, i64)>,
    },
    Map {
        name: String,
        key: i64,
        elem: i64,
    },
    /// A GobEncoder, BinaryMarshaler or TextMarshaler: its value is a byte string.
    Encoded {
        name: String,
    },
}

impl WireType {
    pub(crate) fn name(&self) -> &str {
        match self {
            WireType::Array { name, .. }
            | WireType::Slice { name, .. }
            | WireType::Struct { name, .. }
            | WireType::Map { name, .. }
            | WireType::Encoded { name } => name,
        }
    }
}

/// Calls `f(reader, field_index)` for every field present in a gob struct value, in order,
/// until the terminating zero delta. `fields` is how many fields the struct type has.
pub(crate) fn walk_struct(
    r: &mut Reader<'_>,
    fields: usize,
    mut f: impl FnMut(&mut Reader<'_>, usize) -> Result<()>,
) -> Result<()> {
    let mut field: i64 = -1;
    while let Some(i) = r.next_field(&mut field, fields)? {
        f(r, i)?;
    }
    Ok(())
}

fn string(r: &mut Reader<'_>) -> Result<String> {
    Ok(String::from_utf8_lossy(r.bytes()?).into_owned())
}

/// `CommonType { Name string; Id int }`: the name (the id in the data is not used; the
/// message's own id is authoritative, as in Go).
fn common(r: &mut Reader<'_>) -> Result<String> {
    let mut name = String::new();
    walk_struct(r, 2, |r, f| {
        match f {
            0 => name = string(r)?,
            _ => {
                r.int()?;
            }
        }
        Ok(())
    })?;
    Ok(name)
}

/// Parses one `wireType` value.
pub(crate) fn parse_wire_type(r: &mut Reader<'_>) -> Result<WireType> {
    let start = r.pos();
    let mut found: Option<WireType> = None;
    let mut kinds = 0;
    walk_struct(r, 7, |r, f| {
        kinds += 1;
        let mut name = String::new();
        let wt = match f {
            0 => {
                let (mut elem, mut len) = (0, 0i64);
                walk_struct(r, 3, |r, g| {
                    match g {
                        0 => name = common(r)?,
                        1 => elem = r.int()?,
                        _ => len = r.int()?,
                    }
                    Ok(())
                })?;
                let len =
                    u64::try_from(len).map_err(|_| r.err(ErrorKind::InvalidTypeDefinition("negative array length")))?;
                WireType::Array { name, elem, len }
            }
            1 => {
                let mut elem = 0;
                walk_struct(r, 2, |r, g| {
                    match g {
                        0 => name = common(r)?,
                        _ => elem = r.int()?,
                    }
                    Ok(())
                })?;
                WireType::Slice { name, elem }
            }
            2 => {
                let mut fields = Vec::new();
                walk_struct(r, 2, |r, g| {
                    match g {
                        0 => name = common(r)?,
                        _ => {
                            let n = r.count(1)?;
                            fields.reserve(n);
                            for _ in 0..n {
                                let (mut fname, mut id) = (String::new(), 0);
                                walk_struct(r, 2, |r, h| {
                                    match h {
                                        0 => fname = string(r)?,
                                        _ => id = r.int()?,
                                    }
                                    Ok(())
                                })?;
                                fields.push((fname, id));
                            }
                        }
                    }
                    Ok(())
                })?;
                WireType::Struct { name, fields }
            }
            3 => {
                let (mut key, mut elem) = (0, 0);
                walk_struct(r, 3, |r, g| {
                    match g {
                        0 => name = common(r)?,
                        1 => key = r.int()?,
                        _ => elem = r.int()?,
                    }
                    Ok(())
                })?;
                WireType::Map { name, key, elem }
            }
            _ => {
                walk_struct(r, 1, |r, _| {
                    name = common(r)?;
                    Ok(())
                })?;
                WireType::Encoded { name }
            }
        };
        found = Some(wt);
        Ok(())
    })?;
    match (found, kinds) {
        (Some(wt), 1) => Ok(wt),
        (None, _) => Err(crate::Error::new(start, ErrorKind::InvalidTypeDefinition("no kind of type given"))),
        _ => Err(crate::Error::new(start, ErrorKind::InvalidTypeDefinition("more than one kind of type given"))),
    }
}
