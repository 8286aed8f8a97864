//! The ATAPI CD/DVD-ROM command set: the SCSI (MMC) commands a PACKET command carries.
//!
//! This module decides what a 12-byte command packet means: a reply to send, sectors of the
//! medium to read, nothing, or a CHECK CONDITION with sense data. The IDE side
//! ([`super::ide`]) owns the transport: receiving the packet through the data port, splitting
//! the reply by the host's byte count limit or handing it to the bus-master engine, and the
//! interrupt reason. The medium is an image of 2048-byte sectors.
//!
//! Commands and what Linux's `sr`/libata, SeaBIOS and Windows ask of them: TEST UNIT READY,
//! REQUEST SENSE, INQUIRY, START STOP UNIT (eject/load), PREVENT ALLOW MEDIUM REMOVAL, READ
//! CAPACITY, READ(10), READ(12), READ CD (user data), SEEK(10), READ TOC/PMA/ATIP (formats 0,
//! 1 and 2, LBA and MSF), MODE SENSE(10) (pages 01h, 2Ah and 3Fh), GET CONFIGURATION (profile
//! list, core, removable medium, random readable), GET EVENT STATUS NOTIFICATION (polled,
//! media class), MECHANISM STATUS, SET CD SPEED, SYNCHRONIZE CACHE. Anything else is
//! ILLEGAL REQUEST / INVALID COMMAND OPERATION CODE.
//!
//! Unit attention (MMC-5 4.1.6.1): after a medium is inserted or the tray closed, the next
//! command other than INQUIRY, REQUEST SENSE, GET CONFIGURATION and GET EVENT STATUS
//! NOTIFICATION fails once with UNIT ATTENTION / MEDIUM MAY HAVE CHANGED.

use log::debug;

use crate::snapshot::{SnapshotError, StateReader, StateWriter};

/// Bytes per CD/DVD logical block.
pub const CD_SECTOR_SIZE: u64 = 2048;
/// A medium with more blocks than the longest CD (99 minutes at 75 blocks a second) is a DVD.
pub const CD_MAX_BLOCKS: u64 = 99 * 60 * 75;
/// Length of a command packet (IDENTIFY PACKET DEVICE word 0 says 12).
pub const PACKET_SIZE: usize = 12;

/// Sense keys (SPC-3 table 27).
pub mod sense_key {
    pub const NO_SENSE: u8 = 0x0;
    pub const NOT_READY: u8 = 0x2;
    pub const MEDIUM_ERROR: u8 = 0x3;
    pub const ILLEGAL_REQUEST: u8 = 0x5;
    pub const UNIT_ATTENTION: u8 = 0x6;
    pub const ABORTED_COMMAND: u8 = 0xB;
}

/// Additional sense codes.
pub mod asc {
    pub const UNRECOVERED_READ_ERROR: u8 = 0x11;
    pub const INVALID_OPCODE: u8 = 0x20;
    pub const LBA_OUT_OF_RANGE: u8 = 0x21;
    pub const INVALID_FIELD_IN_CDB: u8 = 0x24;
    pub const MEDIUM_MAY_HAVE_CHANGED: u8 = 0x28;
    pub const SAVING_NOT_SUPPORTED: u8 = 0x39;
    pub const MEDIUM_NOT_PRESENT: u8 = 0x3A;
    pub const REMOVAL_PREVENTED: u8 = 0x53;
}

/// MMC operation codes.
pub mod op {
    pub const TEST_UNIT_READY: u8 = 0x00;
    pub const REQUEST_SENSE: u8 = 0x03;
    pub const INQUIRY: u8 = 0x12;
    pub const START_STOP_UNIT: u8 = 0x1B;
    pub const PREVENT_ALLOW_MEDIUM_REMOVAL: u8 = 0x1E;
    pub const READ_CAPACITY: u8 = 0x25;
    pub const READ_10: u8 = 0x28;
    pub const SEEK_10: u8 = 0x2B;
    pub const SYNCHRONIZE_CACHE: u8 = 0x35;
    pub const READ_TOC: u8 = 0x43;
    pub const GET_CONFIGURATION: u8 = 0x46;
    pub const GET_EVENT_STATUS_NOTIFICATION: u8 = 0x4A;
    pub const MODE_SENSE_10: u8 = 0x5A;
    pub const READ_12: u8 = 0xA8;
    pub const SET_CD_SPEED: u8 = 0xBB;
    pub const MECHANISM_STATUS: u8 = 0xBD;
    pub const READ_CD: u8 = 0xBE;
}

