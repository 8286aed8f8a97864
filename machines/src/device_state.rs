//! A machine's device state as one file: each device's snapshot blob under a stable name.
//!
//! Layout: `VIREO-DEVICES\0`, a little-endian u32 count, then per device a u16 name length,
//! the name, a u32 blob length and the blob (itself versioned and checksummed by
//! `devices::snapshot`). Under Xen this is what `xen-save-devices-state` writes: RAM and vCPU
//! state are the toolstack's.

use devices::snapshot::Snapshot;
use thiserror::Error;

const MAGIC: &[u8; 14] = b"VIREO-DEVICES\0";
/// More devices than any board has; a count beyond it is a corrupt file, not an allocation.
const MAX_DEVICES: u32 = 1024;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum DeviceStateError {
    #[error("not a Vireo device-state file")]
    BadMagic,
    #[error("device-state file is truncated")]
    Truncated,
    #[error("device-state file claims {0} devices")]
    TooManyDevices(u32),
    #[error("device-state file has no state for {0}")]
    Missing(String),
}

/// A device whose state a board saves by name (every device with state).
pub trait SnapshotDevice: Snapshot + Send {}
impl<T: Snapshot + Send> SnapshotDevice for T {}

pub fn encode(blobs: &[(String, Vec<u8>)]) -> Vec<u8> {
    let mut out = MAGIC.to_vec();
    out.extend_from_slice(&(blobs.len() as u32).to_le_bytes());
    for (name, blob) in blobs {
        out.extend_from_slice(&(name.len() as u16).to_le_bytes());
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(&(blob.len() as u32).to_le_bytes());
        out.extend_from_slice(blob);
    }
    out
}

pub fn decode(data: &[u8]) -> Result<Vec<(String, Vec<u8>)>, DeviceStateError> {
    let rest = data
        .strip_prefix(MAGIC.as_slice())
        .ok_or(DeviceStateError::BadMagic)?;
    let mut cursor = Cursor(rest);
    let count = u32::from_le_bytes(cursor.take()?);
    if count > MAX_DEVICES {
        return Err(DeviceStateError::TooManyDevices(count));
    }
    let mut blobs = Vec::with_capacity(count as usize);
    for _ in 0..count {
        let name_len = u16::from_le_bytes(cursor.take()?);
        let name = String::from_utf8_lossy(cursor.bytes(usize::from(name_len))?).into_owned();
        let blob_len = u32::from_le_bytes(cursor.take()?);
        let blob = cursor.bytes(blob_len as usize)?.to_vec();
        blobs.push((name, blob));
    }
    Ok(blobs)
}

/// The blob saved under `name`.
pub fn find<'a>(blobs: &'a [(String, Vec<u8>)], name: &str) -> Result<&'a [u8], DeviceStateError> {
    blobs
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, b)| b.as_slice())
        .ok_or_else(|| DeviceStateError::Missing(name.to_string()))
}

struct Cursor<'a>(&'a [u8]);

impl<'a> Cursor<'a> {
    fn bytes(&mut self, n: usize) -> Result<&'a [u8], DeviceStateError> {
        if n > self.0.len() {
            return Err(DeviceStateError::Truncated);
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Ok(head)
    }

    fn take<const N: usize>(&mut self) -> Result<[u8; N], DeviceStateError> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.bytes(N)?);
        Ok(a)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_corruption() {
        let blobs = vec![
            ("com1".to_string(), vec![1, 2, 3]),
            ("pci".to_string(), vec![]),
        ];
        let file = encode(&blobs);
        assert_eq!(decode(&file).unwrap(), blobs);
        assert_eq!(find(&blobs, "pci").unwrap(), &[] as &[u8]);
        assert!(matches!(
            find(&blobs, "vga"),
            Err(DeviceStateError::Missing(_))
        ));
        for cut in 0..file.len() {
            assert!(decode(&file[..cut]).is_err(), "truncated at {cut} accepted");
        }
        let mut huge = MAGIC.to_vec();
        huge.extend_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(
            decode(&huge),
            Err(DeviceStateError::TooManyDevices(u32::MAX))
        );
    }
}
