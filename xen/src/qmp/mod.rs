//! A QMP server for the commands libxl sends a device model (spec §5.2, §5.3, §3.8, §3.10;
//! captured `qmp-transcript-*.txt`).
//!
//! One server listens on every QMP socket of the command line (`-chardev socket,...,
//! server=on` + `-mon ...,mode=control`: `libxl-cmd` and `libxenstat-cmd`) and serves any
//! number of clients at once (up to [`MAX_CLIENTS`]; more wait in the listen backlog), driven
//! by the board's `mio` loop under one [`mio::Token`]: when it fires, the board calls
//! [`QmpServer::handle_ready`], which does all the socket work possible without blocking.
//!
//! The server knows no device. Commands that act on the machine go to a [`QmpHandler`] the
//! board implements: `stop`/`cont` → pause/resume, `xen-save-devices-state` /
//! `xen-load-devices-state` → save/load of the device state blob, `quit`, `query-status`.
//!
//! Protocol, as QEMU speaks it and libxl expects:
//! - On connect the server sends the greeting `{"QMP": {"version": {"qemu": {...},
//!   "package": ...}, "capabilities": []}}`. The version is [`QEMU_VERSION`]: libxl compares it
//!   to pick command variants (`live` for saves needs ≥ 2.11), so we claim the release whose
//!   behaviour we follow (the testbed's qemu-xen, 7.2).
//! - Until `qmp_capabilities`, every other command gets `CommandNotFound`.
//! - Commands are JSON objects `{"execute": ..., "arguments": {...}, "id": ...}`; the reply is
//!   `{"return": ..., "id": ...}` or `{"error": {"class", "desc"}, "id": ...}`, `id` echoed
//!   whatever JSON it is. Every message we send ends with `\r\n`.
//! - Malformed JSON gets a `GenericError` and the connection is kept: the rest of that line is
//!   skipped (libxl ends every command with a newline), then parsing resumes.
//! - Unknown commands get `CommandNotFound`; wrong arguments `GenericError`.
//! - Events (`STOP`, `RESUME`, `SHUTDOWN`, and whatever the board emits with
//!   [`QmpServer::emit_event`]) go to every negotiated client, with QEMU's timestamp.
//! - File descriptors passed with a command (SCM_RIGHTS) belong to that command: `add-fd` keeps
//!   one in a descriptor set, and `/dev/fdset/<id>` as a file name means a duplicate of it
//!   (this is how libxl hands over the save file). Descriptors no command takes are closed.
//!
//! Checked against the real libxl 4.17 on the Xen testbed (a probe DM built on this module,
//! `xl create` / `xl save` / `xl restore` / `xl destroy`): create sends `qmp_capabilities`,
//! `query-chardev`, `cont`; save sends `query-cpus-fast`, `xen-set-global-dirty-log`
//! `{"enable": true}`, `stop`, `add-fd` (the save file as SCM_RIGHTS),
//! `xen-save-devices-state {"filename": "/dev/fdset/<id>", "live": false}`, then the dirty
//! log off; restore starts a new DM with `-incoming fd:N` and sends `query-chardev`, `cont`.
//!
//! Bounds: a client's unparsed input is limited to [`MAX_INPUT`] bytes and its unsent output
//! to [`MAX_OUTPUT`]; a client beyond either is answered with an error or dropped (logged).

use std::collections::VecDeque;
use std::fs::File;
use std::io::{self, Write};
use std::mem::MaybeUninit;
use std::os::fd::OwnedFd;
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use mio::net::{UnixListener, UnixStream};
use mio::{Interest, Registry, Token};
use rustix::net::{RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, recvmsg};
use serde_json::{Map, Value, json};
use thiserror::Error;

use crate::cmdline::{DmConfig, QmpListen, QmpSocket, SerialBackend};

pub mod commands;

pub use commands::QmpError;

/// The QEMU release we present ourselves as (major, minor, micro).
pub const QEMU_VERSION: (u32, u32, u32) = (7, 2, 0);
/// Clients served at once, over all sockets.
pub const MAX_CLIENTS: usize = 16;
/// Unparsed input kept per client.
pub const MAX_INPUT: usize = 1 << 20;
/// Unsent output kept per client before it is dropped as dead.
pub const MAX_OUTPUT: usize = 4 << 20;
/// Descriptors accepted with one read.
const MAX_FDS_PER_READ: usize = 8;

