"""Take docs/chat_page.png: the chat page of `onnxlm serve` answering one question, in Chromium (playwright).

    .venv/bin/python docs/chat_page_screenshot.py models/smollm2-135m-instruct [--out docs/chat_page.png]

Starts the server on the model in this process (a free port), opens http://127.0.0.1:PORT/ in a light-themed
1100x720 window, asks QUESTIONS in one conversation (greedy) and saves the page once the last answer is complete.
Needs the serve and test extras and a Chromium (apt-get install chromium, or --chromium PATH).
"""
from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

import httpx

import onnxlm
from onnxlm.serve.app import ServeConfig, create_app, start_in_thread

QUESTIONS = ["What is the capital of France?", "Give me three tips for learning a new language."]
SYSTEM = "You are a concise assistant."


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", type=Path, help="an exported onnxlm model directory (with a chat template)")
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "docs" / "chat_page.png")
    ap.add_argument("--chromium", default=shutil.which("chromium") or shutil.which("chromium-browser"))
    args = ap.parse_args()
    if not args.chromium:
        raise SystemExit("no Chromium found: apt-get install -y chromium, or --chromium PATH")

    from playwright.sync_api import expect, sync_playwright

    # the server: the model under its directory's name, as `onnxlm serve` names it
    app = create_app(lambda: onnxlm.load(args.model), ServeConfig(model_name=args.model.resolve().name))
    server, thread, port = start_in_thread(app)
    try:
        while httpx.get(f"http://127.0.0.1:{port}/health", timeout=5).status_code != 200:  # 503 while loading
            time.sleep(0.2)
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=args.chromium)
            page = browser.new_page(viewport={"width": 1100, "height": 720}, color_scheme="light")
            page.goto(f"http://127.0.0.1:{port}/")
            expect(page.locator("#model")).to_have_text(args.model.resolve().name, timeout=120_000)
            # the settings shown in the picture: a system prompt, greedy decoding, 160 tokens at most
            page.fill("#system", SYSTEM)
            page.fill("#temperature", "0")
            page.fill("#max-tokens", "160")
            for question in QUESTIONS:
                page.fill("#prompt", question)
                page.click("#send")
                answer = page.locator(".msg.assistant").last
                expect(answer).to_have_attribute("data-state", "done", timeout=120_000)
            time.sleep(0.2)  # the last repaint
            page.screenshot(path=str(args.out))
            print(f"{args.out}: {args.out.stat().st_size / 1024:.0f} KB; {answer.locator('.meta').text_content()}")
            browser.close()
    finally:
        server.should_exit = True
        thread.join(10)


if __name__ == "__main__":
    main()
