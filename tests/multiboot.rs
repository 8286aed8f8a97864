//! Multiboot v1 kernels from `-kernel`: the test kernel (tests/guests/multiboot/, built by
//! `tests/guests/fetch.sh multiboot` with nasm and ld) reports on the debug console what the
//! loader handed over — magic, CPU state, memory sizes, memory map, command line, modules with
//! the sum of their bytes — and exits through the isa-debug-exit port. Its ELF and a.out-kludge
//! builds run with and without firmware; the reports must match what the command line passed.
//! Bad kernels and module lists must be refused with one line before the guest starts.
//!
//! `cargo test --release --test multiboot`

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use support::{fetch, out_dir};

const RAM_MIB: u64 = 48;
/// The test kernel writes 0x2A to the exit port: status (0x2A << 1) | 1.
const KERNEL_DONE: i32 = 85;

fn vireo(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_vireo"))
        .arg("run")
        .args(args)
        // anyhow appends a backtrace to the error when the test runner asks for them.
        .env("RUST_LIB_BACKTRACE", "0")
        .output()
        .expect("run vireo")
}

/// Deterministic bytes that are not all alike, so a misplaced or short copy changes the sum.
fn pattern(len: usize, seed: u32) -> Vec<u8> {
    let mut x = seed;
    (0..len)
        .map(|_| {
            x = x.wrapping_mul(1_103_515_245).wrapping_add(12_345);
            (x >> 16) as u8
        })
        .collect()
}

fn field<'a>(report: &'a str, key: &str) -> Vec<&'a str> {
    report
        .lines()
        .filter_map(|l| l.strip_prefix(key)?.strip_prefix('='))
        .collect()
}

fn hex(s: &str) -> u64 {
    u64::from_str_radix(s, 16).unwrap_or_else(|_| panic!("not hex: {s:?}"))
}

/// Boot `kernel` with two modules (one with arguments, one with a comma in its name) and
/// check the report.
fn boot_and_check(kernel: &Path, firmware: bool) {
    let dir = out_dir();
    let tag = format!(
        "mb-{}-{}",
        kernel.file_name().unwrap().to_string_lossy(),
        if firmware { "seabios" } else { "none" }
    );
    let debugcon = dir.join(format!("{tag}.debugcon"));
    let _ = std::fs::remove_file(&debugcon);
    let mod_a = dir.join("mb-module-a.bin");
    let mod_b = dir.join("mb-module,b.bin");
    let (data_a, data_b) = (pattern(5000, 1), pattern(12_345, 2));
    std::fs::write(&mod_a, &data_a).unwrap();
    std::fs::write(&mod_b, &data_b).unwrap();
    let spec_a = format!("{} first=1 second", mod_a.display());
    let spec_b = mod_b.display().to_string();
    let initrd = format!("{spec_a},{}", spec_b.replace(',', ",,"));
    let append = "console=none answer=42";

    let mut args = vec![
        "-m".to_string(),
        RAM_MIB.to_string(),
        "-display".into(),
        "none".into(),
        "-no-reboot".into(),
        "-max-seconds".into(),
        "60".into(),
        "-debugcon".into(),
        format!("file:{}", debugcon.display()),
        "-kernel".into(),
        kernel.display().to_string(),
        "-initrd".into(),
        initrd,
        "-append".into(),
        append.into(),
    ];
    if !firmware {
        args.extend(["-bios".into(), "none".into()]);
    }
    let out = vireo(&args.iter().map(String::as_str).collect::<Vec<_>>());
    let report = std::fs::read_to_string(&debugcon).unwrap_or_default();
    let context = format!(
        "{tag}: status {:?}\nstderr: {}\nreport:\n{report}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.status.code(), Some(KERNEL_DONE), "{context}");
    assert!(report.lines().any(|l| l == "done"), "{context}");

    let one = |key: &str| {
        let v = field(&report, key);
        assert_eq!(v.len(), 1, "{key}: {context}");
        v[0]
    };
    assert_eq!(hex(one("magic")), 0x2BAD_B002, "{context}");
    assert_eq!(hex(one("cr0")) & 0x8000_0001, 1, "PE on, PG off: {context}");
    assert_eq!(
        hex(one("eflags")) & 0x0002_0200,
        0,
        "IF and VM off: {context}"
    );
    // mem, cmdline, mods, mmap, boot loader name.
    assert_eq!(hex(one("flags")), 0x24D, "{context}");
    assert_eq!(hex(one("mem_lower")), 640, "{context}");
    assert_eq!(hex(one("mem_upper")), (RAM_MIB - 1) * 1024, "{context}");
    assert_eq!(
        one("cmdline"),
        format!("{} {append}", kernel.display()),
        "{context}"
    );
    assert_eq!(one("loader"), "vireo", "{context}");
    assert_eq!(hex(one("bss")), 0, "{context}");

    assert_eq!(hex(one("mods_count")), 2, "{context}");
    let mods = field(&report, "mod");
    let mut previous_end = 0x10_0000;
    for (line, (data, spec)) in mods.iter().zip([(&data_a, &spec_a), (&data_b, &spec_b)]) {
        let (range, rest) = line.split_once(" sum=").unwrap();
        let (start, end) = range.split_once(' ').unwrap();
        let (start, end) = (hex(start), hex(end));
        let (sum, string) = rest.split_once(" string=").unwrap();
        assert_eq!(end - start, data.len() as u64, "{context}");
        assert_eq!(start % 4096, 0, "page-aligned: {context}");
        assert!(start >= previous_end, "overlap: {context}");
        previous_end = end;
        let expected: u32 = data.iter().map(|&b| u32::from(b)).sum();
        assert_eq!(hex(sum), u64::from(expected), "module bytes: {context}");
        assert_eq!(string, spec.as_str(), "{context}");
    }

    // The board's map: low RAM, the VGA window and BIOS area, RAM from 1 MiB, the ROM.
    let rom = if firmware {
        std::fs::metadata("/usr/share/seabios/bios-256k.bin")
            .unwrap()
            .len()
    } else {
        0x1_0000
    };
    let expected = [
        (0, 0xA_0000, 1),
        (0xA_0000, 0x6_0000, 2),
        (0x10_0000, (RAM_MIB << 20) - 0x10_0000, 1),
        ((1 << 32) - rom, rom, 2),
    ];
    let mmap: Vec<(u64, u64, u64)> = field(&report, "mmap")
        .iter()
        .map(|l| {
            let v: Vec<u64> = l.split(' ').map(hex).collect();
            (v[0], v[1], v[2])
        })
        .collect();
    assert_eq!(mmap, expected, "{context}");
}

#[test]
fn elf_and_aout_kludge_kernels_get_what_the_command_line_passed() {
    fetch("seabios");
    let kernels = fetch("multiboot");
    assert_eq!(kernels.len(), 2);
    for kernel in &kernels {
        boot_and_check(kernel, false);
        boot_and_check(kernel, true);
    }
}

/// Run with `args`, expect a one-line error containing `needle` and no guest output.
fn refused(args: &[&str], needle: &str) {
    let debugcon = out_dir().join("mb-refused.debugcon");
    let _ = std::fs::remove_file(&debugcon);
    let dc = format!("file:{}", debugcon.display());
    let mut all = vec!["-m", "32", "-display", "none", "-debugcon", &dc];
    all.extend_from_slice(args);
    let out = vireo(&all);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let context = format!("{args:?}: status {:?}, stderr:\n{stderr}", out.status);
    assert!(!out.status.success(), "{context}");
    assert_ne!(out.status.code(), Some(KERNEL_DONE), "{context}");
    assert_eq!(stderr.trim_end().lines().count(), 1, "one line: {context}");
    assert!(stderr.contains(needle), "{context}");
    assert!(!debugcon.exists(), "the guest started: {context}");
}

fn patched(name: &str, from: &Path, patch: impl FnOnce(&mut Vec<u8>)) -> PathBuf {
    let mut bytes = std::fs::read(from).unwrap();
    patch(&mut bytes);
    let path = out_dir().join(name);
    std::fs::write(&path, bytes).unwrap();
    path
}

fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
}

