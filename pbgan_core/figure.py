"""A figure drawn once and written twice, as PNG (PIL) and as SVG (text), with the same layout:
rectangles, lines, dots and left-aligned text in pixel coordinates."""
from __future__ import annotations

import html
import io

from PIL import Image, ImageDraw, ImageFont

Colour = tuple[int, int, int] | str
FONT_SIZE = 13


def font() -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=FONT_SIZE)
    except TypeError:  # Pillow < 10.1 has one fixed bitmap font
        return ImageFont.load_default()


_PROBE = ImageDraw.Draw(Image.new("RGB", (1, 1)))


def text_width(text: str) -> int:
    left, _, right, _ = _PROBE.textbbox((0, 0), text, font=font())
    return right - left


def _svg_colour(colour: Colour) -> str:
    return colour if isinstance(colour, str) else "rgb({},{},{})".format(*colour)


class Figure:
    def __init__(self, width: int, height: int):
        self.width, self.height = int(width), int(height)
        self.ops: list[tuple] = []

    def rect(self, box, fill: Colour) -> None:
        self.ops.append(("rect", tuple(box), fill))

    def line(self, points, fill: Colour, width: int = 1) -> None:
        self.ops.append(("line", [tuple(p) for p in points], fill, width))

    def dot(self, x: float, y: float, radius: float, fill: Colour) -> None:
        self.ops.append(("dot", (x, y), radius, fill))

    def text(self, x: float, y: float, text: str, fill: Colour = "black") -> None:
        """`text` with its top-left corner at (x, y)."""
        self.ops.append(("text", (x, y), text, fill))

    def png(self) -> bytes:
        img = Image.new("RGB", (self.width, self.height), "white")
        draw, face = ImageDraw.Draw(img), font()
        for op in self.ops:
            if op[0] == "rect":
                draw.rectangle(op[1], fill=op[2])
            elif op[0] == "line":
                draw.line(op[1], fill=op[2], width=op[3])
            elif op[0] == "dot":
                (x, y), r = op[1], op[2]
                draw.ellipse([x - r, y - r, x + r, y + r], fill=op[3])
            else:
                draw.text(op[1], op[2], fill=op[3], font=face)
        buf = io.BytesIO()
        img.save(buf, format="PNG")
        return buf.getvalue()

    def svg(self) -> bytes:
        parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{self.width}" height="{self.height}" '
                 f'viewBox="0 0 {self.width} {self.height}" font-family="sans-serif" font-size="{FONT_SIZE}">',
                 f'<rect width="{self.width}" height="{self.height}" fill="white"/>']
        for op in self.ops:
            if op[0] == "rect":
                x0, y0, x1, y1 = op[1]
                parts.append(f'<rect x="{x0:g}" y="{y0:g}" width="{x1 - x0 + 1:g}" height="{y1 - y0 + 1:g}" '
                             f'fill="{_svg_colour(op[2])}"/>')
            elif op[0] == "line":
                points = " ".join(f"{x:.1f},{y:.1f}" for x, y in op[1])
                parts.append(f'<polyline points="{points}" fill="none" stroke="{_svg_colour(op[2])}" '
                             f'stroke-width="{op[3]}" stroke-linejoin="round"/>')
            elif op[0] == "dot":
                (x, y), r = op[1], op[2]
                parts.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="{r:g}" fill="{_svg_colour(op[3])}"/>')
            else:
                (x, y), text = op[1], op[2]  # SVG places text by its baseline
                parts.append(f'<text x="{x:.1f}" y="{y + FONT_SIZE - 2:.1f}" fill="{_svg_colour(op[3])}">'
                             f"{html.escape(text)}</text>")
        parts.append("</svg>\n")
        return "\n".join(parts).encode()
