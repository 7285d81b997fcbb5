"""Live progress of a scaling probe in a notebook: an ipywidgets bar over the sizes and a line per step.

``scale(..., progress="auto")`` shows it only inside a Jupyter kernel (IPython's shell is the
ZMQ-based one); plain Python, the CLI, the tests and the server's kernel-side probe (which passes
``progress=False``) get nothing. Without ipywidgets the kernel shows one text line updated in place.

The view follows the probe through the hooks it already has, and never reaches into its code:

* the user's ``on_point`` is chained (called after the view is updated): a measured size moves the
  bar and logs ``T=1,024: 4.2 MB, 3.1 ms``;
* the harness is wrapped (``functools.wraps``, so the probe still sees its signature): a call at a
  new size says what is running (``meta run at T=400,000…``, ``measuring T=1,024…``) and picks up the
  sizes the probe skipped since the last call (``skipped T=4,096: predicted 9.1 GB … exceeds the
  budget``). Calls at the size already shown (the timed repeats) cost one comparison, so the view adds
  no widget traffic to the timings.

The view is closed when the probe returns, when the harness raises ``KeyboardInterrupt`` or
``SystemExit``, and in any case when the cell finishes (IPython's ``post_run_cell``), so that only the
result's own display remains. Every error of the view is swallowed: it then stops updating, and the
measurement goes on unchanged.
"""
from __future__ import annotations

import functools
import html
import sys
from typing import Any, Callable, List, Optional, Sequence

from ._format import fmt_bytes, fmt_seconds

WIDGET_MIME = "application/vnd.jupyter.widget-view+json"
LOG_LINES = 12  # the log under the bar shows the last steps


def _shell():
    """The running IPython shell, or None; never imports IPython (plain Python stays plain)."""
    ipy = sys.modules.get("IPython")
    if ipy is None:
        return None
    try:
        return ipy.get_ipython()
    except Exception:  # noqa: BLE001
        return None


def in_kernel() -> bool:
    """True inside a Jupyter kernel: IPython's shell is ipykernel's ``ZMQInteractiveShell`` (a terminal
    IPython, plain Python and pytest are not)."""
    shell = _shell()
    if shell is None:
        return False
    return any(cls.__name__ == "ZMQInteractiveShell" for cls in type(shell).__mro__)


def widgets_available() -> bool:
    try:
        import ipywidgets  # noqa: F401
    except Exception:  # noqa: BLE001 - missing, or broken by a version mismatch
        return False
    return True


def _display(bundle: dict):
    """Show a raw mime bundle and return its display handle (``.update(bundle, raw=True)``)."""
    from IPython.display import display

    return display(bundle, raw=True, display_id=True)


def _mode(progress: Any) -> Optional[str]:
    """``"widget"``, ``"text"`` or None (off) for ``scale(progress=...)``.

    ``"auto"``: on inside a Jupyter kernel only. ``True``: on wherever an IPython shell can display.
    ``False``/``None``: off."""
    if progress is None or progress is False:
        return None
    if isinstance(progress, str):
        if progress != "auto":
            raise ValueError(f"progress must be 'auto', True or False; got {progress!r}")
        if not in_kernel():
            return None
    elif _shell() is None:
        return None
    return "widget" if widgets_available() else "text"


class _Off:
    """The probe's view when progress is off: leaves the harness and ``on_point`` as they are."""

    active = False

    def wrap(self, fn: Callable) -> Callable:
        return fn

    def chain(self, on_point: Optional[Callable]) -> Optional[Callable]:
        return on_point

    def close(self) -> None:
        pass


OFF = _Off()


def probe_progress(progress: Any, result, sizes: Sequence[int], target: Optional[int] = None):
    """The view for one ``scale()`` call: a :class:`ProbeProgress`, or a no-op when off or when the
    view cannot be built. ``result`` is the probe's ``ScalingResult`` (read for skipped sizes)."""
    mode = _mode(progress)  # a bad value is the caller's error: raised before anything runs
    if mode is None:
        return OFF
    try:
        return ProbeProgress(result, sizes, target, widgets=mode == "widget")
    except Exception:  # noqa: BLE001 - no view, same measurement
        return OFF