/// MMC profiles.
const PROFILE_CD_ROM: u16 = 0x0008;
const PROFILE_DVD_ROM: u16 = 0x0010;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Sense {
    pub key: u8,
    pub asc: u8,
    pub ascq: u8,
}

impl Sense {
    pub const fn new(key: u8, asc: u8, ascq: u8) -> Sense {
        Sense { key, asc, ascq }
    }

    pub const fn illegal(asc: u8) -> Sense {
        Sense::new(sense_key::ILLEGAL_REQUEST, asc, 0)
    }
}

/// The drive's state between commands (part of the IDE snapshot).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AtapiState {
    /// What REQUEST SENSE reports: the result of the last command that failed.
    pub sense: Sense,
    /// A medium change the host has not been told of yet.
    pub unit_attention: bool,
    pub tray_open: bool,
    /// PREVENT ALLOW MEDIUM REMOVAL: the tray may not be opened by the host.
    pub locked: bool,
    /// A "new media" event not yet reported by GET EVENT STATUS NOTIFICATION.
    pub new_media: bool,
}

impl AtapiState {
    pub fn save(&self, w: &mut StateWriter) {
        w.u8(self.sense.key);
        w.u8(self.sense.asc);
        w.u8(self.sense.ascq);
        w.bool(self.unit_attention);
        w.bool(self.tray_open);
        w.bool(self.locked);
        w.bool(self.new_media);
    }

    pub fn load(r: &mut StateReader<'_>) -> Result<AtapiState, SnapshotError> {
        Ok(AtapiState {
            sense: Sense::new(r.u8_below(0x10)?, r.u8()?, r.u8()?),
            unit_attention: r.bool()?,
            tray_open: r.bool()?,
            locked: r.bool()?,
            new_media: r.bool()?,
        })
    }

    /// A medium was inserted (or replaced) by the host: tell the guest on its next command.
    pub fn medium_changed(&mut self) {
        self.unit_attention = true;
        self.new_media = true;
        self.tray_open = false;
    }
}

/// What a command does next.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Completed without data.
    Done,
    /// Data for the host (already cut to the allocation length; never empty).
    Data(Vec<u8>),
    /// Send `blocks` 2048-byte blocks of the medium from `lba` (checked against its size).
    Read { lba: u64, blocks: u64 },
    /// CHECK CONDITION with this sense.
    Check(Sense),
}

/// The strings INQUIRY reports.
pub struct Identity<'a> {
    pub vendor: &'a str,
    pub product: &'a str,
    pub revision: &'a str,
}

const ALLOW_UA: u8 = 1;
const CHECK_READY: u8 = 2;

fn flags(opcode: u8) -> u8 {
    match opcode {
        op::REQUEST_SENSE | op::INQUIRY | op::GET_CONFIGURATION => ALLOW_UA,
        op::GET_EVENT_STATUS_NOTIFICATION => ALLOW_UA,
        op::TEST_UNIT_READY
        | op::READ_CAPACITY
        | op::READ_10
        | op::READ_12
        | op::READ_CD
        | op::SEEK_10
        | op::READ_TOC => CHECK_READY,
        _ => 0,
    }
}

