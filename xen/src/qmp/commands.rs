//! The QMP commands: argument checking, dispatch to the board's [`QmpHandler`], file
//! descriptor sets, and QMP's error shapes. No I/O here except opening the file a save or
//! load names.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;

use serde_json::{Map, Value, json};

use super::{QmpHandler, ServerInfo};

/// Descriptors kept in all fd sets together; `add-fd` beyond this fails.
pub const MAX_SET_FDS: usize = 64;

/// A QMP error: `{"error": {"class": ..., "desc": ...}}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QmpError {
    pub class: &'static str,
    pub desc: String,
}

impl QmpError {
    pub fn generic(desc: impl Into<String>) -> QmpError {
        QmpError {
            class: "GenericError",
            desc: desc.into(),
        }
    }

    pub fn not_found(desc: impl Into<String>) -> QmpError {
        QmpError {
            class: "CommandNotFound",
            desc: desc.into(),
        }
    }

    pub fn to_json(&self) -> Value {
        json!({"class": self.class, "desc": self.desc})
    }
}

/// Every command this server knows, for `query-commands`.
pub const COMMANDS: &[&str] = &[
    "qmp_capabilities",
    "query-status",
    "query-chardev",
    "query-vnc",
    "query-version",
    "query-name",
    "query-commands",
    "query-cpus-fast",
    "query-command-line-options",
    "cont",
    "stop",
    "quit",
    "add-fd",
    "remove-fd",
    "query-fdsets",
    "xen-save-devices-state",
    "xen-load-devices-state",
    "xen-set-global-dirty-log",
];

/// Arguments of one command, checked as QEMU checks them.
struct Args<'a> {
    map: Option<&'a Map<String, Value>>,
    taken: Vec<&'static str>,
}

impl<'a> Args<'a> {
    fn new(map: Option<&'a Map<String, Value>>) -> Args<'a> {
        Args {
            map,
            taken: Vec::new(),
        }
    }

    fn get(&mut self, key: &'static str) -> Option<&'a Value> {
        self.taken.push(key);
        self.map.and_then(|m| m.get(key))
    }

    fn opt_str(&mut self, key: &'static str) -> Result<Option<&'a str>, QmpError> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(_) => Err(QmpError::generic(format!(
                "Invalid parameter type for '{key}', expected: string"
            ))),
        }
    }

    fn str(&mut self, key: &'static str) -> Result<&'a str, QmpError> {
        self.opt_str(key)?
            .ok_or_else(|| QmpError::generic(format!("Parameter '{key}' is missing")))
    }

    fn opt_bool(&mut self, key: &'static str) -> Result<Option<bool>, QmpError> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(_) => Err(QmpError::generic(format!(
                "Invalid parameter type for '{key}', expected: boolean"
            ))),
        }
    }

    fn bool(&mut self, key: &'static str) -> Result<bool, QmpError> {
        self.opt_bool(key)?
            .ok_or_else(|| QmpError::generic(format!("Parameter '{key}' is missing")))
    }

    fn opt_int(&mut self, key: &'static str) -> Result<Option<i64>, QmpError> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v.as_i64().map(Some).ok_or_else(|| {
                QmpError::generic(format!(
                    "Invalid parameter type for '{key}', expected: integer"
                ))
            }),
        }
    }

    fn opt_str_list(&mut self, key: &'static str) -> Result<Vec<&'a str>, QmpError> {
        let bad = || {
            QmpError::generic(format!(
                "Invalid parameter type for '{key}', expected: array"
            ))
        };
        match self.get(key) {
            None => Ok(Vec::new()),
            Some(Value::Array(items)) => items.iter().map(|v| v.as_str().ok_or_else(bad)).collect(),
            Some(_) => Err(bad()),
        }
    }

    /// Refuse arguments the command does not have.
    fn finish(self) -> Result<(), QmpError> {
        if let Some(m) = self.map
            && let Some(k) = m.keys().find(|k| !self.taken.contains(&k.as_str()))
        {
            return Err(QmpError::generic(format!("Parameter '{k}' is unexpected")));
        }
        Ok(())
    }
}

struct SetFd {
    fd: OwnedFd,
    opaque: Option<String>,
}

/// QEMU's file descriptor sets: `add-fd` stores descriptors passed over the socket, and a
/// file name `/dev/fdset/<id>` means "a descriptor from that set".
#[derive(Default)]
pub struct FdSets {
    sets: BTreeMap<i64, Vec<SetFd>>,
}

impl FdSets {
    fn count(&self) -> usize {
        self.sets.values().map(Vec::len).sum()
    }

