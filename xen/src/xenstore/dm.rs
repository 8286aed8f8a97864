//! The xenstore side of libxl's device-model contract (spec §3.2, §5.2; captured traces
//! `xenstore-trace-libxl-create-destroy-dom2.txt` and `xenstore-trace-real-qemu-ops.txt`).
//!
//! What libxl does around us, in order:
//! 1. writes the guest's tree (`/local/domain/<domid>/{name,vm,memory,platform,hvmloader,…}`),
//! 2. `MKDIR /local/domain/0/device-model/<domid>` and watches `…/state`,
//! 3. starts us and writes `/local/domain/<domid>/image/device-model-pid`,
//! 4. waits (60 s) until `…/state` reads exactly `running`, then opens QMP,
//! 5. on destroy: SIGHUP to the pid, then removes `/local/domain/0/device-model/<domid>`.
//!
//! What qemu-xen writes: `device-model/<domid>/backends/<type>` for each PV backend it serves
//! (`console`, `vkbd`, `9pfs`, `qusb` on the testbed, each `MKDIR` + `SET_PERMS n0 n<domid>`),
//! then `device-model/<domid>/state = running`. Vireo serves no PV backend; a DM that writes
//! no `backends` directory at all (the testbed's `fake-dm.py`) is accepted by libxl 4.17, so
//! publishing is optional ([`DeviceModelNode::publish_backends`] with an empty list creates
//! an empty `backends` directory, which tells libxl explicitly that there are none).

use super::{Access, Perm, XenStore, XsError};

/// The value libxl waits for.
pub const STATE_RUNNING: &str = "running";

/// `/local/domain/<dm_domid>/device-model/<domid>`: the directory libxl creates for us.
pub fn dm_dir(dm_domid: u32, domid: u32) -> String {
    format!("/local/domain/{dm_domid}/device-model/{domid}")
}

/// `/local/domain/<domid>`.
pub fn domain_dir(domid: u32) -> String {
    format!("/local/domain/{domid}")
}

/// The domain id of the DM itself: xenstored answers the relative path `domid` from the
/// caller's own directory (qemu-xen does the same read). A dom0 DM without that key is 0.
pub fn own_domid(xs: &mut XenStore) -> Result<u32, XsError> {
    match xs.read_opt("domid")? {
        Some(v) => v.trim().parse().map_err(|_| XsError::Protocol {
            endpoint: xs.endpoint().to_string(),
            what: format!("own domid {v:?} is not a number"),
        }),
        None => Ok(0),
    }
}

/// The device-model node of one guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeviceModelNode {
    /// The domain the DM runs in (0 for dom0).
    pub dm_domid: u32,
    /// The guest.
    pub domid: u32,
}

impl DeviceModelNode {
    pub fn new(dm_domid: u32, domid: u32) -> DeviceModelNode {
        DeviceModelNode { dm_domid, domid }
    }

    pub fn dir(&self) -> String {
        dm_dir(self.dm_domid, self.domid)
    }

    /// `…/device-model/<domid>/state`: libxl's start-up signal.
    pub fn state_path(&self) -> String {
        format!("{}/state", self.dir())
    }

    /// Write the run state. `running` ([`STATE_RUNNING`]) is what libxl waits for; write it
    /// only once every device is set up and any incoming state is loaded.
    pub fn set_state(&self, xs: &mut XenStore, state: &str) -> Result<(), XsError> {
        xs.write(&self.state_path(), state.as_bytes())
    }

    /// Tell libxl which PV backend types this DM serves, as qemu-xen does: one empty node per
    /// type under `…/backends`, owned by the DM's domain, no access for the guest.
    pub fn publish_backends(&self, xs: &mut XenStore, types: &[&str]) -> Result<(), XsError> {
        let perms = [
            Perm::new(self.dm_domid, Access::None),
            Perm::new(self.domid, Access::None),
        ];
        let base = format!("{}/backends", self.dir());
        xs.mkdir(&base)?;
        xs.set_perms(&base, &perms)?;
        for t in types {
            let p = format!("{base}/{t}");
            xs.mkdir(&p)?;
            xs.set_perms(&p, &perms)?;
        }
        Ok(())
    }

