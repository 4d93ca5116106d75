"""The one error tree of the engine.

Every error the engine raises on purpose derives from :class:`SbtuiError`, so
the CLI and the app catch exactly one type and show ``str(err)``, which is
written for a person: what failed, where (file, offset, checkpoint, command)
and, where known, what to do about it::

    SbtuiError
     +-- UsageError            a bad argument or path given by the user
     +-- GuestBuildError       the demo guest could not be built
     +-- StreamError           a migration stream is malformed (offset, expected)
     |    +-- TruncatedStreamError
     +-- Qcow2Error            a qcow2 image is malformed or unsupported
     +-- StoreError            the checkpoint store
     |    +-- FormatVersionError   written by another, incompatible version
     |    +-- IntegrityError       a hash or length check failed (checkpoint, pack, offset)
     |    +-- NotFoundError        no such checkpoint / page
     +-- QemuError             a QEMU process (command line, exit code, log tail)
     |    +-- QemuLaunchError      it did not start, or died before it was ready
     |    +-- QemuDiedError        it died while in use
     |    +-- QmpError             a QMP command failed
     |    +-- QemuTimeoutError     it did not reach an expected state in time
     +-- GdbError              a gdb process (timeout, exit, MI error)
     |    +-- GdbTimeoutError      an MI command got no answer in time
     |    +-- GdbExitedError       gdb exited (exit code, output tail)
     |    +-- GdbCommandError      gdb answered ^error (its message)
     +-- RecordingError        a recording directory or file is unusable
     +-- ReplayError           a replay did not do what the recording says
"""

from __future__ import annotations


class SbtuiError(Exception):
    """Base of every error the engine raises on purpose."""


class UsageError(SbtuiError):
    """A bad argument, option value or path given by the user."""


class GuestBuildError(SbtuiError):
    """Building the demo guest (kernel, initramfs, guest tools) failed."""


class StreamError(SbtuiError):
    """A QEMU migration stream does not parse.

    ``offset`` is the byte offset in the stream where the problem was found.
    """

    def __init__(self, message: str, offset: int | None = None):
        self.offset = offset
        where = f" at offset {offset}" if offset is not None else ""
        super().__init__(f"migration stream{where}: {message}")


class TruncatedStreamError(StreamError):
    """The stream ended before a complete record was read."""


class Qcow2Error(SbtuiError):
    """A qcow2 image is malformed, or uses a feature we do not read."""


class StoreError(SbtuiError):
    """The checkpoint store cannot do what was asked."""


class FormatVersionError(StoreError):
    """The store or recording was written by an incompatible format version."""


class IntegrityError(StoreError):
    """Stored bytes do not match their hash or length.

    Carries what a person needs to find the damage.
    """

    def __init__(self, message: str, *, checkpoint: str | None = None,
                 pack: str | None = None, offset: int | None = None):
        self.checkpoint = checkpoint
        self.pack = pack
        self.offset = offset
        parts = [p for p in (
            f"checkpoint {checkpoint}" if checkpoint is not None else None,
            f"pack {pack}" if pack is not None else None,
            f"offset {offset}" if offset is not None else None,
        ) if p]
        where = f" ({', '.join(parts)})" if parts else ""
        super().__init__(f"integrity error{where}: {message}")


class NotFoundError(StoreError):
    """A checkpoint, page or object that was asked for does not exist."""


class QemuError(SbtuiError):
    """A QEMU process failed. Carries its command line, exit code and log tail."""

    def __init__(self, message: str, *, argv: list[str] | None = None,
                 exit_code: int | None = None, log_tail: str | None = None):
        self.argv = argv
        self.exit_code = exit_code
        self.log_tail = log_tail
        text = message
        if exit_code is not None:
            text += f" (exit code {exit_code})"
        if log_tail:
            text += "\n--- QEMU log (last lines) ---\n" + log_tail.rstrip()
        super().__init__(text)


class QemuLaunchError(QemuError):
    """QEMU did not start, or exited before it was ready."""


class QemuDiedError(QemuError):
    """QEMU exited while it was being used."""


class QmpError(QemuError):
    """A QMP command returned an error."""


class QemuTimeoutError(QemuError):
    """QEMU did not reach an expected state in time."""


class GdbError(SbtuiError):
    """gdb timed out, exited, or answered an MI command with an error."""


class GdbTimeoutError(GdbError):
    """An MI command got no answer in time. Names the command and the wait."""

    def __init__(self, message: str, *, command: str | None = None,
                 waited: float | None = None):
        self.command = command
        self.waited = waited
        super().__init__(message)


class GdbExitedError(GdbError):
    """gdb exited (or was killed) while in use. Carries exit code and output tail."""

    def __init__(self, message: str, *, exit_code: int | None = None,
                 output_tail: str | None = None):
        self.exit_code = exit_code
        self.output_tail = output_tail
        text = message
        if exit_code is not None:
            text += f" (exit code {exit_code})"
        if output_tail:
            text += "\n--- gdb output (last lines) ---\n" + output_tail.rstrip()
        super().__init__(text)


class GdbCommandError(GdbError):
    """gdb answered an MI command with ``^error``. Carries the command and gdb's message."""

    def __init__(self, message: str, *, command: str | None = None,
                 gdb_message: str | None = None):
        self.command = command
        self.gdb_message = gdb_message
        super().__init__(message)


class RecordingError(SbtuiError):
    """A recording (directory or packed file) is missing, damaged or incompatible."""


class ReplayError(SbtuiError):
    """A replay failed or did not reproduce the recording."""
