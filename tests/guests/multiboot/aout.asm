; Multiboot test kernel, a.out-kludge form: nasm -f bin. Flag 16 makes the loader use the
; header's address fields: the file is loaded at 1 MiB up to load_end, then BSS to bss_end.

%define MB_FLAGS 0x00010003

bits 32
org 0x100000
mb_header:
    dd 0x1BADB002
    dd MB_FLAGS
    dd -(0x1BADB002 + MB_FLAGS)
    dd mb_header            ; header_addr
    dd mb_header            ; load_addr: the file starts here
    dd load_end             ; load_end_addr
    dd bss_end              ; bss_end_addr
    dd start                ; entry_addr

%include "report.inc"

align 4
load_end:

absolute load_end
alignb 16
bss_probe: resd 64
    resb 4096
stack_top:
bss_end:
