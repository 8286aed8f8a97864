; Multiboot test kernel, ELF form: nasm -f elf32, then ld -m elf_i386 -T elf.ld. The header
; asks for page-aligned modules and memory information (flags 0x3), no address fields: the
; loader must take the addresses from the program headers.

%define MB_FLAGS 0x00000003

bits 32
section .multiboot
align 4
    dd 0x1BADB002
    dd MB_FLAGS
    dd -(0x1BADB002 + MB_FLAGS)

section .text
global start
%include "report.inc"

section .bss
align 16
bss_probe: resd 64
    resb 4096
stack_top:
