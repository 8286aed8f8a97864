//! Device state as versioned byte blobs.
//!
//! A blob is: magic `VSNP`, the device's snapshot id (so one device's state cannot be loaded
//! into another), the format version the device wrote, the payload length, the payload, and a
//! CRC-32 of everything before it. A device writes its fields with [`StateWriter`] and reads
//! them back with [`StateReader`], which bounds-checks every read, so a truncated or hostile
//! blob is an error, never a panic. Host resources (interrupt lines, timers, backends) are not
//! state: restore keeps the ones the device was built with.

use thiserror::Error;

const MAGIC: &[u8; 4] = b"VSNP";

#[derive(Debug, Error, PartialEq, Eq)]
pub enum SnapshotError {
    #[error("not a Vireo device-state blob")]
    BadMagic,
    #[error("state of {found:?} cannot be restored into {expected:?}")]
    WrongDevice { expected: String, found: String },
    #[error("{device}: state version {found} is newer than this build understands ({supported})")]
    UnsupportedVersion {
        device: String,
        found: u16,
        supported: u16,
    },
    #[error("device state is truncated")]
    Truncated,
    #[error("device state checksum mismatch")]
    Checksum,
    #[error("device state has {0} unexpected trailing byte(s)")]
    TrailingBytes(usize),
    #[error("invalid device state: {0}")]
    Invalid(String),
}

/// A device whose whole state can be saved and restored.
///
/// `restore_state` must validate everything it reads before it changes the device, so that a
/// rejected blob leaves the device as it was, and must re-arm timers and re-drive interrupt
/// lines to match the restored state.
pub trait Snapshot {
    /// A stable name for this device type's state format.
    fn snapshot_id(&self) -> &'static str;
    /// The version `save_state` writes. Bump it when the format changes; `restore_state` is
    /// told which version it reads.
    fn snapshot_version(&self) -> u16;
    fn save_state(&self, w: &mut StateWriter);
    fn restore_state(&mut self, r: &mut StateReader<'_>, version: u16)
    -> Result<(), SnapshotError>;
}

/// Serialise a device's state into a blob.
pub fn save<S: Snapshot + ?Sized>(device: &S) -> Vec<u8> {
    let mut payload = StateWriter::default();
    device.save_state(&mut payload);
    let id = device.snapshot_id().as_bytes();
    let mut out = Vec::with_capacity(payload.buf.len() + id.len() + 16);
    out.extend_from_slice(MAGIC);
    out.push(u8::try_from(id.len()).expect("snapshot ids are short"));
    out.extend_from_slice(id);
    out.extend_from_slice(&device.snapshot_version().to_le_bytes());
    out.extend_from_slice(&(payload.buf.len() as u32).to_le_bytes());
    out.extend_from_slice(&payload.buf);
    let crc = crc32(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    out
}

/// Restore a device from a blob made by [`save`].
pub fn restore<S: Snapshot + ?Sized>(device: &mut S, blob: &[u8]) -> Result<(), SnapshotError> {
    if blob.len() < 4 || &blob[..4] != MAGIC {
        return Err(SnapshotError::BadMagic);
    }
    if blob.len() < MAGIC.len() + 4 {
        return Err(SnapshotError::Truncated);
    }
    let (body, crc) = blob.split_at(blob.len() - 4);
    let mut header = StateReader::new(&body[4..]);
    let id_len = usize::from(header.u8()?);
    let id = header.take(id_len)?;
    let expected = device.snapshot_id();
    if id != expected.as_bytes() {
        return Err(SnapshotError::WrongDevice {
            expected: expected.to_string(),
            found: String::from_utf8_lossy(id).into_owned(),
        });
    }
    let version = header.u16()?;
    if version > device.snapshot_version() {
        return Err(SnapshotError::UnsupportedVersion {
            device: expected.to_string(),
            found: version,
            supported: device.snapshot_version(),
        });
    }
    let len = header.u32()? as usize;
    let payload = header.take(len)?;
    header.finish()?;
    if crc32(body).to_le_bytes() != crc {
        return Err(SnapshotError::Checksum);
    }
    let mut r = StateReader::new(payload);
    device.restore_state(&mut r, version)?;
    r.finish()
}

/// Appends little-endian fields.
#[derive(Debug, Default)]
pub struct StateWriter {
    buf: Vec<u8>,
}

impl StateWriter {
    pub fn u8(&mut self, v: u8) {
        self.buf.push(v);
    }
    pub fn bool(&mut self, v: bool) {
        self.buf.push(u8::from(v));
    }
    pub fn u16(&mut self, v: u16) {
        self.buf.extend_from_slice(&v.to_le_bytes());
    }
    pub fn u32(&mut self, v: u32) {
        self.buf.extend_from_slice(&v.to_le_bytes());
    }
    pub fn u64(&mut self, v: u64) {
        self.buf.extend_from_slice(&v.to_le_bytes());
    }
    pub fn i64(&mut self, v: i64) {
        self.buf.extend_from_slice(&v.to_le_bytes());
    }
    /// An optional value: a presence byte, then the value (zero when absent).
    pub fn opt_u8(&mut self, v: Option<u8>) {
        self.bool(v.is_some());
        self.u8(v.unwrap_or(0));
    }
    pub fn opt_u16(&mut self, v: Option<u16>) {
        self.bool(v.is_some());
        self.u16(v.unwrap_or(0));
    }
    /// An optional deadline or value: a presence byte, then the value.
    pub fn opt_u64(&mut self, v: Option<u64>) {
        self.bool(v.is_some());
        self.u64(v.unwrap_or(0));
    }
    /// Fixed-size bytes (the reader must know the size).
    pub fn bytes(&mut self, v: &[u8]) {
        self.buf.extend_from_slice(v);
    }
    /// Variable-length bytes, prefixed with their length.
    pub fn var_bytes(&mut self, v: &[u8]) {
        self.u32(v.len() as u32);
        self.buf.extend_from_slice(v);
    }
}

/// Reads fields back, failing (never panicking) when the blob runs short.
#[derive(Debug)]
pub struct StateReader<'a> {
    data: &'a [u8],
}

impl<'a> StateReader<'a> {
    pub fn new(data: &'a [u8]) -> StateReader<'a> {
        StateReader { data }
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], SnapshotError> {
        if n > self.data.len() {
            return Err(SnapshotError::Truncated);
        }
        let (head, tail) = self.data.split_at(n);
        self.data = tail;
        Ok(head)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], SnapshotError> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }

    pub fn u8(&mut self) -> Result<u8, SnapshotError> {
        Ok(self.take(1)?[0])
    }
    pub fn bool(&mut self) -> Result<bool, SnapshotError> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            v => Err(SnapshotError::Invalid(format!("boolean field holds {v}"))),
        }
    }
    pub fn u16(&mut self) -> Result<u16, SnapshotError> {
        Ok(u16::from_le_bytes(self.array()?))
    }
    pub fn u32(&mut self) -> Result<u32, SnapshotError> {
        Ok(u32::from_le_bytes(self.array()?))
    }
    pub fn u64(&mut self) -> Result<u64, SnapshotError> {
        Ok(u64::from_le_bytes(self.array()?))
    }
    pub fn i64(&mut self) -> Result<i64, SnapshotError> {
        Ok(i64::from_le_bytes(self.array()?))
    }
    pub fn opt_u8(&mut self) -> Result<Option<u8>, SnapshotError> {
        let present = self.bool()?;
        let v = self.u8()?;
        Ok(present.then_some(v))
    }
    pub fn opt_u16(&mut self) -> Result<Option<u16>, SnapshotError> {
        let present = self.bool()?;
        let v = self.u16()?;
        Ok(present.then_some(v))
    }
    pub fn opt_u64(&mut self) -> Result<Option<u64>, SnapshotError> {
        let present = self.bool()?;
        let v = self.u64()?;
        Ok(present.then_some(v))
    }
    /// Fill `out` exactly.
    pub fn bytes(&mut self, out: &mut [u8]) -> Result<(), SnapshotError> {
        out.copy_from_slice(self.take(out.len())?);
        Ok(())
    }
    /// Length-prefixed bytes of at most `max` (a bound the device knows, e.g. its FIFO size).
    pub fn var_bytes(&mut self, max: usize) -> Result<Vec<u8>, SnapshotError> {
        let len = self.u32()? as usize;
        if len > max {
            return Err(SnapshotError::Invalid(format!(
                "{len} bytes where at most {max} fit"
            )));
        }
        Ok(self.take(len)?.to_vec())
    }
    /// A value that must be below `limit` (an index, a mode number).
    pub fn u8_below(&mut self, limit: u8) -> Result<u8, SnapshotError> {
        let v = self.u8()?;
        if v >= limit {
            return Err(SnapshotError::Invalid(format!("{v} is not below {limit}")));
        }
        Ok(v)
    }

    /// Every byte must have been consumed.
    pub fn finish(&self) -> Result<(), SnapshotError> {
        match self.data.len() {
            0 => Ok(()),
            n => Err(SnapshotError::TrailingBytes(n)),
        }
    }
}

