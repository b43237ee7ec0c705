//! Primitive gob encodings: unsigned and signed integers, floats, byte strings, and the
//! message framing, on a byte slice. Nothing here allocates.

use crate::error::{Error, ErrorKind, Result};

/// Reads primitives from one payload. A payload is a sequence of messages, each a uint
/// length and that many bytes; reads never cross the end of the current message, exactly
/// as Go's decoder only ever reads from the one message in its buffer.
pub(crate) struct Reader<'a> {
    data: &'a [u8],
    pos: usize,
    msg_end: usize,
}

impl<'a> Reader<'a> {
    pub(crate) fn new(data: &'a [u8]) -> Self {
        Reader { data, pos: 0, msg_end: 0 }
    }

    pub(crate) fn pos(&self) -> usize {
        self.pos
    }

    pub(crate) fn err(&self, kind: ErrorKind) -> Error {
        Error::new(self.pos, kind)
    }

    /// Moves to `pos`, the start of a message (its length prefix).
    pub(crate) fn seek_message_boundary(&mut self, pos: usize) {
        self.pos = pos;
        self.msg_end = pos;
    }

    /// Bytes left in the current message.
    pub(crate) fn left(&self) -> usize {
        self.msg_end - self.pos
    }

    pub(crate) fn at_message_end(&self) -> bool {
        self.pos == self.msg_end
    }

    /// Starts the next message: reads its length from the payload and limits reads to it.
    pub(crate) fn next_message(&mut self) -> Result<()> {
        debug_assert!(self.at_message_end());
        let start = self.pos;
        self.msg_end = self.data.len();
        let len = self.uint()?;
        let left = self.data.len() - self.pos;
        if len > left as u64 {
            return Err(Error::new(start, ErrorKind::LengthTooLarge { len, left }));
        }
        if len == 0 {
            return Err(Error::new(start, ErrorKind::EmptyMessage));
        }
        self.msg_end = self.pos + len as usize;
        Ok(())
    }

    pub(crate) fn byte(&mut self) -> Result<u8> {
        if self.pos >= self.msg_end {
            return Err(self.err(ErrorKind::UnexpectedEnd));
        }
        let b = self.data[self.pos];
        self.pos += 1;
        Ok(b)
    }

    /// The next field of a gob struct value (field-number deltas): its index, or `None` at
    /// the terminating zero delta. `field` is the previous field, -1 before the first;
    /// `fields` is how many fields the struct type has.
    pub(crate) fn next_field(&mut self, field: &mut i64, fields: usize) -> Result<Option<usize>> {
        let at = self.pos();
        let delta = self.uint()?;
        if delta == 0 {
            return Ok(None);
        }
        *field = field.saturating_add(i64::try_from(delta).unwrap_or(i64::MAX));
        if *field >= fields as i64 {
            return Err(Error::new(at, ErrorKind::FieldOutOfRange { field: *field, fields }));
        }
        Ok(Some(*field as usize))
    }

    /// An unsigned integer: one byte below 128, else the negated byte count and that many
    /// big-endian bytes.
    pub(crate) fn uint(&mut self) -> Result<u64> {
        let start = self.pos;
        let b = self.byte()?;
        if b < 0x80 {
            return Ok(u64::from(b));
        }
        let n = (b as i8).unsigned_abs() as usize;
        if n > 8 {
            return Err(Error::new(start, ErrorKind::BadUint));
        }
        if self.left() < n {
            return Err(Error::new(start, ErrorKind::UnexpectedEnd));
        }
        let x = self.data[self.pos..self.pos + n].iter().fold(0u64, |x, &b| (x << 8) | u64::from(b));
        self.pos += n;
        Ok(x)
    }

    /// A signed integer: the uint `(i << 1)` or, for negatives, `(!i << 1) | 1`.
    pub(crate) fn int(&mut self) -> Result<i64> {
        let u = self.uint()?;
        Ok(if u & 1 == 1 { !((u >> 1) as i64) } else { (u >> 1) as i64 })
    }

    /// A float64: its bits with the bytes reversed, sent as a uint.
    pub(crate) fn float(&mut self) -> Result<f64> {
        Ok(f64::from_bits(self.uint()?.swap_bytes()))
    }

