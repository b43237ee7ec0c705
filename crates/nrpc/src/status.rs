//! gRPC status codes and the `Status` carried in an `End` frame.

use std::fmt;

use islb_proto::google::rpc;

/// A gRPC status code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[allow(missing_docs)]
pub enum Code {
    Ok = 0,
    Cancelled = 1,
    Unknown = 2,
    InvalidArgument = 3,
    DeadlineExceeded = 4,
    NotFound = 5,
    AlreadyExists = 6,
    PermissionDenied = 7,
    ResourceExhausted = 8,
    FailedPrecondition = 9,
    Aborted = 10,
    OutOfRange = 11,
    Unimplemented = 12,
    Internal = 13,
    Unavailable = 14,
    DataLoss = 15,
    Unauthenticated = 16,
}

/// Every code, by number, with its canonical name.
const CODES: [(Code, &str); 17] = [
    (Code::Ok, "OK"),
    (Code::Cancelled, "CANCELLED"),
    (Code::Unknown, "UNKNOWN"),
    (Code::InvalidArgument, "INVALID_ARGUMENT"),
    (Code::DeadlineExceeded, "DEADLINE_EXCEEDED"),
    (Code::NotFound, "NOT_FOUND"),
    (Code::AlreadyExists, "ALREADY_EXISTS"),
    (Code::PermissionDenied, "PERMISSION_DENIED"),
    (Code::ResourceExhausted, "RESOURCE_EXHAUSTED"),
    (Code::FailedPrecondition, "FAILED_PRECONDITION"),
    (Code::Aborted, "ABORTED"),
    (Code::OutOfRange, "OUT_OF_RANGE"),
    (Code::Unimplemented, "UNIMPLEMENTED"),
    (Code::Internal, "INTERNAL"),
    (Code::Unavailable, "UNAVAILABLE"),
    (Code::DataLoss, "DATA_LOSS"),
    (Code::Unauthenticated, "UNAUTHENTICATED"),
];

impl Code {
    /// The code for a number (unknown numbers are `Unknown`).
    pub fn from_i32(n: i32) -> Code {
        usize::try_from(n).ok().and_then(|i| CODES.get(i)).map_or(Code::Unknown, |(c, _)| *c)
    }

    /// The canonical name (`NOT_FOUND`...), for logs and metrics.
    pub fn name(self) -> &'static str {
        CODES[self as usize].1
    }
}

/// An error status: a code and a message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct Status {
    /// The code (never `Ok` in an error).
    pub code: Code,
    /// What went wrong.
    pub message: String,
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code.name(), self.message)
    }
}

macro_rules! ctor {
    ($($name:ident => $code:ident),* $(,)?) => {
        $(
            #[doc = concat!("A `", stringify!($code), "` status.")]
            pub fn $name(message: impl Into<String>) -> Status {
                Status { code: Code::$code, message: message.into() }
            }
        )*
    };
}

impl Status {
    ctor! {
        cancelled => Cancelled,
        unknown => Unknown,
        invalid_argument => InvalidArgument,
        deadline_exceeded => DeadlineExceeded,
        not_found => NotFound,
        resource_exhausted => ResourceExhausted,
        failed_precondition => FailedPrecondition,
        unimplemented => Unimplemented,
        internal => Internal,
        unavailable => Unavailable,
        unauthenticated => Unauthenticated,
    }

    /// As carried in `End.status`.
    pub fn to_proto(&self) -> rpc::Status {
        rpc::Status { code: self.code as i32, message: self.message.clone(), details: Vec::new() }
    }

    /// From `End.status`; a code 0 from a server is still an error (Go treats it so).
    pub fn from_proto(s: &rpc::Status) -> Status {
        let code = if s.code == 0 { Code::Unknown } else { Code::from_i32(s.code) };
        Status { code, message: s.message.clone() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip_and_unknown_numbers_are_unknown() {
        for n in 0..=16 {
            assert_eq!(Code::from_i32(n) as i32, n);
        }
        assert_eq!(Code::from_i32(99), Code::Unknown);
        assert_eq!(Code::from_i32(-1), Code::Unknown);
        let s = Status::not_found("no such node");
        assert_eq!(Status::from_proto(&s.to_proto()), s);
        assert_eq!(s.to_string(), "NOT_FOUND: no such node");
    }
}
