//! A xenstore client with what a device model needs: read, write, mkdir, rm, directory,
//! permissions, domain paths, transactions and **watches**.
//!
//! ## One client, our own
//!
//! `xenstore-rs` 0.8 (GPL-3.0-only, compatible with our GPL-3.0-or-later) offers only blocking
//! `read`/`write`/`rm`/`directory` with `req_id` 0; it has no mkdir, permissions or
//! transactions, and watches only in its tokio flavour. Worse, it takes any reply whose type
//! differs from the request for an error, so a `WATCH_EVENT` arriving between a request and
//! its reply (which xenstored does: see the captured trace, where the event of a write comes
//! before the write's `OK`) would break it. Two clients on two connections would work but
//! would order the DM's writes on one connection against its watches on the other only
//! loosely. So Vireo speaks the wire format itself ([`wire`], about 150 lines) on one
//! connection: requests carry increasing `req_id`s, replies are matched on them, and watch
//! events are set aside in a queue whenever they arrive. The `xenstore-rs` dependency is
//! unused by this module.
//!
//! ## Connection
//!
//! [`XenStore::open`] tries, in order, `$XENSTORED_PATH`, `/run/xenstored/socket`,
//! `/var/run/xenstored/socket` (the daemon's Unix socket: what the testbed's dom0 runs;
//! `/var/run` is a link to `/run` there) and then the kernel device `/dev/xen/xenbus` (the only
//! way in from a stub domain; it carries the same messages). The descriptor is non-blocking.
//! Requests block the caller until their reply arrives or [`XenStore::set_timeout`] passes
//! (default [`DEFAULT_TIMEOUT`]); the wait uses a private `mio::Poll`.
//!
//! ## Watches in an event loop
//!
//! A board registers the connection's descriptor ([`std::os::fd::AsRawFd`]) with its own
//! `mio` loop (`mio::unix::SourceFd`, readable interest) and, when it fires, calls
//! [`XenStore::take_watch_events`], which reads whatever has arrived without blocking and
//! returns every queued event, including those that arrived while a request waited for its
//! reply. Any arrival of bytes wakes the board's loop, so no event waits unnoticed.
//! [`XenStore::wait_watch_event`] blocks for one (start-up code and tests).
//!
//! ## Checked on the testbed
//!
//! A probe DM built on this client ran under the real libxl 4.17 and C xenstored of the Xen
//! testbed, once through `/run/xenstored/socket` and once through `/dev/xen/xenbus`
//! (`XENSTORED_PATH`, which xl passes on to the DM): it read its own domid (0) and the guest
//! keys, watched its state node (the first event came at once), read inside a transaction,
//! got `ENOENT` for a missing key, published an empty `backends` directory, wrote
//! `state = running` (libxl's `xl create` then succeeded), and received watch events in its
//! `mio` loop when libxl wrote `control/shutdown` during `xl save`.
//!
//! ## Errors
//!
//! A refused request gives [`XsError::Server`] with the errno name xenstored sent (`ENOENT`,
//! `EACCES`…). A dead daemon gives [`XsError::Closed`] or [`XsError::Io`] naming the
//! endpoint; after that every call fails fast with the same cause. The caller (the DM's
//! main) prints it and exits: libxl copies our stderr into `qemu-dm-<name>.log`.

use std::collections::VecDeque;
use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};
use thiserror::Error;

pub mod dm;
pub mod wire;

use wire::{Message, MsgType, PAYLOAD_MAX};

/// How long a request waits for its reply before [`XsError::Timeout`].
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
/// The kernel's xenbus device.
pub const XENBUS_DEVICE: &str = "/dev/xen/xenbus";
/// Daemon sockets, in the order libxenstore tries them.
pub const DAEMON_SOCKETS: &[&str] = &["/run/xenstored/socket", "/var/run/xenstored/socket"];
/// Watch events kept for the caller; beyond this the oldest are dropped (logged). Watches
/// fire spuriously anyway, so a consumer re-reads the state a watch covers.
pub const MAX_QUEUED_EVENTS: usize = 4096;
/// How often a transaction is retried after a conflict (`EAGAIN`) by
/// [`XenStore::with_transaction`].
pub const TRANSACTION_RETRIES: u32 = 16;

