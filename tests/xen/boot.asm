; Vireo Xen end-to-end boot image (nasm, 16-bit real mode). Build: tests/xen/build-boot-image.sh.
;
; SeaBIOS loads sector 0 at 0000:7C00 from the first IDE disk and jumps to it. That sector:
;   1. prints "VIREO-E2E: boot sector running" on port 0xE9 (Xen shows it as a (dN) line in
;      `xl dmesg`; QEMU's -debugcon captures it) and on COM1 (16550 set to 8N1, divisor 1);
;   2. finds the PIIX3 IDE function at 00:01.1 with PCI configuration mechanism #1 (class 0101),
;      reads its bus-master base (BAR4), turns on I/O decoding and bus mastering, and reads
;      LBA 1..PAYLOAD_SECTORS of the primary master with READ DMA (0xC8, LBA28, legacy ports
;      0x1F0-0x1F7/0x3F6) through a one-entry PRD table into 0x7E00, polling the bus-master status
;      (interrupt bit set, active bit clear) and the drive (BSY clear), then stops the engine;
;   3. checks that sector 1 starts with its signature and jumps into the code it just loaded (so the
;      DMA'd bytes are executed too: this file assembles as one contiguous program and the payload
;      calls the boot sector's routines). That code checks the sequence word at the end of every
;      loaded sector and prints "VIREO-E2E: DMA read OK <sector 1's text>";
;   4. default build: powers off through the PIIX4 PM at 00:01.3: PMBA (config 0x40), PM1a_CNT =
;      PMBA+4, a 16-bit write of SLP_TYP 0 (S5 in both Xen's libacpi DSDT and QEMU's) | SLP_EN;
;      if still running ~2 s later it prints "VIREO-E2E: poweroff failed" and halts;
;      built with -DWAIT: prints "VIREO-E2E: heartbeat XXXX" (hex counter) about once a second
;      forever instead, for xl save / xl restore (the counter must carry on across a restore).
; Any failure prints "VIREO-E2E: FAIL <reason>" and halts with interrupts on (see the err_ strings).
;
; Only plain BIOS state is relied on: the tick counter at 0040:006C, advanced by the BIOS IRQ 0
; handler (~18.2 Hz). Every wait is bounded by ticks, so a missing device gives a FAIL line, not a hang.

bits 16
org 0x7C00

PAYLOAD_SECTORS equ 16                  ; sectors loaded by DMA (LBA 1..16)
PAYLOAD_BYTES   equ PAYLOAD_SECTORS * 512
DMA_BUF         equ 0x7E00              ; physical; with PAYLOAD_BYTES it stays below the 64 KiB line
SEQ_BASE        equ 0x5600              ; sector k ends with the word SEQ_BASE + k

COM1            equ 0x3F8
DEBUG_PORT      equ 0xE9
PCI_ADDR        equ 0xCF8
PCI_DATA        equ 0xCFC
IDE_CFG         equ 0x80000900          ; bus 0, device 1, function 1
PM_CFG          equ 0x80000B00          ; bus 0, device 1, function 3
ATA_DATA        equ 0x1F0
ATA_STATUS      equ 0x1F7
ATA_CTRL        equ 0x3F6
BIOS_TICKS      equ 0x046C              ; dword, ~18.2 Hz
TIMEOUT_TICKS   equ 91                  ; ~5 s

start:
        cli
        xor     ax, ax
        mov     ds, ax
        mov     es, ax
        mov     ss, ax
        mov     sp, 0x7C00              ; (CS may be 0 or 0x07C0: only relative jumps are used)
        sti
        cld

        ; 16550: no interrupts, DLAB, divisor 1 (115200 baud), 8N1, FIFOs on, DTR|RTS
        mov     si, uart_init
        mov     cx, uart_init_len / 2
        mov     dh, COM1 >> 8
.uart:
        lodsw                           ; AL = port low byte, AH = value
        mov     dl, al
        mov     al, ah
        out     dx, al
        loop    .uart

        mov     si, msg_running
        call    say

        ; ---- PIIX3 IDE at 00:01.1 ----
        mov     si, err_noide
        mov     eax, IDE_CFG + 0x08     ; class code in bits 31:8
        call    pci_read
        shr     eax, 16
        cmp     ax, 0x0101              ; mass storage / IDE
        jne     fail
        mov     si, err_bar4
        mov     eax, IDE_CFG + 0x20     ; BAR4: bus-master I/O base
        call    pci_read
        and     ax, 0xFFFC              ; (the low byte alone may well be 0: Xen's hvmloader gives 0xC101)
        jz      fail
        mov     [bmiba], ax
        mov     eax, IDE_CFG + 0x04     ; command register: I/O space + bus master
        call    pci_read
        or      al, 0x05
        out     dx, ax                  ; 16-bit: leaves the RW1C status word alone

        ; Clear the destination so stale memory can never pass the checks.
        mov     di, DMA_BUF
        xor     ax, ax
        mov     cx, PAYLOAD_BYTES / 2
        rep     stosw

        ; Drive present (a floating bus reads 0xFF) and not busy.
        mov     si, err_drive
        mov     dx, ATA_STATUS
        in      al, dx
        inc     al
        jz      fail
        call    wait_start
.idle:
        in      al, dx
        test    al, 0x80
        jz      .idle_ok
        call    timed_out
        jmp     .idle
.idle_ok:

        ; Bus master stopped, interrupt/error bits cleared, PRD table loaded.
        call    bm_stop
        add     dl, 2
        mov     eax, prd_table
        out     dx, eax

        ; READ DMA, LBA28, primary master. nIEN stays clear: the PIIX takes its bus-master
        ; interrupt bit from the drive's INTRQ.
        mov     dx, ATA_CTRL
        xor     al, al
        out     dx, al
        mov     si, ata_cmd
        mov     cx, ata_cmd_len
        mov     dx, ATA_DATA + 1
.ata:
        lodsb                           ; features, count, LBA 7:0, 15:8, 23:16, device, command
        out     dx, al
        inc     dx
        loop    .ata

        mov     dx, [bmiba]
        mov     al, 0x09                ; start, direction = write to memory
        out     dx, al

        ; Poll: interrupt bit set, engine no longer active, drive not busy.
        mov     si, err_timeout
        call    wait_start
.poll:
        mov     dx, [bmiba]
        add     dl, 2
        in      al, dx
        test    al, 0x02
        jnz     .bm_error
        and     al, 0x05
        cmp     al, 0x04
        jne     .not_yet
        mov     dx, ATA_STATUS
        in      al, dx
        test    al, 0x80
        jz      .done
.not_yet:
        call    timed_out
        jmp     .poll
.bm_error:
        mov     si, err_bmerr
        jmp     fail
.done:
        call    bm_stop
        mov     si, err_ata
        mov     dx, ATA_STATUS          ; reading status also acknowledges INTRQ
        in      al, dx
        test    al, 0x21                ; ERR or DF
        jnz     fail

        ; Sector 1 must start with the signature before its code is trusted; that code checks
        ; the rest (fail_data) and prints the verdict.
        mov     si, DMA_BUF
        mov     di, msg_prefix          ; sector 1 starts "VIREO-E2E" too
        mov     cx, 9
        repe    cmpsb
        jne     fail_data
        jmp     payload_entry

fail_data:
        mov     si, err_sig

; SI = reason. Prints the FAIL line (stopping the engine first) and halts.
fail:
        push    si
        call    bm_stop
        mov     si, msg_fail
        call    say
        pop     si
        call    puts
        call    newline
; Interrupts stay on: under Xen a hlt with IF clear takes the vCPU down and, with every vCPU down,
; Xen powers the domain off, which would pass for the PM1a poweroff.
halt:
        sti
        hlt
        jmp     halt

; Stop the bus-master engine and clear its interrupt/error bits (RW1C), keeping the
; drive-capable bits. Leaves DX = BMIBA + 2.
bm_stop:
        mov     dx, [bmiba]
        xor     al, al
        out     dx, al
        add     dl, 2
        in      al, dx
        or      al, 0x06
        out     dx, al
        ret

; Start a ~5 s deadline (BX = tick count at start, low word is enough). Keeps DX.
wait_start:
        mov     bx, [BIOS_TICKS]
        ret

; Fails with the reason in SI once the deadline from wait_start has passed. Keeps DX.
timed_out:
        mov     ax, [BIOS_TICKS]
        sub     ax, bx
        cmp     ax, TIMEOUT_TICKS
        jae     fail
        ret

; EAX = config address (enable bit set, register dword aligned) -> EAX = dword, and
; DX = PCI_DATA with the address still selected so a write can follow.
pci_read:
        mov     dx, PCI_ADDR
        out     dx, eax
        mov     dl, PCI_DATA & 0xFF
        in      eax, dx
        ret

newline:
        mov     al, 10
        jmp     putc

; Print "VIREO-E2E: " then the string at DS:SI.
say:
        push    si
        mov     si, msg_prefix
        call    puts
        pop     si
; Print the NUL-terminated string at DS:SI.
puts:
        lodsb
        test    al, al
        jz      .end
        call    putc
        jmp     puts
.end:
        ret

; AL -> port 0xE9 and COM1 ('\n' goes out as "\r\n" on the UART only). Keeps all registers.
putc:
        pusha
        out     DEBUG_PORT, al
        mov     ah, al
        cmp     al, 10
        jne     .last
        mov     al, 13
        call    uart_out
.last:
        mov     al, ah
        call    uart_out
        popa
        ret

; AL -> COM1 THR once THRE is set. The wait is bounded: without a UART reads give 0xFF anyway.
uart_out:
        mov     dx, COM1 + 5
        mov     cx, 0x4000
        mov     bl, al
.thre:
        in      al, dx
        test    al, 0x20
        loopz   .thre
        mov     dl, COM1 & 0xFF
        mov     al, bl
        out     dx, al
        ret

uart_init:      db 0xF9, 0x00, 0xFB, 0x80, 0xF8, 0x01, 0xF9, 0x00, 0xFB, 0x03, 0xFA, 0x07, 0xFC, 0x03
uart_init_len   equ $ - uart_init
ata_cmd:        db 0, PAYLOAD_SECTORS, 1, 0, 0, 0xE0, 0xC8
ata_cmd_len     equ $ - ata_cmd
msg_prefix:     db "VIREO-E2E: ", 0
msg_running:    db "boot sector running", 10, 0
msg_fail:       db "FAIL ", 0
err_noide:      db "ide", 0                 ; no IDE controller (class 0101) at 00:01.1
err_bar4:       db "bar4", 0                ; bus-master BAR unassigned
err_drive:      db "drive", 0               ; status port floats (0xFF)
err_bmerr:      db "bm-error", 0            ; bus-master status error bit
err_timeout:    db "timeout", 0             ; BSY or DMA did not finish in ~5 s
err_ata:        db "ata-error", 0           ; ERR/DF after the transfer
err_sig:        db "data", 0                ; signature or sector order wrong

bmiba:          dw 0
        align 4
prd_table:      dd DMA_BUF, 0x80000000 | PAYLOAD_BYTES  ; one PRD: base, byte count + end of table

        times 510 - ($ - $$) db 0
        dw 0xAA55

; ---- LBA 1 .. PAYLOAD_SECTORS: what the DMA must deliver, at 0x7E00 ----
sector_1:
        db "VIREO-E2E-PAYLOAD sectors=16"
%ifdef WAIT
        db " wait"
%endif
        db 0

payload_entry:
        mov     bx, DMA_BUF + 510       ; every sector ends with its own sequence word
        mov     ax, SEQ_BASE + 1
.seq:
        cmp     [bx], ax
        jne     fail_data
        add     bx, 512
        inc     ax
        cmp     ax, SEQ_BASE + PAYLOAD_SECTORS + 1
        jb      .seq
        mov     si, msg_ok
        call    say
        mov     si, DMA_BUF             ; sector 1's own text, up to its NUL
        call    puts
        call    newline

%ifdef WAIT
        ; Heartbeat forever, about once a second.
        xor     bp, bp
.beat:
        mov     ebx, [BIOS_TICKS]
.tick:
        hlt                             ; woken by IRQ 0 at the latest
        mov     eax, [BIOS_TICKS]
        sub     eax, ebx
        cmp     eax, 18
        jb      .tick
        inc     bp
        mov     si, msg_beat
        call    say
        mov     cx, 4
.hex:
        rol     bp, 4
        mov     ax, bp
        and     al, 0x0F
        add     al, '0'
        cmp     al, '9'
        jbe     .digit
        add     al, 'A' - '0' - 10
.digit:
        call    putc
        loop    .hex
        call    newline
        jmp     .beat
%else
        ; PIIX4 PM at 00:01.3: make sure the PM I/O space is on, then S5 through PM1a_CNT.
        mov     eax, PM_CFG + 0x80      ; PMREGMISC bit 0: PM I/O space enable
        call    pci_read
        or      al, 0x01
        out     dx, al                  ; byte write to 0x80, address still selected
        mov     eax, PM_CFG + 0x40      ; PMBA, base in bits 15:6
        call    pci_read
        and     ax, 0xFFC0
        jz      .failed
        add     ax, 4                   ; PM1a_CNT
        mov     dx, ax
        mov     ax, 0x2000              ; SLP_TYP = 0 (S5), SLP_EN
        out     dx, ax
        mov     ebx, [BIOS_TICKS]       ; give the device model ~2 s to act
.wait:
        hlt
        mov     eax, [BIOS_TICKS]
        sub     eax, ebx
        cmp     eax, 36
        jb      .wait
.failed:
        mov     si, msg_poweroff_failed
        call    say
        jmp     halt
%endif

msg_ok:         db "DMA read OK ", 0
msg_beat:       db "heartbeat ", 0
msg_poweroff_failed: db "poweroff failed", 10, 0

%if ($ - sector_1) > 510
%error "payload code does not fit in sector 1"
%endif
        times 510 - ($ - sector_1) db 0
        dw SEQ_BASE + 1

%assign k 2
%rep PAYLOAD_SECTORS - 1
sector_ %+ k:
        times 510 db (k * 37) & 0xFF
        dw SEQ_BASE + k
%assign k k + 1
%endrep

; Pad to 64 KiB: a disk image a BIOS and a device model both take without questions.
        times 65536 - ($ - $$) db 0
