//! The QMP server over real Unix sockets: the conversations libxl 4.17 had with qemu-xen and
//! with fake-dm.py on the testbed (`captured/qmp-transcript-*.txt`), save/restore with a file
//! descriptor passed as libxl passes it, malformed input, unknown commands, several clients.

use std::io::{BufRead, BufReader, Read, Write};
use std::mem::MaybeUninit;
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use serde_json::{Value, json};
use xen::cmdline::{DmConfig, QmpListen, QmpSocket};
use xen::qmp::{QmpHandler, QmpServer, QmpServerError, RunState, ServerInfo};

#[derive(Default)]
struct Shared {
    calls: Vec<String>,
    state: Option<RunState>,
    blob: Vec<u8>,
    fail_load: bool,
    refuse_dirty_log: bool,
}

struct Board(Arc<Mutex<Shared>>);

impl QmpHandler for Board {
    fn status(&self) -> RunState {
        self.0.lock().unwrap().state.unwrap_or(RunState::Prelaunch)
    }
    fn pause(&mut self) -> Result<(), String> {
        let mut s = self.0.lock().unwrap();
        s.calls.push("pause".into());
        s.state = Some(RunState::Paused);
        Ok(())
    }
    fn resume(&mut self) -> Result<(), String> {
        let mut s = self.0.lock().unwrap();
        s.calls.push("resume".into());
        s.state = Some(RunState::Running);
        Ok(())
    }
    fn save_state(&mut self, out: &mut std::fs::File, live: bool) -> Result<(), String> {
        let mut s = self.0.lock().unwrap();
        s.calls.push(format!("save live={live}"));
        out.write_all(&s.blob).map_err(|e| e.to_string())
    }
    fn load_state(&mut self, input: &mut std::fs::File) -> Result<(), String> {
        let mut s = self.0.lock().unwrap();
        let mut data = Vec::new();
        input.read_to_end(&mut data).map_err(|e| e.to_string())?;
        s.calls
            .push(format!("load {}", String::from_utf8_lossy(&data)));
        if s.fail_load {
            return Err("bad device state version".into());
        }
        Ok(())
    }
    fn quit(&mut self) {
        self.0.lock().unwrap().calls.push("quit".into());
    }
    fn set_dirty_log(&mut self, enable: bool) -> Result<(), String> {
        let mut s = self.0.lock().unwrap();
        s.calls.push(format!("dirty-log {enable}"));
        if s.refuse_dirty_log {
            return Err("dirty-page logging is not available".into());
        }
        Ok(())
    }
}