/// CRC-32 (IEEE 802.3, reflected), bitwise: blobs are small and saved rarely.
fn crc32(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = (crc >> 1) ^ (0xEDB8_8320 & (crc & 1).wrapping_neg());
        }
    }
    !crc
}

/// Check that `fresh`, restored from `original`'s blob, saves the very same blob, and that a
/// corrupted or truncated blob is refused without changing `fresh`. Device tests call this,
/// then check that behaviour continues.
pub fn check_round_trip<S: Snapshot + ?Sized>(original: &S, fresh: &mut S) -> Result<(), String> {
    let blob = save(original);
    let before = save(fresh);
    for cut in [0, 3, blob.len() / 2, blob.len() - 1] {
        if restore(fresh, &blob[..cut]).is_ok() {
            return Err(format!("a blob truncated to {cut} bytes was accepted"));
        }
    }
    let mut flipped = blob.clone();
    let mid = flipped.len() / 2;
    flipped[mid] ^= 0x40;
    if restore(fresh, &flipped).is_ok() {
        return Err("a corrupted blob was accepted".into());
    }
    if save(fresh) != before {
        return Err("a refused blob changed the device".into());
    }
    restore(fresh, &blob).map_err(|e| format!("restore failed: {e}"))?;
    if save(fresh) != blob {
        return Err("the restored device saves a different state".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Regs {
        a: u8,
        b: u64,
        fifo: Vec<u8>,
    }

    impl Snapshot for Regs {
        fn snapshot_id(&self) -> &'static str {
            "test-regs"
        }
        fn snapshot_version(&self) -> u16 {
            2
        }
        fn save_state(&self, w: &mut StateWriter) {
            w.u8(self.a);
            w.u64(self.b);
            w.var_bytes(&self.fifo);
        }
        fn restore_state(
            &mut self,
            r: &mut StateReader<'_>,
            _version: u16,
        ) -> Result<(), SnapshotError> {
            let a = r.u8()?;
            let b = r.u64()?;
            let fifo = r.var_bytes(16)?;
            *self = Regs { a, b, fifo };
            Ok(())
        }
    }

    #[test]
    fn round_trip_and_rejections() {
        let d = Regs {
            a: 7,
            b: 0x1122_3344_5566_7788,
            fifo: vec![1, 2, 3],
        };
        check_round_trip(&d, &mut Regs::default()).unwrap();
    }

    #[test]
    fn crc32_matches_the_standard_check_value() {
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
    }

    #[test]
    fn oversized_fifo_is_invalid_not_allocated() {
        let mut w = StateWriter::default();
        w.u8(0);
        w.u64(0);
        w.u32(u32::MAX);
        let mut r = StateReader::new(&w.buf);
        let mut d = Regs::default();
        assert!(matches!(
            d.restore_state(&mut r, 2),
            Err(SnapshotError::Invalid(_))
        ));
    }
}
