#!/usr/bin/env python3
"""The web page of `ferry serve`, in a real headless browser.

Starts a server on SmolLM2 (CPU) and drives Chromium through its WebDriver
(Debian's `chromium` and `chromium-driver`, the `selenium` client): the page
loads, the layer view shows one box per layer, a message streams a reply,
Stop ends a long one, and the serving figures count the requests.

    python3 tests/server/test_web.py [path/to/ferry]

Needs `selenium` importable and `chromedriver` on the PATH (scripts/test.sh
installs both).
"""

import os
import sys
import time
import unittest

from selenium import webdriver
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import test_openai  # noqa: E402  (the Server helper and the model paths)


class WebPageTests(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.server = test_openai.Server("--parallel", "2")
        opts = Options()
        for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                    "--window-size=1280,900"):
            opts.add_argument(arg)
        driver = os.environ.get("CHROMEDRIVER", "/usr/bin/chromedriver")
        cls.browser = webdriver.Chrome(service=Service(driver), options=opts)
        cls.browser.set_page_load_timeout(60)

    @classmethod
    def tearDownClass(cls):
        cls.browser.quit()
        cls.server.stop()

    def wait(self, what, timeout=60):
        return WebDriverWait(self.browser, timeout, poll_frequency=0.2).until(lambda b: what(b))

    def test_page_chat_stop_and_engine_view(self):
        b = self.browser
        b.get(f"http://127.0.0.1:{self.server.port}/")
        self.assertEqual(b.title, "ferry")
        # The layer view: SmolLM2 has 30 layers, all on the CPU here.
        boxes = self.wait(lambda b: b.find_elements(By.CSS_SELECTOR, "#layers .layer") or None)
        self.assertEqual(len(boxes), 30)
        self.assertEqual({x.get_attribute("data-place") for x in boxes}, {"C"})
        self.assertIn("smollm2", b.find_element(By.ID, "model").text)
        # A message streams a reply into the log.
        box = b.find_element(By.ID, "input")
        box.send_keys("What is the capital of France?")
        b.find_element(By.ID, "send").click()
        self.wait(lambda b: b.find_element(By.CSS_SELECTOR, ".msg.user").text == "What is the capital of France?")
        reply = self.wait(lambda b: [m for m in b.find_elements(By.CSS_SELECTOR, ".msg.assistant:not(.thinking)")
                                     if m.get_attribute("data-done") == "1"] or None, timeout=120)[-1]
        self.assertTrue(reply.text.strip(), "an empty reply")
        self.assertNotIn("error", reply.get_attribute("class"))
        # Stop ends a long reply: the buttons come back, the text is kept.
        # (Send only once the page takes messages again: a click on the still
        # disabled button is lost, and Stop then never lights up.)
        self.wait(lambda b: b.find_element(By.ID, "send").is_enabled())
        box.send_keys("Write a very long story about a lighthouse keeper.")
        b.find_element(By.ID, "send").click()
        self.wait(lambda b: b.find_element(By.ID, "stop").is_enabled())
        self.wait(lambda b: len(b.find_elements(By.CSS_SELECTOR, ".msg.assistant:not(.thinking)")[-1].text) > 0)
        b.find_element(By.ID, "stop").click()
        self.wait(lambda b: b.find_element(By.ID, "send").is_enabled())
        last = b.find_elements(By.CSS_SELECTOR, ".msg.assistant:not(.thinking)")[-1]
        self.assertTrue(last.text.endswith("[stopped]"), last.text)
        # The serving figures count the answered request (polled every 2 s).
        self.wait(lambda b: any(r.text.startswith("requests answered") and not r.text.endswith(" 0")
                                for r in b.find_elements(By.CSS_SELECTOR, "#figures tr")), timeout=30)
        # The engine's status, as the page reads it.
        status = b.execute_script("return fetch('/v1/ferry/status').then(r => r.json())")
        self.assertEqual(status["layers"], "C" * 30)
        self.assertGreater(status["metrics"]["generated_tokens"], 0)


if __name__ == "__main__":
    if len(sys.argv) > 1:
        test_openai.FERRY = os.path.abspath(sys.argv.pop(1))
    unittest.main(verbosity=2)
