/* The applets of the multi-call binary sbtool (one static binary instead of
 * four keeps the initramfs small: static glibc costs ~700 KB each). */
#ifndef SBTUI_SBTOOL_H
#define SBTUI_SBTOOL_H

int sbmark_main(int argc, char **argv);
int memchurn_main(int argc, char **argv);
int sbgen_main(int argc, char **argv);
int sbdump_main(int argc, char **argv);

#endif
