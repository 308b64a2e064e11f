"""The README's screenshot of `streamer serve`: the default model and prompt, one path painted
across the canvas, about 3 s of streaming. Run it on an idle machine (the page shows the live FPS):

    python docs/screenshot.py docs/screenshot.png

Needs Debian `chromium` and the `playwright` package, as tests/test_ui_browser.py does.
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import socket
import time

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out", help="PNG to write")
    p.add_argument("--seconds", type=float, default=3.0, help="streaming time before the shot (default 3)")
    args = p.parse_args()

    from playwright.sync_api import expect, sync_playwright

    from streamer.ui.app import build_app

    demo = build_app({"default": {"device": "cpu"}})
    demo.queue()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    _, url, _ = demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=shutil.which("chromium") or "/usr/bin/chromium",
                                         args=["--headless=new", "--no-sandbox", "--disable-gpu"])
            page = browser.new_page(viewport={"width": 1280, "height": 1100})
            page.goto(url)
            expect(page.locator(".sc-msg")).to_contain_text("drag to paint", timeout=60_000)
            box = page.locator(".sc-wrap canvas").bounding_box()
            # a slow loop around the middle: the circle has somewhere to go for the whole shot
            pts = [(0.5 + 0.28 * math.cos(a), 0.5 + 0.28 * math.sin(a)) for a in
                   [math.pi + 2 * math.pi * i / 40 for i in range(41)]]
            page.mouse.move(box["x"] + pts[0][0] * box["width"], box["y"] + pts[0][1] * box["height"])
            page.mouse.down()
            for x, y in pts[1:]:
                page.mouse.move(box["x"] + x * box["width"], box["y"] + y * box["height"])
                time.sleep(0.06)
            page.mouse.up()
            page.click("#sc-start")
            expect(page.locator("#sc-stats")).to_contain_text("FPS", timeout=60_000)
            time.sleep(args.seconds)
            page.screenshot(path=args.out, full_page=True)
            print(page.inner_text("#sc-stats"))
            page.click("#sc-stop")
            browser.close()
    finally:
        demo.close()
        demo.streamer.placer.close()


if __name__ == "__main__":
    main()
