//! `-display curses`: SeaBIOS's text output and a boot sector's coloured cells reach the
//! terminal as ANSI sequences, and a key typed on the terminal reaches the guest through the
//! PS/2 keyboard and the BIOS's INT 16h.

mod support;

use std::time::Duration;
use support::{Guest, boot_sector, fetch};

#[test]
fn text_screen_on_the_terminal_and_keys_to_the_guest_keyboard() {
    fetch("seabios");
    #[rustfmt::skip]
    let code = [
        0xFB,                               // sti
        0xB8, 0x00, 0xB8, 0x8E, 0xC0,       // mov ax, 0xB800; mov es, ax
        0x30, 0xE4, 0xCD, 0x16,             // xor ah, ah; int 16h: wait for a key
        0xB4, 0x1E,                         // mov ah, 0x1E: yellow on blue
        0x26, 0xA3, 0x00, 0x00,             // mov [es:0], ax: the key, top left
        0x26, 0xC7, 0x06, 0x02, 0x00, b'!', 0x1E, // mov word [es:2], '!' yellow on blue
        0xB9, 0x08, 0x00,                   // mov cx, 8
        0xF4, 0xE2, 0xFD,                   // hlt; loop: ~0.4 s of timer ticks to be drawn
        0xBA, 0xF9, 0x0C, 0xB0, 0x06, 0xEE, // reset through 0xCF9: -no-reboot ends the run
        0xF4,
    ];
    let image = boot_sector("curses-key.img", &code);
    let drive = format!("file={},format=raw,snapshot=on", image.display());
    let mut guest = Guest::start([
        "run",
        "-m",
        "32",
        "-display",
        "curses",
        "-no-reboot",
        "-drive",
        &drive,
    ]);
    guest.expect("Booting from Hard Disk", Duration::from_secs(60));
    // SeaBIOS has handed over: the boot sector is the one reading the keyboard now.
    std::thread::sleep(Duration::from_millis(300));
    guest.send("q");
    // Bright yellow (VGA 14) on blue (VGA 1) is ANSI 93 on 44.
    guest.expect("\x1b[0;93;44mq!", Duration::from_secs(30));
    let status = guest.wait_exit(Duration::from_secs(30));
    assert!(status.success(), "exit status {status}");
    // The terminal gets its own screen back.
    assert!(
        guest.console().ends_with("\x1b[?1049l"),
        "{:?}",
        guest.console()
    );
}
