"""Drives one headless Chromium tab over the DevTools protocol, for server/tests/console.rs.

Usage: cdp.py PORT. Reads one JSON command a line on stdin and answers each with one JSON line
on stdout: {"ok": true, ...} or {"ok": false, "error": "..."}. Commands:

  {"op": "goto", "url": U}            navigate and wait for the load event
  {"op": "eval", "expr": E}           evaluate E (promises awaited) and return its value
  {"op": "submit", "expr": E}         evaluate E (say, a click that posts a form) and wait for
                                      the page it leads to to load
  {"op": "screenshot", "path": P}     write a PNG of the page

Dialogs (window.confirm) are accepted. Every wait is bounded by TIMEOUT seconds.
"""

import base64
import json
import sys
import time
import urllib.request

import websocket

TIMEOUT = 30


class Tab:
    def __init__(self, port):
        deadline = time.monotonic() + TIMEOUT
        while True:
            try:
                targets = json.load(urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=5))
                pages = [t for t in targets if t.get("type") == "page"]
                if pages:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("chromium shows no page target")
            time.sleep(0.05)
        self.ws = websocket.create_connection(
            pages[0]["webSocketDebuggerUrl"], timeout=TIMEOUT, suppress_origin=True
        )
        self.next_id = 0
        self.events = []
        self.call("Page.enable")
        self.call("Runtime.enable")

    def send(self, method, params=None):
        self.next_id += 1
        self.ws.send(json.dumps({"id": self.next_id, "method": method, "params": params or {}}))
        return self.next_id

    def read(self, deadline):
        self.ws.settimeout(max(0.05, deadline - time.monotonic()))
        message = json.loads(self.ws.recv())
        if message.get("method") == "Page.javascriptDialogOpening":
            self.send("Page.handleJavaScriptDialog", {"accept": True})
        return message

    def call(self, method, params=None, wait_load=False):
        """Sends a command and waits for its answer (and, with wait_load, for a load event
        that comes after it)."""
        sent = self.send(method, params)
        deadline = time.monotonic() + TIMEOUT
        answer, loaded = None, not wait_load
        while answer is None or not loaded:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{method}: no answer within {TIMEOUT}s")
            message = self.read(deadline)
            if message.get("id") == sent:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                answer = message.get("result", {})
            elif message.get("method") == "Page.loadEventFired":
                loaded = True
        return answer

    def evaluate(self, expr, wait_load=False):
        result = self.call(
            "Runtime.evaluate",
            {"expression": expr, "awaitPromise": True, "returnByValue": True},
            wait_load=wait_load,
        )
        if "exceptionDetails" in result:
            details = result["exceptionDetails"]
            text = details.get("exception", {}).get("description") or details.get("text")
            raise RuntimeError(f"script failed: {text}")
        return result.get("result", {}).get("value")


def main():
    tab = Tab(int(sys.argv[1]))
    for line in sys.stdin:
        try:
            command = json.loads(line)
            op = command["op"]
            if op == "goto":
                tab.call("Page.navigate", {"url": command["url"]}, wait_load=True)
                answer = {"ok": True}
            elif op == "eval":
                answer = {"ok": True, "value": tab.evaluate(command["expr"])}
            elif op == "submit":
                tab.evaluate(command["expr"], wait_load=True)
                answer = {"ok": True}
            elif op == "screenshot":
                shot = tab.call("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True})
                with open(command["path"], "wb") as out:
                    out.write(base64.b64decode(shot["data"]))
                answer = {"ok": True}
            else:
                answer = {"ok": False, "error": f"unknown op {op!r}"}
        except Exception as err:  # the test shows it, with the command
            answer = {"ok": False, "error": f"{type(err).__name__}: {err}"}
        print(json.dumps(answer), flush=True)


if __name__ == "__main__":
    main()
