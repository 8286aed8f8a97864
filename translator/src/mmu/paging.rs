//! Page-table walks: 2-level 32-bit paging (4 KiB and, with CR4.PSE, 4 MiB pages), PAE (3 levels,
//! 2 MiB pages, NX) and the 4-level long-mode walk. Accessed and dirty bits are set as the hardware
//! does; failures become #PF with CR2 and the error code.

use super::Access;
use super::tlb::perm;
use crate::Cpu;
use crate::bus::CpuBus;
use crate::exception::Fault;
use crate::state::{cr0, cr4, efer};

const P: u64 = 1;
const RW: u64 = 2;
const US: u64 = 4;
const A: u64 = 1 << 5;
const D: u64 = 1 << 6;
const PS: u64 = 1 << 7;
const G: u64 = 1 << 8;
const NX: u64 = 1 << 63;
/// Physical address width reported by CPUID (Pentium Pro class: 36 bits).
pub const MAXPHYADDR: u32 = 36;

/// Page-fault error code bits.
pub mod pferr {
    pub const PRESENT: u32 = 1;
    pub const WRITE: u32 = 2;
    pub const USER: u32 = 4;
    pub const RSVD: u32 = 8;
    pub const FETCH: u32 = 16;
}

impl Cpu {
    /// Translate a linear address for an access at privilege `user`. Without paging the linear
    /// address is the physical one (masked by A20).
    #[inline]
    pub(crate) fn translate(
        &mut self,
        bus: &mut dyn CpuBus,
        lin: u64,
        acc: Access,
        user: bool,
    ) -> Result<u64, Fault> {
        if self.cr0 & cr0::PG == 0 {
            return Ok(lin & self.a20_mask & 0xFFFF_FFFF);
        }
        let lpage = lin >> 12;
        if let Some((ppage, p)) = self.tlb.lookup(lpage)
            && self.permitted(p, acc, user)
            && (acc != Access::Write || p & perm::DIRTY != 0)
        {
            return Ok((ppage << 12) | (lin & 0xFFF));
        }
        self.walk(bus, lin, acc, user)
    }

    #[inline]
    fn permitted(&self, p: u8, acc: Access, user: bool) -> bool {
        if user && p & perm::US == 0 {
            return false;
        }
        if acc == Access::Write && p & perm::RW == 0 && (user || self.cr0 & cr0::WP != 0) {
            return false;
        }
        if acc == Access::Exec && p & perm::NX != 0 && self.efer & efer::NXE != 0 {
            return false;
        }
        true
    }

    fn pf(&mut self, lin: u64, acc: Access, user: bool, code: u32) -> Fault {
        let mut code = code;
        if acc == Access::Write {
            code |= pferr::WRITE;
        }
        if user {
            code |= pferr::USER;
        }
        if acc == Access::Exec && self.efer & efer::NXE != 0 && self.cr4 & cr4::PAE != 0 {
            code |= pferr::FETCH;
        }
        self.cr2 = lin;
        Fault::pf(code)
    }

    fn pte_read(&mut self, bus: &mut dyn CpuBus, addr: u64, wide: bool) -> u64 {
        if wide {
            self.phys_read(bus, addr, 8)
        } else {
            self.phys_read(bus, addr, 4)
        }
    }

    fn pte_write(&mut self, bus: &mut dyn CpuBus, addr: u64, wide: bool, v: u64) {
        self.phys_write(bus, addr, if wide { 8 } else { 4 }, v);
    }

