"""The gdb process owner against a real gdb, without a target.

What it proves: MI answers are parsed, ``^error``, timeouts and a dying gdb
become the right ``GdbError`` subclasses (promptly, not at the timeout), the
owner is usable from many threads, and no gdb outlives its owner: not after
an exception, not after Ctrl-C of the Python process, not after SIGKILL of
it, and not (wrongly) when the thread that launched it ends.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from engine.errors import GdbCommandError, GdbError, GdbExitedError, GdbTimeoutError
from engine.gdb import GdbProcess, mi_quote

pytestmark = pytest.mark.gdb

REPO = Path(__file__).resolve().parent.parent


def pid_alive(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def wait_gone(pid: int, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not pid_alive(pid):
            return True
        time.sleep(0.02)
    return not pid_alive(pid)


@pytest.fixture
def gdb():
    with GdbProcess(default_timeout=10) as g:
        yield g
    assert wait_gone(g.pid, 5)


def test_launch_reports_version_and_parses_results(gdb):
    assert gdb.version.startswith("GNU gdb")
    assert gdb.alive and gdb.pid and os.getpgid(gdb.pid) == gdb.pid  # own process group
    res = gdb.command('-data-evaluate-expression "6*7"')
    assert res.result_class == "done" and res.payload == {"value": "42"}
    assert gdb.console('echo hello\\n') == "hello\n"


def test_mi_quote_survives_quotes_and_backslashes(gdb):
    expr = 'sizeof("a\\"b")'                      # the C string literal "a\"b"
    res = gdb.command("-data-evaluate-expression " + mi_quote(expr))
    assert res.payload["value"] == "4"            # a, ", b and the NUL
    # gdb's echo itself reads \\ as one backslash and \n as a newline.
    assert gdb.console('echo say "hi" \\\\ done\\n') == 'say "hi" \\ done\n'


def test_error_record_becomes_command_error_with_gdbs_message(gdb):
    with pytest.raises(GdbCommandError) as err:
        gdb.command('-data-evaluate-expression "1 +"')
    assert err.value.command == '-data-evaluate-expression "1 +"'
    assert err.value.gdb_message == "A syntax error in expression, near `'."
    assert "1 +" in str(err.value) and "syntax error" in str(err.value)
    with pytest.raises(GdbCommandError, match="Undefined MI command: no-such-command"):
        gdb.command("-no-such-command")
    assert gdb.command('-data-evaluate-expression "1+1"').payload["value"] == "2"  # still usable


def test_timeout_names_the_command_and_the_wait_and_the_late_answer_is_dropped(gdb):
    cmd = '-interpreter-exec console "shell sleep 1.5"'
    start = time.monotonic()
    with pytest.raises(GdbTimeoutError) as err:
        gdb.command(cmd, timeout=0.3)
    assert 0.3 <= time.monotonic() - start < 1.4
    assert err.value.command == cmd and err.value.waited == 0.3
    assert "shell sleep 1.5" in str(err.value) and "0.3 s" in str(err.value)
    # gdb answers the next command after the sleep; its late ^done for the
    # timed-out command (another token) must not be taken for this answer.
    assert gdb.command('-data-evaluate-expression "2+3"', timeout=10).payload["value"] == "5"


def test_gdb_killed_during_a_command_raises_exited_error_at_once(gdb):
    # The shell command's child keeps gdb's stdout open after gdb dies, so
    # end-of-file alone would not tell; the owner must notice the exit itself.
    errors: list[BaseException] = []

    def run():
        try:
            gdb.command('-interpreter-exec console "shell sleep 30"', timeout=60)
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            errors.append(exc)

    t = threading.Thread(target=run)
    t.start()
    time.sleep(0.3)  # let the command reach gdb; the wait below is the bound that matters
    start = time.monotonic()
    os.kill(gdb.pid, signal.SIGKILL)
    t.join(timeout=10)
    assert not t.is_alive() and time.monotonic() - start < 5
    assert len(errors) == 1 and isinstance(errors[0], GdbExitedError)
    assert errors[0].exit_code == -signal.SIGKILL
    assert "exit code -9" in str(errors[0]) and "shell sleep 30" in str(errors[0])
    with pytest.raises(GdbExitedError):
        gdb.command("-gdb-version", timeout=10)
    gdb.shutdown()  # still fine after the death


def test_commands_from_many_threads_each_get_their_own_answer(gdb):
    wrong: list[str] = []

    def worker(n: int):
        for i in range(40):
            v = gdb.command(f'-data-evaluate-expression "{n}*1000+{i}"').payload["value"]
            if v != str(n * 1000 + i):
                wrong.append(f"{n},{i}: {v}")

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not wrong


def test_interrupt_without_a_running_target_is_a_no_op(gdb):
    assert not gdb.running
    assert gdb.interrupt(timeout=1) is None


def test_shutdown_is_polite_and_idempotent():
    g = GdbProcess()
    g.launch()
    pid = g.pid
    g.shutdown()
    assert g.returncode == 0  # -gdb-exit worked; no signal was needed
    assert not pid_alive(pid)
    g.shutdown()
    with pytest.raises(GdbExitedError):
        g.command("-gdb-version")


def test_missing_gdb_binary_is_a_clear_error():
    with pytest.raises(GdbError, match="gdb not found"):
        GdbProcess("/nonexistent/gdb").launch()


def test_no_gdb_left_after_an_exception_in_the_with_block():
    pid = None
    with pytest.raises(RuntimeError):
        with GdbProcess() as g:
            pid = g.pid
            raise RuntimeError("boom")
    assert pid is not None and wait_gone(pid, 5)


def test_gdb_launched_from_a_short_lived_thread_survives_that_thread():
    # PR_SET_PDEATHSIG fires when the forking *thread* exits; the spawner
    # thread makes it the process's life instead.
    box: dict = {}
    t = threading.Thread(target=lambda: box.setdefault("g", GdbProcess().__enter__()))
    t.start()
    t.join()
    g = box["g"]
    try:
        time.sleep(0.3)  # the kernel would have killed it by now
        assert g.alive
        assert g.command('-data-evaluate-expression "1"').payload["value"] == "1"
    finally:
        g.shutdown()


CHILD = textwrap.dedent("""
    import sys, time
    sys.path.insert(0, {repo!r})
    from engine.gdb import GdbProcess
    with GdbProcess() as g:
        print(g.pid, flush=True)
        time.sleep(60)
""")


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL])
def test_no_gdb_outlives_a_python_process_that_is_interrupted_or_killed(sig):
    child = subprocess.Popen([sys.executable, "-c", CHILD.format(repo=str(REPO))],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = child.stdout.readline()
        assert line.strip().isdigit(), child.stderr.read()
        gdb_pid = int(line)
        assert pid_alive(gdb_pid)
        child.send_signal(sig)
        child.wait(timeout=20)
        assert wait_gone(gdb_pid, 10), f"gdb {gdb_pid} outlived its owner after {sig!r}"
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