    /// Remove our node (libxl does this on destroy; useful after a failed start).
    pub fn remove(&self, xs: &mut XenStore) -> Result<(), XsError> {
        xs.rm(&self.dir())
    }
}

/// The keys libxl writes about the guest that a DM may use. Missing keys are `None`;
/// unparsable numbers are `None` and logged.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GuestKeys {
    /// `/local/domain/<domid>/name`.
    pub name: Option<String>,
    /// `/local/domain/<domid>/vm`: `/vm/<uuid>`.
    pub vm_path: Option<String>,
    /// The uuid part of `vm_path`.
    pub uuid: Option<String>,
    /// `memory/static-max`, KiB.
    pub static_max_kib: Option<u64>,
    /// `memory/target`, KiB.
    pub target_kib: Option<u64>,
    /// `memory/videoram`, KiB.
    pub videoram_kib: Option<u64>,
    /// `platform/acpi`.
    pub acpi: Option<bool>,
    /// `platform/acpi_s3`.
    pub acpi_s3: Option<bool>,
    /// `platform/acpi_s4`.
    pub acpi_s4: Option<bool>,
    /// `platform/device-model` (`qemu_xen`).
    pub platform_device_model: Option<String>,
    /// `hvmloader/bios` (`seabios`, `ovmf`, `rombios`).
    pub bios: Option<String>,
    /// `image/device-model-pid`: the pid libxl will SIGHUP on destroy.
    pub device_model_pid: Option<u32>,
    /// `/vm/<uuid>/rtc/timeoffset`, seconds (empty at creation).
    pub rtc_timeoffset: Option<i64>,
}

fn number<T: std::str::FromStr>(path: &str, v: Option<String>) -> Option<T> {
    let v = v?;
    let t = v.trim();
    if t.is_empty() {
        return None;
    }
    match t.parse() {
        Ok(n) => Some(n),
        Err(_) => {
            log::warn!("xenstore {path} = {v:?}: not a number, ignored");
            None
        }
    }
}

fn flag(path: &str, v: Option<String>) -> Option<bool> {
    number::<u64>(path, v).map(|n| n != 0)
}

/// Read what libxl wrote about `domid`.
pub fn read_guest_keys(xs: &mut XenStore, domid: u32) -> Result<GuestKeys, XsError> {
    let dom = domain_dir(domid);
    let mut get = |rel: &str| -> Result<(String, Option<String>), XsError> {
        let p = format!("{dom}/{rel}");
        let v = xs.read_opt(&p)?;
        Ok((p, v))
    };
    let (_, name) = get("name")?;
    let (_, vm_path) = get("vm")?;
    let (p, v) = get("memory/static-max")?;
    let static_max_kib = number(&p, v);
    let (p, v) = get("memory/target")?;
    let target_kib = number(&p, v);
    let (p, v) = get("memory/videoram")?;
    let videoram_kib = number(&p, v);
    let (p, v) = get("platform/acpi")?;
    let acpi = flag(&p, v);
    let (p, v) = get("platform/acpi_s3")?;
    let acpi_s3 = flag(&p, v);
    let (p, v) = get("platform/acpi_s4")?;
    let acpi_s4 = flag(&p, v);
    let (_, platform_device_model) = get("platform/device-model")?;
    let (_, bios) = get("hvmloader/bios")?;
    let (p, v) = get("image/device-model-pid")?;
    let device_model_pid = number(&p, v);
    let uuid = vm_path
        .as_deref()
        .and_then(|v| v.strip_prefix("/vm/"))
        .map(str::to_string);
    let rtc_timeoffset = match &vm_path {
        Some(vm) if vm.starts_with('/') => {
            let p = format!("{vm}/rtc/timeoffset");
            let v = xs.read_opt(&p)?;
            number(&p, v)
        }
        _ => None,
    };
    Ok(GuestKeys {
        name,
        vm_path,
        uuid,
        static_max_kib,
        target_kib,
        videoram_kib,
        acpi,
        acpi_s3,
        acpi_s4,
        platform_device_model,
        bios,
        device_model_pid,
        rtc_timeoffset,
    })
}
