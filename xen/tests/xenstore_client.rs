//! The xenstore client against a fake xenstored: a Unix socket speaking the wire format, with
//! a tree, permissions, watches that fire like the real daemon's (once at once, then on any
//! change at or below the watched path, the event sent before the reply to the write that
//! caused it, as the captured trace shows), transactions, and failure modes.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use xen::xenstore::dm::{self, DeviceModelNode};
use xen::xenstore::wire::{self, Header, MsgType};
use xen::xenstore::{Access, Perm, WatchEvent, XenStore, XsErrno, XsError};

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Normal,
    /// Close the connection when this many requests have been answered.
    CloseAfter(usize),
    /// Read requests, never answer.
    Silent,
    /// Answer with a header announcing an impossible length.
    Oversized,
}

#[derive(Default)]
struct State {
    tree: BTreeMap<String, Vec<u8>>,
    perms: BTreeMap<String, Vec<String>>,
    /// (connection, path, token)
    watches: Vec<(usize, String, String)>,
    conns: BTreeMap<usize, UnixStream>,
    /// Commits to refuse with EAGAIN before accepting one.
    conflicts: u32,
    /// Every request, as "TYPE arg arg" (the daemon's trace format).
    log: Vec<String>,
    next_tx: u32,
}

impl State {
    fn send(&mut self, conn: usize, ty: MsgType, req_id: u32, tx_id: u32, payload: &[u8]) {
        if let Some(s) = self.conns.get_mut(&conn) {
            let _ = s.write_all(&wire::encode(ty, req_id, tx_id, payload));
        }
    }

    fn fire(&mut self, changed: &str) {
        let hits: Vec<(usize, String)> = self
            .watches
            .iter()
            .filter(|(_, p, _)| changed == p || changed.starts_with(&format!("{p}/")))
            .map(|(c, _, t)| (*c, t.clone()))
            .collect();
        for (c, token) in hits {
            let payload = wire::fields(&[changed.as_bytes(), token.as_bytes()]);
            self.send(c, MsgType::WatchEvent, 0, 0, &payload);
        }
    }

    fn create_parents(&mut self, path: &str) {
        let mut p = path.to_string();
        while let Some(i) = p.rfind('/') {
            p.truncate(i);
            if p.is_empty() {
                break;
            }
            self.tree.entry(p.clone()).or_default();
        }
    }
}

struct Fake {
    path: PathBuf,
    dir: PathBuf,
    state: Arc<Mutex<State>>,
}