/// Execute `cdb`. `medium_blocks` is the inserted medium's size in 2048-byte blocks (`None`:
/// no medium; an open tray is in `st`).
pub fn execute(
    cdb: &[u8; PACKET_SIZE],
    st: &mut AtapiState,
    medium_blocks: Option<u64>,
    id: &Identity<'_>,
) -> Outcome {
    let opcode = cdb[0];
    let ready_blocks = medium_blocks.filter(|_| !st.tray_open);
    let outcome = if st.unit_attention && flags(opcode) & ALLOW_UA == 0 {
        st.unit_attention = false;
        Outcome::Check(Sense::new(
            sense_key::UNIT_ATTENTION,
            asc::MEDIUM_MAY_HAVE_CHANGED,
            0,
        ))
    } else if flags(opcode) & CHECK_READY != 0 && ready_blocks.is_none() {
        Outcome::Check(not_present(st))
    } else {
        let blocks = ready_blocks.unwrap_or(0);
        match opcode {
            op::TEST_UNIT_READY | op::SET_CD_SPEED | op::SYNCHRONIZE_CACHE => Outcome::Done,
            op::REQUEST_SENSE => request_sense(cdb, st),
            op::INQUIRY => inquiry(cdb, id),
            op::START_STOP_UNIT => start_stop_unit(cdb, st, medium_blocks.is_some()),
            op::PREVENT_ALLOW_MEDIUM_REMOVAL => {
                st.locked = cdb[4] & 1 != 0;
                Outcome::Done
            }
            op::READ_CAPACITY => {
                let last = u32::try_from(blocks - 1).unwrap_or(u32::MAX);
                let mut v = last.to_be_bytes().to_vec();
                v.extend_from_slice(&(CD_SECTOR_SIZE as u32).to_be_bytes());
                Outcome::Data(v)
            }
            op::READ_10 => read(be32(&cdb[2..6]), u64::from(be16(&cdb[7..9])), blocks),
            op::READ_12 => read(be32(&cdb[2..6]), be32(&cdb[6..10]), blocks),
            op::READ_CD => read_cd(cdb, blocks),
            op::SEEK_10 => {
                if be32(&cdb[2..6]) >= blocks {
                    Outcome::Check(Sense::illegal(asc::LBA_OUT_OF_RANGE))
                } else {
                    Outcome::Done
                }
            }
            op::READ_TOC => read_toc(cdb, blocks),
            op::MODE_SENSE_10 => mode_sense(cdb, st, medium_blocks),
            op::GET_CONFIGURATION => get_configuration(cdb, ready_blocks),
            op::GET_EVENT_STATUS_NOTIFICATION => event_status(cdb, st, medium_blocks.is_some()),
            op::MECHANISM_STATUS => {
                // No changer, no current LBA, one slot.
                let v = vec![0, 0, 0, 0, 0, 1, 0, 0];
                reply(v, usize::from(be16(&cdb[8..10])))
            }
            _ => {
                debug!("ATAPI: unsupported command {opcode:#04x}");
                Outcome::Check(Sense::illegal(asc::INVALID_OPCODE))
            }
        }
    };
    match &outcome {
        Outcome::Check(sense) => st.sense = *sense,
        _ if opcode != op::REQUEST_SENSE => st.sense = Sense::default(),
        _ => {}
    }
    outcome
}

fn not_present(st: &AtapiState) -> Sense {
    Sense::new(
        sense_key::NOT_READY,
        asc::MEDIUM_NOT_PRESENT,
        if st.tray_open { 2 } else { 1 },
    )
}

fn be16(b: &[u8]) -> u16 {
    u16::from_be_bytes([b[0], b[1]])
}

fn be32(b: &[u8]) -> u64 {
    u64::from(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
}

/// Data cut to the allocation length; an empty reply completes without a data phase.
fn reply(mut data: Vec<u8>, alloc: usize) -> Outcome {
    data.truncate(alloc);
    if data.is_empty() {
        Outcome::Done
    } else {
        Outcome::Data(data)
    }
}

fn read(lba: u64, count: u64, blocks: u64) -> Outcome {
    if count == 0 {
        return Outcome::Done;
    }
    if lba.saturating_add(count) > blocks {
        return Outcome::Check(Sense::illegal(asc::LBA_OUT_OF_RANGE));
    }
    Outcome::Read { lba, blocks: count }
}

fn read_cd(cdb: &[u8; PACKET_SIZE], blocks: u64) -> Outcome {
    let count = u64::from(cdb[6]) << 16 | u64::from(cdb[7]) << 8 | u64::from(cdb[8]);
    match cdb[9] & 0xF8 {
        // Nothing selected: a valid command that transfers nothing.
        0x00 => Outcome::Done,
        // User data only: the 2048 bytes of each mode 1 / form 1 sector.
        0x10 => read(be32(&cdb[2..6]), count, blocks),
        // Headers, sync, EDC/ECC and subchannels are not in an ISO image.
        _ => Outcome::Check(Sense::illegal(asc::INVALID_FIELD_IN_CDB)),
    }
}

fn request_sense(cdb: &[u8; PACKET_SIZE], st: &mut AtapiState) -> Outcome {
    let sense = if st.unit_attention {
        st.unit_attention = false;
        Sense::new(sense_key::UNIT_ATTENTION, asc::MEDIUM_MAY_HAVE_CHANGED, 0)
    } else {
        st.sense
    };
    st.sense = Sense::default();
    // Fixed format, current errors.
    let mut v = vec![0u8; 18];
    v[0] = 0x70;
    v[2] = sense.key;
    v[7] = 10;
    v[12] = sense.asc;
    v[13] = sense.ascq;
    reply(v, usize::from(cdb[4]))
}

fn padded(s: &str, len: usize) -> impl Iterator<Item = u8> + '_ {
    s.bytes().chain(std::iter::repeat(b' ')).take(len)
}