    fn walk(
        &mut self,
        bus: &mut dyn CpuBus,
        lin: u64,
        acc: Access,
        user: bool,
    ) -> Result<u64, Fault> {
        let pae = self.cr4 & cr4::PAE != 0;
        let long = self.efer & efer::LMA != 0;
        let nxe = self.efer & efer::NXE != 0;
        // Reserved physical-address bits of a 64-bit entry (and NX when NXE is off).
        let rsvd_hi: u64 =
            (!((1u64 << MAXPHYADDR) - 1) & 0x7FFF_FFFF_FFFF_FFFF) | if nxe { 0 } else { NX };

        // (entry address, entry, is wide)
        let mut entries: smallvec::SmallVec<[(u64, u64); 4]> = smallvec::SmallVec::new();
        let (frame, page_bits): (u64, u32);
        if !pae {
            let pde_addr = (self.cr3 & 0xFFFF_F000) | ((lin >> 20) & 0xFFC);
            let pde = self.pte_read(bus, pde_addr, false);
            if pde & P == 0 {
                return Err(self.pf(lin, acc, user, 0));
            }
            entries.push((pde_addr, pde));
            if pde & PS != 0 && self.cr4 & cr4::PSE != 0 {
                frame = pde & 0xFFC0_0000;
                page_bits = 22;
            } else {
                let pte_addr = (pde & 0xFFFF_F000) | ((lin >> 10) & 0xFFC);
                let pte = self.pte_read(bus, pte_addr, false);
                if pte & P == 0 {
                    return Err(self.pf(lin, acc, user, 0));
                }
                entries.push((pte_addr, pte));
                frame = pte & 0xFFFF_F000;
                page_bits = 12;
            }
        } else {
            let mut table;
            let mut level;
            if long {
                table = self.cr3 & 0x000F_FFFF_FFFF_F000;
                level = 4;
            } else {
                // Legacy PAE: the 4-entry PDPT, 32-byte aligned. (Real CPUs cache the PDPTEs at
                // MOV CR3; reading them here differs only if the guest edits them without
                // reloading CR3.)
                let pdpte_addr = (self.cr3 & 0xFFFF_FFE0) | ((lin >> 27) & 0x18);
                let pdpte = self.pte_read(bus, pdpte_addr, true);
                if pdpte & P == 0 {
                    return Err(self.pf(lin, acc, user, 0));
                }
                if pdpte & (rsvd_hi | NX | 0x1E6) != 0 {
                    return Err(self.pf(lin, acc, user, pferr::PRESENT | pferr::RSVD));
                }
                table = pdpte & 0x000F_FFFF_FFFF_F000;
                level = 2;
            }
            loop {
                let shift = 12 + 9 * (level - 1);
                let addr = table | (((lin >> shift) & 0x1FF) << 3);
                let e = self.pte_read(bus, addr, true);
                if e & P == 0 {
                    return Err(self.pf(lin, acc, user, 0));
                }
                let large_ok = level == 2 || (level == 3 && long);
                let mut rsvd = e & rsvd_hi;
                if e & PS != 0 && level == 4 {
                    rsvd |= PS;
                }
                if e & PS != 0 && large_ok {
                    // Bits 12..shift of a large-page frame are reserved (except PAT at bit 12).
                    rsvd |= e & (((1u64 << shift) - 1) & !0x1FFF);
                }
                if rsvd != 0 {
                    return Err(self.pf(lin, acc, user, pferr::PRESENT | pferr::RSVD));
                }
                entries.push((addr, e));
                if level == 1 || (e & PS != 0 && large_ok) {
                    frame = e & 0x000F_FFFF_FFFF_F000 & !((1u64 << shift) - 1);
                    page_bits = shift as u32;
                    break;
                }
                table = e & 0x000F_FFFF_FFFF_F000;
                level -= 1;
            }
        }

        let mut p = perm::RW | perm::US;
        for &(_, e) in &entries {
            if e & RW == 0 {
                p &= !perm::RW;
            }
            if e & US == 0 {
                p &= !perm::US;
            }
            if pae && e & NX != 0 {
                p |= perm::NX;
            }
        }
        let (_, last) = *entries.last().unwrap_or(&(0, 0));
        if last & G != 0 && self.cr4 & cr4::PGE != 0 {
            p |= perm::GLOBAL;
        }
        if !self.permitted(p, acc, user) {
            return Err(self.pf(lin, acc, user, pferr::PRESENT));
        }
        // Accessed bits on every level, dirty on the last one for writes.
        let n = entries.len();
        for (i, &(addr, e)) in entries.iter().enumerate() {
            let mut ne = e | A;
            if i == n - 1 && acc == Access::Write {
                ne |= D;
            }
            if ne != e {
                self.pte_write(bus, addr, pae, ne);
            }
            if i == n - 1 && ne & D != 0 {
                p |= perm::DIRTY;
            }
        }
        let phys = frame | (lin & ((1u64 << page_bits) - 1));
        self.tlb.insert(lin >> 12, phys >> 12, p, page_bits > 12);
        Ok(phys)
    }
}