    fn add(
        &mut self,
        fd: OwnedFd,
        set: Option<i64>,
        opaque: Option<&str>,
    ) -> Result<Value, QmpError> {
        if self.count() >= MAX_SET_FDS {
            return Err(QmpError::generic(format!(
                "Too many file descriptors in fd sets (limit {MAX_SET_FDS})"
            )));
        }
        let id = match set {
            Some(id) if id < 0 => {
                return Err(QmpError::generic(
                    "Parameter 'fdset-id' expects a non-negative value",
                ));
            }
            Some(id) => id,
            // The lowest id not in use, as QEMU picks it.
            None => (0..).find(|i| !self.sets.contains_key(i)).unwrap_or(0),
        };
        let number = fd.as_raw_fd();
        self.sets.entry(id).or_default().push(SetFd {
            fd,
            opaque: opaque.map(str::to_string),
        });
        Ok(json!({"fdset-id": id, "fd": number}))
    }

    fn remove(&mut self, set: i64, fd: Option<i64>) -> Result<(), QmpError> {
        let missing = || match fd {
            Some(fd) => QmpError::generic(format!(
                "File descriptor named 'fdset-id:{set}, fd:{fd}' not found"
            )),
            None => QmpError::generic(format!("File descriptor named 'fdset-id:{set}' not found")),
        };
        let entries = self.sets.get_mut(&set).ok_or_else(missing)?;
        match fd {
            None => {
                self.sets.remove(&set);
            }
            Some(n) => {
                let before = entries.len();
                entries.retain(|e| i64::from(e.fd.as_raw_fd()) != n);
                if entries.len() == before {
                    return Err(missing());
                }
                if entries.is_empty() {
                    self.sets.remove(&set);
                }
            }
        }
        Ok(())
    }

    fn query(&self) -> Value {
        Value::Array(
            self.sets
                .iter()
                .map(|(id, fds)| {
                    let fds: Vec<Value> = fds
                        .iter()
                        .map(|e| match &e.opaque {
                            Some(o) => json!({"fd": e.fd.as_raw_fd(), "opaque": o}),
                            None => json!({"fd": e.fd.as_raw_fd()}),
                        })
                        .collect();
                    json!({"fdset-id": id, "fds": fds})
                })
                .collect(),
        )
    }

    /// A duplicate of a descriptor in set `id`.
    fn open(&self, id: i64) -> Result<File, QmpError> {
        let e = self
            .sets
            .get(&id)
            .and_then(|s| s.first())
            .ok_or_else(|| QmpError::generic(format!("No file descriptor set {id}")))?;
        e.fd.try_clone()
            .map(File::from)
            .map_err(|err| QmpError::generic(format!("Cannot use fd set {id}: {err}")))
    }

    /// Open a save/load target: `/dev/fdset/<id>` or a path.
    fn open_target(&self, filename: &str, write: bool) -> Result<File, QmpError> {
        if let Some(id) = filename.strip_prefix("/dev/fdset/") {
            let id: i64 = id
                .parse()
                .map_err(|_| QmpError::generic(format!("Invalid fd set name '{filename}'")))?;
            return self.open(id);
        }
        let mut o = OpenOptions::new();
        if write {
            o.write(true).create(true).truncate(true).mode(0o660);
        } else {
            o.read(true);
        }
        o.open(filename)
            .map_err(|e| QmpError::generic(format!("Could not open '{filename}': {e}")))
    }
}

