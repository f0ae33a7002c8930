"""The navigator: phases → stops → layers, in the stop catalog's order, with each stop's time.

A stop the trace captured is drawn with ●, one it did not with a dim ○. The time beside a
stop is the sum of its events' `dur_ns` at the selected step (all layers, for a per-layer
stop); beside a layer, that layer's own time, with the slowest layer of the stop flagged.
Moving the cursor posts `Navigator.Picked` to the app, which decides what to show.
Every step changes most rows, so the tree draws its rows itself, as Tree would but cheaply
(views/tree_rows.py).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

from rich.text import Span, Text
from textual import events
from textual.binding import Binding
from textual.content import Content
from textual.geometry import Region
from textual.message import Message
from textual.widgets import Tree
from textual.widgets.tree import TreeNode

from traces.base import Trace
from traces.schema import PHASES, STOPS
from views import colors
from views.format import duration
from views.tree_rows import TreeRows

PHASE_TITLES = {"entry": "entry", "layer": "layers", "exit": "exit", "protocol": "protocol"}


@dataclass(frozen=True)
class NavItem:
    stop: str
    layer: int | None = None


def step_times(trace: Trace, step: int) -> tuple[dict[str, int], dict[tuple[str, int], int]]:
    """Per stop and per (stop, layer): the summed `dur_ns` of the step's events."""
    per_stop: dict[str, int] = defaultdict(int)
    per_layer: dict[tuple[str, int], int] = defaultdict(int)
    for event in trace.events(step):
        per_stop[event.stop] += event.dur_ns
        if event.layer is not None:
            per_layer[(event.stop, event.layer)] += event.dur_ns
    return per_stop, per_layer


