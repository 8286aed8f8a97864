//! The one seam between the CPU and the board: port I/O, non-RAM physical memory, the interrupt
//! line and reset. The CPU knows no device; a board implements [`CpuBus`] and routes each call
//! to its port and MMIO buses and its interrupt controller.

/// What the CPU needs from the machine around it.
///
/// Guest RAM is not behind this trait: it lives in [`crate::PhysMem`], which the CPU reads and
/// writes directly (the fast path). Everything outside RAM — MMIO, ROM reads when the board keeps
/// ROM itself, holes — comes here.
pub trait CpuBus {
    /// A read of `data.len()` (1, 2, 4 or 8) bytes from a physical address that is not RAM.
    fn mmio_read(&mut self, addr: u64, data: &mut [u8]) {
        let _ = addr;
        data.fill(0xFF);
    }
    /// A write to a physical address that is not RAM.
    fn mmio_write(&mut self, addr: u64, data: &[u8]) {
        let _ = (addr, data);
    }
    /// `IN` of `size` bytes (1, 2 or 4). Unclaimed ports read as all ones.
    fn io_read(&mut self, port: u16, size: u8) -> u32;
    /// `OUT` of `size` bytes (1, 2 or 4).
    fn io_write(&mut self, port: u16, size: u8, value: u32);
    /// Is the maskable interrupt line (INTR) asserted?
    fn intr_pending(&mut self) -> bool {
        false
    }
    /// Acknowledge INTR (the INTA cycle): the vector to deliver.
    fn intr_ack(&mut self) -> u8 {
        0
    }
    /// Is a non-maskable interrupt pending? Reading it consumes it (NMI is edge triggered).
    fn take_nmi(&mut self) -> bool {
        false
    }
    /// Might `intr_pending` or `take_nmi` say yes now? Asked (without side effects) by compiled
    /// code at a block end, after a handler used the bus or changed IF (or the other state
    /// the dispatch loop checks between blocks), before it goes straight on to the next
    /// compiled block instead of returning to the dispatch loop, which polls the two lines
    /// between blocks. False lets the CPU stay in host code; when in doubt say true (the
    /// default: the dispatch loop then polls as usual).
    ///
    /// Otherwise compiled code does not ask: the CPU assumes the lines change only during
    /// calls into the bus (and between [`crate::Cpu::run`] calls). A bus whose
    /// lines move on their own (another thread) is still polled at least once per `run`.
    fn events_pending(&mut self) -> bool {
        true
    }
    /// The CPU shut down (triple fault). A PC board resets the machine; a test board stops.
    fn shutdown(&mut self) {}
}

/// Guest physical memory that the CPU accesses directly: RAM (read/write) and ROM (writes are
/// dropped). Page-granular maps say which physical pages are RAM or ROM; every other address goes
/// to [`CpuBus::mmio_read`]/[`CpuBus::mmio_write`].
pub struct PhysMem {
    data: Box<[u8]>,
    /// One entry per 4 KiB page of `data`: [`PAGE_RAM`], [`PAGE_ROM`] or [`PAGE_BUS`]. A byte
    /// per page rather than bits: this is probed on every access.
    kind: Box<[u8]>,
}

const PAGE_BUS: u8 = 0;
const PAGE_RAM: u8 = 1;
const PAGE_ROM: u8 = 2;

impl PhysMem {
    /// `size` bytes of zeroed RAM starting at physical address 0 (rounded up to whole pages).
    pub fn new(size: usize) -> Self {
        let pages = size.div_ceil(4096);
        PhysMem {
            data: vec![0u8; pages * 4096].into_boxed_slice(),
            kind: vec![PAGE_RAM; pages].into_boxed_slice(),
        }
    }

