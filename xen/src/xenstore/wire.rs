//! The xenstore wire format (`xen/include/public/io/xs_wire.h`): a 16-byte header
//! `{type, req_id, tx_id, len}` (host-endian `u32`s; every Xen host is little-endian) and a
//! payload of at most [`PAYLOAD_MAX`] bytes, whose fields are NUL-separated strings.

use std::fmt;

/// `XENSTORE_PAYLOAD_MAX`: a longer message gets the connection killed by xenstored.
pub const PAYLOAD_MAX: usize = 4096;
/// Header size in bytes.
pub const HEADER_LEN: usize = 16;
/// `XENSTORE_ABS_PATH_MAX`.
pub const ABS_PATH_MAX: usize = 3072;

/// `enum xsd_sockmsg_type`: the request types a device model uses, plus the two the server
/// sends on its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum MsgType {
    Directory = 1,
    Read = 2,
    GetPerms = 3,
    Watch = 4,
    Unwatch = 5,
    TransactionStart = 6,
    TransactionEnd = 7,
    GetDomainPath = 10,
    Write = 11,
    Mkdir = 12,
    Rm = 13,
    SetPerms = 14,
    WatchEvent = 15,
    Error = 16,
    ResetWatches = 21,
}

impl MsgType {
    pub fn from_u32(v: u32) -> Option<MsgType> {
        Some(match v {
            1 => MsgType::Directory,
            2 => MsgType::Read,
            3 => MsgType::GetPerms,
            4 => MsgType::Watch,
            5 => MsgType::Unwatch,
            6 => MsgType::TransactionStart,
            7 => MsgType::TransactionEnd,
            10 => MsgType::GetDomainPath,
            11 => MsgType::Write,
            12 => MsgType::Mkdir,
            13 => MsgType::Rm,
            14 => MsgType::SetPerms,
            15 => MsgType::WatchEvent,
            16 => MsgType::Error,
            21 => MsgType::ResetWatches,
            _ => return None,
        })
    }

    /// The name xenstored's trace uses, for messages.
    pub fn name(self) -> &'static str {
        match self {
            MsgType::Directory => "DIRECTORY",
            MsgType::Read => "READ",
            MsgType::GetPerms => "GET_PERMS",
            MsgType::Watch => "WATCH",
            MsgType::Unwatch => "UNWATCH",
            MsgType::TransactionStart => "TRANSACTION_START",
            MsgType::TransactionEnd => "TRANSACTION_END",
            MsgType::GetDomainPath => "GET_DOMAIN_PATH",
            MsgType::Write => "WRITE",
            MsgType::Mkdir => "MKDIR",
            MsgType::Rm => "RM",
            MsgType::SetPerms => "SET_PERMS",
            MsgType::WatchEvent => "WATCH_EVENT",
            MsgType::Error => "ERROR",
            MsgType::ResetWatches => "RESET_WATCHES",
        }
    }
}

impl fmt::Display for MsgType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A message header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub ty: u32,
    pub req_id: u32,
    pub tx_id: u32,
    pub len: u32,
}

impl Header {
    pub fn to_bytes(self) -> [u8; HEADER_LEN] {
        let mut b = [0u8; HEADER_LEN];
        b[0..4].copy_from_slice(&self.ty.to_le_bytes());
        b[4..8].copy_from_slice(&self.req_id.to_le_bytes());
        b[8..12].copy_from_slice(&self.tx_id.to_le_bytes());
        b[12..16].copy_from_slice(&self.len.to_le_bytes());
        b
    }

    pub fn from_bytes(b: &[u8; HEADER_LEN]) -> Header {
        let word = |i: usize| u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
        Header {
            ty: word(0),
            req_id: word(4),
            tx_id: word(8),
            len: word(12),
        }
    }
}

/// One whole message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub header: Header,
    pub payload: Vec<u8>,
}

/// Build a request: header plus payload.
pub fn encode(ty: MsgType, req_id: u32, tx_id: u32, payload: &[u8]) -> Vec<u8> {
    let header = Header {
        ty: ty as u32,
        req_id,
        tx_id,
        len: payload.len() as u32,
    };
    let mut out = Vec::with_capacity(HEADER_LEN + payload.len());
    out.extend_from_slice(&header.to_bytes());
    out.extend_from_slice(payload);
    out
}

/// Why bytes from the server are not a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Oversized(pub u32);

/// Take one whole message off the front of `buf`, if there is one.
pub fn decode(buf: &mut Vec<u8>) -> Result<Option<Message>, Oversized> {
    let Some(head) = buf.first_chunk::<HEADER_LEN>() else {
        return Ok(None);
    };
    let header = Header::from_bytes(head);
    let len = header.len as usize;
    if len > PAYLOAD_MAX {
        return Err(Oversized(header.len));
    }
    if buf.len() < HEADER_LEN + len {
        return Ok(None);
    }
    let payload = buf[HEADER_LEN..HEADER_LEN + len].to_vec();
    buf.drain(..HEADER_LEN + len);
    Ok(Some(Message { header, payload }))
}

/// Concatenate NUL-terminated fields.
pub fn fields(parts: &[&[u8]]) -> Vec<u8> {
    let mut out = Vec::new();
    for p in parts {
        out.extend_from_slice(p);
        out.push(0);
    }
    out
}

/// Split a payload of NUL-terminated fields (a missing final NUL is tolerated).
pub fn split_fields(payload: &[u8]) -> Vec<&[u8]> {
    let body = payload.strip_suffix(&[0]).unwrap_or(payload);
    if body.is_empty() {
        return Vec::new();
    }
    body.split(|b| *b == 0).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trip_and_layout() {
        let bytes = encode(MsgType::Write, 7, 3, b"a\0b");
        assert_eq!(&bytes[..4], &11u32.to_le_bytes());
        assert_eq!(&bytes[4..8], &7u32.to_le_bytes());
        assert_eq!(&bytes[8..12], &3u32.to_le_bytes());
        assert_eq!(&bytes[12..16], &3u32.to_le_bytes());
        let mut buf = bytes.clone();
        buf.extend_from_slice(&encode(MsgType::Read, 8, 0, b"x\0")[..10]);
        let m = decode(&mut buf).unwrap().unwrap();
        assert_eq!(m.header.req_id, 7);
        assert_eq!(m.payload, b"a\0b");
        // The second message is incomplete and stays buffered.
        assert_eq!(decode(&mut buf).unwrap(), None);
        assert_eq!(buf.len(), 10);
    }

    #[test]
    fn oversized_length_is_refused_before_allocating() {
        let mut buf = Header {
            ty: 2,
            req_id: 0,
            tx_id: 0,
            len: u32::MAX,
        }
        .to_bytes()
        .to_vec();
        assert_eq!(decode(&mut buf), Err(Oversized(u32::MAX)));
    }

    #[test]
    fn field_splitting() {
        assert_eq!(split_fields(b"a\0bc\0"), vec![&b"a"[..], &b"bc"[..]]);
        assert_eq!(split_fields(b"a\0bc"), vec![&b"a"[..], &b"bc"[..]]);
        assert!(split_fields(b"").is_empty());
        assert!(split_fields(b"\0").is_empty());
        assert_eq!(fields(&[b"p", b"t"]), b"p\0t\0");
    }

    #[test]
    fn every_type_round_trips() {
        for v in 0..64 {
            if let Some(t) = MsgType::from_u32(v) {
                assert_eq!(t as u32, v);
            }
        }
    }
}