impl Drop for Fake {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn abs(p: &str) -> String {
    if p.starts_with('/') || p.starts_with('@') {
        p.to_string()
    } else {
        format!("/local/domain/0/{p}")
    }
}

fn serve(state: Arc<Mutex<State>>, conn: usize, mut s: UnixStream, mode: Mode) {
    let mut buf = Vec::new();
    let mut answered = 0;
    let mut chunk = [0u8; 4096];
    loop {
        let n = match s.read(&mut chunk) {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        buf.extend_from_slice(&chunk[..n]);
        while let Ok(Some(m)) = wire::decode(&mut buf) {
            if mode == Mode::CloseAfter(answered) {
                let _ = s.shutdown(std::net::Shutdown::Both);
                state.lock().unwrap().conns.remove(&conn);
                return;
            }
            if mode == Mode::Silent {
                continue;
            }
            if mode == Mode::Oversized {
                let h = Header {
                    ty: m.header.ty,
                    req_id: m.header.req_id,
                    tx_id: 0,
                    len: 1 << 20,
                };
                let _ = s.write_all(&h.to_bytes());
                continue;
            }
            handle(&state, conn, m);
            answered += 1;
        }
    }
}

fn handle(state: &Arc<Mutex<State>>, conn: usize, m: wire::Message) {
    let mut st = state.lock().unwrap();
    let ty = MsgType::from_u32(m.header.ty);
    let (req, tx) = (m.header.req_id, m.header.tx_id);
    let f: Vec<String> = wire::split_fields(&m.payload)
        .iter()
        .map(|b| String::from_utf8_lossy(b).into_owned())
        .collect();
    let name = ty.map(|t| t.name()).unwrap_or("?");
    st.log
        .push(format!("{name} {}", f.join(" ")).trim_end().to_string());
    let ok = b"OK\0";
    let err = |st: &mut State, e: &str| {
        st.send(
            conn,
            MsgType::Error,
            req,
            tx,
            &wire::fields(&[e.as_bytes()]),
        );
    };
    let Some(ty) = ty else {
        return err(&mut st, "ENOSYS");
    };
    let path = f.first().map(|p| abs(p)).unwrap_or_default();
    match ty {
        MsgType::Read => match st.tree.get(&path).cloned() {
            Some(v) => st.send(conn, ty, req, tx, &v),
            None => err(&mut st, "ENOENT"),
        },
        MsgType::Write => {
            let at = m.payload.iter().position(|b| *b == 0).unwrap();
            let value = m.payload[at + 1..].to_vec();
            st.create_parents(&path);
            st.tree.insert(path.clone(), value);
            st.fire(&path);
            st.send(conn, ty, req, tx, ok);
        }
        MsgType::Mkdir => {
            st.create_parents(&path);
            st.tree.entry(path.clone()).or_default();
            st.fire(&path);
            st.send(conn, ty, req, tx, ok);
        }
        MsgType::Rm => {
            let parent = path.rsplit_once('/').map(|(p, _)| p.to_string()).unwrap();
            if !st.tree.contains_key(&path) && !st.tree.contains_key(&parent) {
                return err(&mut st, "ENOENT");
            }
            let prefix = format!("{path}/");
            st.tree.retain(|k, _| *k != path && !k.starts_with(&prefix));
            st.fire(&path);
            st.send(conn, ty, req, tx, ok);
        }
        MsgType::Directory => {
            if !st.tree.contains_key(&path) {
                return err(&mut st, "ENOENT");
            }
            let prefix = format!("{path}/");
            let kids: Vec<Vec<u8>> = st
                .tree
                .keys()
                .filter_map(|k| k.strip_prefix(&prefix))
                .filter(|rest| !rest.contains('/'))
                .map(|k| k.as_bytes().to_vec())
                .collect();
            let refs: Vec<&[u8]> = kids.iter().map(|k| k.as_slice()).collect();
            let payload = wire::fields(&refs);
            st.send(conn, ty, req, tx, &payload);
        }
        MsgType::SetPerms => {
            if !st.tree.contains_key(&path) {
                return err(&mut st, "ENOENT");
            }
            st.perms.insert(path, f[1..].to_vec());
            st.send(conn, ty, req, tx, ok);
        }
        MsgType::GetPerms => {
            if !st.tree.contains_key(&path) {
                return err(&mut st, "ENOENT");
            }
            let p = st.perms.get(&path).cloned().unwrap_or(vec!["n0".into()]);
            let refs: Vec<&[u8]> = p.iter().map(|s| s.as_bytes()).collect();
            let payload = wire::fields(&refs);
            st.send(conn, ty, req, tx, &payload);
        }
        MsgType::Watch => {
            let token = f[1].clone();
            st.watches.push((conn, path.clone(), token.clone()));
            st.send(conn, ty, req, tx, ok);
            let payload = wire::fields(&[f[0].as_bytes(), token.as_bytes()]);
            st.send(conn, MsgType::WatchEvent, 0, 0, &payload);
        }
        MsgType::Unwatch => {
            let before = st.watches.len();
            st.watches
                .retain(|(c, p, t)| !(*c == conn && *p == path && *t == f[1]));
            if st.watches.len() == before {
                return err(&mut st, "ENOENT");
            }
            st.send(conn, ty, req, tx, ok);
        }
        MsgType::TransactionStart => {
            st.next_tx += 1;
            let id = st.next_tx.to_string();
            st.send(conn, ty, req, 0, &wire::fields(&[id.as_bytes()]));
        }
        MsgType::TransactionEnd => {
            if f[0] == "T" && st.conflicts > 0 {
                st.conflicts -= 1;
                return err(&mut st, "EAGAIN");
            }
            st.send(conn, ty, req, tx, ok);
        }
        MsgType::GetDomainPath => {
            let p = format!("/local/domain/{}", f[0]);
            st.send(conn, ty, req, tx, &wire::fields(&[p.as_bytes()]));
        }
        _ => err(&mut st, "ENOSYS"),
    }
}

fn fake(tag: &str, mode: Mode) -> Fake {
    let dir = std::env::temp_dir().join(format!("vireo-xs-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("socket");
    let listener = UnixListener::bind(&path).unwrap();
    let state = Arc::new(Mutex::new(State::default()));
    {
        let mut st = state.lock().unwrap();
        for p in ["/local", "/local/domain", "/local/domain/0"] {
            st.tree.insert(p.into(), Vec::new());
        }
        st.tree
            .insert("/local/domain/0/domid".into(), b"0".to_vec());
    }
    let st = state.clone();
    std::thread::spawn(move || {
        for (n, s) in listener.incoming().enumerate() {
            let Ok(s) = s else { return };
            st.lock().unwrap().conns.insert(n, s.try_clone().unwrap());
            let st2 = st.clone();
            std::thread::spawn(move || serve(st2, n, s, mode));
        }
    });
    Fake { path, dir, state }
}

fn client(f: &Fake) -> XenStore {
    let mut xs = XenStore::connect_unix(&f.path).unwrap();
    xs.set_timeout(Duration::from_secs(5));
    xs
}

#[test]
fn read_write_mkdir_directory_rm() {
    let f = fake("basic", Mode::Normal);
    let mut xs = client(&f);
    xs.write("/local/domain/3/name", b"guest").unwrap();
    assert_eq!(xs.read("/local/domain/3/name").unwrap(), b"guest");
    assert_eq!(xs.read_string("/local/domain/3/name").unwrap(), "guest");
    // Values are bytes, not C strings: no NUL appended, embedded bytes kept.
    xs.write("/local/domain/3/blob", b"a\0b").unwrap();
    assert_eq!(xs.read("/local/domain/3/blob").unwrap(), b"a\0b");
    xs.write("/local/domain/3/empty", b"").unwrap();
    assert_eq!(
        xs.read_opt("/local/domain/3/empty").unwrap().as_deref(),
        Some("")
    );
    xs.mkdir("/local/domain/3/device").unwrap();
    let mut kids = xs.directory("/local/domain/3").unwrap();
    kids.sort();
    assert_eq!(kids, ["blob", "device", "empty", "name"]);
    assert_eq!(
        xs.directory("/local/domain/3/device").unwrap(),
        Vec::<String>::new()
    );
    xs.rm("/local/domain/3").unwrap();
    assert_eq!(xs.read_opt("/local/domain/3/name").unwrap(), None);
    assert_eq!(xs.get_domain_path(3).unwrap(), "/local/domain/3");
    // Relative paths go to the caller's own directory.
    assert_eq!(xs.read_string("domid").unwrap(), "0");
}

#[test]
fn error_replies_carry_the_errno_name() {
    let f = fake("errno", Mode::Normal);
    let mut xs = client(&f);
    let e = xs.read("/local/domain/9/nothing").unwrap_err();
    assert!(e.is_not_found());
    assert_eq!(e.errno(), Some(&XsErrno::Enoent));
    let msg = e.to_string();
    assert!(
        msg.contains("ENOENT") && msg.contains("/local/domain/9/nothing"),
        "{msg}"
    );
    let e = xs.directory("/nope").unwrap_err();
    assert!(e.is_not_found());
    let e = xs.rm("/no/such/parent").unwrap_err();
    assert!(e.is_not_found());
    // The connection is still good after errors.
    xs.write("/x", b"1").unwrap();
    assert_eq!(xs.read("/x").unwrap(), b"1");
}

#[test]
fn watch_fires_at_once_then_on_changes_below_it() {
    let f = fake("watch", Mode::Normal);
    let mut xs = client(&f);
    xs.mkdir("/local/domain/0/device-model/2").unwrap();
    xs.watch("/local/domain/0/device-model/2/state", "3/0")
        .unwrap();
    assert_eq!(
        xs.wait_watch_event(Duration::from_secs(5)).unwrap(),
        Some(WatchEvent {
            path: "/local/domain/0/device-model/2/state".into(),
            token: "3/0".into()
        })
    );
    // The event of this write arrives before the write's OK: it must be kept, not taken for
    // a bad reply.
    xs.write("/local/domain/0/device-model/2/state", b"running")
        .unwrap();
    xs.write("/local/domain/0/device-model/2/other", b"x")
        .unwrap();
    let ev = xs.take_watch_events().unwrap();
    assert_eq!(
        ev,
        vec![WatchEvent {
            path: "/local/domain/0/device-model/2/state".into(),
            token: "3/0".into()
        }]
    );
    xs.watch("/local/domain/0/backend", "be").unwrap();
    xs.write("/local/domain/0/backend/vkbd/2/0/state", b"2")
        .unwrap();
    let ev = xs.take_watch_events().unwrap();
    assert_eq!(
        ev.iter().map(|e| e.path.as_str()).collect::<Vec<_>>(),
        [
            "/local/domain/0/backend",
            "/local/domain/0/backend/vkbd/2/0/state"
        ]
    );
    xs.unwatch("/local/domain/0/backend", "be").unwrap();
    xs.write("/local/domain/0/backend/x", b"1").unwrap();
    assert!(xs.take_watch_events().unwrap().is_empty());
    let e = xs.unwatch("/local/domain/0/backend", "be").unwrap_err();
    assert!(e.is_not_found());
}

#[test]
fn watch_event_wakes_a_mio_loop() {
    // The board's way: the connection's descriptor in its own poll; another writer (libxl,
    // here a second connection) changes a watched node.
    let f = fake("mio", Mode::Normal);
    let mut xs = client(&f);
    let mut other = client(&f);
    xs.watch("/local/domain/5/control/shutdown", "ctl").unwrap();
    let _ = xs.take_watch_events().unwrap();
    let mut poll = mio::Poll::new().unwrap();
    let fd = xs.as_raw_fd();
    poll.registry()
        .register(
            &mut mio::unix::SourceFd(&fd),
            mio::Token(1),
            mio::Interest::READABLE,
        )
        .unwrap();
    other
        .write("/local/domain/5/control/shutdown", b"poweroff")
        .unwrap();
    let mut events = mio::Events::with_capacity(4);
    let mut got = Vec::new();
    let start = std::time::Instant::now();
    while got.is_empty() {
        assert!(start.elapsed() < Duration::from_secs(5), "no event");
        poll.poll(&mut events, Some(Duration::from_millis(100)))
            .unwrap();
        if events.iter().any(|e| e.token() == mio::Token(1)) {
            got = xs.take_watch_events().unwrap();
        }
    }
    assert_eq!(got[0].path, "/local/domain/5/control/shutdown");
    assert_eq!(got[0].token, "ctl");
}

#[test]
fn permissions() {
    let f = fake("perms", Mode::Normal);
    let mut xs = client(&f);
    xs.mkdir("/local/domain/0/device-model/2/backends/console")
        .unwrap();
    let perms = [Perm::new(0, Access::None), Perm::new(2, Access::Read)];
    xs.set_perms("/local/domain/0/device-model/2/backends/console", &perms)
        .unwrap();
    assert_eq!(
        xs.get_perms("/local/domain/0/device-model/2/backends/console")
            .unwrap(),
        perms
    );
    assert!(xs.set_perms("/missing", &perms).unwrap_err().is_not_found());
    assert!(matches!(
        xs.set_perms("/local", &[]),
        Err(XsError::Invalid { .. })
    ));
}

#[test]
fn transactions_commit_and_retry_on_conflict() {
    let f = fake("tx", Mode::Normal);
    let mut xs = client(&f);
    let mut tx = xs.transaction().unwrap();
    tx.write("/t/a", b"1").unwrap();
    tx.mkdir("/t/b").unwrap();
    assert!(tx.commit().unwrap());
    assert_eq!(xs.read("/t/a").unwrap(), b"1");

    f.state.lock().unwrap().conflicts = 1;
    let mut runs = 0;
    let v = xs
        .with_transaction(|tx| {
            runs += 1;
            tx.write("/t/c", b"2")?;
            Ok(runs)
        })
        .unwrap();
    assert_eq!(v, 2, "the body runs again after EAGAIN");

    // A dropped transaction is aborted.
    {
        let mut tx = xs.transaction().unwrap();
        tx.write("/t/d", b"3").unwrap();
    }
    let log = f.state.lock().unwrap().log.clone();
    assert_eq!(log.last().map(String::as_str), Some("TRANSACTION_END F"));
}

#[test]
fn dm_start_up_contract() {
    let f = fake("dm", Mode::Normal);
    // What libxl wrote before starting us (captured xenstore-ls).
    {
        let mut st = f.state.lock().unwrap();
        for (k, v) in [
            ("/local/domain/2/name", "hvmreal"),
            (
                "/local/domain/2/vm",
                "/vm/e8440245-7478-4396-9300-a02ef1b6c6bc",
            ),
            ("/local/domain/2/memory/static-max", "65536"),
            ("/local/domain/2/memory/target", "57344"),
            ("/local/domain/2/memory/videoram", "8192"),
            ("/local/domain/2/platform/acpi", "1"),
            ("/local/domain/2/platform/acpi_s3", "1"),
            ("/local/domain/2/platform/acpi_s4", "0"),
            ("/local/domain/2/platform/device-model", "qemu_xen"),
            ("/local/domain/2/hvmloader/bios", "seabios"),
            ("/local/domain/2/image/device-model-pid", "195"),
            (
                "/vm/e8440245-7478-4396-9300-a02ef1b6c6bc/rtc/timeoffset",
                "",
            ),
            ("/local/domain/0/device-model/2", ""),
        ] {
            st.tree.insert(k.into(), v.as_bytes().to_vec());
        }
    }
    // libxl's watch, on its own connection.
    let mut libxl = client(&f);
    libxl
        .watch("/local/domain/0/device-model/2/state", "3/0")
        .unwrap();
    let _ = libxl.wait_watch_event(Duration::from_secs(5)).unwrap();

    let mut xs = client(&f);
    assert_eq!(dm::own_domid(&mut xs).unwrap(), 0);
    let keys = dm::read_guest_keys(&mut xs, 2).unwrap();
    assert_eq!(keys.name.as_deref(), Some("hvmreal"));
    assert_eq!(
        keys.uuid.as_deref(),
        Some("e8440245-7478-4396-9300-a02ef1b6c6bc")
    );
    assert_eq!(keys.static_max_kib, Some(65536));
    assert_eq!(keys.target_kib, Some(57344));
    assert_eq!(keys.videoram_kib, Some(8192));
    assert_eq!(keys.acpi, Some(true));
    assert_eq!(keys.acpi_s3, Some(true));
    assert_eq!(keys.acpi_s4, Some(false));
    assert_eq!(keys.platform_device_model.as_deref(), Some("qemu_xen"));
    assert_eq!(keys.bios.as_deref(), Some("seabios"));
    assert_eq!(keys.device_model_pid, Some(195));
    assert_eq!(keys.rtc_timeoffset, None);

    let node = DeviceModelNode::new(0, 2);
    node.publish_backends(&mut xs, &["console"]).unwrap();
    node.set_state(&mut xs, dm::STATE_RUNNING).unwrap();

    // libxl sees exactly "running".
    let ev = libxl
        .wait_watch_event(Duration::from_secs(5))
        .unwrap()
        .unwrap();
    assert_eq!(ev.path, "/local/domain/0/device-model/2/state");
    assert_eq!(
        libxl.read_string(&ev.path).unwrap(),
        "running",
        "libxl only accepts the exact value"
    );
    let log = f.state.lock().unwrap().log.clone();
    let ours: Vec<&str> = log
        .iter()
        .map(String::as_str)
        .filter(|l| l.contains("backends") || l.contains("/state"))
        .filter(|l| !l.starts_with("WATCH") && !l.starts_with("READ"))
        .collect();
    assert_eq!(
        ours,
        [
            "MKDIR /local/domain/0/device-model/2/backends",
            "SET_PERMS /local/domain/0/device-model/2/backends n0 n2",
            "MKDIR /local/domain/0/device-model/2/backends/console",
            "SET_PERMS /local/domain/0/device-model/2/backends/console n0 n2",
            "WRITE /local/domain/0/device-model/2/state running",
        ]
    );
    assert_eq!(
        f.state.lock().unwrap().tree["/local/domain/0/device-model/2/state"],
        b"running"
    );
    node.remove(&mut xs).unwrap();
    assert_eq!(xs.read_opt(&node.state_path()).unwrap(), None);
}

#[test]
fn nothing_listening_is_a_clear_connect_error() {
    let dir = std::env::temp_dir().join(format!("vireo-xs-none-{}", std::process::id()));
    let e = XenStore::connect_unix(dir.join("socket")).unwrap_err();
    let msg = e.to_string();
    assert!(
        msg.contains("vireo-xs-none") && msg.contains("socket"),
        "{msg}"
    );
    assert!(matches!(e, XsError::Io { .. }));
    let e = XenStore::open_device(dir.join("xenbus")).unwrap_err();
    assert!(e.to_string().contains("xenbus"), "{e}");
}

#[test]
fn daemon_dying_mid_conversation_is_reported_then_fails_fast() {
    let f = fake("dies", Mode::CloseAfter(1));
    let mut xs = client(&f);
    xs.write("/a", b"1").unwrap();
    let e = xs.read("/a").unwrap_err();
    assert!(
        matches!(e, XsError::Closed { .. } | XsError::Io { .. }),
        "{e}"
    );
    assert!(e.to_string().contains(&f.path.display().to_string()), "{e}");
    let e = xs.read("/a").unwrap_err();
    assert!(matches!(e, XsError::Dead { .. }), "{e}");
    assert!(xs.take_watch_events().is_err());
}

#[test]
fn a_silent_daemon_times_out() {
    let f = fake("silent", Mode::Silent);
    let mut xs = client(&f);
    xs.set_timeout(Duration::from_millis(200));
    let e = xs.read("/local/domain/1/name").unwrap_err();
    assert!(matches!(e, XsError::Timeout { .. }), "{e}");
    assert!(e.to_string().contains("/local/domain/1/name"), "{e}");
}

#[test]
fn an_oversized_reply_is_a_protocol_error() {
    let f = fake("big", Mode::Oversized);
    let mut xs = client(&f);
    let e = xs.read("/a").unwrap_err();
    assert!(matches!(e, XsError::Protocol { .. }), "{e}");
    assert!(matches!(xs.read("/a").unwrap_err(), XsError::Dead { .. }));
}

#[test]
fn oversized_requests_and_bad_paths_are_refused_locally() {
    let f = fake("local", Mode::Normal);
    let mut xs = client(&f);
    let e = xs.write("/big", &vec![b'x'; 5000]).unwrap_err();
    assert!(matches!(e, XsError::TooLarge { .. }), "{e}");
    assert!(matches!(xs.read("/a\0b"), Err(XsError::Invalid { .. })));
    assert!(matches!(
        xs.watch("/a", "t\0"),
        Err(XsError::Invalid { .. })
    ));
    // Nothing reached the daemon, and the connection still works.
    assert!(f.state.lock().unwrap().log.is_empty());
    xs.write("/ok", b"1").unwrap();
}