struct Dm {
    dir: PathBuf,
    shared: Arc<Mutex<Shared>>,
    stop: Arc<AtomicBool>,
    quit: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Dm {
    fn sock(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }
}

impl Drop for Dm {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            t.join().unwrap();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn scratch(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("vireo-qmp-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A device model as libxl starts it on domain 2, serving QMP in its own thread.
fn start(tag: &str) -> Dm {
    let dir = scratch(tag);
    let cmd = dir.join("qmp-libxl-2");
    let stat = dir.join("qmp-libxenstat-2");
    let argv = [
        "-xen-domid".to_string(),
        "2".into(),
        "-chardev".into(),
        format!(
            "socket,id=libxl-cmd,path={},server=on,wait=off",
            cmd.display()
        ),
        "-mon".into(),
        "chardev=libxl-cmd,mode=control".into(),
        "-chardev".into(),
        format!(
            "socket,id=libxenstat-cmd,path={},server=on,wait=off",
            stat.display()
        ),
        "-mon".into(),
        "chardev=libxenstat-cmd,mode=control".into(),
        "-nodefaults".into(),
        "-name".into(),
        "hvmreal".into(),
        "-serial".into(),
        "file:/job/results/hvmreal-serial.log".into(),
        "-device".into(),
        "VGA,vgamem_mb=16".into(),
        "-machine".into(),
        "xenfv,suppress-vmdesc=on".into(),
        "-m".into(),
        "56".into(),
    ];
    let cfg = DmConfig::parse(&argv).unwrap();
    let mut server = QmpServer::bind(&cfg.qmp, ServerInfo::from_config(&cfg)).unwrap();
    let shared = Arc::new(Mutex::new(Shared {
        blob: b"VIREO-DEVICE-STATE\x00\x01\x02".to_vec(),
        ..Shared::default()
    }));
    let stop = Arc::new(AtomicBool::new(false));
    let quit = Arc::new(AtomicBool::new(false));
    let thread = {
        let (shared, stop, quit) = (shared.clone(), stop.clone(), quit.clone());
        std::thread::spawn(move || {
            let mut poll = mio::Poll::new().unwrap();
            server.register(poll.registry(), mio::Token(3)).unwrap();
            let mut events = mio::Events::with_capacity(16);
            let mut board = Board(shared);
            while !stop.load(Ordering::SeqCst) {
                poll.poll(&mut events, Some(Duration::from_millis(20)))
                    .unwrap();
                if events.iter().any(|e| e.token() == mio::Token(3)) {
                    server.handle_ready(&mut board);
                }
                if server.quit_requested() {
                    quit.store(true, Ordering::SeqCst);
                }
            }
        })
    };
    Dm {
        dir,
        shared,
        stop,
        quit,
        thread: Some(thread),
    }
}

struct Client {
    w: UnixStream,
    r: BufReader<UnixStream>,
}

impl Client {
    fn connect(path: &Path) -> Client {
        let s = UnixStream::connect(path).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        Client {
            w: s.try_clone().unwrap(),
            r: BufReader::new(s),
        }
    }

    fn raw(&mut self, text: &str) {
        self.w.write_all(text.as_bytes()).unwrap();
    }

    fn send(&mut self, v: Value) {
        // libxl's framing: compact JSON and CRLF.
        self.raw(&format!("{v}\r\n"));
    }

    /// The next message, events included.
    fn next(&mut self) -> Value {
        let mut line = String::new();
        self.r.read_line(&mut line).unwrap();
        assert!(line.ends_with("\r\n"), "QMP lines end with CRLF: {line:?}");
        serde_json::from_str(&line).unwrap()
    }

    /// The next message that is not an event.
    fn reply(&mut self) -> Value {
        loop {
            let v = self.next();
            if v.get("event").is_none() {
                return v;
            }
        }
    }

    fn execute(&mut self, cmd: &str, id: u64) -> Value {
        self.send(json!({"execute": cmd, "id": id}));
        self.reply()
    }

    fn negotiated(path: &Path) -> Client {
        let mut c = Client::connect(path);
        let g = c.next();
        assert!(g.get("QMP").is_some());
        assert_eq!(
            c.execute("qmp_capabilities", 2020372737),
            json!({"return": {}, "id": 2020372737u64})
        );
        c
    }

    fn at_eof(&mut self) -> bool {
        let mut b = [0u8; 1];
        matches!(self.r.read(&mut b), Ok(0))
    }
}

#[test]
fn libxl_create_conversations_from_the_capture() {
    let dm = start("create");
    let path = dm.sock("qmp-libxl-2");

    // Connection 1: capabilities, then query-chardev (libxl looks for pty serial ports).
    let mut c = Client::connect(&path);
    let greeting = c.next();
    let v = &greeting["QMP"]["version"];
    assert_eq!(v["qemu"], json!({"micro": 0, "minor": 2, "major": 7}));
    assert!(v["package"].as_str().unwrap().starts_with("vireo"));
    assert_eq!(greeting["QMP"]["capabilities"], json!([]));
    c.raw("{\"execute\":\"qmp_capabilities\",\"id\":2020372737}\r\n");
    assert_eq!(c.next(), json!({"return": {}, "id": 2020372737u64}));
    c.raw("{\"execute\":\"query-chardev\",\"id\":2020372736}\r\n");
    let r = c.next();
    assert_eq!(r["id"], json!(2020372736u64));
    let list = r["return"].as_array().unwrap();
    let find = |label: &str| {
        list.iter()
            .find(|e| e["label"] == label)
            .unwrap_or_else(|| panic!("no {label} in {list:?}"))
            .clone()
    };
    assert_eq!(
        find("libxl-cmd")["filename"],
        json!(format!("unix:{},server=on", path.display()))
    );
    assert!(
        find("libxenstat-cmd")["filename"]
            .as_str()
            .unwrap()
            .starts_with("unix:")
    );
    // A file serial port is not a pty: libxl writes no serial tty key for it.
    assert_eq!(find("serial0")["filename"], json!("file"));
    assert_eq!(find("serial0")["frontend-open"], json!(true));
    drop(c);

    // Connection 2: capabilities, then cont, which unpauses the guest.
    let mut c = Client::negotiated(&path);
    c.raw("{\"execute\":\"cont\",\"id\":2020372736}\r\n");
    let first = c.next();
    assert_eq!(
        first["event"],
        json!("RESUME"),
        "QEMU announces RESUME before the reply"
    );
    assert!(first["timestamp"]["seconds"].as_u64().unwrap() > 0);
    assert_eq!(c.next(), json!({"return": {}, "id": 2020372736u64}));
    assert_eq!(dm.shared.lock().unwrap().calls, ["resume"]);
}

#[test]
fn commands_before_negotiation_are_refused() {
    let dm = start("nego");
    let mut c = Client::connect(&dm.sock("qmp-libxl-2"));
    c.next();
    let r = c.execute("cont", 1);
    assert_eq!(r["error"]["class"], json!("CommandNotFound"));
    assert!(
        r["error"]["desc"]
            .as_str()
            .unwrap()
            .contains("qmp_capabilities")
    );
    assert_eq!(r["id"], json!(1));
    assert!(dm.shared.lock().unwrap().calls.is_empty());
    // Asking for a capability we do not offer fails and leaves the connection unnegotiated.
    c.send(json!({"execute": "qmp_capabilities", "arguments": {"enable": ["oob"]}, "id": 2}));
    let r = c.reply();
    assert_eq!(r["error"]["class"], json!("GenericError"));
    assert_eq!(
        c.execute("qmp_capabilities", 3),
        json!({"return": {}, "id": 3})
    );
    let r = c.execute("qmp_capabilities", 4);
    assert_eq!(r["error"]["class"], json!("CommandNotFound"));
}

#[test]
fn status_follows_stop_and_cont() {
    let dm = start("status");
    let mut c = Client::negotiated(&dm.sock("qmp-libxl-2"));
    let r = c.execute("query-status", 1);
    assert_eq!(
        r["return"],
        json!({"status": "prelaunch", "running": false, "singlestep": false})
    );
    c.execute("cont", 2);
    assert_eq!(
        c.execute("query-status", 3)["return"]["status"],
        json!("running")
    );
    assert_eq!(
        c.execute("query-status", 3)["return"]["running"],
        json!(true)
    );
    c.send(json!({"execute": "stop", "id": 4}));
    assert_eq!(c.next()["event"], json!("STOP"));
    assert_eq!(c.next(), json!({"return": {}, "id": 4}));
    assert_eq!(
        c.execute("query-status", 5)["return"]["status"],
        json!("paused")
    );
}

#[test]
fn malformed_json_gets_an_error_and_the_connection_is_kept() {
    let dm = start("badjson");
    let mut c = Client::negotiated(&dm.sock("qmp-libxl-2"));
    c.raw("{\"execute\": }\r\n");
    let r = c.next();
    assert_eq!(r["error"]["class"], json!("GenericError"));
    assert!(
        r["error"]["desc"]
            .as_str()
            .unwrap()
            .contains("JSON parse error")
    );
    assert!(r.get("id").is_none());
    c.raw("\u{1}\u{2} garbage\n");
    assert_eq!(c.next()["error"]["class"], json!("GenericError"));
    // Shapes that are JSON but not commands.
    for (input, want) in [
        ("[1, 2]", "must be a JSON object"),
        ("{\"id\": 7}", "lacks member 'execute'"),
        ("{\"execute\": 5}", "'execute' must be a string"),
        (
            "{\"execute\": \"cont\", \"arguments\": []}",
            "'arguments' must be an object",
        ),
        (
            "{\"execute\": \"cont\", \"bogus\": 1}",
            "'bogus' is unexpected",
        ),
    ] {
        c.raw(&format!("{input}\r\n"));
        let r = c.next();
        assert_eq!(r["error"]["class"], json!("GenericError"), "{input}");
        assert!(
            r["error"]["desc"].as_str().unwrap().contains(want),
            "{input}: {r}"
        );
    }
    // A command split across writes, and two commands in one write.
    c.raw("{\"execute\": \"query-st");
    std::thread::sleep(Duration::from_millis(50));
    c.raw("atus\", \"id\": \"a\"}\r\n{\"execute\": \"query-name\", \"id\": [1]}\r\n");
    assert_eq!(c.next()["id"], json!("a"));
    assert_eq!(c.next(), json!({"return": {"name": "hvmreal"}, "id": [1]}));
    // Still serving.
    assert_eq!(c.execute("query-status", 9)["id"], json!(9));
}

#[test]
fn unknown_commands_and_bad_arguments() {
    let dm = start("unknown");
    let mut c = Client::negotiated(&dm.sock("qmp-libxl-2"));
    let r = c.execute("device_add", 11);
    assert_eq!(
        r,
        json!({"error": {"class": "CommandNotFound", "desc": "The command device_add has not been found"}, "id": 11})
    );
    let r = c.execute("human-monitor-command", 12);
    assert_eq!(r["error"]["class"], json!("CommandNotFound"));
    let r = c.execute("xen-save-devices-state", 13);
    assert_eq!(r["error"]["desc"], json!("Parameter 'filename' is missing"));
    c.send(json!({"execute": "xen-save-devices-state", "arguments": {"filename": 5}, "id": 14}));
    assert_eq!(
        c.reply()["error"]["desc"],
        json!("Invalid parameter type for 'filename', expected: string")
    );
    c.send(json!({"execute": "cont", "arguments": {"force": true}, "id": 15}));
    assert_eq!(
        c.reply()["error"]["desc"],
        json!("Parameter 'force' is unexpected")
    );
    let r = c.execute("add-fd", 16);
    assert!(r["error"]["desc"].as_str().unwrap().contains("SCM_RIGHTS"));
    dm.shared.lock().unwrap().refuse_dirty_log = true;
    c.send(json!({"execute": "xen-set-global-dirty-log", "arguments": {"enable": true}, "id": 17}));
    let r = c.reply();
    assert_eq!(r["error"]["class"], json!("GenericError"));
    assert!(
        r["error"]["desc"]
            .as_str()
            .unwrap()
            .contains("not available")
    );
    c.send(json!({"execute": "xen-set-global-dirty-log", "arguments": {}, "id": 17}));
    assert_eq!(
        c.reply()["error"]["desc"],
        json!("Parameter 'enable' is missing")
    );
    assert_eq!(
        c.execute("query-vnc", 18)["return"],
        json!({"enabled": false})
    );
    // libxl asks this before every save (captured on the testbed: without it `xl save` fails).
    let cpus = c.execute("query-cpus-fast", 22)["return"].clone();
    assert_eq!(cpus.as_array().unwrap().len(), 1);
    assert_eq!(cpus[0]["cpu-index"], json!(0));
    let v = c.execute("query-version", 19);
    assert_eq!(v["return"]["qemu"]["major"], json!(7));
    let cmds = c.execute("query-commands", 20);
    assert!(
        cmds["return"]
            .as_array()
            .unwrap()
            .contains(&json!({"name": "xen-save-devices-state"}))
    );
    c.send(json!({"execute": "query-command-line-options", "arguments": {"option": "run-with"}, "id": 21}));
    assert_eq!(c.reply()["return"][0]["option"], json!("run-with"));
}

#[test]
fn save_and_load_device_state_by_path() {
    let dm = start("savepath");
    let mut c = Client::negotiated(&dm.sock("qmp-libxl-2"));
    let file = dm.dir.join("qemu-save.2");
    c.execute("stop", 1);
    c.send(json!({"execute": "xen-save-devices-state", "arguments": {"filename": file, "live": false}, "id": 2}));
    assert_eq!(c.reply(), json!({"return": {}, "id": 2}));
    assert_eq!(
        std::fs::read(&file).unwrap(),
        b"VIREO-DEVICE-STATE\x00\x01\x02"
    );

    std::fs::write(&file, b"blob-from-libxl").unwrap();
    c.send(json!({"execute": "xen-load-devices-state", "arguments": {"filename": file}, "id": 3}));
    assert_eq!(c.reply(), json!({"return": {}, "id": 3}));
    dm.shared.lock().unwrap().fail_load = true;
    c.send(json!({"execute": "xen-load-devices-state", "arguments": {"filename": file}, "id": 4}));
    let r = c.reply();
    assert_eq!(r["error"]["class"], json!("GenericError"));
    assert!(
        r["error"]["desc"]
            .as_str()
            .unwrap()
            .contains("bad device state version")
    );
    c.send(json!({"execute": "xen-load-devices-state", "arguments": {"filename": dm.dir.join("missing")}, "id": 5}));
    assert!(
        c.reply()["error"]["desc"]
            .as_str()
            .unwrap()
            .contains("missing")
    );
    assert_eq!(
        dm.shared.lock().unwrap().calls,
        [
            "pause",
            "save live=false",
            "load blob-from-libxl",
            "load blob-from-libxl"
        ]
    );
}

#[test]
fn save_to_a_descriptor_passed_with_add_fd_as_libxl_does() {
    let dm = start("savefd");
    let mut c = Client::negotiated(&dm.sock("qmp-libxl-2"));
    let target = dm.dir.join("qemu-save.2");
    let f = std::fs::File::create(&target).unwrap();

    // add-fd with the descriptor as SCM_RIGHTS on the same message.
    let msg = format!("{}\r\n", json!({"execute": "add-fd", "id": 30}));
    let mut space = [MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let mut cmsg = rustix::net::SendAncillaryBuffer::new(&mut space);
    let fds = [f.as_fd()];
    assert!(cmsg.push(rustix::net::SendAncillaryMessage::ScmRights(&fds)));
    rustix::net::sendmsg(
        &c.w,
        &[std::io::IoSlice::new(msg.as_bytes())],
        &mut cmsg,
        rustix::net::SendFlags::empty(),
    )
    .unwrap();
    drop(f);
    let r = c.reply();
    assert_eq!(r["id"], json!(30));
    let set = r["return"]["fdset-id"].as_i64().unwrap();
    assert!(r["return"]["fd"].as_i64().unwrap() >= 0);

    let sets = c.execute("query-fdsets", 31);
    assert_eq!(sets["return"][0]["fdset-id"], json!(set));

    c.send(json!({"execute": "xen-save-devices-state",
                  "arguments": {"filename": format!("/dev/fdset/{set}"), "live": true}, "id": 32}));
    assert_eq!(c.reply(), json!({"return": {}, "id": 32}));
    assert_eq!(
        std::fs::read(&target).unwrap(),
        b"VIREO-DEVICE-STATE\x00\x01\x02"
    );
    assert!(
        dm.shared
            .lock()
            .unwrap()
            .calls
            .contains(&"save live=true".to_string())
    );

    c.send(json!({"execute": "remove-fd", "arguments": {"fdset-id": set}, "id": 33}));
    assert_eq!(c.reply(), json!({"return": {}, "id": 33}));
    assert_eq!(c.execute("query-fdsets", 34)["return"], json!([]));
    c.send(json!({"execute": "xen-save-devices-state",
                  "arguments": {"filename": format!("/dev/fdset/{set}")}, "id": 35}));
    assert_eq!(c.reply()["error"]["class"], json!("GenericError"));
}

#[test]
fn two_clients_at_once_and_events_reach_only_negotiated_ones() {
    let dm = start("two");
    let mut a = Client::negotiated(&dm.sock("qmp-libxl-2"));
    let mut b = Client::negotiated(&dm.sock("qmp-libxenstat-2"));
    let mut c = Client::negotiated(&dm.sock("qmp-libxl-2"));
    let mut fresh = Client::connect(&dm.sock("qmp-libxl-2"));
    fresh.next();

    // Interleaved requests on three connections.
    a.send(json!({"execute": "query-status", "id": "a1"}));
    b.send(json!({"execute": "query-status", "id": "b1"}));
    c.send(json!({"execute": "query-name", "id": "c1"}));
    assert_eq!(b.reply()["id"], json!("b1"));
    assert_eq!(c.reply()["id"], json!("c1"));
    assert_eq!(a.reply()["id"], json!("a1"));

    a.send(json!({"execute": "stop", "id": "a2"}));
    assert_eq!(a.next()["event"], json!("STOP"));
    assert_eq!(a.next()["id"], json!("a2"));
    assert_eq!(b.next()["event"], json!("STOP"));
    assert_eq!(c.next()["event"], json!("STOP"));
    // The un-negotiated client got nothing: its next message is the reply to this.
    let r = fresh.execute("qmp_capabilities", 1);
    assert_eq!(r, json!({"return": {}, "id": 1}));

    // A client leaving does not disturb the others.
    drop(b);
    assert_eq!(
        a.execute("query-status", 9)["return"]["status"],
        json!("paused")
    );
}

#[test]
fn quit_replies_then_announces_shutdown() {
    let dm = start("quit");
    let mut c = Client::negotiated(&dm.sock("qmp-libxl-2"));
    let mut other = Client::negotiated(&dm.sock("qmp-libxenstat-2"));
    c.send(json!({"execute": "quit", "id": 40}));
    assert_eq!(c.next(), json!({"return": {}, "id": 40}));
    let ev = c.next();
    assert_eq!(ev["event"], json!("SHUTDOWN"));
    assert_eq!(
        ev["data"],
        json!({"guest": false, "reason": "host-qmp-quit"})
    );
    assert_eq!(other.next()["event"], json!("SHUTDOWN"));
    assert_eq!(dm.shared.lock().unwrap().calls, ["quit"]);
    let start = std::time::Instant::now();
    while !dm.quit.load(Ordering::SeqCst) {
        assert!(start.elapsed() < Duration::from_secs(5));
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn socket_files_are_replaced_when_stale_removed_on_drop_and_never_clobbered() {
    let dir = scratch("files");
    let p = dir.join("qmp-libxl-9");
    // A stale socket from an earlier run.
    drop(std::os::unix::net::UnixListener::bind(&p).unwrap());
    let sockets = vec![QmpSocket {
        id: "libxl-cmd".into(),
        listen: QmpListen::Path(p.clone()),
    }];
    let server = QmpServer::bind(&sockets, ServerInfo::default()).unwrap();
    assert_eq!(server.paths(), vec![p.clone()]);
    drop(server);
    assert!(!p.exists(), "the socket file is removed on drop");

    std::fs::write(&p, b"not a socket").unwrap();
    let e = QmpServer::bind(&sockets, ServerInfo::default())
        .err()
        .unwrap();
    assert!(matches!(e, QmpServerError::NotASocket { .. }), "{e}");
    assert_eq!(std::fs::read(&p).unwrap(), b"not a socket");

    let e = QmpServer::bind(
        &[QmpSocket {
            id: "libxl-cmd".into(),
            listen: QmpListen::Fd(17),
        }],
        ServerInfo::default(),
    )
    .err()
    .unwrap();
    assert!(e.to_string().contains("dm_restrict"), "{e}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_client_that_vanishes_mid_command_is_dropped_cleanly() {
    let dm = start("vanish");
    {
        let mut c = Client::negotiated(&dm.sock("qmp-libxl-2"));
        c.raw("{\"execute\": \"query-stat");
    }
    let mut c = Client::negotiated(&dm.sock("qmp-libxl-2"));
    assert_eq!(c.execute("query-status", 1)["id"], json!(1));
    c.w.shutdown(std::net::Shutdown::Write).unwrap();
    assert!(c.at_eof());
}

/// `xl save` as libxl 4.17 drove Vireo's QMP server on the testbed (`xl -vvv save` log):
/// query-cpus-fast; xen-set-global-dirty-log on (its own connection); stop, add-fd with the
/// save file's descriptor, xen-save-devices-state to `/dev/fdset/<id>` (one connection);
/// xen-set-global-dirty-log off.
#[test]
fn xl_save_sequence_seen_on_the_testbed() {
    let dm = start("xlsave");
    let path = dm.sock("qmp-libxl-2");
    dm.shared.lock().unwrap().state = Some(RunState::Running);

    let mut c = Client::negotiated(&path);
    assert_eq!(
        c.execute("query-cpus-fast", 2020372736)["return"][0]["cpu-index"],
        json!(0)
    );
    drop(c);

    let mut c = Client::negotiated(&path);
    c.send(json!({"execute": "xen-set-global-dirty-log", "arguments": {"enable": true}, "id": 2020372736}));
    assert_eq!(c.reply(), json!({"return": {}, "id": 2020372736u64}));
    drop(c);

    let target = dm.dir.join("qemu-save.2");
    let f = std::fs::File::create(&target).unwrap();
    let mut c = Client::negotiated(&path);
    c.send(json!({"execute": "stop", "id": 2020372736}));
    assert_eq!(c.reply(), json!({"return": {}, "id": 2020372736u64}));
    let msg = format!("{}\r\n", json!({"execute": "add-fd", "id": 2020372735}));
    let mut space = [MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let mut cmsg = rustix::net::SendAncillaryBuffer::new(&mut space);
    let fds = [f.as_fd()];
    assert!(cmsg.push(rustix::net::SendAncillaryMessage::ScmRights(&fds)));
    rustix::net::sendmsg(
        &c.w,
        &[std::io::IoSlice::new(msg.as_bytes())],
        &mut cmsg,
        rustix::net::SendFlags::empty(),
    )
    .unwrap();
    drop(f);
    let set = c.reply()["return"]["fdset-id"].as_i64().unwrap();
    c.send(json!({"execute": "xen-save-devices-state",
                  "arguments": {"live": false, "filename": format!("/dev/fdset/{set}")},
                  "id": 2020372734}));
    assert_eq!(c.reply(), json!({"return": {}, "id": 2020372734u64}));
    drop(c);

    let mut c = Client::negotiated(&path);
    c.send(json!({"execute": "xen-set-global-dirty-log", "arguments": {"enable": false}, "id": 2020372736}));
    assert_eq!(c.reply(), json!({"return": {}, "id": 2020372736u64}));

    assert_eq!(
        std::fs::read(&target).unwrap(),
        b"VIREO-DEVICE-STATE\x00\x01\x02"
    );
    assert_eq!(
        dm.shared.lock().unwrap().calls,
        [
            "dirty-log true",
            "pause",
            "save live=false",
            "dirty-log false"
        ]
    );
}
