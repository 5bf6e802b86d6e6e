//! A small, deterministic little-endian codec for on-disk records and index values.
//!
//! Every length is checked against the remaining input before anything is allocated, so a
//! corrupt or hostile buffer yields a [`DecodeError`], never a panic or a huge allocation.

/// A buffer being encoded.
#[derive(Default)]
pub(crate) struct Enc(pub Vec<u8>);

impl Enc {
    pub fn new() -> Enc {
        Enc(Vec::new())
    }
    pub fn u8(&mut self, v: u8) -> &mut Self {
        self.0.push(v);
        self
    }
    pub fn u16(&mut self, v: u16) -> &mut Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    pub fn u32(&mut self, v: u32) -> &mut Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    pub fn u64(&mut self, v: u64) -> &mut Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    pub fn i64(&mut self, v: i64) -> &mut Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    pub fn raw(&mut self, v: &[u8]) -> &mut Self {
        self.0.extend_from_slice(v);
        self
    }
    /// A u32 length, then the bytes.
    pub fn bytes(&mut self, v: &[u8]) -> &mut Self {
        let len = u32::try_from(v.len()).expect("encoded fields are bounded far below 4 GiB");
        self.u32(len).raw(v)
    }
    pub fn str(&mut self, v: &str) -> &mut Self {
        self.bytes(v.as_bytes())
    }
    pub fn finish(self) -> Vec<u8> {
        self.0
    }
}

/// Why a buffer could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed encoding: {0}")]
pub struct DecodeError(pub &'static str);

/// A buffer being decoded.
pub(crate) struct Dec<'a> {
    buf: &'a [u8],
}

impl<'a> Dec<'a> {
    pub fn new(buf: &'a [u8]) -> Dec<'a> {
        Dec { buf }
    }
    pub fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if self.buf.len() < n {
            return Err(DecodeError("truncated"));
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(head)
    }
    fn array<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }
    pub fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.array::<1>()?[0])
    }
    pub fn u16(&mut self) -> Result<u16, DecodeError> {
        Ok(u16::from_le_bytes(self.array()?))
    }
    pub fn u32(&mut self) -> Result<u32, DecodeError> {
        Ok(u32::from_le_bytes(self.array()?))
    }
    pub fn u64(&mut self) -> Result<u64, DecodeError> {
        Ok(u64::from_le_bytes(self.array()?))
    }
    pub fn i64(&mut self) -> Result<i64, DecodeError> {
        Ok(i64::from_le_bytes(self.array()?))
    }
    pub fn hash(&mut self) -> Result<[u8; 32], DecodeError> {
        self.array()
    }
    pub fn uuid(&mut self) -> Result<[u8; 16], DecodeError> {
        self.array()
    }
    pub fn bytes(&mut self) -> Result<&'a [u8], DecodeError> {
        let len = self.u32()? as usize;
        self.take(len)
    }
    pub fn string(&mut self) -> Result<String, DecodeError> {
        String::from_utf8(self.bytes()?.to_vec()).map_err(|_| DecodeError("invalid UTF-8"))
    }
    /// A count of items that each take at least `min_item` bytes, checked against what is left.
    pub fn count(&mut self, min_item: usize) -> Result<usize, DecodeError> {
        let n = self.u32()? as usize;
        if n.saturating_mul(min_item.max(1)) > self.buf.len() {
            return Err(DecodeError("count exceeds remaining input"));
        }
        Ok(n)
    }
    pub fn rest(&self) -> &'a [u8] {
        self.buf
    }
    pub fn end(&self) -> Result<(), DecodeError> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(DecodeError("trailing bytes"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_every_field_kind() {
        let mut e = Enc::new();
        e.u8(7)
            .u16(513)
            .u32(70_000)
            .u64(1 << 40)
            .i64(-5)
            .str("héllo")
            .raw(&[1; 32]);
        let buf = e.finish();
        let mut d = Dec::new(&buf);
        assert_eq!(d.u8(), Ok(7));
        assert_eq!(d.u16(), Ok(513));
        assert_eq!(d.u32(), Ok(70_000));
        assert_eq!(d.u64(), Ok(1 << 40));
        assert_eq!(d.i64(), Ok(-5));
        assert_eq!(d.string().as_deref(), Ok("héllo"));
        assert_eq!(d.hash(), Ok([1; 32]));
        assert_eq!(d.end(), Ok(()));
    }

    #[test]
    fn truncated_and_oversized_lengths_are_errors_not_panics() {
        let mut e = Enc::new();
        e.u32(1_000_000).raw(b"short");
        let buf = e.finish();
        assert!(Dec::new(&buf).bytes().is_err());
        assert!(Dec::new(&buf).count(8).is_err());
        assert!(Dec::new(&buf[..2]).u32().is_err());
    }
}
