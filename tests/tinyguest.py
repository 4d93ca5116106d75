"""A tiny multiboot guest for the QEMU owner's tests: boots in milliseconds under TCG.

It prints ``tinyguest: ready`` on COM1 and ``tinyguest: marker`` on the debug
console (port 0x402), then sleeps in ``hlt`` and wakes on serial interrupts:
each received byte ``c`` is answered with ``got c``; ``q`` prints ``bye`` and
powers the machine off through the ICH9 ACPI PM1a control register (q35).
It needs no kernel image or initramfs, only GNU as and ld (binutils), so the
process-owner tests do not wait for the demo guest.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

READY = "tinyguest: ready"
MARKER = "tinyguest: marker"

_ASM = r"""
    .code32
    .set MB_MAGIC, 0x1BADB002
    .set MB_FLAGS, 0
    .section .multiboot, "a"
    .align 4
    .long MB_MAGIC, MB_FLAGS, -(MB_MAGIC + MB_FLAGS)

    .text
    .globl _start
_start:
    cli
    mov $stack_top, %esp
    /* IDT: every vector -> isr (an EOI and iret). */
    mov $idt, %edi
    mov %cs, %bx
    mov $256, %ecx
1:  mov $isr, %eax
    mov %ax, (%edi)
    mov %bx, 2(%edi)
    movw $0x8E00, 4(%edi)
    shr $16, %eax
    mov %ax, 6(%edi)
    add $8, %edi
    loop 1b
    lidt idtr
    /* PICs: vectors 0x20/0x28, only IRQ4 (COM1) unmasked. */
    mov $0x11, %al
    out %al, $0x20
    out %al, $0xA0
    mov $0x20, %al
    out %al, $0x21
    mov $0x28, %al
    out %al, $0xA1
    mov $0x04, %al
    out %al, $0x21
    mov $0x02, %al
    out %al, $0xA1
    mov $0x01, %al
    out %al, $0x21
    out %al, $0xA1
    mov $0xEF, %al
    out %al, $0x21
    mov $0xFF, %al
    out %al, $0xA1
    /* COM1: interrupt on received data, OUT2 routes it to the PIC. */
    mov $0x3F9, %dx
    mov $0x01, %al
    out %al, (%dx)
    mov $0x3FC, %dx
    mov $0x0B, %al
    out %al, (%dx)

    mov $msg_ready, %esi
    call puts
    mov $msg_marker, %esi
    call dputs
main:
    sti
    hlt
    cli
poll:
    mov $0x3FD, %dx
    in (%dx), %al
    test $1, %al
    jz main
    mov $0x3F8, %dx
    in (%dx), %al
    cmp $'q', %al
    je poweroff
    mov %al, got_char
    mov $msg_got, %esi
    call puts
    jmp poll
poweroff:
    mov $msg_bye, %esi
    call puts
    mov $0x604, %dx
    mov $0x2000, %ax
    out %ax, (%dx)
    jmp main

puts:
1:  lodsb
    test %al, %al
    jz 3f
    mov %al, %cl
    mov $0x3FD, %dx
2:  in (%dx), %al
    test $0x20, %al
    jz 2b
    mov %cl, %al
    mov $0x3F8, %dx
    out %al, (%dx)
    jmp 1b
3:  ret

dputs:
    mov $0x402, %dx
1:  lodsb
    test %al, %al
    jz 2f
    out %al, (%dx)
    jmp 1b
2:  ret

isr:
    push %eax
    mov $0x20, %al
    out %al, $0x20
    pop %eax
    iret

    .data
idtr:
    .word 256 * 8 - 1
    .long idt
msg_ready:  .asciz "tinyguest: ready\r\n"
msg_marker: .asciz "tinyguest: marker\n"
msg_got:    .ascii "got "
got_char:   .ascii "?"
            .asciz "\r\n"
msg_bye:    .asciz "bye\r\n"

    .bss
    .align 16
idt:    .skip 256 * 8
stack:  .skip 4096
stack_top:
"""

_LDS = """
ENTRY(_start)
SECTIONS {
    . = 0x100000;
    .text : { *(.multiboot) *(.text) }
    .data : { *(.data) }
    .bss : { *(.bss) }
}
"""


def build_tinyguest(directory: Path) -> Path:
    """Assemble and link the guest into ``directory``; return the ELF's path."""
    for tool in ("as", "ld"):
        if shutil.which(tool) is None:
            raise RuntimeError(f"building the tiny test guest needs '{tool}' (binutils)")
    directory.mkdir(parents=True, exist_ok=True)
    src = directory / "tinyguest.S"
    lds = directory / "tinyguest.ld"
    obj = directory / "tinyguest.o"
    elf = directory / "tinyguest.elf"
    src.write_text(_ASM)
    lds.write_text(_LDS)
    subprocess.run(["as", "--32", "-o", str(obj), str(src)], check=True, capture_output=True)
    subprocess.run(["ld", "-m", "elf_i386", "-T", str(lds), "-o", str(elf), str(obj)],
                   check=True, capture_output=True)
    return elf