    /// [`PhysMem::new`], or `None` when the host cannot reserve that much address space. The
    /// zeroed allocation is lazy (fresh anonymous pages), so a large guest costs host memory
    /// only for the pages it touches — and the hole below 4 GiB costs nothing.
    pub fn try_new(size: usize) -> Option<Self> {
        let pages = size.div_ceil(4096);
        let bytes = pages.checked_mul(4096)?;
        let mut data = Vec::<u8>::new();
        data.try_reserve_exact(bytes).ok()?;
        // A reservation is not zeroed memory; `resize` would touch every page. Give the
        // reservation back and take the lazily zeroed allocation that `vec!` makes, now that
        // the host has shown it can map that much.
        drop(data);
        Some(PhysMem {
            data: vec![0u8; bytes].into_boxed_slice(),
            kind: vec![PAGE_RAM; pages].into_boxed_slice(),
        })
    }
    /// Size of the backing store in bytes.
    pub fn len(&self) -> usize {
        self.data.len()
    }
    /// True when there is no backing store at all.
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }
    /// The whole backing store, for a board to load images and for DMA.
    pub fn as_slice(&self) -> &[u8] {
        &self.data
    }
    /// The whole backing store, writable. Writes made this way bypass the CPU's self-modifying
    /// code detection: a board that DMAs into code must call [`crate::Cpu::invalidate_phys`].
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        &mut self.data
    }
    /// Hand the physical range `[start, end)` to the bus (MMIO or hole): the CPU stops treating
    /// it as RAM. Page granular. After a CPU exists, follow map changes with
    /// [`crate::Cpu::flush_translations`] (its fast paths cache "this page is RAM").
    pub fn set_mmio(&mut self, start: u64, end: u64) {
        for p in (start >> 12)..end.div_ceil(4096) {
            if let Some(k) = self.kind.get_mut(p as usize) {
                *k = PAGE_BUS;
            }
        }
    }
    /// Mark `[start, end)` as ROM: readable from the backing store, writes dropped.
    pub fn set_rom(&mut self, start: u64, end: u64, rom: bool) {
        for p in (start >> 12)..end.div_ceil(4096) {
            if let Some(k) = self.kind.get_mut(p as usize)
                && *k != PAGE_BUS
            {
                *k = if rom { PAGE_ROM } else { PAGE_RAM };
            }
        }
    }
    /// Is the byte at `addr` backed by this store (RAM or ROM)?
    #[inline]
    pub fn is_backed(&self, addr: u64) -> bool {
        self.kind
            .get((addr >> 12) as usize)
            .is_some_and(|&k| k != PAGE_BUS)
    }
    /// Plain writable RAM (not ROM, not the bus)?
    #[inline]
    pub(crate) fn is_ram(&self, addr: u64) -> bool {
        self.kind.get((addr >> 12) as usize) == Some(&PAGE_RAM)
    }

    #[inline]
    pub(crate) fn is_rom(&self, addr: u64) -> bool {
        self.kind.get((addr >> 12) as usize) == Some(&PAGE_ROM)
    }
    /// Read `buf.len()` bytes; the caller checked [`PhysMem::is_backed`] for the range's page.
    #[inline]
    pub(crate) fn read_backed(&self, addr: u64, buf: &mut [u8]) {
        let a = addr as usize;
        buf.copy_from_slice(&self.data[a..a + buf.len()]);
    }
    /// Host address of physical address 0, for compiled code (which reaches RAM only through
    /// fast-TLB entries, i.e. pages checked to be RAM).
    pub(crate) fn host_base(&mut self) -> usize {
        self.data.as_mut_ptr() as usize
    }

    /// Little-endian load of 1, 2, 4 or 8 bytes from backed memory (fixed-size loads, no
    /// memcpy call). The caller checked that the range is backed and within one page.
    #[inline]
    pub(crate) fn load(&self, addr: u64, size: u8) -> u64 {
        let a = addr as usize;
        let d = &self.data;
        match size {
            1 => d[a] as u64,
            2 => u16::from_le_bytes([d[a], d[a + 1]]) as u64,
            4 => u32::from_le_bytes(d[a..a + 4].try_into().unwrap_or([0; 4])) as u64,
            8 => u64::from_le_bytes(d[a..a + 8].try_into().unwrap_or([0; 8])),
            n => {
                let mut b = [0u8; 8];
                b[..n as usize].copy_from_slice(&d[a..a + n as usize]);
                u64::from_le_bytes(b)
            }
        }
    }

    /// Little-endian store counterpart of [`PhysMem::load`].
    #[inline]
    pub(crate) fn store(&mut self, addr: u64, size: u8, v: u64) {
        let a = addr as usize;
        let d = &mut self.data;
        match size {
            1 => d[a] = v as u8,
            2 => d[a..a + 2].copy_from_slice(&(v as u16).to_le_bytes()),
            4 => d[a..a + 4].copy_from_slice(&(v as u32).to_le_bytes()),
            8 => d[a..a + 8].copy_from_slice(&v.to_le_bytes()),
            n => d[a..a + n as usize].copy_from_slice(&v.to_le_bytes()[..n as usize]),
        }
    }
}

/// A bus with nothing on it: ports read as all ones, no interrupts. For tests and tools.
#[derive(Default)]
pub struct NullBus;

impl CpuBus for NullBus {
    fn io_read(&mut self, _port: u16, size: u8) -> u32 {
        if size >= 4 {
            u32::MAX
        } else {
            (1u32 << (size * 8)) - 1
        }
    }
    fn io_write(&mut self, _port: u16, _size: u8, _value: u32) {}
    fn events_pending(&mut self) -> bool {
        false
    }
}