/// The errno name xenstored puts in an `ERROR` reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum XsErrno {
    Enoent,
    Eacces,
    Eexist,
    Eisdir,
    Einval,
    Enomem,
    Enospc,
    Eio,
    Enotempty,
    Enosys,
    Erofs,
    Ebusy,
    Eagain,
    Eisconn,
    E2big,
    Eperm,
    /// A name this client does not know.
    Other(String),
}

impl XsErrno {
    pub fn from_name(name: &str) -> XsErrno {
        match name {
            "ENOENT" => XsErrno::Enoent,
            "EACCES" => XsErrno::Eacces,
            "EEXIST" => XsErrno::Eexist,
            "EISDIR" => XsErrno::Eisdir,
            "EINVAL" => XsErrno::Einval,
            "ENOMEM" => XsErrno::Enomem,
            "ENOSPC" => XsErrno::Enospc,
            "EIO" => XsErrno::Eio,
            "ENOTEMPTY" => XsErrno::Enotempty,
            "ENOSYS" => XsErrno::Enosys,
            "EROFS" => XsErrno::Erofs,
            "EBUSY" => XsErrno::Ebusy,
            "EAGAIN" => XsErrno::Eagain,
            "EISCONN" => XsErrno::Eisconn,
            "E2BIG" => XsErrno::E2big,
            "EPERM" => XsErrno::Eperm,
            other => XsErrno::Other(other.to_string()),
        }
    }

    pub fn name(&self) -> &str {
        match self {
            XsErrno::Enoent => "ENOENT",
            XsErrno::Eacces => "EACCES",
            XsErrno::Eexist => "EEXIST",
            XsErrno::Eisdir => "EISDIR",
            XsErrno::Einval => "EINVAL",
            XsErrno::Enomem => "ENOMEM",
            XsErrno::Enospc => "ENOSPC",
            XsErrno::Eio => "EIO",
            XsErrno::Enotempty => "ENOTEMPTY",
            XsErrno::Enosys => "ENOSYS",
            XsErrno::Erofs => "EROFS",
            XsErrno::Ebusy => "EBUSY",
            XsErrno::Eagain => "EAGAIN",
            XsErrno::Eisconn => "EISCONN",
            XsErrno::E2big => "E2BIG",
            XsErrno::Eperm => "EPERM",
            XsErrno::Other(s) => s,
        }
    }
}

impl fmt::Display for XsErrno {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[derive(Debug, Error)]
pub enum XsError {
    #[error("cannot connect to xenstore (is xenstored running?): {tried}")]
    Connect { tried: String },
    #[error("xenstore connection {endpoint}: {source}")]
    Io {
        endpoint: String,
        #[source]
        source: io::Error,
    },
    #[error("xenstore connection {endpoint} was closed by the other side")]
    Closed { endpoint: String },
    #[error("xenstore {op} {path}: no reply from {endpoint} within {timeout:?}")]
    Timeout {
        op: MsgType,
        path: String,
        endpoint: String,
        timeout: Duration,
    },
    #[error("xenstore {op} {path}: {errno}")]
    Server {
        op: MsgType,
        path: String,
        errno: XsErrno,
    },
    #[error("xenstore connection {endpoint}: protocol error: {what}")]
    Protocol { endpoint: String, what: String },
    #[error("xenstore {op} {path}: request of {len} bytes is over the {PAYLOAD_MAX}-byte limit")]
    TooLarge {
        op: MsgType,
        path: String,
        len: usize,
    },
    #[error("xenstore path or token {what:?} is invalid: {why}")]
    Invalid { what: String, why: &'static str },
    #[error("xenstore connection {endpoint} is unusable after an earlier failure: {cause}")]
    Dead { endpoint: String, cause: String },
}

impl XsError {
    /// The node does not exist.
    pub fn is_not_found(&self) -> bool {
        matches!(
            self,
            XsError::Server {
                errno: XsErrno::Enoent,
                ..
            }
        )
    }

    /// The error xenstored answered with, if it answered.
    pub fn errno(&self) -> Option<&XsErrno> {
        match self {
            XsError::Server { errno, .. } => Some(errno),
            _ => None,
        }
    }
}

/// Access a domain has to a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    None,
    Read,
    Write,
    ReadWrite,
}

/// One permission entry. In a list, the first entry names the node's owner and the access of
/// every domain not listed after it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Perm {
    pub domid: u32,
    pub access: Access,
}

