#!/usr/bin/env python
"""Check the static docs in a real browser: headless Chromium screenshots of the index, the tutorial and the figures.

    python tools/screenshot_docs.py [--no-build | --no-exec] [--docs _docs] [--out runs/docs_screenshots]

Builds `_docs/` with `tools/build_docs.py` (or, with `--no-build`, uses the one there), opens index.html,
tutorial_tapseq.html (70_tutorial_tapseq) and plotting.html (60_plotting) in headless Chromium (the Debian package
`chromium`) over the DevTools protocol (`--remote-debugging-pipe`, no extra Python package) and writes a PNG of each
(full width, the top `--max-height` pixels) to `--out`. It fails (exit 1) on any console error, uncaught exception,
failed load, request that leaves the local files (`http(s)://`), or image that did not decode; exit 2 if Chromium
is missing.
"""
from __future__ import annotations
import argparse, base64, fcntl, json, os, queue, shutil, subprocess, sys, tempfile, threading, time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PAGES = ["index.html", "tutorial_tapseq.html", "plotting.html"]     # index, 70_tutorial_tapseq, 60_plotting
BROWSERS = ("chromium", "chromium-browser", "google-chrome")


class Chromium:
    "Headless Chromium driven over the DevTools protocol on a pipe (fds 3 and 4, messages ended by NUL)."

    def __init__(self, exe: str):
        to_chrome, self._w = os.pipe()
        self._r, from_chrome = os.pipe()
        a, b = fcntl.fcntl(to_chrome, fcntl.F_DUPFD, 10), fcntl.fcntl(from_chrome, fcntl.F_DUPFD, 10)
        self._profile = tempfile.mkdtemp(prefix="chromium-profile-")
        cmd = [exe, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--no-first-run",
               "--remote-debugging-pipe", f"--user-data-dir={self._profile}", "about:blank"]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, pass_fds=(3, 4),
                                     preexec_fn=lambda: (os.dup2(a, 3), os.dup2(b, 4)))
        for fd in (to_chrome, from_chrome, a, b): os.close(fd)
        self._id, self.events, self._replies = 0, [], {}
        self._q: queue.Queue = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        buf = b""
        while chunk := os.read(self._r, 1 << 16):
            buf += chunk
            *msgs, buf = buf.split(b"\0")
            for m in msgs: self._q.put(json.loads(m))

    def send(self, method: str, session: str | None = None, timeout: float = 60, **params) -> dict:
        "Call a DevTools method and wait for its reply; events that arrive meanwhile are kept in `events`."
        self._id += 1
        msg = {"id": self._id, "method": method, "params": params, **({"sessionId": session} if session else {})}
        os.write(self._w, json.dumps(msg).encode() + b"\0")
        return self._wait(lambda m: m.get("id") == self._id, timeout).get("result", {})

    def _wait(self, match, timeout: float) -> dict:
        end = time.monotonic() + timeout
        while True:
            try: m = self._q.get(timeout=max(0.01, end - time.monotonic()))
            except queue.Empty: raise TimeoutError("no answer from Chromium") from None
            if "error" in m and "id" in m: raise RuntimeError(f"DevTools error: {m['error']}")
            if "method" in m: self.events.append(m)
            if match(m): return m

    def wait_event(self, method: str, session: str, timeout: float = 60):
        if any(e["method"] == method and e.get("sessionId") == session for e in self.events): return
        self._wait(lambda m: m.get("method") == method and m.get("sessionId") == session, timeout)

    def close(self):
        try: self.send("Browser.close", timeout=10)
        except Exception: pass
        try: self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired: self.proc.kill()
        shutil.rmtree(self._profile, ignore_errors=True)