/// QEMU's run states, as `query-status` reports them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunState {
    /// Started with `-S`, never run yet.
    Prelaunch,
    Running,
    Paused,
    /// Waiting for incoming state (`-incoming`).
    InMigrate,
    /// Device state saved; vCPUs stopped.
    PostMigrate,
    Shutdown,
    Suspended,
    InternalError,
}

impl RunState {
    pub fn as_str(self) -> &'static str {
        match self {
            RunState::Prelaunch => "prelaunch",
            RunState::Running => "running",
            RunState::Paused => "paused",
            RunState::InMigrate => "inmigrate",
            RunState::PostMigrate => "postmigrate",
            RunState::Shutdown => "shutdown",
            RunState::Suspended => "suspended",
            RunState::InternalError => "internal-error",
        }
    }

    pub fn is_running(self) -> bool {
        self == RunState::Running
    }
}

/// What the board provides to the QMP server. Errors are one-line reasons; the server turns
/// them into `GenericError` replies.
pub trait QmpHandler {
    /// The machine's run state.
    fn status(&self) -> RunState;
    /// `stop`: stop serving the guest (libxl sends it before saving device state).
    fn pause(&mut self) -> Result<(), String>;
    /// `cont`: run (libxl sends it to unpause after start-up and after a restore); harmless
    /// when already running.
    fn resume(&mut self) -> Result<(), String>;
    /// `xen-save-devices-state`: write the devices' state blob to `out` (a file the server
    /// opened from the command's `filename`, or the descriptor libxl passed with `add-fd`).
    /// `live` is set for live migration.
    fn save_state(&mut self, out: &mut File, live: bool) -> Result<(), String>;
    /// `xen-load-devices-state`: read a blob written by `save_state`.
    fn load_state(&mut self, input: &mut File) -> Result<(), String>;
    /// `quit`: end the device model. The server queues the reply and flushes it before
    /// [`QmpServer::handle_ready`] returns (and once more when dropped); the board then
    /// leaves its loop ([`QmpServer::quit_requested`] is also set).
    fn quit(&mut self);
    /// `xen-set-global-dirty-log`: while enabled, report every guest page the device model
    /// writes (`XEN_DMOP_modified_memory`) so a live migration re-sends it. libxl sends
    /// `enable: true` at the start of **every** save, live or not (seen on the testbed), and
    /// a refusal aborts the save; so a board without tracking must decide whether to accept
    /// (correct for `xl save`, where the guest is suspended and the DM stopped before memory
    /// is copied) or refuse (safe for live migration).
    fn set_dirty_log(&mut self, enable: bool) -> Result<(), String>;
}

/// One line of `query-chardev`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChardevInfo {
    pub label: String,
    pub filename: String,
}

/// What the server reports about the machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerInfo {
    pub chardevs: Vec<ChardevInfo>,
    pub name: Option<String>,
    /// vCPUs online (`-smp`), reported by `query-cpus-fast`: libxl reads them before every
    /// save (`libxl_retrieve_domain_configuration`) and fails the save without an answer.
    pub online_vcpus: u32,
    pub version: (u32, u32, u32),
    pub package: String,
}

impl ServerInfo {
    /// The chardevs of a parsed command line, labelled and described as QEMU does: QMP
    /// sockets by their id, serial ports `serial0`, `serial1`…
    pub fn from_config(cfg: &DmConfig) -> ServerInfo {
        let mut chardevs: Vec<ChardevInfo> = cfg
            .qmp
            .iter()
            .map(|q| ChardevInfo {
                label: q.id.clone(),
                filename: match &q.listen {
                    QmpListen::Path(p) => format!("unix:{},server=on", p.display()),
                    QmpListen::Fd(_) => "unix:,server=on".to_string(),
                },
            })
            .collect();
        for (i, s) in cfg.serials.iter().enumerate() {
            let filename = match s {
                SerialBackend::Null => "null".to_string(),
                SerialBackend::File(_) => "file".to_string(),
                SerialBackend::Stdio => "stdio".to_string(),
                SerialBackend::UnixServer { path, .. } => {
                    format!("unix:{},server=on", path.display())
                }
            };
            chardevs.push(ChardevInfo {
                label: format!("serial{i}"),
                filename,
            });
        }
        ServerInfo {
            chardevs,
            name: cfg.name.clone(),
            online_vcpus: cfg.smp.cpus,
            version: QEMU_VERSION,
            package: format!("vireo {}", env!("CARGO_PKG_VERSION")),
        }
    }
}