impl Perm {
    pub fn new(domid: u32, access: Access) -> Perm {
        Perm { domid, access }
    }

    /// The wire spelling: `n0`, `r2`, `w5`, `b1`.
    pub fn to_wire(self) -> String {
        let c = match self.access {
            Access::None => 'n',
            Access::Read => 'r',
            Access::Write => 'w',
            Access::ReadWrite => 'b',
        };
        format!("{c}{}", self.domid)
    }

    pub fn parse(s: &str) -> Option<Perm> {
        let mut chars = s.chars();
        let access = match chars.next()? {
            'n' => Access::None,
            'r' => Access::Read,
            'w' => Access::Write,
            'b' => Access::ReadWrite,
            _ => return None,
        };
        let domid = chars.as_str().parse().ok()?;
        Some(Perm { domid, access })
    }
}

/// A watch fired: `path` (the node that changed, or the watched path itself) and the token
/// given to [`XenStore::watch`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatchEvent {
    pub path: String,
    pub token: String,
}

enum Conn {
    Socket(UnixStream),
    Device(File),
}

impl Conn {
    fn raw_fd(&self) -> RawFd {
        match self {
            Conn::Socket(s) => s.as_raw_fd(),
            Conn::Device(f) => f.as_raw_fd(),
        }
    }

    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Conn::Socket(s) => s.read(buf),
            Conn::Device(f) => f.read(buf),
        }
    }

    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Conn::Socket(s) => s.write(buf),
            Conn::Device(f) => f.write(buf),
        }
    }
}

const CONN: Token = Token(0);

/// A connection to xenstore.
pub struct XenStore {
    conn: Conn,
    endpoint: String,
    poll: Poll,
    events: Events,
    rx: Vec<u8>,
    next_req_id: u32,
    watch_events: VecDeque<WatchEvent>,
    dropped_events: u64,
    timeout: Duration,
    dead: Option<String>,
}

impl fmt::Debug for XenStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("XenStore")
            .field("endpoint", &self.endpoint)
            .field("queued_events", &self.watch_events.len())
            .finish_non_exhaustive()
    }
}

fn check_path(path: &str) -> Result<(), XsError> {
    let bad = |why| {
        Err(XsError::Invalid {
            what: path.to_string(),
            why,
        })
    };
    if path.is_empty() {
        return bad("empty");
    }
    if path.contains('\0') {
        return bad("contains a NUL byte");
    }
    if path.len() > wire::ABS_PATH_MAX {
        return bad("longer than 3072 bytes");
    }
    Ok(())
}

impl XenStore {
    /// Connect the way libxenstore does: `$XENSTORED_PATH`, the daemon sockets, then the
    /// kernel device.
    pub fn open() -> Result<XenStore, XsError> {
        let mut tried = Vec::new();
        if let Some(p) = std::env::var_os("XENSTORED_PATH") {
            let p = PathBuf::from(p);
            let r = if p.starts_with("/dev") {
                XenStore::open_device(&p)
            } else {
                XenStore::connect_unix(&p)
            };
            match r {
                Ok(xs) => return Ok(xs),
                Err(e) => tried.push(e.to_string()),
            }
        }
        for p in DAEMON_SOCKETS {
            match XenStore::connect_unix(p) {
                Ok(xs) => return Ok(xs),
                Err(e) => tried.push(e.to_string()),
            }
        }
        match XenStore::open_device(XENBUS_DEVICE) {
            Ok(xs) => Ok(xs),
            Err(e) => {
                tried.push(e.to_string());
                Err(XsError::Connect {
                    tried: tried.join("; "),
                })
            }
        }
    }

    /// Connect to a xenstored Unix socket.
    pub fn connect_unix(path: impl AsRef<Path>) -> Result<XenStore, XsError> {
        let path = path.as_ref();
        let endpoint = path.display().to_string();
        let io = |source| XsError::Io {
            endpoint: endpoint.clone(),
            source,
        };
        let s = UnixStream::connect(path).map_err(io)?;
        s.set_nonblocking(true).map_err(io)?;
        XenStore::new(Conn::Socket(s), endpoint.clone())
    }

    /// Open the kernel's xenbus device (or anything speaking the same messages).
    pub fn open_device(path: impl AsRef<Path>) -> Result<XenStore, XsError> {
        let path = path.as_ref();
        let endpoint = path.display().to_string();
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open(path)
            .map_err(|source| XsError::Io {
                endpoint: endpoint.clone(),
                source,
            })?;
        XenStore::new(Conn::Device(f), endpoint)
    }

    fn new(conn: Conn, endpoint: String) -> Result<XenStore, XsError> {
        let io = |source| XsError::Io {
            endpoint: endpoint.clone(),
            source,
        };
        let poll = Poll::new().map_err(io)?;
        poll.registry()
            .register(
                &mut SourceFd(&conn.raw_fd()),
                CONN,
                Interest::READABLE | Interest::WRITABLE,
            )
            .map_err(io)?;
        Ok(XenStore {
            conn,
            endpoint,
            poll,
            events: Events::with_capacity(4),
            rx: Vec::new(),
            next_req_id: 1,
            watch_events: VecDeque::new(),
            dropped_events: 0,
            timeout: DEFAULT_TIMEOUT,
            dead: None,
        })
    }

    /// Where this connection goes (for messages).
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// How long a request may wait for its reply.
    pub fn set_timeout(&mut self, timeout: Duration) {
        self.timeout = timeout;
    }

    fn fail(&mut self, e: XsError) -> XsError {
        if self.dead.is_none() {
            self.dead = Some(e.to_string());
        }
        e
    }

    fn check_alive(&self) -> Result<(), XsError> {
        match &self.dead {
            Some(cause) => Err(XsError::Dead {
                endpoint: self.endpoint.clone(),
                cause: cause.clone(),
            }),
            None => Ok(()),
        }
    }

    fn io_err(&self, source: io::Error) -> XsError {
        XsError::Io {
            endpoint: self.endpoint.clone(),
            source,
        }
    }

    /// Read everything available now. Returns false when the other side closed.
    fn fill(&mut self) -> Result<bool, XsError> {
        let mut chunk = [0u8; 4096];
        loop {
            match self.conn.read(&mut chunk) {
                Ok(0) => return Ok(false),
                Ok(n) => self.rx.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(true),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(self.io_err(e)),
            }
        }
    }

    /// Wait until the descriptor may be ready again or `deadline` passes. Returns false on
    /// timeout.
    fn wait(&mut self, deadline: Instant) -> Result<bool, XsError> {
        let now = Instant::now();
        if now >= deadline {
            return Ok(false);
        }
        match self.poll.poll(&mut self.events, Some(deadline - now)) {
            Ok(()) => Ok(!self.events.is_empty() || Instant::now() < deadline),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => Ok(true),
            Err(e) => Err(self.io_err(e)),
        }
    }

    fn queue_event(&mut self, payload: &[u8]) {
        let f = wire::split_fields(payload);
        let (Some(path), Some(token)) = (f.first(), f.get(1)) else {
            log::warn!(
                "xenstore {}: malformed watch event ignored ({} bytes)",
                self.endpoint,
                payload.len()
            );
            return;
        };
        if self.watch_events.len() >= MAX_QUEUED_EVENTS {
            self.watch_events.pop_front();
            if self.dropped_events == 0 {
                log::warn!(
                    "xenstore {}: watch events are not being consumed; dropping the oldest",
                    self.endpoint
                );
            }
            self.dropped_events += 1;
        }
        self.watch_events.push_back(WatchEvent {
            path: String::from_utf8_lossy(path).into_owned(),
            token: String::from_utf8_lossy(token).into_owned(),
        });
    }