class Navigator(TreeRows, Tree[NavItem]):
    """The stop tree of one trace."""

    # The tree never needs to scroll sideways: ← → move between steps, as they do in the app.
    BINDINGS = [
        Binding("left", "app.step(-1)", "previous step", show=False),
        Binding("right", "app.step(1)", "next step", show=False),
    ]

    class Picked(Message):
        """The cursor moved onto a stop (and layer), or (`explicit`) the person pressed enter on it."""

        def __init__(self, item: NavItem, explicit: bool = False) -> None:
            super().__init__()
            self.item = item
            self.explicit = explicit

    def __init__(self, **kwargs) -> None:
        super().__init__("stops", **kwargs)
        self.show_root = False
        self.guide_depth = 2
        self._stop_nodes: dict[str, TreeNode[NavItem]] = {}
        self._layer_nodes: dict[tuple[str, int], TreeNode[NavItem]] = {}
        self._n_layer = -1
        self._shown: tuple | None = None
        self._captured: set[str] = set()
        self._labels: dict[int, Text] = {}
        self._scanned = 0  # steps whose stops are in `_captured` for good (all but a live run's last)
        self._layer_times: tuple[dict, dict] = ({}, {})  # per (stop, layer) ns and each stop's slowest layer
        self._times: dict[tuple[int, int], tuple] = {}  # (step, its event count) -> its times (_step_times)
        self._stop_labels: dict[tuple, Text] = {}  # (stop, captured, ns) or (layer, ns, slow) -> its label
        self._labels_for = 0  # bumped by each update_labels: which times the layer labels should show
        self._layer_labelled: dict[tuple[str, int], int] = {}  # (stop, layer) -> the `_labels_for` it shows
        self._sized_for: tuple | None = None  # (size, virtual size, container size) the scrollbar was set for
        self._relabelled: list[TreeNode[NavItem]] = []  # relabelled nodes whose rows await a repaint

    def build(self, trace: Trace) -> None:
        """(Re)build the tree when the layer count is known or changes."""
        n_layer = trace.n_layer
        if n_layer == self._n_layer:
            return
        self._n_layer = n_layer
        self.clear()
        self._stop_nodes.clear()
        self._layer_nodes.clear()
        self._labels.clear()
        self._layer_labelled.clear()
        for phase in PHASES:
            stops = [s for s in STOPS if s.phase == phase]
            if not stops:
                continue
            phase_node = self.root.add(Text(PHASE_TITLES.get(phase, phase), style="bold"), expand=True)
            for stop in stops:
                if stop.per_layer:
                    node = phase_node.add(Text(stop.title), data=NavItem(stop.name), expand=False)
                    for layer in range(n_layer):
                        self._layer_nodes[(stop.name, layer)] = node.add_leaf(
                            Text(f"layer {layer}"), data=NavItem(stop.name, layer))
                else:
                    node = phase_node.add_leaf(Text(stop.title), data=NavItem(stop.name))
                self._stop_nodes[stop.name] = node
        self._shown = None

    def update_labels(self, trace: Trace, step: int) -> None:
        """Captured marks and times for `step`; skipped when nothing changed."""
        key = (step, len(trace.steps), len(trace.events(step)))
        if key == self._shown:
            return
        self._shown = key
        captured = self._captured_stops(trace)
        per_stop, per_layer, slowest = self._step_times(trace, step)
        self._layer_times = (per_layer, slowest)
        self._labels_for += 1
        for stop in STOPS:
            node = self._stop_nodes.get(stop.name)
            if node is not None:
                self._set_label(node, self._stop_label(stop, stop.name in captured, per_stop.get(stop.name)))
        # The layer rows: only those on screen now. Relabelling every layer of every open stop on each
        # step doubled a keypress once four stops were open (bench/ui.py); the others are relabelled
        # when they come into view (a scroll, a stop opened, a taller tree).
        self._label_visible_layers()
        self._title_step(step)

    def _step_times(self, trace: Trace, step: int) -> tuple[dict, dict, dict[str, int]]:
        """`step_times` and each stop's slowest layer, kept for the steps seen last (a step's events
        only grow, so their count tells a kept answer from a stale one)."""
        key = (step, len(trace.events(step)))
        times = self._times.get(key)
        if times is None:
            per_stop, per_layer = step_times(trace, step)
            slowest: dict[str, int] = {}
            most: dict[str, int] = {}
            for (stop, layer), ns in per_layer.items():
                if ns > most.get(stop, -1):  # the first of equal times: the lowest layer
                    most[stop], slowest[stop] = ns, layer
            if len(self._times) >= 64:
                del self._times[next(iter(self._times))]
            times = self._times[key] = (per_stop, per_layer, slowest)
        return times

    def _stop_label(self, stop, captured: bool, ns: int | None) -> Text:
        """`● title 1.2ms` (a dim `○ title` if the trace never captured the stop). The catalog's own
        words and a number: nothing to escape. Kept, so a step seen again relabels nothing."""
        key = (stop.name, captured, ns)
        label = self._stop_labels.get(key)
        if label is None:
            mark = "● " if captured else "○ "
            plain = mark + stop.title
            spans = [Span(0, len(mark), colors.CHOSEN if captured else colors.DIM)]
            if not captured:
                spans.append(Span(len(mark), len(plain), colors.DIM))
            if ns is not None:
                time = f" {duration(ns)}"
                spans.append(Span(len(plain), len(plain) + len(time), colors.DIM))
                plain += time
            if len(self._stop_labels) > 4096:
                self._stop_labels.clear()
            label = self._stop_labels[key] = Text(plain, end="", spans=spans)
        return label

    def _title_step(self, step: int) -> None:
        """Name the step in the border. Setting `border_title` repaints every row of the tree, though
        only the border's top row changed (the relabelled rows repaint themselves): on a step change
        that was half the navigator's paint (bench/ui.py). Store the title as the setter does and
        repaint that one row; the first time, and if Textual keeps the title elsewhere, use the setter."""
        title = f"stops · step {step}"
        if self.border_title is None or "_border_title" not in vars(self):
            self.border_title = Text(title)
            return
        if self.border_title != title:
            self._border_title = Content(title)
            left, top = self.content_offset
            self.refresh(Region(-left, -top, self.outer_size.width, 1))  # content-relative: the top border

    def _label_visible_layers(self) -> None:
        """Layer rows on screen that show an older step's times: relabel them from `_layer_times`."""
        per_layer, slowest = self._layer_times
        top = round(self.scroll_offset.y)
        for line in range(top, top + self.size.height):
            node = self.get_node_at_line(line)
            if node is None:
                break
            item = node.data
            if item is None or item.layer is None:
                continue
            key = (item.stop, item.layer)
            if self._layer_labelled.get(key) == self._labels_for:
                continue
            self._layer_labelled[key] = self._labels_for
            ns = per_layer.get(key)
            slow = ns is not None and slowest.get(item.stop) == item.layer and self._n_layer > 1
            self._set_label(node, self._layer_label(item.layer, ns, slow))
        self._repaint_relabelled()

    def _layer_label(self, layer: int, ns: int | None, slow: bool) -> Text:
        """`layer 3 1.2ms`, the time flagged on the stop's slowest layer; kept, as the stops' labels are."""
        key = (layer, ns, slow)
        label = self._stop_labels.get(key)
        if label is None:
            label = Text(f"layer {layer}", end="")  # our own words and numbers: nothing to escape
            if ns is not None:
                label.append(f" {duration(ns)}", style=colors.WARN if slow else colors.DIM)
            if len(self._stop_labels) > 4096:
                self._stop_labels.clear()
            self._stop_labels[key] = label
        return label

    def _size_updated(self, size, virtual_size, container_size, layout: bool = True) -> bool:
        """Each layout of the screen (every view switch) hands the tree the compositor's virtual size,
        which differs from the one the tree keeps for itself, so Textual set the scrollbar again and
        repainted it a frame after the view (a second frame for every switch). Only a new size, or a
        new virtual size of the tree's own, can move the scrollbar."""
        key = (size, self.virtual_size, container_size)
        if key == self._sized_for:
            return False
        self._sized_for = key
        return super()._size_updated(size, virtual_size, container_size, layout)

    def on_tree_node_expanded(self, event: Tree.NodeExpanded[NavItem]) -> None:
        self._label_visible_layers()

    def on_resize(self, event: events.Resize) -> None:
        self._label_visible_layers()

    def watch_scroll_y(self, old_value: float, new_value: float) -> None:
        super().watch_scroll_y(old_value, new_value)
        self._label_visible_layers()

    def _set_label(self, node: TreeNode[NavItem], label: Text) -> None:
        """Relabel only what changed: a live run changes a few labels per poll, not all 400.

        TreeNode.set_label copies the label and queues a callback per node that walks the rows on
        screen and marks the node's row and its children's: on a step, ~50 queued callbacks, a
        sixth of the navigator's cost (bench/ui.py --profile). Our labels are one line of our own text,
        so store it as set_label does (the `_updates` bump is what retires the row's cached strip)
        and repaint just the relabelled rows, at once, in `_repaint_relabelled`."""
        shown = self._labels.get(id(node))
        if shown is not label and shown != label:
            self._labels[id(node)] = label
            if not hasattr(node, "_updates"):  # a Textual whose TreeNode keeps these elsewhere: the public way
                node.set_label(label)
                return
            node._label = label
            node._updates += 1
            self._relabelled.append(node)

    def _repaint_relabelled(self) -> None:
        """Repaint the rows of the nodes relabelled since the last call, in runs of adjacent rows."""
        nodes, self._relabelled = self._relabelled, []
        if not nodes:
            return
        lines = getattr(self, "_tree_lines_cached", None)  # Tree's own row list (private: absent, repaint all)
        if lines is None:  # the lines are being rebuilt: that repaints every row
            self.refresh()
            return
        top = round(self.scroll_offset.y)
        bottom = top + self.size.height
        rows = sorted({node._line for node in nodes
                       if top <= node._line < bottom and node._line < len(lines)
                       and lines[node._line].node is node})  # a closed stop's children keep a stale _line
        runs: list[list[int]] = []  # [first, end) of each run of adjacent rows
        for row in rows:
            if runs and runs[-1][1] == row:
                runs[-1][1] = row + 1
            else:
                runs.append([row, row + 1])
        if runs:  # refresh() with no region would repaint the whole widget
            width = self.size.width
            self.refresh(*(Region(0, first - top, width, end - first) for first, end in runs))

    def _captured_stops(self, trace: Trace) -> set[str]:
        """The stops seen anywhere in the trace, scanning each finished step once (all of them, once
        the run is over; before, the last step again each time: it may still grow)."""
        steps = trace.steps
        for step in steps[self._scanned:]:
            self._captured.update(e.stop for e in trace.events(step))
        self._scanned = len(steps) if trace.complete else max(0, len(steps) - 1)
        return self._captured

    def move_to(self, stop: str, layer: int | None) -> None:
        """Put the cursor on a stop (its layer, if given); the `Picked` this posts names what is shown already."""
        node = self._layer_nodes.get((stop, layer)) if layer is not None else None
        if node is None:
            node = self._stop_nodes.get(stop)
        if node is None or node is self.cursor_node:
            return
        # Tree's expand() rebuilds the tree's lines and lays out the whole screen even when the node
        # is open already: on every layer key that was half the press (bench/ui.py). Expand only
        # what is closed, and move once the tree has its new lines: rebuilt at once where Tree's row
        # list can be read (a second frame otherwise), after the next refresh where it cannot.
        closed = []
        parent = node.parent
        while parent is not None:
            if not parent.is_expanded:
                closed.append(parent)
            parent = parent.parent
        for parent in closed:
            parent.expand()
        if closed and not self._own_rows:
            self.call_after_refresh(self.move_cursor, node)
            return
        if closed:
            self._tree_lines  # Tree's rows, rebuilt now, give the node its line: move in this frame
        self.move_cursor(node)

    # The cursor --------------------------------------------------------------------------
    # Tree posts NodeHighlighted to the tree, which handled it (posting Picked up to the app) after
    # the key: by then the screen had the cursor's rows to paint, and painted them before the app
    # had picked the stop (↓ onto a stop of another view: two paints, a frame apart). A key's action
    # runs in the app's own turn, so Picked, posted to the app as the cursor moves, is handled
    # right after the key, before the screen paints: the cursor and the stop in one frame.
    def watch_cursor_line(self, previous_line: int, line: int) -> None:
        previous = self.get_node_at_line(previous_line)
        super().watch_cursor_line(previous_line, line)
        node = self.cursor_node
        if previous_line != line and node is not None and node is not previous and node.data is not None:
            # Where Tree posts NodeHighlighted. Before the tree is mounted there is no app to tell.
            (self.app if self.is_mounted else self).post_message(self.Picked(node.data))

    def on_tree_node_highlighted(self, event: Tree.NodeHighlighted[NavItem]) -> None:
        event.stop()  # watch_cursor_line has told the app

    def on_tree_node_selected(self, event: Tree.NodeSelected[NavItem]) -> None:
        event.stop()
        if event.node.data is not None:
            self.post_message(self.Picked(event.node.data, explicit=True))
