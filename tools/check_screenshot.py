#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""Checks a PNG screenshot of an attribution HTML report: it decodes (standard library only) and shows
the report's colours, both the green of positive and the red of negative attributions, over a
meaningful number of pixels. A page that failed to render (blank, error page) fails the check.

Usage: check_screenshot.py SCREENSHOT.png [--green-only] [--curves]
--green-only: a page whose values are (nearly) all positive, as the component demo's heads grid; only
the green is required.
--curves: the page also draws the faithfulness chart: its deletion (blue, #1f77b4) and insertion
(orange, #ff7f0e) curves must both show.
"""
import struct
import sys
import zlib


def read_png(path):
    data = open(path, "rb").read()
    if data[:8] != b"\x89PNG\r\n\x1a\n":
        raise SystemExit(f"{path}: not a PNG")
    pos, idat, header = 8, b"", None
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + length]
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            idat += body
        pos += 12 + length
    width, height, depth, color, _, _, interlace = header
    if depth != 8 or color not in (2, 6) or interlace:
        raise SystemExit(f"{path}: unsupported PNG layout (depth {depth}, colour type {color})")
    channels = 3 if color == 2 else 4
    raw, stride = zlib.decompress(idat), width * channels
    rows, previous = [], bytearray(stride)
    for y in range(height):
        kind, line = raw[y * (stride + 1)], bytearray(raw[y * (stride + 1) + 1:(y + 1) * (stride + 1)])
        for i in range(stride):
            left = line[i - channels] if i >= channels else 0
            up, corner = previous[i], previous[i - channels] if i >= channels else 0
            if kind == 1:
                line[i] = (line[i] + left) & 255
            elif kind == 2:
                line[i] = (line[i] + up) & 255
            elif kind == 3:
                line[i] = (line[i] + (left + up) // 2) & 255
            elif kind == 4:
                p = left + up - corner
                pa, pb, pc = abs(p - left), abs(p - up), abs(p - corner)
                line[i] = (line[i] + (left if pa <= pb and pa <= pc else up if pb <= pc else corner)) & 255
        rows.append(line)
        previous = line
    return width, height, channels, rows


def main():
    width, height, channels, rows = read_png(sys.argv[1])
    green = red = blue = orange = 0
    near = lambda r, g, b, colour: max(abs(r - colour[0]), abs(g - colour[1]), abs(b - colour[2])) < 24  # noqa: E731
    for line in rows:
        for x in range(0, width * channels, channels):
            r, g, b = line[x], line[x + 1], line[x + 2]
            if g > 240 and r < 235 and abs(r - b) < 6:
                green += 1
            elif r > 240 and g < 235 and abs(g - b) < 6:
                red += 1
            elif near(r, g, b, (31, 119, 180)):
                blue += 1
            elif near(r, g, b, (255, 127, 14)):
                orange += 1
    print(f"check_screenshot: {width}x{height}, {green} green, {red} red, {blue} curve-blue and {orange} "
          "curve-orange pixels")
    if green < 200 or (red < 200 and "--green-only" not in sys.argv[2:]):
        raise SystemExit("check_screenshot: the report's colours are missing: the page did not render")
    if "--curves" in sys.argv[2:] and (blue < 200 or orange < 200):
        raise SystemExit("check_screenshot: the faithfulness curves are missing")


if __name__ == "__main__":
    main()