impl Default for ServerInfo {
    fn default() -> ServerInfo {
        ServerInfo {
            chardevs: Vec::new(),
            name: None,
            online_vcpus: 1,
            version: QEMU_VERSION,
            package: format!("vireo {}", env!("CARGO_PKG_VERSION")),
        }
    }
}

/// Why the server could not start.
#[derive(Debug, Error)]
pub enum QmpServerError {
    #[error("QMP socket {id}: cannot listen on {path}: {source}")]
    Listen {
        id: String,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("QMP socket {id}: {path} exists and is not a socket; refusing to replace it")]
    NotASocket { id: String, path: PathBuf },
    #[error(
        "QMP socket {id}: a listening descriptor passed by libxl (fd={fd}, dm_restrict=1) is \
         not supported yet; set dm_restrict=0"
    )]
    InheritedFd { id: String, fd: i32 },
}

struct Listener {
    id: String,
    path: PathBuf,
    sock: UnixListener,
}

struct Client {
    stream: UnixStream,
    listener: String,
    rx: Vec<u8>,
    tx: VecDeque<u8>,
    fds: Vec<OwnedFd>,
    negotiated: bool,
    dead: bool,
}

/// The QMP server.
pub struct QmpServer {
    listeners: Vec<Listener>,
    clients: Vec<Client>,
    registry: Option<Registry>,
    token: Token,
    info: ServerInfo,
    fdsets: commands::FdSets,
    quit: bool,
}

fn timestamp() -> Value {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    json!({"seconds": now.as_secs(), "microseconds": now.subsec_micros()})
}

fn bind_path(id: &str, path: &Path) -> Result<UnixListener, QmpServerError> {
    let listen_err = |source| QmpServerError::Listen {
        id: id.to_string(),
        path: path.to_path_buf(),
        source,
    };
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => {
            // Left by an earlier device model of the same domain id.
            std::fs::remove_file(path).map_err(listen_err)?;
        }
        Ok(_) => {
            return Err(QmpServerError::NotASocket {
                id: id.to_string(),
                path: path.to_path_buf(),
            });
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(listen_err(e)),
    }
    UnixListener::bind(path).map_err(listen_err)
}

impl QmpServer {
    /// Listen on every QMP socket.
    pub fn bind(sockets: &[QmpSocket], info: ServerInfo) -> Result<QmpServer, QmpServerError> {
        let mut listeners = Vec::new();
        for s in sockets {
            match &s.listen {
                QmpListen::Path(path) => listeners.push(Listener {
                    id: s.id.clone(),
                    path: path.clone(),
                    sock: bind_path(&s.id, path)?,
                }),
                QmpListen::Fd(fd) => {
                    return Err(QmpServerError::InheritedFd {
                        id: s.id.clone(),
                        fd: *fd,
                    });
                }
            }
        }
        Ok(QmpServer {
            listeners,
            clients: Vec::new(),
            registry: None,
            token: Token(0),
            info,
            fdsets: commands::FdSets::default(),
            quit: false,
        })
    }

    /// Watch every socket with `registry`, all under `token`.
    pub fn register(&mut self, registry: &Registry, token: Token) -> io::Result<()> {
        for l in &mut self.listeners {
            registry.register(&mut l.sock, token, Interest::READABLE)?;
        }
        self.registry = Some(registry.try_clone()?);
        self.token = token;
        Ok(())
    }

    /// The socket paths listened on.
    pub fn paths(&self) -> Vec<PathBuf> {
        self.listeners.iter().map(|l| l.path.clone()).collect()
    }

    /// Connected clients.
    pub fn client_count(&self) -> usize {
        self.clients.len()
    }

    /// Whether a client executed `quit`.
    pub fn quit_requested(&self) -> bool {
        self.quit
    }

    /// Send an event to every negotiated client (e.g. `SHUTDOWN` with `{"guest": true,
    /// "reason": "guest-shutdown"}` on guest poweroff, `RESET`).
    pub fn emit_event(&mut self, name: &str, data: Option<Value>) {
        let mut ev = json!({"event": name, "timestamp": timestamp()});
        if let Some(d) = data {
            ev["data"] = d;
        }
        for c in self.clients.iter_mut().filter(|c| c.negotiated && !c.dead) {
            queue(c, &ev);
        }
        self.flush();
    }