fn inquiry(cdb: &[u8; PACKET_SIZE], id: &Identity<'_>) -> Outcome {
    if cdb[1] & 1 != 0 {
        // No vital product data pages.
        return Outcome::Check(Sense::illegal(asc::INVALID_FIELD_IN_CDB));
    }
    // Peripheral type 5 (CD/DVD), removable, version 0 as ATAPI devices report, response
    // format 1 with ATAPI version 2, 31 more bytes.
    let mut v = vec![0x05, 0x80, 0x00, 0x21, 31, 0, 0, 0];
    v.extend(padded(id.vendor, 8));
    v.extend(padded(id.product, 16));
    v.extend(padded(id.revision, 4));
    reply(v, usize::from(be16(&cdb[3..5])))
}

fn start_stop_unit(cdb: &[u8; PACKET_SIZE], st: &mut AtapiState, inserted: bool) -> Outcome {
    let start = cdb[4] & 1 != 0;
    let load_eject = cdb[4] & 2 != 0;
    if !load_eject {
        // Spinning up or down changes nothing an image can show.
        return Outcome::Done;
    }
    if start {
        if st.tray_open {
            st.tray_open = false;
            if inserted {
                st.unit_attention = true;
                st.new_media = true;
            }
        }
        Outcome::Done
    } else if st.locked {
        let key = if inserted {
            sense_key::ILLEGAL_REQUEST
        } else {
            sense_key::NOT_READY
        };
        Outcome::Check(Sense::new(key, asc::REMOVAL_PREVENTED, 2))
    } else {
        st.tray_open = true;
        st.new_media = false;
        Outcome::Done
    }
}

/// A TOC address: LBA, or minute/second/frame with the 2-second lead-in.
fn toc_address(lba: u64, msf: bool) -> [u8; 4] {
    if msf {
        let [m, s, f] = lba_to_msf(lba);
        [0, m, s, f]
    } else {
        (lba as u32).to_be_bytes()
    }
}

fn lba_to_msf(lba: u64) -> [u8; 3] {
    let frames = lba + 150;
    let m = (frames / 75 / 60).min(255) as u8;
    [m, (frames / 75 % 60) as u8, (frames % 75) as u8]
}

/// Control nibble 4 (data track) with ADR 1 (position data).
const ADR_CONTROL_DATA: u8 = 0x14;
const LEAD_OUT: u8 = 0xAA;

fn read_toc(cdb: &[u8; PACKET_SIZE], blocks: u64) -> Outcome {
    let msf = cdb[1] & 2 != 0;
    let start_track = cdb[6];
    let alloc = usize::from(be16(&cdb[7..9]));
    // MMC puts the format in byte 2; SFF-8020 drives took it from the top of byte 9.
    let format = match cdb[2] & 0x0F {
        0 => cdb[9] >> 6,
        f => f,
    };
    let mut v = Vec::new();
    match format {
        0 => {
            // One data track, then the lead-out.
            if start_track > 1 && start_track != LEAD_OUT {
                return Outcome::Check(Sense::illegal(asc::INVALID_FIELD_IN_CDB));
            }
            v.extend_from_slice(&[0, 0, 1, 1]);
            if start_track <= 1 {
                v.extend_from_slice(&[0, ADR_CONTROL_DATA, 1, 0]);
                v.extend_from_slice(&toc_address(0, msf));
            }
            v.extend_from_slice(&[0, ADR_CONTROL_DATA, LEAD_OUT, 0]);
            v.extend_from_slice(&toc_address(blocks, msf));
        }
        1 => {
            // Session information: one session whose first track starts at 0.
            v.extend_from_slice(&[0, 0, 1, 1, 0, ADR_CONTROL_DATA, 1, 0]);
            v.extend_from_slice(&toc_address(0, msf));
        }
        2 => {
            // Raw TOC of session 1: points A0 (first track), A1 (last), A2 (lead-out), 1.
            v.extend_from_slice(&[0, 0, 1, 1]);
            let lead_out = lba_to_msf(blocks);
            let start = lba_to_msf(0);
            for (point, p) in [
                (0xA0, [1, 0, 0]),
                (0xA1, [1, 0, 0]),
                (0xA2, lead_out),
                (0x01, start),
            ] {
                v.extend_from_slice(&[1, ADR_CONTROL_DATA, 0, point, 0, 0, 0, 0]);
                v.extend_from_slice(&p);
            }
        }
        _ => return Outcome::Check(Sense::illegal(asc::INVALID_FIELD_IN_CDB)),
    }
    let len = (v.len() - 2) as u16;
    v[..2].copy_from_slice(&len.to_be_bytes());
    reply(v, alloc)
}

