"""The web page in headless Chromium (Debian's chromium + chromium-driver, driven by selenium): upload an image,
see the top-k bars and the explanation, route a task; a screenshot is saved as a test artefact."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.serve_fixtures import API_KEY, ROOT, ROUTER_TEXT

pytest_plugins = ["tests.serve_fixtures"]
CHROMIUM, DRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
ARTIFACTS = Path(os.environ.get("VISROUTE_TEST_ARTIFACTS", ROOT / "test-artifacts"))


@pytest.fixture()
def browser():
    if not CHROMIUM.exists() or not DRIVER.exists():
        pytest.skip("headless Chromium is not installed (apt-get install chromium chromium-driver)")
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (visroute[test])")
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = str(CHROMIUM)
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1200,1500",
                "--disable-extensions", "--no-first-run"):
        opts.add_argument(arg)
    driver = webdriver.Chrome(service=Service(executable_path=str(DRIVER)), options=opts)
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()


class _Wait:
    """WebDriverWait that, on a timeout, saves a screenshot and fails with what the page's status line says."""

    def __init__(self, driver, seconds: float):
        from selenium.webdriver.support.ui import WebDriverWait

        self.driver, self.wait = driver, WebDriverWait(driver, seconds)

    def until(self, condition):
        from selenium.common.exceptions import TimeoutException
        from selenium.webdriver.common.by import By

        try:
            return self.wait.until(condition)
        except TimeoutException:
            ARTIFACTS.mkdir(parents=True, exist_ok=True)
            self.driver.save_screenshot(str(ARTIFACTS / "serve-page-failure.png"))
            status = self.driver.find_element(By.ID, "status").text
            console = self.driver.get_log("browser")
            pytest.fail(f"the page did not get there; status line: {status!r}; console: {console}")


def test_page_upload_classify_explain_and_route(served, browser, shared_data):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support import expected_conditions as EC
    from selenium.webdriver.support.ui import Select

    wait = _Wait(browser, 20)
    browser.get(served.url + "/")
    key = browser.find_element(By.ID, "api-key")
    key.send_keys(API_KEY + Keys.TAB)  # leaving the field fires 'change': the page lists models with the key
    wait.until(lambda d: len(Select(d.find_element(By.ID, "label-set")).options) == 2)
    browser.get_log("browser")  # drop the 401 of the first listing, made before the key was typed
    # the key field shows its whole placeholder; a label set without descriptions says why explain is off
    assert browser.execute_script("const k = document.getElementById('api-key'); k.value = '';"
                                  "const fits = k.scrollWidth <= k.clientWidth; k.value = arguments[0]; return fits;",
                                  API_KEY)
    plain = [o.get_attribute("value") for o in Select(browser.find_element(By.ID, "label-set")).options
             if o.get_attribute("value") != "explained"][0]
    Select(browser.find_element(By.ID, "label-set")).select_by_value(plain)
    assert "explain is off" in browser.find_element(By.ID, "explain-why").text
    Select(browser.find_element(By.ID, "label-set")).select_by_value("explained")
    wait.until(EC.element_to_be_clickable((By.ID, "explain"))).click()
    browser.find_element(By.ID, "file").send_keys(str(shared_data / "imagenet-sample" / "n02123045_tabby.JPEG"))
    browser.find_element(By.ID, "classify-btn").click()
    wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#classify-result .bar")) == 3)
    names = [e.text for e in browser.find_elements(By.CSS_SELECTOR, "#classify-result .bar .name")]
    assert sorted(names) == ["goldfish", "tabby cat", "tench"]
    assert "random weights" in browser.find_element(By.ID, "classify-result").text
    explanation = browser.find_element(By.ID, "explanation")
    assert explanation.is_displayed() and "striped fur" in explanation.text

    task = browser.find_element(By.ID, "task")
    task.clear()
    task.send_keys(ROUTER_TEXT)
    browser.find_element(By.ID, "route-btn").click()
    answer = wait.until(EC.visibility_of_element_located((By.CSS_SELECTOR, "#route-result .answer")))
    assert answer.text == "large answered: cat"
    assert len(browser.find_elements(By.CSS_SELECTOR, "#route-result .bar")) == 2
    route_text = browser.find_element(By.ID, "route-result").text
    assert "predicted probability of success per model" in route_text and "expected cost" in route_text
    assert route_text.count("expected") >= 3 and "0.00 s" not in route_text and "round trip" in route_text
    assert browser.find_element(By.ID, "status").text == ""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shot = ARTIFACTS / "serve-page.png"
    assert browser.save_screenshot(str(shot)) and shot.stat().st_size > 10_000
    assert not [e for e in browser.get_log("browser") if e.get("level") == "SEVERE"]