#[test]
fn bad_kernels_and_module_lists_are_refused_before_the_guest_starts() {
    let kernels = fetch("multiboot");
    let (elf, aout) = (&kernels[0], &kernels[1]);

    let bad_sum = patched("mb-bad-checksum.bin", aout, |b| b[8] ^= 0x01);
    refused(
        &["-bios", "none", "-kernel", bad_sum.to_str().unwrap()],
        "bad checksum",
    );

    // The data segment moved to 48 MiB, past the end of a 32 MiB machine.
    let high = patched("mb-outside-ram.elf", elf, |b| {
        let ph = le32(b, 28) as usize + usize::from(b[42]);
        b[ph + 12..ph + 16].copy_from_slice(&0x300_0000u32.to_le_bytes());
    });
    refused(
        &["-bios", "none", "-kernel", high.to_str().unwrap()],
        "outside RAM",
    );

    refused(
        &[
            "-bios",
            "none",
            "-kernel",
            elf.to_str().unwrap(),
            "-initrd",
            "/nonexistent/vireo-module.bin arg=1",
        ],
        "module /nonexistent/vireo-module.bin",
    );

    refused(&["-bios", "none"], "needs -kernel");

    // A bzImage cut short: Debian's kernel when it has been fetched, else a fabricated one.
    let vmlinuz = support::root().join("target/guests/linux/vmlinuz");
    let truncated = if vmlinuz.exists() {
        patched("truncated-vmlinuz", &vmlinuz, |b| b.truncate(b.len() / 2))
    } else {
        let mut img = vec![0u8; 0x3000];
        img[0x1F1] = 4;
        img[0x1F4..0x1F8].copy_from_slice(&0x1000u32.to_le_bytes()); // 64 KiB of kernel
        img[0x1FE] = 0x55;
        img[0x1FF] = 0xAA;
        img[0x202..0x206].copy_from_slice(b"HdrS");
        img[0x206..0x208].copy_from_slice(&0x20Fu16.to_le_bytes());
        img[0x211] = 1;
        let path = out_dir().join("truncated-bzimage");
        std::fs::write(&path, img).unwrap();
        path
    };
    for firmware in [&["-bios", "none"][..], &[]] {
        let mut args = firmware.to_vec();
        args.extend(["-kernel", truncated.to_str().unwrap()]);
        refused(&args, "truncated bzImage");
    }
}
