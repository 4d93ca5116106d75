/* sb_mark: mark a moment for the sbtui recorder.
 *
 * Inside the demo guest (init exports SBTUI_GUEST=1) the line
 * "@TTTTTTTTTTTTTTTT TEXT\n" goes to QEMU's debug console port 0x402 (host
 * side: -device isa-debugcon,iobase=0x402), where T are the 16 lower-case
 * hex digits of the guest's time stamp counter read just before the line is
 * written (the recorder turns it into an instruction count); then
 * "sbtui-mark: TEXT" goes to stdout, flushed. Outside the
 * guest the port is never touched: on a real machine it could belong to
 * hardware. Newlines in TEXT become spaces so one call is one mark.
 * Returns 0, or -1 when the guest's port could not be opened (ioperm).
 */
#ifndef SBTUI_MARK_H
#define SBTUI_MARK_H

#define SB_MARK_PORT 0x402
#define SB_MARK_MAX 240

int sb_mark(const char *text);
int sb_markf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

#endif