const PAGE_ERROR_RECOVERY: u8 = 0x01;
const PAGE_CAPABILITIES: u8 = 0x2A;
const PAGE_ALL: u8 = 0x3F;

fn mode_sense(cdb: &[u8; PACKET_SIZE], st: &AtapiState, medium: Option<u64>) -> Outcome {
    let control = cdb[2] >> 6;
    let page = cdb[2] & 0x3F;
    let alloc = usize::from(be16(&cdb[7..9]));
    if control == 3 {
        return Outcome::Check(Sense::illegal(asc::SAVING_NOT_SUPPORTED));
    }
    // Nothing is changeable: the changeable-values mask of every page is all zeros.
    let changeable = control == 1;
    let mut pages = Vec::new();
    if page == PAGE_ERROR_RECOVERY || page == PAGE_ALL {
        // Read retry count 5, nothing else.
        let body = [0x00, 0x05, 0, 0, 0, 0];
        pages.extend_from_slice(&[PAGE_ERROR_RECOVERY, body.len() as u8]);
        pages.extend(body.iter().map(|&b| if changeable { 0 } else { b }));
    }
    if page == PAGE_CAPABILITIES || page == PAGE_ALL {
        let mut body = [0u8; 18];
        body[0] = 0x0F; // reads CD-R, CD-RW, method 2, DVD-ROM
        body[1] = 0x00; // writes nothing
        // Audio play (Linux looks at it before automounting), mode 2 forms 1 and 2,
        // multi-session.
        body[2] = 0x71;
        body[3] = 0x00;
        // Tray loading, eject, lock supported, lock state.
        body[4] = 0x29 | if st.locked { 0x02 } else { 0 };
        body[6..8].copy_from_slice(&706u16.to_be_bytes()); // max speed, KB/s (4x)
        body[8..10].copy_from_slice(&2u16.to_be_bytes()); // volume levels
        body[10..12].copy_from_slice(&512u16.to_be_bytes()); // buffer, KB
        body[12..14].copy_from_slice(&706u16.to_be_bytes()); // current speed
        pages.extend_from_slice(&[PAGE_CAPABILITIES, body.len() as u8]);
        pages.extend(body.iter().map(|&b| if changeable { 0 } else { b }));
    }
    if pages.is_empty() {
        return Outcome::Check(Sense::illegal(asc::INVALID_FIELD_IN_CDB));
    }
    // Medium type (SFF-8020): door open, closed and empty, or a 120 mm data disc.
    let medium_type = if st.tray_open {
        0x71
    } else if medium.is_none() {
        0x70
    } else {
        0x01
    };
    let mut v = vec![0, 0, medium_type, 0, 0, 0, 0, 0];
    v.extend_from_slice(&pages);
    let len = (v.len() - 2) as u16;
    v[..2].copy_from_slice(&len.to_be_bytes());
    reply(v, alloc)
}

fn get_configuration(cdb: &[u8; PACKET_SIZE], ready_blocks: Option<u64>) -> Outcome {
    let rt = cdb[1] & 3;
    let start = be16(&cdb[2..4]);
    let alloc = usize::from(be16(&cdb[7..9]));
    if rt == 3 {
        return Outcome::Check(Sense::illegal(asc::INVALID_FIELD_IN_CDB));
    }
    let current_profile = match ready_blocks {
        None => 0,
        Some(b) if b > CD_MAX_BLOCKS => PROFILE_DVD_ROM,
        Some(_) => PROFILE_CD_ROM,
    };
    let medium = ready_blocks.is_some();
    // (feature code, version, persistent, current, body)
    let mut profiles = Vec::new();
    for p in [PROFILE_DVD_ROM, PROFILE_CD_ROM] {
        profiles.extend_from_slice(&p.to_be_bytes());
        profiles.extend_from_slice(&[u8::from(p == current_profile), 0]);
    }
    let blocking: u16 = if current_profile == PROFILE_DVD_ROM {
        16
    } else {
        1
    };
    let mut random = (CD_SECTOR_SIZE as u32).to_be_bytes().to_vec();
    random.extend_from_slice(&blocking.to_be_bytes());
    random.extend_from_slice(&[0, 0]);
    let features: [(u16, u8, bool, bool, Vec<u8>); 4] = [
        (0x0000, 0, true, true, profiles),
        // Core: ATAPI physical interface.
        (0x0001, 1, true, true, vec![0, 0, 0, 2, 0, 0, 0, 0]),
        // Removable medium: tray, eject, lockable.
        (0x0003, 0, true, true, vec![0x29, 0, 0, 0]),
        // Random readable, current only with a medium.
        (0x0010, 0, false, medium, random),
    ];
    let mut v = vec![0u8; 8];
    v[6..8].copy_from_slice(&current_profile.to_be_bytes());
    for (code, version, persistent, current, body) in features {
        let wanted = match rt {
            0 => code >= start,
            1 => code >= start && current,
            _ => code == start,
        };
        if !wanted {
            continue;
        }
        v.extend_from_slice(&code.to_be_bytes());
        v.push(version << 2 | u8::from(persistent) << 1 | u8::from(current));
        v.push(body.len() as u8);
        v.extend_from_slice(&body);
    }
    let len = (v.len() - 4) as u32;
    v[..4].copy_from_slice(&len.to_be_bytes());
    reply(v, alloc)
}

/// Notification class "media" in the event header and the request mask.
const CLASS_MEDIA: u8 = 4;

