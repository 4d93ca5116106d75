"""The sbtui engine: checkpoints, record/replay, QEMU and gdb drivers. Never imports Textual."""