def _on_meta() -> bool:
    try:
        import torch

        return torch.get_default_device().type == "meta"
    except Exception:  # noqa: BLE001
        return False


class ProbeProgress:
    """The live view of one probe. ``steps``: a line per finished grid size (measured or skipped), in
    order; ``events``: every line shown, the runs started included; ``done``: the finished grid sizes."""

    active = True

    def __init__(self, result, sizes: Sequence[int], target: Optional[int] = None, *, widgets: bool = True) -> None:
        self.result = result
        self.sizes: List[int] = list(sizes)
        self.target = target
        self.done = 0
        self.steps: List[str] = []
        self.events: List[str] = []
        self.closed = False
        self.broken = False            # the view failed once: it stays quiet from then on
        self._seen_skips = 0
        self._size: Any = None         # the size of the last harness call
        self._last_meta = False
        self._handle = None
        self._shell = None
        self.bar = self.label = self.log = self.box = self._row = self._title = None
        self.model_id: Optional[str] = None  # the widget view's model (kept after close)
        self._widgets = widgets
        try:
            self._build()
        except BaseException:
            self.close()
            raise

    # ------------------------------------------------------------------ hooks for the probe
    def wrap(self, fn: Callable) -> Callable:
        """The harness, reporting each new size to the view (signature kept for ``call_harness``)."""
        view = self

        @functools.wraps(fn)
        def watched(*args, **kwargs):
            if not view.closed:
                view._on_call(args[0] if args else None)
            try:
                return fn(*args, **kwargs)
            except (KeyboardInterrupt, SystemExit):
                view.close()
                raise

        return watched

    def chain(self, on_point: Optional[Callable]) -> Callable:
        """``on_point`` for the probe: update the view, then call the user's (whose errors the probe
        reports as warnings, as before)."""

        def point(p) -> None:
            self.on_point(p)
            if on_point is not None:
                on_point(p)

        return point

    def on_point(self, p) -> None:
        if self.closed:
            return
        try:
            self._flush_skips()
            self.done += 1
            self._step(f"T={p.size:,}: {fmt_bytes(p.peak_bytes)}, {fmt_seconds(p.seconds)}")
        except Exception:  # noqa: BLE001 - the view must never break the probe
            self.broken = True

    def close(self) -> None:
        """Remove the view (idempotent): close the widgets and blank the display, so the cell keeps
        only the result's own output."""
        if self.closed:
            return
        try:  # sizes skipped after the last harness call: logged (the view goes away just after)
            self._flush_skips()
        except Exception:  # noqa: BLE001
            self.broken = True
        self.closed = True
        shell, self._shell = self._shell, None
        if shell is not None:
            try:
                shell.events.unregister("post_run_cell", self._cell_done)
            except Exception:  # noqa: BLE001
                pass
        for w in (self.bar, self.label, self.log, self._row, self._title, self.box):
            if w is None:
                continue
            # every model goes: the widget and its layout and style models (each has its own comm)
            for model in (getattr(w, "style", None), getattr(w, "layout", None), w):
                try:
                    if model is not None and hasattr(model, "close"):
                        model.close()
                except Exception:  # noqa: BLE001
                    pass
        if self._handle is not None:
            try:
                self._handle.update({"text/plain": ""}, raw=True)
            except Exception:  # noqa: BLE001
                pass

    # ------------------------------------------------------------------ internals
    def _title_text(self) -> str:
        name = getattr(self.result, "function", "") or "harness"
        dev = getattr(self.result, "device", "")
        n = len(self.sizes)
        grid = (f"T={self.sizes[0]:,}" if n == 1 else f"T={self.sizes[0]:,} … {self.sizes[-1]:,}") if n else "no sizes"
        tgt = f", target T={self.target:,}" if self.target is not None else ""
        return f"scaling probe of {name} on {dev}: {grid} ({n} size{'s' if n != 1 else ''}){tgt}"

    def _build(self) -> None:
        title = self._title_text()
        if self._widgets:
            import ipywidgets as w

            self._title = w.HTML(f"<b>{html.escape(title)}</b>")
            self.bar = w.IntProgress(value=0, min=0, max=max(1, len(self.sizes)), description=f"0/{len(self.sizes)}",
                                     bar_style="info", layout=w.Layout(width="320px"))
            self.label = w.Label("starting…")
            self.log = w.HTML("")
            self._row = w.HBox([self.bar, self.label])
            self.box = w.VBox([self._title, self._row, self.log])
            self.model_id = self.box.model_id
            bundle = {WIDGET_MIME: {"version_major": 2, "version_minor": 0, "model_id": self.model_id},
                      "text/plain": title}
        else:
            bundle = {"text/plain": title + ": starting…"}
        self._handle = _display(bundle)
        shell = _shell()
        if shell is not None and hasattr(shell, "events"):
            try:  # closes the view when the cell ends, however the probe ended
                shell.events.register("post_run_cell", self._cell_done)
                self._shell = shell
            except Exception:  # noqa: BLE001
                pass

    def _cell_done(self, *args, **kwargs) -> None:
        self.close()

    def _on_call(self, size: Any) -> None:
        """A harness call. Same size as the last real call: one comparison (the timed repeats)."""
        try:
            if size == self._size and not self._last_meta:
                if len(self.result.skipped) != self._seen_skips:
                    self._flush_skips()
                return
            meta = _on_meta()
            self._size, self._last_meta = size, meta
            self._flush_skips()
            if not isinstance(size, int):
                return
            if meta:
                self._status_line(f"meta run at T={size:,}…")
            elif self.sizes and size < self.sizes[0]:
                self._status_line(f"timing the per-call overhead at T={size:,}…")
            else:
                self._status_line(f"measuring T={size:,}…")
        except Exception:  # noqa: BLE001 - the view must never break the probe
            self.broken = True

    def _flush_skips(self) -> None:
        skipped = self.result.skipped
        while self._seen_skips < len(skipped):
            s = skipped[self._seen_skips]
            self._seen_skips += 1
            self.done += 1
            self._step(f"skipped T={s['size']:,}: {s['reason']}", kind=s.get("kind"))

    def _step(self, text: str, kind: Optional[str] = None) -> None:
        """A finished grid size: log it and move the bar."""
        self.steps.append(text)
        self.events.append(text)
        if self.broken:
            return
        n = len(self.sizes)
        if self._widgets:
            self.bar.value = min(self.done, self.bar.max)
            self.bar.description = f"{min(self.done, n)}/{n}"
            if kind in ("oom", "error"):
                self.bar.bar_style = "danger"
            elif kind in ("budget", "time") and self.bar.bar_style != "danger":
                self.bar.bar_style = "warning"
            self.label.value = text
            self.log.value = "<br>".join(
                f"<span style='font-family:monospace;font-size:12px'>{html.escape(s)}</span>"
                for s in self.steps[-LOG_LINES:])
        else:
            self._handle.update({"text/plain": f"{self._title_text()} [{min(self.done, n)}/{n}] {text}"}, raw=True)

    def _status_line(self, text: str) -> None:
        """What runs now (not a finished size)."""
        self.events.append(text)
        if self.broken:
            return
        n = len(self.sizes)
        if self._widgets:
            self.label.value = text
        else:
            self._handle.update({"text/plain": f"{self._title_text()} [{min(self.done, n)}/{n}] {text}"}, raw=True)


__all__ = ["probe_progress", "ProbeProgress", "in_kernel", "widgets_available", "OFF"]
