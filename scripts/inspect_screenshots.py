"""The README's pictures of `scratch-gpt inspect`: one screenshot per section of a report.html.

    scratch-gpt inspect runs/quickstart/model --prompt "I HAD always thought Jack Gisburn rather a cheap genius"
    python scripts/inspect_screenshots.py runs/inspect/report.html scripts/

writes inspect_tokens.png, inspect_next_token.png, inspect_attention.png, inspect_logit_lens.png and
inspect_embeddings.png, each cut to at most --max-height pixels and stored with a 128-colour palette
(small enough for a README). Needs playwright and a Chromium (default /usr/bin/chromium).
"""

import argparse
import io
from pathlib import Path

from PIL import Image
from playwright.sync_api import sync_playwright

SECTIONS = ("tokens", "next-token", "attention", "logit-lens", "embeddings")
FLAGS = ["--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking", "--disable-component-update"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("report", help="a report.html written by scratch-gpt inspect")
    parser.add_argument("out_dir", help="folder for the PNGs")
    parser.add_argument("--width", type=int, default=1000, help="page width in pixels")
    parser.add_argument("--max-height", type=int, default=1800, help="each picture is cut to this height")
    parser.add_argument("--chromium", default="/usr/bin/chromium")
    args = parser.parse_args()
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=args.chromium, headless=True, args=FLAGS)
        page = browser.new_page(viewport={"width": args.width, "height": 800})
        page.goto(Path(args.report).resolve().as_uri(), wait_until="load")
        for section in SECTIONS:
            shot = Image.open(io.BytesIO(page.locator(f"section#{section}").screenshot()))
            shot = shot.crop((0, 0, shot.width, min(shot.height, args.max_height))).convert("RGB")
            path = Path(args.out_dir) / f"inspect_{section.replace('-', '_')}.png"
            shot.quantize(colors=128).save(path, optimize=True)
            print(f"{path}: {shot.width}x{shot.height}, {path.stat().st_size // 1024} KB")
        browser.close()


if __name__ == "__main__":
    main()