/// What a command asks of the connection and the server beyond its reply.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Effects {
    /// Events to broadcast before the reply: (name, data).
    pub events_before: Vec<(&'static str, Option<Value>)>,
    /// Events to broadcast after the reply.
    pub events_after: Vec<(&'static str, Option<Value>)>,
    /// `quit` was executed: the board has been told; stop serving.
    pub quit: bool,
}

/// Run one command of a negotiated connection. `fds` are the descriptors that came with it.
pub fn execute(
    cmd: &str,
    arguments: Option<&Map<String, Value>>,
    fds: &mut Vec<OwnedFd>,
    info: &ServerInfo,
    fdsets: &mut FdSets,
    handler: &mut dyn QmpHandler,
    effects: &mut Effects,
) -> Result<Value, QmpError> {
    let mut a = Args::new(arguments);
    let empty = json!({});
    match cmd {
        "qmp_capabilities" => {
            // The connection layer answers this before negotiation; here it is a repeat.
            a.opt_str_list("enable")?;
            a.finish()?;
            Err(QmpError::not_found(
                "Capabilities negotiation is already complete, command ignored",
            ))
        }
        "query-status" => {
            a.finish()?;
            let st = handler.status();
            Ok(json!({
                "status": st.as_str(),
                "running": st.is_running(),
                "singlestep": false,
            }))
        }
        "query-chardev" => {
            a.finish()?;
            Ok(Value::Array(
                info.chardevs
                    .iter()
                    .map(|c| json!({"label": c.label, "filename": c.filename, "frontend-open": true}))
                    .collect(),
            ))
        }
        "query-vnc" => {
            a.finish()?;
            Ok(json!({"enabled": false}))
        }
        "query-version" => {
            a.finish()?;
            let (major, minor, micro) = info.version;
            Ok(json!({
                "qemu": {"major": major, "minor": minor, "micro": micro},
                "package": info.package,
            }))
        }
        "query-name" => {
            a.finish()?;
            Ok(match &info.name {
                Some(n) => json!({"name": n}),
                None => json!({}),
            })
        }
        "query-cpus-fast" => {
            a.finish()?;
            // The vCPUs are Xen's; libxl only reads `cpu-index` to learn which are online.
            let tid = std::process::id();
            Ok(Value::Array(
                (0..info.online_vcpus)
                    .map(|i| {
                        json!({
                            "cpu-index": i,
                            "qom-path": format!("/machine/unattached/device[{i}]"),
                            "thread-id": tid,
                            "props": {"core-id": 0, "thread-id": 0, "socket-id": i},
                            "target": "i386",
                        })
                    })
                    .collect(),
            ))
        }
        "query-commands" => {
            a.finish()?;
            Ok(Value::Array(
                COMMANDS.iter().map(|c| json!({"name": c})).collect(),
            ))
        }
        "query-command-line-options" => {
            let option = a.opt_str("option")?;
            a.finish()?;
            // What libxl's dm_restrict probe looks for: -run-with and its parameters.
            let all = [json!({
                "option": "run-with",
                "parameters": [
                    {"name": "chroot", "type": "string"},
                    {"name": "user", "type": "string"},
                ],
            })];
            match option {
                None => Ok(Value::Array(all.to_vec())),
                Some(o) => {
                    let hits: Vec<Value> =
                        all.iter().filter(|v| v["option"] == o).cloned().collect();
                    if hits.is_empty() {
                        Err(QmpError::generic(format!("invalid option name: {o}")))
                    } else {
                        Ok(Value::Array(hits))
                    }
                }
            }
        }
        "cont" => {
            a.finish()?;
            handler.resume().map_err(QmpError::generic)?;
            effects.events_before.push(("RESUME", None));
            Ok(empty)
        }
        "stop" => {
            a.finish()?;
            handler.pause().map_err(QmpError::generic)?;
            effects.events_before.push(("STOP", None));
            Ok(empty)
        }
        "quit" => {
            a.finish()?;
            handler.quit();
            effects.events_after.push((
                "SHUTDOWN",
                Some(json!({"guest": false, "reason": "host-qmp-quit"})),
            ));
            effects.quit = true;
            Ok(empty)
        }
        "add-fd" => {
            let set = a.opt_int("fdset-id")?;
            let opaque = a.opt_str("opaque")?;
            a.finish()?;
            if fds.is_empty() {
                return Err(QmpError::generic(
                    "No file descriptor supplied via SCM_RIGHTS",
                ));
            }
            let fd = fds.remove(0);
            fdsets.add(fd, set, opaque)
        }
        "remove-fd" => {
            let set = a
                .opt_int("fdset-id")?
                .ok_or_else(|| QmpError::generic("Parameter 'fdset-id' is missing"))?;
            let fd = a.opt_int("fd")?;
            a.finish()?;
            fdsets.remove(set, fd)?;
            Ok(empty)
        }
        "query-fdsets" => {
            a.finish()?;
            Ok(fdsets.query())
        }
        "xen-save-devices-state" => {
            let filename = a.str("filename")?;
            let live = a.opt_bool("live")?.unwrap_or(false);
            a.finish()?;
            let mut file = fdsets.open_target(filename, true)?;
            handler
                .save_state(&mut file, live)
                .map_err(|e| QmpError::generic(format!("saving Xen device state failed: {e}")))?;
            file.sync_data().ok();
            Ok(empty)
        }
        "xen-load-devices-state" => {
            let filename = a.str("filename")?;
            a.finish()?;
            let mut file = fdsets.open_target(filename, false)?;
            handler
                .load_state(&mut file)
                .map_err(|e| QmpError::generic(format!("loading Xen device state failed: {e}")))?;
            Ok(empty)
        }
        "xen-set-global-dirty-log" => {
            let enable = a.bool("enable")?;
            a.finish()?;
            handler.set_dirty_log(enable).map_err(QmpError::generic)?;
            Ok(empty)
        }
        _ => Err(QmpError::not_found(format!(
            "The command {cmd} has not been found"
        ))),
    }
}

/// `qmp_capabilities` on a fresh connection: checks the requested capabilities (we offer
/// none, so `oob` cannot be enabled).
pub fn negotiate(arguments: Option<&Map<String, Value>>) -> Result<Value, QmpError> {
    let mut a = Args::new(arguments);
    let enable = a.opt_str_list("enable")?;
    a.finish()?;
    if let Some(cap) = enable.first() {
        return Err(QmpError::generic(format!(
            "Capability '{cap}' not available"
        )));
    }
    Ok(json!({}))
}