def _problems(events: list[dict]) -> list[str]:
    "Console errors, uncaught exceptions, failed loads and non-local requests among one page's events."
    out, urls = [], {}
    for e in events:
        m, p = e["method"], e.get("params", {})
        if m == "Runtime.exceptionThrown": out.append(f"uncaught: {p['exceptionDetails'].get('exception', {}).get('description') or p['exceptionDetails']['text']}")
        elif m == "Runtime.consoleAPICalled" and p["type"] in ("error", "assert"):
            out.append("console.error: " + " ".join(str(a.get("value", a.get("description", ""))) for a in p["args"]))
        elif m == "Log.entryAdded" and p["entry"]["level"] == "error": out.append(f"console: {p['entry']['text']} {p['entry'].get('url', '')}")
        elif m == "Network.loadingFailed": out.append(f"failed load: {p.get('errorText')} {urls.get(p['requestId'], '')}")
        elif m == "Network.requestWillBeSent":
            urls[p["requestId"]] = p["request"]["url"]
            if not p["request"]["url"].startswith(("file:", "data:", "about:")): out.append(f"non-local request: {p['request']['url']}")
    return out


def shoot(browser: Chromium, page: Path, png: Path, width: int = 1280, max_height: int = 5000) -> list[str]:
    "Load `page`, write a PNG of its top `max_height` pixels to `png`; returns the problems found."
    target = browser.send("Target.createTarget", url="about:blank")["targetId"]
    s = browser.send("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
    for m in ("Page.enable", "Runtime.enable", "Log.enable", "Network.enable"): browser.send(m, s)
    browser.send("Emulation.setDeviceMetricsOverride", s, width=width, height=900, deviceScaleFactor=1, mobile=False)
    start = len(browser.events)
    browser.send("Page.navigate", s, url=page.resolve().as_uri())
    browser.wait_event("Page.loadEventFired", s)
    time.sleep(0.5)                                             # late console messages
    js = "[document.documentElement.scrollHeight, [...document.images].filter(i => !i.complete || !i.naturalWidth).length]"
    height, broken = browser.send("Runtime.evaluate", s, expression=js, returnByValue=True)["result"]["value"]
    h = min(height, max_height)                                 # a window as tall as the shot: the sidebar spans it
    browser.send("Emulation.setDeviceMetricsOverride", s, width=width, height=h, deviceScaleFactor=1, mobile=False)
    shot = browser.send("Page.captureScreenshot", s, format="png", clip={"x": 0, "y": 0, "width": width, "height": h, "scale": 1})
    png.write_bytes(base64.b64decode(shot["data"]))
    browser.send("Target.closeTarget", targetId=target)
    probs = _problems([e for e in browser.events[start:] if e.get("sessionId") == s])
    return probs + ([f"{broken} image(s) did not load"] if broken else [])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--docs", default=str(ROOT / "_docs"), help="docs folder (default _docs)")
    ap.add_argument("--no-build", action="store_true", help="use the docs folder as it is (default: build it first)")
    ap.add_argument("--no-exec", action="store_true", help="build without running show_doc (build_docs.py --no-exec)")
    ap.add_argument("--out", default=str(ROOT / "runs" / "docs_screenshots"), help="where the PNGs go")
    ap.add_argument("--max-height", type=int, default=5000, help="pixels of each page kept in its PNG")
    a = ap.parse_args(argv)
    exe = next((shutil.which(b) for b in BROWSERS if shutil.which(b)), None)
    if exe is None:
        print("screenshot_docs: Chromium not found; install the Debian package: apt-get install -y chromium", file=sys.stderr)
        return 2
    docs, out = Path(a.docs), Path(a.out)
    if not a.no_build:
        sys.path.insert(0, str(Path(__file__).parent))
        from build_docs import build
        build(docs, execute=not a.no_exec, verbose=False)
    missing = [p for p in PAGES if not (docs / p).exists()]
    if missing: print(f"screenshot_docs: missing in {docs}: {missing}", file=sys.stderr); return 1
    out.mkdir(parents=True, exist_ok=True)
    browser, bad = Chromium(exe), 0
    try:
        for p in PAGES:
            png = out / p.replace(".html", ".png")
            probs = shoot(browser, docs / p, png, max_height=a.max_height)
            print(f"{png}: {'ok' if not probs else f'{len(probs)} problem(s)'}")
            for msg in probs: print(f"  {msg}")
            bad += bool(probs)
    finally: browser.close()
    return 1 if bad else 0


if __name__ == "__main__": sys.exit(main())