fn event_status(cdb: &[u8; PACKET_SIZE], st: &mut AtapiState, inserted: bool) -> Outcome {
    if cdb[1] & 1 == 0 {
        // Asynchronous notification is optional in MMC; only polling is offered.
        return Outcome::Check(Sense::illegal(asc::INVALID_FIELD_IN_CDB));
    }
    let alloc = usize::from(be16(&cdb[7..9]));
    let supported = 1 << CLASS_MEDIA;
    let v = if cdb[4] & (1 << CLASS_MEDIA) != 0 {
        let status = if st.tray_open {
            1
        } else if inserted {
            2
        } else {
            0
        };
        let event = if !st.tray_open && st.new_media {
            st.new_media = false;
            2 // new media
        } else {
            0
        };
        vec![0, 4, CLASS_MEDIA, supported, event, status, 0, 0]
    } else {
        // No event of a requested class is available.
        vec![0, 0, 0x80, supported]
    };
    reply(v, alloc)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: Identity<'static> = Identity {
        vendor: "VIREO",
        product: "DVD-ROM",
        revision: "0.1",
    };

    fn cdb(bytes: &[u8]) -> [u8; PACKET_SIZE] {
        let mut c = [0u8; PACKET_SIZE];
        c[..bytes.len()].copy_from_slice(bytes);
        c
    }

    fn data(o: Outcome) -> Vec<u8> {
        match o {
            Outcome::Data(v) => v,
            other => panic!("expected data, got {other:?}"),
        }
    }

    #[test]
    fn inquiry_reports_a_removable_cdrom() {
        let mut st = AtapiState::default();
        let v = data(execute(&cdb(&[0x12, 0, 0, 0, 96]), &mut st, None, &ID));
        assert_eq!(v.len(), 36);
        assert_eq!(&v[..2], &[0x05, 0x80]);
        assert_eq!(&v[8..16], b"VIREO   ");
        assert_eq!(&v[16..32], b"DVD-ROM         ");
        let v = data(execute(&cdb(&[0x12, 0, 0, 0, 5]), &mut st, None, &ID));
        assert_eq!(v.len(), 5, "cut to the allocation length");
        assert_eq!(
            execute(&cdb(&[0x12, 1, 0, 0, 96]), &mut st, None, &ID),
            Outcome::Check(Sense::illegal(asc::INVALID_FIELD_IN_CDB))
        );
    }

    #[test]
    fn not_ready_without_medium_and_sense_says_why() {
        let mut st = AtapiState::default();
        let o = execute(&cdb(&[0x00]), &mut st, None, &ID);
        assert_eq!(o, Outcome::Check(Sense::new(2, 0x3A, 1)));
        let v = data(execute(&cdb(&[0x03, 0, 0, 0, 18]), &mut st, None, &ID));
        assert_eq!((v[0], v[2], v[12], v[13]), (0x70, 2, 0x3A, 1));
        let v = data(execute(&cdb(&[0x03, 0, 0, 0, 18]), &mut st, None, &ID));
        assert_eq!(v[2], 0, "sense is cleared once reported");
    }

    #[test]
    fn unit_attention_once_after_a_change_then_ready() {
        let mut st = AtapiState::default();
        st.medium_changed();
        let inq = execute(&cdb(&[0x12, 0, 0, 0, 36]), &mut st, Some(100), &ID);
        assert!(matches!(inq, Outcome::Data(_)), "INQUIRY runs under UA");
        let o = execute(&cdb(&[0x00]), &mut st, Some(100), &ID);
        assert_eq!(o, Outcome::Check(Sense::new(6, 0x28, 0)));
        assert_eq!(
            execute(&cdb(&[0x00]), &mut st, Some(100), &ID),
            Outcome::Done
        );
    }

    #[test]
    fn read_capacity_and_reads_are_range_checked() {
        let mut st = AtapiState::default();
        let v = data(execute(&cdb(&[0x25]), &mut st, Some(1000), &ID));
        assert_eq!(v, vec![0, 0, 0x03, 0xE7, 0, 0, 0x08, 0]);
        assert_eq!(
            execute(
                &cdb(&[0x28, 0, 0, 0, 0x03, 0xE0, 0, 0, 8]),
                &mut st,
                Some(1000),
                &ID
            ),
            Outcome::Read {
                lba: 992,
                blocks: 8
            }
        );
        assert_eq!(
            execute(
                &cdb(&[0x28, 0, 0, 0, 0x03, 0xE0, 0, 0, 9]),
                &mut st,
                Some(1000),
                &ID
            ),
            Outcome::Check(Sense::illegal(asc::LBA_OUT_OF_RANGE))
        );
        assert_eq!(
            execute(
                &cdb(&[0xA8, 0, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF]),
                &mut st,
                Some(1000),
                &ID
            ),
            Outcome::Check(Sense::illegal(asc::LBA_OUT_OF_RANGE)),
            "no overflow on huge LBA + count"
        );
        assert_eq!(
            execute(&cdb(&[0x28, 0, 0, 0, 0, 5]), &mut st, Some(1000), &ID),
            Outcome::Done,
            "a zero-length read transfers nothing"
        );
    }

    #[test]
    fn toc_in_lba_and_msf() {
        let mut st = AtapiState::default();
        let v = data(execute(
            &cdb(&[0x43, 0, 0, 0, 0, 0, 0, 0, 100]),
            &mut st,
            Some(4500),
            &ID,
        ));
        assert_eq!(
            v,
            vec![
                0, 18, 1, 1, 0, 0x14, 1, 0, 0, 0, 0, 0, 0, 0x14, 0xAA, 0, 0, 0, 0x11, 0x94
            ]
        );
        let v = data(execute(
            &cdb(&[0x43, 2, 0, 0, 0, 0, 0, 0, 100]),
            &mut st,
            Some(4500),
            &ID,
        ));
        // Track 1 at 00:02:00; lead-out at 4500 + 150 frames = 01:02:00.
        assert_eq!(&v[8..12], &[0, 0, 2, 0]);
        assert_eq!(&v[16..20], &[0, 1, 2, 0]);
        let v = data(execute(
            &cdb(&[0x43, 0, 1, 0, 0, 0, 0, 0, 100]),
            &mut st,
            Some(4500),
            &ID,
        ));
        assert_eq!(v, vec![0, 10, 1, 1, 0, 0x14, 1, 0, 0, 0, 0, 0]);
        assert!(matches!(
            execute(
                &cdb(&[0x43, 0, 0, 0, 0, 0, 2, 0, 100]),
                &mut st,
                Some(4500),
                &ID
            ),
            Outcome::Check(_)
        ));
    }

    #[test]
    fn mode_sense_capabilities_page() {
        let mut st = AtapiState {
            locked: true,
            ..AtapiState::default()
        };
        let v = data(execute(
            &cdb(&[0x5A, 0, 0x2A, 0, 0, 0, 0, 0, 255]),
            &mut st,
            Some(10),
            &ID,
        ));
        assert_eq!(v.len(), 8 + 20);
        assert_eq!(u16::from_be_bytes([v[0], v[1]]) as usize, v.len() - 2);
        assert_eq!(&v[8..10], &[0x2A, 0x12]);
        assert_eq!(v[8 + 6] & 0x0B, 0x0B, "lock, lock state, eject");
        let all = data(execute(
            &cdb(&[0x5A, 0, 0x3F, 0, 0, 0, 0, 0, 255]),
            &mut st,
            Some(10),
            &ID,
        ));
        assert_eq!(all.len(), 8 + 8 + 20);
        assert_eq!(
            execute(&cdb(&[0x5A, 0, 0xC1]), &mut st, Some(10), &ID),
            Outcome::Check(Sense::illegal(asc::SAVING_NOT_SUPPORTED))
        );
        assert_eq!(
            execute(
                &cdb(&[0x5A, 0, 0x05, 0, 0, 0, 0, 0, 255]),
                &mut st,
                Some(10),
                &ID
            ),
            Outcome::Check(Sense::illegal(asc::INVALID_FIELD_IN_CDB))
        );
    }

    #[test]
    fn eject_respects_the_lock_and_load_raises_attention() {
        let mut st = AtapiState::default();
        execute(&cdb(&[0x1E, 0, 0, 0, 1]), &mut st, Some(10), &ID);
        assert_eq!(
            execute(&cdb(&[0x1B, 0, 0, 0, 2]), &mut st, Some(10), &ID),
            Outcome::Check(Sense::new(5, 0x53, 2))
        );
        execute(&cdb(&[0x1E, 0, 0, 0, 0]), &mut st, Some(10), &ID);
        assert_eq!(
            execute(&cdb(&[0x1B, 0, 0, 0, 2]), &mut st, Some(10), &ID),
            Outcome::Done
        );
        assert_eq!(
            execute(&cdb(&[0x00]), &mut st, Some(10), &ID),
            Outcome::Check(Sense::new(2, 0x3A, 2)),
            "tray open"
        );
        execute(&cdb(&[0x1B, 0, 0, 0, 3]), &mut st, Some(10), &ID);
        assert!(matches!(
            execute(&cdb(&[0x00]), &mut st, Some(10), &ID),
            Outcome::Check(Sense { key: 6, .. })
        ));
        assert_eq!(
            execute(&cdb(&[0x00]), &mut st, Some(10), &ID),
            Outcome::Done
        );
    }

    #[test]
    fn event_status_reports_new_media_once() {
        let mut st = AtapiState::default();
        st.medium_changed();
        let gesn = cdb(&[0x4A, 1, 0, 0, 0x10, 0, 0, 0, 8]);
        let v = data(execute(&gesn, &mut st, Some(10), &ID));
        assert_eq!(v, vec![0, 4, 4, 0x10, 2, 2, 0, 0]);
        let v = data(execute(&gesn, &mut st, Some(10), &ID));
        assert_eq!(v[4], 0);
        assert!(
            st.unit_attention,
            "GESN does not consume the unit attention"
        );
        assert!(matches!(
            execute(
                &cdb(&[0x4A, 0, 0, 0, 0x10, 0, 0, 0, 8]),
                &mut st,
                Some(10),
                &ID
            ),
            Outcome::Check(_)
        ));
    }

    #[test]
    fn get_configuration_profiles() {
        let mut st = AtapiState::default();
        let v = data(execute(
            &cdb(&[0x46, 0, 0, 0, 0, 0, 0, 1, 0]),
            &mut st,
            Some(1000),
            &ID,
        ));
        assert_eq!(
            u32::from_be_bytes([v[0], v[1], v[2], v[3]]) as usize,
            v.len() - 4
        );
        assert_eq!(&v[6..8], &[0, 8], "a small medium is a CD");
        assert_eq!(&v[8..12], &[0, 0, 3, 8]);
        let dvd = data(execute(
            &cdb(&[0x46, 2, 0, 0x10, 0, 0, 0, 1, 0]),
            &mut st,
            Some(CD_MAX_BLOCKS + 1),
            &ID,
        ));
        assert_eq!(&dvd[6..8], &[0, 0x10]);
        assert_eq!(dvd.len(), 8 + 12, "RT 2 returns only the named feature");
        assert_eq!(&dvd[16..18], &[0, 16], "DVD blocking");
    }

    #[test]
    fn unknown_opcodes_are_illegal_requests() {
        let mut st = AtapiState::default();
        for opcode in [0x01u8, 0x51, 0xAD, 0xFF] {
            assert_eq!(
                execute(&cdb(&[opcode]), &mut st, Some(10), &ID),
                Outcome::Check(Sense::illegal(asc::INVALID_OPCODE))
            );
        }
    }
}