    /// Decode every whole message in the buffer: watch events are queued, the reply to
    /// `want` (if any) is returned.
    fn drain_messages(&mut self, want: Option<u32>) -> Result<Option<Message>, XsError> {
        loop {
            let msg = match wire::decode(&mut self.rx) {
                Ok(Some(m)) => m,
                Ok(None) => return Ok(None),
                Err(wire::Oversized(len)) => {
                    let e = XsError::Protocol {
                        endpoint: self.endpoint.clone(),
                        what: format!("message of {len} bytes announced (limit {PAYLOAD_MAX})"),
                    };
                    return Err(self.fail(e));
                }
            };
            if msg.header.ty == MsgType::WatchEvent as u32 {
                self.queue_event(&msg.payload);
                continue;
            }
            if Some(msg.header.req_id) == want {
                return Ok(Some(msg));
            }
            log::warn!(
                "xenstore {}: unexpected reply (type {}, req_id {}) dropped",
                self.endpoint,
                msg.header.ty,
                msg.header.req_id
            );
        }
    }

    fn send_all(&mut self, mut bytes: &[u8], deadline: Instant) -> Result<bool, XsError> {
        while !bytes.is_empty() {
            match self.conn.write(bytes) {
                Ok(0) => {
                    return Err(XsError::Closed {
                        endpoint: self.endpoint.clone(),
                    });
                }
                Ok(n) => bytes = &bytes[n..],
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if !self.wait(deadline)? {
                        return Ok(false);
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::BrokenPipe => {
                    return Err(XsError::Closed {
                        endpoint: self.endpoint.clone(),
                    });
                }
                Err(e) => return Err(self.io_err(e)),
            }
        }
        Ok(true)
    }

    /// Send one request and wait for its reply. `what` names the request in errors.
    fn request(
        &mut self,
        op: MsgType,
        tx_id: u32,
        payload: &[u8],
        what: &str,
    ) -> Result<Vec<u8>, XsError> {
        self.check_alive()?;
        if payload.len() > PAYLOAD_MAX {
            return Err(XsError::TooLarge {
                op,
                path: what.to_string(),
                len: payload.len(),
            });
        }
        let req_id = self.next_req_id;
        // Zero is what xenstored uses for events; never use it for a request.
        self.next_req_id = self.next_req_id.checked_add(1).unwrap_or(1);
        let deadline = Instant::now() + self.timeout;
        let timeout_err = |s: &Self| XsError::Timeout {
            op,
            path: what.to_string(),
            endpoint: s.endpoint.clone(),
            timeout: s.timeout,
        };
        let msg = wire::encode(op, req_id, tx_id, payload);
        match self.send_all(&msg, deadline) {
            Ok(true) => {}
            Ok(false) => {
                // Part of a request may be on the wire: the stream is out of step for good.
                let e = timeout_err(self);
                return Err(self.fail(e));
            }
            Err(e) => return Err(self.fail(e)),
        }
        let reply = loop {
            if let Some(m) = self.drain_messages(Some(req_id))? {
                break m;
            }
            match self.fill() {
                Ok(true) => {}
                Ok(false) => {
                    // Bytes read before the close may still hold our reply.
                    if let Some(m) = self.drain_messages(Some(req_id))? {
                        break m;
                    }
                    let e = XsError::Closed {
                        endpoint: self.endpoint.clone(),
                    };
                    return Err(self.fail(e));
                }
                Err(e) => return Err(self.fail(e)),
            }
            if let Some(m) = self.drain_messages(Some(req_id))? {
                break m;
            }
            match self.wait(deadline) {
                Ok(true) => {}
                Ok(false) => {
                    // A late reply would be matched to nothing and dropped; the connection
                    // stays usable, but this request's outcome is unknown.
                    return Err(timeout_err(self));
                }
                Err(e) => return Err(self.fail(e)),
            }
        };
        if reply.header.ty == MsgType::Error as u32 {
            let name = wire::split_fields(&reply.payload)
                .first()
                .map(|n| String::from_utf8_lossy(n).into_owned())
                .unwrap_or_default();
            return Err(XsError::Server {
                op,
                path: what.to_string(),
                errno: XsErrno::from_name(&name),
            });
        }
        if reply.header.ty != op as u32 {
            let e = XsError::Protocol {
                endpoint: self.endpoint.clone(),
                what: format!(
                    "reply to {op} {what} has type {} (req_id {req_id})",
                    reply.header.ty
                ),
            };
            return Err(self.fail(e));
        }
        Ok(reply.payload)
    }

    fn path_op(&mut self, op: MsgType, tx: u32, path: &str) -> Result<Vec<u8>, XsError> {
        check_path(path)?;
        self.request(op, tx, &wire::fields(&[path.as_bytes()]), path)
    }

    fn do_read(&mut self, tx: u32, path: &str) -> Result<Vec<u8>, XsError> {
        self.path_op(MsgType::Read, tx, path)
    }

    fn do_write(&mut self, tx: u32, path: &str, value: &[u8]) -> Result<(), XsError> {
        check_path(path)?;
        let mut payload = wire::fields(&[path.as_bytes()]);
        payload.extend_from_slice(value);
        self.request(MsgType::Write, tx, &payload, path).map(drop)
    }

    fn do_directory(&mut self, tx: u32, path: &str) -> Result<Vec<String>, XsError> {
        let reply = self.path_op(MsgType::Directory, tx, path)?;
        Ok(wire::split_fields(&reply)
            .into_iter()
            .map(|f| String::from_utf8_lossy(f).into_owned())
            .collect())
    }

    fn do_set_perms(&mut self, tx: u32, path: &str, perms: &[Perm]) -> Result<(), XsError> {
        check_path(path)?;
        if perms.is_empty() {
            return Err(XsError::Invalid {
                what: path.to_string(),
                why: "a permission list needs at least the owner entry",
            });
        }
        let wire_perms: Vec<String> = perms.iter().map(|p| p.to_wire()).collect();
        let mut parts: Vec<&[u8]> = vec![path.as_bytes()];
        parts.extend(wire_perms.iter().map(|p| p.as_bytes()));
        self.request(MsgType::SetPerms, tx, &wire::fields(&parts), path)
            .map(drop)
    }

    fn do_get_perms(&mut self, tx: u32, path: &str) -> Result<Vec<Perm>, XsError> {
        let reply = self.path_op(MsgType::GetPerms, tx, path)?;
        wire::split_fields(&reply)
            .into_iter()
            .map(|f| {
                let s = String::from_utf8_lossy(f);
                Perm::parse(&s).ok_or_else(|| XsError::Protocol {
                    endpoint: self.endpoint.clone(),
                    what: format!("permission {s:?} of {path}"),
                })
            })
            .collect()
    }

    /// The value of a node.
    pub fn read(&mut self, path: &str) -> Result<Vec<u8>, XsError> {
        self.do_read(0, path)
    }

    /// The value of a node as text (invalid UTF-8 replaced).
    pub fn read_string(&mut self, path: &str) -> Result<String, XsError> {
        Ok(String::from_utf8_lossy(&self.read(path)?).into_owned())
    }

    /// The value of a node as text, or `None` if the node does not exist.
    pub fn read_opt(&mut self, path: &str) -> Result<Option<String>, XsError> {
        match self.read_string(path) {
            Ok(v) => Ok(Some(v)),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Create or overwrite a node (creating missing parents).
    pub fn write(&mut self, path: &str, value: &[u8]) -> Result<(), XsError> {
        self.do_write(0, path, value)
    }

    /// Create a node (and missing parents) with an empty value; an existing node is kept.
    pub fn mkdir(&mut self, path: &str) -> Result<(), XsError> {
        self.path_op(MsgType::Mkdir, 0, path).map(drop)
    }

    /// Remove a node and everything below it. Removing a missing node whose parent exists
    /// succeeds.
    pub fn rm(&mut self, path: &str) -> Result<(), XsError> {
        self.path_op(MsgType::Rm, 0, path).map(drop)
    }

    /// The names of a node's children.
    pub fn directory(&mut self, path: &str) -> Result<Vec<String>, XsError> {
        self.do_directory(0, path)
    }

    pub fn get_perms(&mut self, path: &str) -> Result<Vec<Perm>, XsError> {
        self.do_get_perms(0, path)
    }

    /// Replace a node's permissions; `perms[0]` is the owner and the default for others.
    pub fn set_perms(&mut self, path: &str, perms: &[Perm]) -> Result<(), XsError> {
        self.do_set_perms(0, path, perms)
    }

    /// `/local/domain/<domid>`, as xenstored spells it.
    pub fn get_domain_path(&mut self, domid: u32) -> Result<String, XsError> {
        let id = domid.to_string();
        let reply = self.request(
            MsgType::GetDomainPath,
            0,
            &wire::fields(&[id.as_bytes()]),
            &id,
        )?;
        let f = wire::split_fields(&reply);
        Ok(f.first()
            .map(|p| String::from_utf8_lossy(p).into_owned())
            .unwrap_or_default())
    }

    /// Watch `path` and everything below it. The watch fires once at once; events are
    /// collected with [`XenStore::take_watch_events`].
    pub fn watch(&mut self, path: &str, token: &str) -> Result<(), XsError> {
        check_path(path)?;
        check_path(token)?;
        self.request(
            MsgType::Watch,
            0,
            &wire::fields(&[path.as_bytes(), token.as_bytes()]),
            path,
        )
        .map(drop)
    }

    pub fn unwatch(&mut self, path: &str, token: &str) -> Result<(), XsError> {
        check_path(path)?;
        check_path(token)?;
        self.request(
            MsgType::Unwatch,
            0,
            &wire::fields(&[path.as_bytes(), token.as_bytes()]),
            path,
        )
        .map(drop)
    }

    /// Every watch event received so far, reading what has arrived without blocking.
    pub fn take_watch_events(&mut self) -> Result<Vec<WatchEvent>, XsError> {
        self.check_alive()?;
        let open = match self.fill() {
            Ok(open) => open,
            Err(e) => return Err(self.fail(e)),
        };
        self.drain_messages(None)?;
        if !open {
            // Hand over what arrived before the close; report the close on the next call.
            let events: Vec<WatchEvent> = self.watch_events.drain(..).collect();
            let e = XsError::Closed {
                endpoint: self.endpoint.clone(),
            };
            let e = self.fail(e);
            if events.is_empty() {
                return Err(e);
            }
            return Ok(events);
        }
        Ok(self.watch_events.drain(..).collect())
    }

    /// Wait up to `timeout` for one watch event.
    pub fn wait_watch_event(&mut self, timeout: Duration) -> Result<Option<WatchEvent>, XsError> {
        let deadline = Instant::now() + timeout;
        loop {
            self.check_alive()?;
            if let Some(ev) = self.watch_events.pop_front() {
                return Ok(Some(ev));
            }
            match self.fill() {
                Ok(true) => {}
                Ok(false) => {
                    self.drain_messages(None)?;
                    if let Some(ev) = self.watch_events.pop_front() {
                        return Ok(Some(ev));
                    }
                    let e = XsError::Closed {
                        endpoint: self.endpoint.clone(),
                    };
                    return Err(self.fail(e));
                }
                Err(e) => return Err(self.fail(e)),
            }
            self.drain_messages(None)?;
            if !self.watch_events.is_empty() {
                continue;
            }
            if !self.wait(deadline)? {
                return Ok(None);
            }
        }
    }

    /// Start a transaction. Operations through it see one consistent store and take effect
    /// together at [`Transaction::commit`].
    pub fn transaction(&mut self) -> Result<Transaction<'_>, XsError> {
        let reply = self.request(MsgType::TransactionStart, 0, b"\0", "(transaction)")?;
        let text = String::from_utf8_lossy(wire::split_fields(&reply).first().unwrap_or(&&[][..]))
            .into_owned();
        let id = text
            .parse::<u32>()
            .ok()
            .filter(|id| *id != 0)
            .ok_or_else(|| {
                let e = XsError::Protocol {
                    endpoint: self.endpoint.clone(),
                    what: format!("transaction id {text:?}"),
                };
                self.fail(e)
            })?;
        Ok(Transaction {
            xs: self,
            id,
            open: true,
        })
    }

    /// Run `body` in a transaction, retrying the whole of it when the commit conflicts with
    /// another writer (`EAGAIN`), at most [`TRANSACTION_RETRIES`] times.
    pub fn with_transaction<T>(
        &mut self,
        mut body: impl FnMut(&mut Transaction<'_>) -> Result<T, XsError>,
    ) -> Result<T, XsError> {
        for _ in 0..TRANSACTION_RETRIES {
            let mut tx = self.transaction()?;
            let value = match body(&mut tx) {
                Ok(v) => v,
                Err(e) => {
                    tx.abort()?;
                    return Err(e);
                }
            };
            if tx.commit()? {
                return Ok(value);
            }
        }
        Err(XsError::Server {
            op: MsgType::TransactionEnd,
            path: "(transaction)".to_string(),
            errno: XsErrno::Eagain,
        })
    }
}

impl AsRawFd for XenStore {
    /// The connection, for a board's `mio` loop (readable interest). Do not read from it:
    /// call [`XenStore::take_watch_events`].
    fn as_raw_fd(&self) -> RawFd {
        self.conn.raw_fd()
    }
}

/// An open transaction. Dropping it without [`Transaction::commit`] aborts it.
pub struct Transaction<'a> {
    xs: &'a mut XenStore,
    id: u32,
    open: bool,
}

impl Transaction<'_> {
    pub fn id(&self) -> u32 {
        self.id
    }

    pub fn read(&mut self, path: &str) -> Result<Vec<u8>, XsError> {
        self.xs.do_read(self.id, path)
    }

    pub fn read_opt(&mut self, path: &str) -> Result<Option<String>, XsError> {
        match self.xs.do_read(self.id, path) {
            Ok(v) => Ok(Some(String::from_utf8_lossy(&v).into_owned())),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e),
        }
    }

