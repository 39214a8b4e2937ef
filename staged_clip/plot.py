"""Line charts drawn with PIL (no plotting library needed): a grid of panels, each a few series of
points with their intervals against a shared x axis, such as the evaluation's step-budget curve."""

import math
from dataclasses import dataclass

PANEL_W, PANEL_H = 300, 210  # one panel's plotting area, px
MARGIN_L, MARGIN_B, MARGIN_T, GAP = 56, 34, 24, 20  # room for the y labels, the x labels, the title, between panels
LEGEND_H = 22
# ten distinct series before a colour repeats (the first six as before)
COLOURS = ((31, 119, 180), (214, 39, 40), (44, 160, 44), (148, 103, 189), (255, 127, 14), (23, 190, 207),
           (140, 86, 75), (227, 119, 194), (127, 127, 127), (188, 189, 34))


@dataclass(frozen=True)
class Panel:
    """One panel: its title (saying what y is), its y axis's range (low, high), per series name its
    points [(y, low, high)], one per x (low and high: its interval; None: none drawn; y None: no
    point), and how a y value is written on the axis (a format string)."""

    title: str
    limits: tuple
    series: dict
    fmt: str = "{:.2f}"


def ticks(low, high, count=5):
    """count evenly spaced values from low to high."""
    return [low + (high - low) * i / (count - 1) for i in range(count)]


def chart(panels, xs, columns, x_label):
    """A PIL image of panels (a Panel each, row by row, `columns` to a row) sharing the x values xs
    (spaced by their logarithm, as budgets are), a legend of the series above them."""
    from PIL import Image, ImageDraw
    rows = math.ceil(len(panels) / columns)
    cell_w, cell_h = MARGIN_L + PANEL_W + GAP, MARGIN_T + PANEL_H + MARGIN_B
    image = Image.new("RGB", (columns * cell_w + GAP, LEGEND_H + rows * cell_h), "white")
    draw = ImageDraw.Draw(image)
    names = list(dict.fromkeys(name for panel in panels for name in panel.series))
    x = 8
    for k, name in enumerate(names):  # the legend
        colour = COLOURS[k % len(COLOURS)]
        draw.line([(x, 11), (x + 20, 11)], fill=colour, width=3)
        draw.text((x + 24, 5), name, fill="black")
        x += 24 + draw.textlength(name) + 20
    logs = [math.log(v) for v in xs]
    span = (max(logs) - min(logs)) or 1.0
    for p, panel in enumerate(panels):
        left = (p % columns) * cell_w + MARGIN_L
        top = LEGEND_H + (p // columns) * cell_h + MARGIN_T
        low, high = panel.limits

        def at(i, y, left=left, top=top, low=low, high=high):
            return (left + 10 + (PANEL_W - 20) * (logs[i] - min(logs)) / span,
                    top + PANEL_H - PANEL_H * (y - low) / ((high - low) or 1.0))

        draw.rectangle([left, top, left + PANEL_W, top + PANEL_H], outline="black")
        draw.text((left, top - 16), panel.title, fill="black")
        for y in ticks(low, high):
            _, v = at(0, y)
            draw.line([(left - 4, v), (left, v)], fill="black")
            draw.line([(left, v), (left + PANEL_W, v)], fill=(230, 230, 230))
            text = panel.fmt.format(y)
            draw.text((left - 6 - draw.textlength(text), v - 6), text, fill="black")
        for i, value in enumerate(xs):
            u, _ = at(i, low)
            draw.line([(u, top + PANEL_H), (u, top + PANEL_H + 4)], fill="black")
            draw.text((u - draw.textlength(str(value)) / 2, top + PANEL_H + 6), str(value), fill="black")
        draw.text((left + PANEL_W / 2 - draw.textlength(x_label) / 2, top + PANEL_H + 19), x_label, fill="black")
        for k, name in enumerate(names):
            colour, points = COLOURS[k % len(COLOURS)], panel.series.get(name, [])
            shown = [(i, point) for i, point in enumerate(points) if point[0] is not None]
            nudge = (k - (len(names) - 1) / 2) * 4  # intervals side by side, not on top of each other
            for i, (y, lo, hi) in shown:
                if lo is not None:
                    u, v0 = at(i, lo)
                    _, v1 = at(i, hi)
                    draw.line([(u + nudge, v0), (u + nudge, v1)], fill=colour, width=1)
            line = [at(i, y) for i, (y, _, _) in shown]
            if len(line) > 1:
                draw.line(line, fill=colour, width=2)
            for u, v in line:
                draw.ellipse([u - 3, v - 3, u + 3, v + 3], fill=colour)
    return image