    /// Do all socket work possible now: accept, read and answer commands, write.
    pub fn handle_ready(&mut self, handler: &mut dyn QmpHandler) {
        self.accept();
        let mut i = 0;
        while i < self.clients.len() {
            self.service_client(i, handler);
            i += 1;
        }
        self.flush();
        self.reap();
        // A client left: one waiting in a backlog may now be accepted.
        self.accept();
        self.flush();
    }

    /// Write what is queued, without blocking.
    pub fn flush(&mut self) {
        for c in &mut self.clients {
            flush_client(c);
        }
    }

    fn accept(&mut self) {
        let Some(registry) = self.registry.as_ref() else {
            return;
        };
        for l in &mut self.listeners {
            while self.clients.len() < MAX_CLIENTS {
                match l.sock.accept() {
                    Ok((mut stream, _)) => {
                        if let Err(e) = registry.register(
                            &mut stream,
                            self.token,
                            Interest::READABLE | Interest::WRITABLE,
                        ) {
                            log::warn!("QMP {}: cannot watch a new client: {e}", l.id);
                            continue;
                        }
                        log::debug!("QMP {}: client connected", l.id);
                        let mut c = Client {
                            stream,
                            listener: l.id.clone(),
                            rx: Vec::new(),
                            tx: VecDeque::new(),
                            fds: Vec::new(),
                            negotiated: false,
                            dead: false,
                        };
                        let (major, minor, micro) = self.info.version;
                        let greeting = json!({"QMP": {
                            "version": {
                                "qemu": {"micro": micro, "minor": minor, "major": major},
                                "package": self.info.package,
                            },
                            "capabilities": [],
                        }});
                        queue(&mut c, &greeting);
                        flush_client(&mut c);
                        self.clients.push(c);
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => {
                        log::warn!("QMP {}: accept: {e}", l.id);
                        break;
                    }
                }
            }
        }
    }

    fn service_client(&mut self, i: usize, handler: &mut dyn QmpHandler) {
        loop {
            let end = {
                let c = &mut self.clients[i];
                if c.dead {
                    return;
                }
                read_client(c)
            };
            self.process_input(i, handler);
            match end {
                // More input waits and no new readiness event will announce it.
                ReadEnd::Full => continue,
                ReadEnd::WouldBlock => return,
                ReadEnd::Eof => {
                    let c = &mut self.clients[i];
                    log::debug!("QMP {}: client disconnected", c.listener);
                    c.dead = true;
                    return;
                }
            }
        }
    }

    fn process_input(&mut self, i: usize, handler: &mut dyn QmpHandler) {
        loop {
            let c = &mut self.clients[i];
            if c.dead {
                return;
            }
            let (value, consumed) = {
                let mut it = serde_json::Deserializer::from_slice(&c.rx).into_iter::<Value>();
                match it.next() {
                    None => {
                        // Only whitespace left.
                        c.rx.clear();
                        return;
                    }
                    Some(Ok(v)) => (Ok(v), it.byte_offset()),
                    Some(Err(e)) if e.is_eof() => {
                        if c.rx.len() > MAX_INPUT {
                            let err = QmpError::generic(format!(
                                "JSON parse error, input longer than {MAX_INPUT} bytes"
                            ));
                            c.rx.clear();
                            queue(c, &json!({"error": err.to_json()}));
                        }
                        return;
                    }
                    Some(Err(e)) => {
                        // Skip to the end of the offending line and go on from there.
                        let at = e_offset(&c.rx, &e);
                        let end = c.rx[at..]
                            .iter()
                            .position(|b| *b == b'\n')
                            .map(|p| at + p + 1)
                            .unwrap_or(c.rx.len());
                        (
                            Err(QmpError::generic(format!("JSON parse error, {e}"))),
                            end,
                        )
                    }
                }
            };
            c.rx.drain(..consumed.min(c.rx.len()));
            match value {
                Ok(v) => self.command(i, v, handler),
                Err(err) => {
                    let c = &mut self.clients[i];
                    queue(c, &json!({"error": err.to_json()}));
                    drop_unclaimed_fds(c);
                }
            }
        }
    }

    fn command(&mut self, i: usize, msg: Value, handler: &mut dyn QmpHandler) {
        let c = &mut self.clients[i];
        let id = msg.get("id").cloned();
        let reply = |result: Result<Value, QmpError>| {
            let mut r = match result {
                Ok(v) => json!({"return": v}),
                Err(e) => json!({"error": e.to_json()}),
            };
            if let Some(id) = &id {
                r["id"] = id.clone();
            }
            r
        };
        let parsed = parse_command(&msg);
        let mut effects = commands::Effects::default();
        let result = match parsed {
            Err(e) => Err(e),
            Ok((cmd, args)) if !c.negotiated => {
                if cmd == "qmp_capabilities" {
                    let r = commands::negotiate(args);
                    if r.is_ok() {
                        c.negotiated = true;
                    }
                    r
                } else {
                    Err(QmpError::not_found(
                        "Expecting capabilities negotiation with 'qmp_capabilities'",
                    ))
                }
            }
            Ok((cmd, args)) => {
                log::debug!("QMP {}: {cmd}", c.listener);
                let mut fds = std::mem::take(&mut c.fds);
                let r = commands::execute(
                    cmd,
                    args,
                    &mut fds,
                    &self.info,
                    &mut self.fdsets,
                    handler,
                    &mut effects,
                );
                c.fds = fds;
                r
            }
        };
        // QEMU announces a state change (STOP, RESUME) while running the command, before its
        // reply, and the shutdown that `quit` starts after it.
        for (name, data) in effects.events_before {
            self.emit_event(name, data);
        }
        let c = &mut self.clients[i];
        if let Err(e) = &result {
            log::debug!("QMP {}: error {}: {}", c.listener, e.class, e.desc);
        }
        queue(c, &reply(result));
        drop_unclaimed_fds(c);
        flush_client(c);
        for (name, data) in effects.events_after {
            self.emit_event(name, data);
        }
        if effects.quit {
            self.quit = true;
        }
    }

    fn reap(&mut self) {
        let registry = self.registry.as_ref();
        self.clients.retain_mut(|c| {
            let done = c.dead;
            if done {
                if let Some(r) = registry
                    && let Err(e) = r.deregister(&mut c.stream)
                {
                    log::debug!("QMP {}: deregister: {e}", c.listener);
                }
                if !c.fds.is_empty() {
                    log::debug!(
                        "QMP {}: closing {} unclaimed descriptor(s)",
                        c.listener,
                        c.fds.len()
                    );
                }
            }
            !done
        });
    }
}

impl Drop for QmpServer {
    fn drop(&mut self) {
        // Best effort: a `quit` reply may still be queued.
        self.flush();
        for l in &self.listeners {
            if let Err(e) = std::fs::remove_file(&l.path) {
                log::debug!("removing QMP socket {}: {e}", l.path.display());
            }
        }
    }
}

/// A command's `arguments` object.
type Arguments = Map<String, Value>;

/// Where in `buf` a syntax error was found, as a byte offset.
fn e_offset(buf: &[u8], e: &serde_json::Error) -> usize {
    let (line, col) = (e.line(), e.column());
    let mut cur_line = 1;
    let mut off = 0;
    while cur_line < line && off < buf.len() {
        if buf[off] == b'\n' {
            cur_line += 1;
        }
        off += 1;
    }
    (off + col.saturating_sub(1)).min(buf.len())
}

/// Check a command message's shape: `execute` (string), optional `arguments` (object),
/// optional `id`, nothing else.
fn parse_command(msg: &Value) -> Result<(&str, Option<&Arguments>), QmpError> {
    let Value::Object(m) = msg else {
        return Err(QmpError::generic("QMP input must be a JSON object"));
    };
    for k in m.keys() {
        if !matches!(k.as_str(), "execute" | "arguments" | "id") {
            return Err(QmpError::generic(format!(
                "QMP input member '{k}' is unexpected"
            )));
        }
    }
    let cmd = match m.get("execute") {
        None => return Err(QmpError::generic("QMP input lacks member 'execute'")),
        Some(Value::String(s)) => s.as_str(),
        Some(_) => {
            return Err(QmpError::generic(
                "QMP input member 'execute' must be a string",
            ));
        }
    };
    let args = match m.get("arguments") {
        None => None,
        Some(Value::Object(a)) => Some(a),
        Some(_) => {
            return Err(QmpError::generic(
                "QMP input member 'arguments' must be an object",
            ));
        }
    };
    Ok((cmd, args))
}

fn queue(c: &mut Client, v: &Value) {
    let mut line = v.to_string().into_bytes();
    line.extend_from_slice(b"\r\n");
    if c.tx.len() + line.len() > MAX_OUTPUT {
        log::warn!(
            "QMP {}: client does not read its replies; dropping it",
            c.listener
        );
        c.dead = true;
        c.tx.clear();
        return;
    }
    c.tx.extend(line);
}

fn drop_unclaimed_fds(c: &mut Client) {
    if !c.fds.is_empty() {
        log::debug!(
            "QMP {}: closing {} descriptor(s) no command took",
            c.listener,
            c.fds.len()
        );
        c.fds.clear();
    }
}

fn flush_client(c: &mut Client) {
    while !c.tx.is_empty() && !c.dead {
        let (front, _) = c.tx.as_slices();
        match c.stream.write(front) {
            Ok(0) => c.dead = true,
            Ok(n) => {
                c.tx.drain(..n);
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                log::debug!("QMP {}: write: {e}", c.listener);
                c.dead = true;
            }
        }
    }
}

/// How a read pass ended.
enum ReadEnd {
    WouldBlock,
    /// The input buffer is full: parse it, then read again.
    Full,
    Eof,
}

/// Read what is available (with any descriptors).
fn read_client(c: &mut Client) -> ReadEnd {
    let mut buf = [0u8; 4096];
    loop {
        if c.rx.len() > MAX_INPUT {
            return ReadEnd::Full;
        }
        let mut space =
            [MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS_PER_READ))];
        let mut cmsg = RecvAncillaryBuffer::new(&mut space);
        let r = recvmsg(
            &c.stream,
            &mut [io::IoSliceMut::new(&mut buf)],
            &mut cmsg,
            RecvFlags::CMSG_CLOEXEC | RecvFlags::DONTWAIT,
        );
        match r {
            Ok(msg) => {
                for m in cmsg.drain() {
                    if let RecvAncillaryMessage::ScmRights(fds) = m {
                        c.fds.extend(fds);
                    }
                }
                if msg.flags.contains(rustix::net::ReturnFlags::CTRUNC) {
                    log::warn!(
                        "QMP {}: more than {MAX_FDS_PER_READ} descriptors in one message; the rest were dropped",
                        c.listener
                    );
                }
                if msg.bytes == 0 {
                    return ReadEnd::Eof;
                }
                c.rx.extend_from_slice(&buf[..msg.bytes.min(buf.len())]);
            }
            Err(rustix::io::Errno::AGAIN) => return ReadEnd::WouldBlock,
            Err(rustix::io::Errno::INTR) => {}
            Err(e) => {
                log::debug!("QMP {}: read: {e}", c.listener);
                return ReadEnd::Eof;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_shape_checks() {
        let ok = json!({"execute": "cont", "id": 1, "arguments": {"a": 1}});
        let (cmd, args) = parse_command(&ok).unwrap();
        assert_eq!(cmd, "cont");
        assert_eq!(args.unwrap()["a"], json!(1));
        assert!(
            parse_command(&json!({"execute": "cont"}))
                .unwrap()
                .1
                .is_none()
        );
        for bad in [
            json!(null),
            json!("cont"),
            json!({"arguments": {}}),
            json!({"execute": null}),
            json!({"execute": "x", "arguments": 3}),
            json!({"execute": "x", "extra": 3}),
        ] {
            assert_eq!(
                parse_command(&bad).unwrap_err().class,
                "GenericError",
                "{bad}"
            );
        }
    }

    #[test]
    fn syntax_error_offsets_point_into_the_buffer() {
        let buf = b"{\"b\":\n  }\n";
        let err = serde_json::from_slice::<Value>(buf).unwrap_err();
        let at = e_offset(buf, &err);
        assert_eq!(buf[at], b'}');
        // Offsets never run past the end, whatever the error says.
        let err = serde_json::from_slice::<Value>(b"\n\n\n{").unwrap_err();
        assert!(e_offset(b"\n\n\n{", &err) <= 4);
    }

    #[test]
    fn run_state_names_are_qemus() {
        assert_eq!(RunState::Prelaunch.as_str(), "prelaunch");
        assert_eq!(RunState::InMigrate.as_str(), "inmigrate");
        assert_eq!(RunState::PostMigrate.as_str(), "postmigrate");
        assert_eq!(RunState::InternalError.as_str(), "internal-error");
        assert!(RunState::Running.is_running());
        assert!(!RunState::Paused.is_running());
    }
}
