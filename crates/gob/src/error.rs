//! Decoding errors: what went wrong and at which byte of the payload.

use std::fmt;

/// A decoding error: the kind of problem and the byte offset in the payload where it was
/// found. Hostile input ends here, never in a panic.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("gob: {kind} (at byte {offset})")]
pub struct Error {
    /// Byte offset in the whole payload (0 = first byte).
    pub offset: usize,
    /// What was wrong.
    pub kind: ErrorKind,
}

impl Error {
    pub(crate) fn new(offset: usize, kind: ErrorKind) -> Self {
        Error { offset, kind }
    }
}

/// What was wrong with a gob payload.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The payload is larger than the configured limit.
    TooLarge {
        /// Payload size.
        size: usize,
        /// Configured limit.
        limit: usize,
    },
    /// The payload (or the current message) ended in the middle of a value.
    UnexpectedEnd,
    /// An unsigned integer announced more than 8 bytes.
    BadUint,
    /// A length or element count larger than the bytes that are left could hold.
    LengthTooLarge {
        /// The announced length or count.
        len: u64,
        /// Bytes left in the current message.
        left: usize,
    },
    /// A message of length zero.
    EmptyMessage,
    /// A type definition for an id that is predefined or already defined.
    DuplicateType(i64),
    /// A type id that is neither predefined nor defined in this payload.
    UnknownTypeId(i64),
    /// A type definition that is not exactly one of array, slice, struct, map or encoder.
    InvalidTypeDefinition(&'static str),
    /// Bytes left after a type definition message.
    ExtraData,
    /// A struct field number beyond the fields its type defines.
    FieldOutOfRange {
        /// The field number received.
        field: i64,
        /// How many fields the type defines.
        fields: usize,
    },
    /// The remote type cannot be decoded into the local one.
    TypeMismatch {
        /// The local (Rust/Go target) type.
        local: String,
        /// The remote type as defined on the wire.
        remote: String,
    },
    /// A remote struct shares no field name with the local struct.
    NoFieldsMatched(&'static str),
    /// An `interface{}` value of a Go type that is not registered here.
    UnregisteredInterfaceType(String),
    /// A number that does not fit the Go type it was sent as.
    OutOfRange(&'static str),
    /// Values nested deeper than the configured limit.
    TooDeep(usize),
    /// A singleton value whose field delta is not zero.
    BadSingletonDelta(u64),
    /// An array whose element count differs from its type's length.
    ArrayLength {
        /// Length in the type definition.
        expected: u64,
        /// Count in the data.
        got: u64,
    },
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use ErrorKind::*;
        match self {
            TooLarge { size, limit } => write!(f, "message of {size} bytes exceeds the limit of {limit} bytes"),
            UnexpectedEnd => write!(f, "unexpected end of data"),
            BadUint => write!(f, "unsigned integer longer than 8 bytes"),
            LengthTooLarge { len, left } => write!(f, "length {len} exceeds the {left} bytes left"),
            EmptyMessage => write!(f, "empty message"),
            DuplicateType(id) => write!(f, "duplicate type definition for id {id}"),
            UnknownTypeId(id) => write!(f, "unknown type id {id}"),
            InvalidTypeDefinition(why) => write!(f, "invalid type definition: {why}"),
            ExtraData => write!(f, "extra data after a type definition"),
            FieldOutOfRange { field, fields } => {
                write!(f, "field number {field} out of range (type has {fields} fields)")
            }
            TypeMismatch { local, remote } => write!(f, "cannot decode remote type {remote} into local type {local}"),
            NoFieldsMatched(name) => {
                write!(f, "type mismatch: no fields matched decoding into {name}")
            }
            UnregisteredInterfaceType(name) => {
                write!(f, "interface value of unregistered or unsupported Go type {name:?}")
            }
            OutOfRange(ty) => write!(f, "value out of range for {ty}"),
            TooDeep(limit) => write!(f, "values nested deeper than {limit} levels"),
            BadSingletonDelta(d) => write!(f, "corrupted data: non-zero delta {d} for a singleton value"),
            ArrayLength { expected, got } => {
                write!(f, "array of length {expected} received {got} elements")
            }
        }
    }
}

/// A decoding result.
pub type Result<T, E = Error> = std::result::Result<T, E>;