    /// A length-prefixed byte string (never split across messages).
    pub(crate) fn bytes(&mut self) -> Result<&'a [u8]> {
        let start = self.pos;
        let len = self.uint()?;
        let left = self.left();
        if len > left as u64 {
            return Err(Error::new(start, ErrorKind::LengthTooLarge { len, left }));
        }
        let s = &self.data[self.pos..self.pos + len as usize];
        self.pos += len as usize;
        Ok(s)
    }

    /// An element count, checked against the bytes left in the payload (each element
    /// takes at least `min_size` bytes), so a hostile count never causes a large
    /// allocation. The payload, not the message: the elements of a map or slice may go on
    /// in the next message when one of them is an `interface{}` whose type Go defines
    /// there (the definition ends the message mid-value).
    pub(crate) fn count(&mut self, min_size: usize) -> Result<usize> {
        let start = self.pos;
        let len = self.uint()?;
        let left = self.data.len() - self.pos;
        if len.saturating_mul(min_size as u64) > left as u64 {
            return Err(Error::new(start, ErrorKind::LengthTooLarge { len, left }));
        }
        Ok(len as usize)
    }

    /// Skips `n` bytes of the current message.
    pub(crate) fn skip(&mut self, n: u64) -> Result<()> {
        let left = self.left();
        if n > left as u64 {
            return Err(self.err(ErrorKind::LengthTooLarge { len: n, left }));
        }
        self.pos += n as usize;
        Ok(())
    }
}

/// The gob bytes of the uint `x` in a stack buffer, and how many of them are used.
fn uint_bytes(x: u64) -> ([u8; 9], usize) {
    let mut buf = [0u8; 9];
    if x < 0x80 {
        buf[0] = x as u8;
        return (buf, 1);
    }
    let n = 8 - (x.leading_zeros() / 8) as usize;
    buf[0] = (-(n as i8)) as u8;
    buf[1..=n].copy_from_slice(&x.to_be_bytes()[8 - n..]);
    (buf, n + 1)
}

/// Appends the uint `x`.
pub(crate) fn put_uint(out: &mut Vec<u8>, x: u64) {
    let (buf, n) = uint_bytes(x);
    out.extend_from_slice(&buf[..n]);
}

pub(crate) fn put_int(out: &mut Vec<u8>, i: i64) {
    let u = if i < 0 { ((!i as u64) << 1) | 1 } else { (i as u64) << 1 };
    put_uint(out, u);
}

pub(crate) fn put_float(out: &mut Vec<u8>, f: f64) {
    put_uint(out, f.to_bits().swap_bytes());
}

pub(crate) fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    put_uint(out, b.len() as u64);
    out.extend_from_slice(b);
}

/// Inserts the uint `x` at `at`, shifting what follows (used for byte counts and message
/// lengths that are only known after the body is written).
pub(crate) fn insert_uint(out: &mut Vec<u8>, at: usize, x: u64) {
    let (buf, n) = uint_bytes(x);
    out.splice(at..at, buf[..n].iter().copied());
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reader(body: &[u8]) -> Reader<'_> {
        let mut r = Reader::new(body);
        r.msg_end = body.len();
        r
    }

    #[test]
    fn uints_match_go_encoding() {
        // Values and bytes from the gob package documentation.
        for (x, bytes) in [(0u64, vec![0x00]), (7, vec![0x07]), (127, vec![0x7f]), (256, vec![0xfe, 0x01, 0x00])] {
            let mut out = Vec::new();
            put_uint(&mut out, x);
            assert_eq!(out, bytes, "encoding {x}");
            assert_eq!(reader(&bytes).uint().unwrap(), x);
        }
        let mut out = Vec::new();
        put_uint(&mut out, u64::MAX);
        assert_eq!(out, [0xf8, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff]);
    }

    #[test]
    fn ints_and_floats_match_go_encoding() {
        for (i, bytes) in [(0i64, vec![0x00]), (-1, vec![0x01]), (1, vec![0x02]), (-129, vec![0xfe, 0x01, 0x01])] {
            let mut out = Vec::new();
            put_int(&mut out, i);
            assert_eq!(out, bytes, "encoding {i}");
            assert_eq!(reader(&bytes).int().unwrap(), i);
        }
        // 17.0 is sent as FE 31 40 (gob documentation).
        let mut out = Vec::new();
        put_float(&mut out, 17.0);
        assert_eq!(out, [0xfe, 0x31, 0x40]);
        assert_eq!(reader(&out).float().unwrap(), 17.0);
        for i in [i64::MIN, i64::MAX] {
            let mut out = Vec::new();
            put_int(&mut out, i);
            assert_eq!(reader(&out).int().unwrap(), i);
        }
    }

    #[test]
    fn hostile_lengths_are_errors_not_allocations() {
        // A count of 2^40 with three bytes left.
        let mut data = Vec::new();
        put_uint(&mut data, 1 << 40);
        data.extend_from_slice(&[1, 2, 3]);
        let err = reader(&data).count(1).unwrap_err();
        assert!(matches!(err.kind, ErrorKind::LengthTooLarge { len, left: 3 } if len == 1 << 40));
        assert_eq!(reader(&[0xf7]).uint().unwrap_err().kind, ErrorKind::BadUint);
        assert_eq!(reader(&[0xfe, 0x01]).uint().unwrap_err().kind, ErrorKind::UnexpectedEnd);
    }

    #[test]
    fn insert_uint_shifts_the_tail() {
        let mut out = vec![1, 2, 3];
        insert_uint(&mut out, 1, 300);
        assert_eq!(out, [1, 0xfe, 0x01, 0x2c, 2, 3]);
    }
}
