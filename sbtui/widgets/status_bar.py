"""The one-line header: what the guest is doing and how big the recording is.

``show_session`` renders a :class:`engine.api.RecordingStatus` (state, with
"attached" for a QEMU the user started, instruction count, guest time, checkpoint count and rate, store size and dedup
ratio); ``show_replay`` renders where a replay stands. Colours come from theme
variables through Content markup.
"""

from __future__ import annotations

from textual.content import Content
from textual.widgets import Static

from engine.api import GuestState, RecordingStatus
from sbtui.widgets.heatmap import human_bytes

STATE_STYLE = {
    GuestState.RECORDED: ("■ recorded", "$secondary"),
    GuestState.RUNNING: ("● running", "$success"),
    GuestState.PAUSED: ("❚❚ paused", "$warning"),
    GuestState.REPLAYING: ("◀▶ replaying", "$accent"),
    GuestState.STOPPED: ("■ stopped", "$error"),
}


def sep() -> str:
    return " [dim]│[/] "


class StatusBar(Static):

    def show_session(self, name: str, status: RecordingStatus) -> None:
        label, colour = STATE_STYLE[status.state]
        if status.attached:     # a QEMU the user started: "● attached · running"
            icon, _, word = label.partition(" ")
            label = f"{icon} attached · {word}"
        rate = f" @ {status.checkpoint_rate_hz:.1f}/s" if status.checkpoint_rate_hz else ""
        self.update(Content.from_markup(
            "[b $primary]sbtui[/] [b]$session_name[/]" + sep()
            + f"[b {colour}]{label}[/]" + sep()
            + f"icount [b]{status.icount:,}[/]" + sep()
            + f"guest [b]{status.guest_time_ns / 1e9:,.3f} s[/]" + sep()
            + f"checkpoints [b]{status.checkpoints:,}[/]{rate}" + sep()
            + f"store [b]{human_bytes(status.store_bytes)}[/]"
            + f" · dedup [b $accent]{status.dedup_ratio:.2f}×[/]", session_name=name))

    def show_replay(self, name: str, checkpoint: int, icount: int, stop: str, busy: str = "") -> None:
        label, colour = STATE_STYLE[GuestState.REPLAYING]
        text = ("[b $primary]sbtui[/] [b]$session_name[/]" + sep()
                + f"[b {colour}]{label}[/] from checkpoint [b]#{checkpoint}[/]" + sep()
                + f"icount [b]{icount:,}[/]")
        if busy:
            text += sep() + "[b $warning]$busy_text[/]"
        elif stop:
            text += sep() + "stopped: [b]$stop_text[/]"
        # names and gdb's words go in as variables, never as markup (a trailing
        # backslash in them would escape the closing tag)
        self.update(Content.from_markup(text, session_name=name, busy_text=busy, stop_text=stop))