    pub fn write(&mut self, path: &str, value: &[u8]) -> Result<(), XsError> {
        self.xs.do_write(self.id, path, value)
    }

    pub fn mkdir(&mut self, path: &str) -> Result<(), XsError> {
        self.xs.path_op(MsgType::Mkdir, self.id, path).map(drop)
    }

    pub fn rm(&mut self, path: &str) -> Result<(), XsError> {
        self.xs.path_op(MsgType::Rm, self.id, path).map(drop)
    }

    pub fn directory(&mut self, path: &str) -> Result<Vec<String>, XsError> {
        self.xs.do_directory(self.id, path)
    }

    pub fn set_perms(&mut self, path: &str, perms: &[Perm]) -> Result<(), XsError> {
        self.xs.do_set_perms(self.id, path, perms)
    }

    fn end(&mut self, commit: bool) -> Result<bool, XsError> {
        self.open = false;
        let flag: &[u8] = if commit { b"T\0" } else { b"F\0" };
        match self
            .xs
            .request(MsgType::TransactionEnd, self.id, flag, "(transaction)")
        {
            Ok(_) => Ok(true),
            Err(XsError::Server {
                errno: XsErrno::Eagain,
                ..
            }) if commit => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Commit. `Ok(false)`: another writer got in first and nothing was applied; run the
    /// whole transaction again.
    pub fn commit(mut self) -> Result<bool, XsError> {
        self.end(true)
    }

    pub fn abort(mut self) -> Result<(), XsError> {
        self.end(false).map(drop)
    }
}

impl Drop for Transaction<'_> {
    fn drop(&mut self) {
        if self.open
            && let Err(e) = self.end(false)
        {
            log::warn!("xenstore: aborting transaction {}: {e}", self.id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn perm_spelling() {
        for (s, p) in [
            ("n0", Perm::new(0, Access::None)),
            ("r2", Perm::new(2, Access::Read)),
            ("w7", Perm::new(7, Access::Write)),
            ("b32752", Perm::new(32752, Access::ReadWrite)),
        ] {
            assert_eq!(Perm::parse(s), Some(p));
            assert_eq!(p.to_wire(), s);
        }
        for bad in ["", "x1", "r", "r-1", "rr", "n99999999999"] {
            assert_eq!(Perm::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn errno_names_round_trip() {
        for name in [
            "ENOENT",
            "EACCES",
            "EEXIST",
            "EISDIR",
            "EINVAL",
            "ENOMEM",
            "ENOSPC",
            "EIO",
            "ENOTEMPTY",
            "ENOSYS",
            "EROFS",
            "EBUSY",
            "EAGAIN",
            "EISCONN",
            "E2BIG",
            "EPERM",
            "EWHATEVER",
        ] {
            assert_eq!(XsErrno::from_name(name).name(), name);
        }
    }

    #[test]
    fn paths_with_nul_are_refused_before_sending() {
        assert!(check_path("/a\0b").is_err());
        assert!(check_path("").is_err());
        assert!(check_path(&"a".repeat(3073)).is_err());
        assert!(check_path("/local/domain/0/device-model/1/state").is_ok());
        assert!(check_path("@releaseDomain").is_ok());
    }
}
