"""End-to-end test of the Likeness desktop app in a real window.

Xvfb + tauri-driver + WebKitWebDriver drive the release binary through: the first-start privacy
notice, dropping the sample photo (a File made from the photo's bytes, dropped on the drop zone as a
person's drag and drop delivers it), generating, the result in the gallery, exporting it through the
native save dialog (driven with xdotool), deleting all data, and a restart (the notice stays
acknowledged). Screenshots of each screen go to target/e2e-screenshots/.

Usage: python tests/e2e/test_e2e.py target/release/likeness-app   (tools/e2e.sh sets up the rest)
"""

import base64
import os
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from pathlib import Path

from selenium import webdriver
from selenium.common.exceptions import ElementNotInteractableException, StaleElementReferenceException
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.common.options import ArgOptions
from selenium.webdriver.support import expected_conditions as EC
from selenium.webdriver.support.select import Select
from selenium.webdriver.support.ui import WebDriverWait

ROOT = Path(__file__).resolve().parents[2]
SHOTS = ROOT / "target" / "e2e-screenshots"
PHOTO = ROOT / "assets" / "photos" / "grace_hopper_512x512.jpg"
# The tiny random-weight Stable Diffusion model (diffusers folder) of the engine's tests.
TINY_SD = ROOT / "crates" / "engine" / "tests" / "fixtures" / "sd" / "tiny"
DRIVER = os.environ.get("TAURI_DRIVER_URL", "http://127.0.0.1:4444")

DROP_JS = """
const [b64, name, done] = [arguments[0], arguments[1], arguments[arguments.length - 1]];
const bin = atob(b64);
const bytes = new Uint8Array(bin.length);
for (let i = 0; i < bin.length; i++) bytes[i] = bin.charCodeAt(i);
const file = new File([bytes], name, { type: "image/jpeg" });
const dt = new DataTransfer();
dt.items.add(file);
const zone = document.getElementById("dropzone");
for (const type of ["dragenter", "dragover", "drop"]) {
  zone.dispatchEvent(new DragEvent(type, { dataTransfer: dt, bubbles: true, cancelable: true }));
}
done(dt.files.length);
"""


def session(app):
    opts = ArgOptions()
    opts.set_capability("browserName", "wry")
    opts.set_capability("tauri:options", {"application": str(app)})
    return webdriver.Remote(command_executor=DRIVER, options=opts)


def shot(driver, name):
    SHOTS.mkdir(parents=True, exist_ok=True)
    driver.save_screenshot(str(SHOTS / f"{name}.png"))


def screen_shot(name):
    """The whole X screen (native dialogs are not part of the webview's screenshot)."""
    SHOTS.mkdir(parents=True, exist_ok=True)
    subprocess.run(["import", "-window", "root", str(SHOTS / f"{name}.png")], check=False, timeout=20)


def wait(driver, seconds=20):
    # Lists are re-rendered as progress comes in: an element may be replaced while it is read.
    return WebDriverWait(driver, seconds, poll_frequency=0.2, ignored_exceptions=[StaleElementReferenceException])


def ready(driver):
    wait(driver).until(lambda d: d.execute_script("return document.body.dataset.ready === 'true'"))


def click(driver, css):
    # Lists are re-rendered as progress comes in: a row found a moment ago may be replaced.
    for attempt in range(5):
        el = wait(driver).until(EC.element_to_be_clickable((By.CSS_SELECTOR, css)))
        try:
            # The Create form is taller than a 700 px window: bring the control into view first.
            driver.execute_script("arguments[0].scrollIntoView({block: 'center'})", el)
            el.click()
            return el
        except StaleElementReferenceException:
            if attempt == 4:
                raise
            time.sleep(0.1)


def drive_save_dialog(path, errors):
    """Types `path` into the GTK save dialog titled "Export headshot" and presses Enter."""
    try:
        win = subprocess.run(
            ["xdotool", "search", "--sync", "--name", "Export headshot"], capture_output=True, text=True, timeout=30
        ).stdout.split()
        if not win:
            errors.append("the save dialog did not appear")
            return
        w = win[-1]
        time.sleep(0.8)  # let GTK finish mapping the dialog before typing into it
        subprocess.run(["xdotool", "windowfocus", "--sync", w], check=True, timeout=10)
        subprocess.run(["xdotool", "key", "--clearmodifiers", "ctrl+a"], check=True, timeout=10)
        subprocess.run(["xdotool", "type", "--delay", "20", path], check=True, timeout=30)
        time.sleep(0.3)
        screen_shot("06-export-dialog")
        subprocess.run(["xdotool", "key", "Return"], check=True, timeout=10)
    except Exception as e:  # reported by the test that waits for the file
        errors.append(f"driving the save dialog failed: {e}")


def drive_open_dialog(path, errors):
    """Picks `path` in the GTK open dialog titled "Choose 1 to 3 photos of yourself"."""
    try:
        win = subprocess.run(
            ["xdotool", "search", "--sync", "--name", "Choose 1 to 3 photos"], capture_output=True, text=True, timeout=30
        ).stdout.split()
        if not win:
            errors.append("the open dialog did not appear")
            return
        time.sleep(0.8)
        subprocess.run(["xdotool", "windowfocus", "--sync", win[-1]], check=True, timeout=10)
        # Ctrl+L opens GTK's location bar; give it a moment before typing the path.
        subprocess.run(["xdotool", "key", "--clearmodifiers", "ctrl+l"], check=True, timeout=10)
        time.sleep(0.6)
        subprocess.run(["xdotool", "key", "--clearmodifiers", "ctrl+a"], check=True, timeout=10)
        subprocess.run(["xdotool", "type", "--delay", "20", path], check=True, timeout=30)
        time.sleep(0.5)
        screen_shot("09-open-dialog")
        subprocess.run(["xdotool", "key", "Return"], check=True, timeout=10)
    except Exception as e:
        errors.append(f"driving the open dialog failed: {e}")


def drive_dialog(title, path, errors, shot_name=None, location=True, folder=False):
    """Types `path` into the GTK file dialog titled `title` (location bar) and presses Enter. For a
    folder picker, the folder itself is chosen."""
    try:
        win = subprocess.run(["xdotool", "search", "--sync", "--name", title], capture_output=True, text=True, timeout=30).stdout.split()
        if not win:
            errors.append(f"the dialog '{title}' did not appear")
            return
        time.sleep(0.8)
        subprocess.run(["xdotool", "windowfocus", "--sync", win[-1]], check=True, timeout=10)
        if folder:
            # Out of "Recent" (where no folder can be chosen) into the home folder first.
            subprocess.run(["xdotool", "key", "--clearmodifiers", "alt+Home"], check=True, timeout=10)
            time.sleep(0.6)
        if location:
            subprocess.run(["xdotool", "key", "--clearmodifiers", "ctrl+l"], check=True, timeout=10)
            time.sleep(0.6)
        subprocess.run(["xdotool", "key", "--clearmodifiers", "ctrl+a"], check=True, timeout=10)
        subprocess.run(["xdotool", "type", "--delay", "20", path], check=True, timeout=30)
        time.sleep(0.5)
        if shot_name:
            screen_shot(shot_name)
        if folder:
            # GTK completes a folder's name with "/" (selected): removing it makes Enter choose
            # the folder instead of opening it.
            subprocess.run(["xdotool", "key", "Delete"], check=True, timeout=10)
            time.sleep(0.3)
        subprocess.run(["xdotool", "key", "Return"], check=True, timeout=10)
    except Exception as e:
        errors.append(f"driving the dialog '{title}' failed: {e}")


def with_dialog(driver, css, title, path, shot_name=None, folder=False):
    """Clicks `css`, which opens a native dialog, and answers it with `path`."""
    errors = []
    t = threading.Thread(target=drive_dialog, args=(title, str(path), errors, shot_name, True, folder))
    t.start()
    click(driver, css)
    t.join(90)
    assert not errors, errors


FOCUSABLE_JS = """
const panel = document.querySelector('main section:not([hidden])');
const all = [...document.querySelectorAll('header button[role=tab][tabindex="0"], #' + panel.id + ' :is(button, input, select, textarea, a[href], [tabindex="0"])')];
// A radio group is one Tab stop (its checked radio); the arrow keys move within it.
const otherRadio = e => e.type === 'radio' && !e.checked && [...document.getElementsByName(e.name)].some(r => r.checked);
return all.filter(e => !e.disabled && !otherRadio(e) && e.offsetParent !== null && getComputedStyle(e).visibility !== 'hidden').map(e => {
  if (!e.dataset.e2e) e.dataset.e2e = 'k' + Math.random().toString(36).slice(2);
  return e.dataset.e2e;
});
"""

ACTIVE_JS = """
const e = document.activeElement;
if (!e || e === document.body) return null;
if (!e.dataset.e2e) e.dataset.e2e = 'k' + Math.random().toString(36).slice(2);
const st = getComputedStyle(e);
const r = e.getBoundingClientRect();
return [e.dataset.e2e, st.outlineStyle, parseFloat(st.outlineWidth) || 0, r.width > 0 && r.height > 0, e.id || e.textContent.trim().slice(0, 30)];
"""

OVERFLOW_JS = """
const m = document.querySelector('main');
return [document.documentElement.scrollWidth - document.documentElement.clientWidth, m.scrollWidth - m.clientWidth];
"""


def count(driver, css):
    """How many elements match (read in the page: a list re-rendered meanwhile can't go stale)."""
    return driver.execute_script("return document.querySelectorAll(arguments[0]).length", css)


def keys(driver, *k):
    """Presses keys on whatever has focus (W3C actions: no element lookup, which CSS zoom confuses)."""
    ActionChains(driver).send_keys(*k).perform()


def keyboard_sweep(driver, screen):
    """Every control of the shown screen is reached by Tab, each with a visible focus ring. Focus
    starts on the screen's tab, reached with the arrow keys."""
    wanted = set(driver.execute_script(FOCUSABLE_JS))
    assert wanted, f"{screen}: no controls found"
    reached, no_ring = set(), []

    def record():
        a = driver.execute_script(ACTIVE_JS)
        if a is None:
            return
        key, style, width, shown, name = a
        if key in wanted and key not in reached:
            reached.add(key)
            if style == "none" or width < 2 or not shown:
                no_ring.append(name)

    record()
    for _ in range(len(wanted) * 2 + 10):
        keys(driver, Keys.TAB)
        record()
        if reached == wanted:
            break
    missing = driver.execute_script(
        "return arguments[0].map(k => { const e = document.querySelector(`[data-e2e=\"${k}\"]`); return e ? (e.id || e.getAttribute('aria-label') || e.textContent.trim().slice(0, 30)) : k; })",
        sorted(wanted - reached),
    )
    assert not missing, f"{screen}: not reachable by Tab: {missing}"
    assert not no_ring, f"{screen}: no visible focus ring on {no_ring}"


def main(app):
    results = []
    export_dir = Path(tempfile.mkdtemp(prefix="likeness-e2e-export-"))
    exported = export_dir / "my-headshot.png"
    several_dir = export_dir / "several"
    several_dir.mkdir()
    batch_in = export_dir / "batch-in"
    batch_out = export_dir / "batch-out"
    batch_in.mkdir()
    batch_out.mkdir()
    for name in ["a", "b", "c"]:
        (batch_in / f"{name}.jpg").write_bytes(PHOTO.read_bytes())
    (batch_in / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not really a JPEG")

    def step(name, fn):
        t0 = time.monotonic()
        try:
            fn()
            results.append((name, True, ""))
            print(f"ok   {name} ({time.monotonic() - t0:.1f} s)", flush=True)
        except Exception:
            results.append((name, False, traceback.format_exc()))
            print(f"FAIL {name}\n{traceback.format_exc()}", flush=True)
            raise

    driver = session(app)
    try:

        def first_start():
            ready(driver)
            wait(driver).until(lambda d: d.execute_script("return document.getElementById('privacy').open"))
            shot(driver, "01-privacy-notice")
            # Keyboard only: the dialog's button has focus; Enter acknowledges.
            driver.switch_to.active_element.send_keys(Keys.ENTER)
            wait(driver).until(lambda d: not d.execute_script("return document.getElementById('privacy').open"))

        step("first start shows the privacy notice, acknowledged once", first_start)

        def layout_and_keyboard():
            size = driver.get_window_size()
            assert size["width"] <= 1030 and size["height"] <= 710, size
            overflow = driver.execute_script("return document.documentElement.scrollWidth - window.innerWidth")
            assert overflow <= 0, f"horizontal overflow of {overflow}px at {size}"
            driver.find_element(By.ID, "tab-create").click()
            driver.switch_to.active_element.send_keys(Keys.ARROW_RIGHT)
            assert driver.execute_script("return document.activeElement.id") == "tab-queue"
            assert driver.find_element(By.ID, "tab-queue").get_attribute("aria-selected") == "true"
            driver.switch_to.active_element.send_keys(Keys.ARROW_LEFT)
            assert driver.find_element(By.ID, "create").is_displayed()
            # Every form control has a label.
            unlabeled = driver.execute_script(
                "return [...document.querySelectorAll('select, input')].filter(e => !e.labels?.length && !e.getAttribute('aria-label')).map(e => e.id)"
            )
            assert unlabeled == [], unlabeled
            shot(driver, "02-create-empty")

        step("1024x700 window, keyboard tabs, labelled controls", layout_and_keyboard)

        def drop_photo():
            b64 = base64.b64encode(PHOTO.read_bytes()).decode()
            n = driver.execute_async_script(DROP_JS, b64, PHOTO.name)
            assert n == 1, n
            wait(driver).until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#staged li")) == 1)
            # The preview: the face found and the crop drawn over the photo.
            wait(driver, 90).until(lambda d: d.find_elements(By.CSS_SELECTOR, "#staged svg .face"))
            assert driver.find_elements(By.CSS_SELECTOR, "#staged svg .crop")
            loaded = driver.execute_script("const i = document.querySelector('#staged img'); return i.complete && i.naturalWidth")
            assert loaded == 512, f"staged photo not shown through the likeness: scheme ({loaded})"
            assert driver.find_element(By.ID, "start").is_enabled()
            shot(driver, "03-create-photo-preview")

        step("drop the sample photo: preview with face and crop", drop_photo)

        def generate():
            Select(driver.find_element(By.ID, "preset")).select_by_value("portrait")
            Select(driver.find_element(By.ID, "backdrop")).select_by_value("navy")
            click(driver, "#start")
            wait(driver).until(lambda d: d.find_element(By.ID, "queue").is_displayed())
            wait(driver).until(lambda d: d.find_elements(By.CSS_SELECTOR, "#jobs li.job"))
            shot(driver, "04-queue")
            wait(driver, 240).until(lambda d: d.find_elements(By.CSS_SELECTOR, "#jobs li.job[data-state='done']"))
            shot(driver, "05-queue-done")

        step("generate: the job runs to done in the queue", generate)

        def gallery():
            click(driver, "#tab-gallery")
            wait(driver).until(lambda d: d.find_elements(By.CSS_SELECTOR, "#outputs li.output"))
            sizes = wait(driver, 30).until(
                lambda d: d.execute_script(
                    "const a = document.querySelector('#outputs img.after'), b = document.querySelector('#outputs img.before');"
                    "return a && b && a.complete && b.complete && a.naturalWidth > 0 && b.naturalWidth > 0 ? [a.naturalWidth, a.naturalHeight, b.naturalWidth] : null"
                )
            )
            # Portrait 4:5, shown next to the 512x512 original.
            assert abs(sizes[1] / sizes[0] - 1.25) < 0.02 and sizes[2] == 512, sizes
            expiry = driver.execute_script("return document.querySelector(\"#outputs [data-role='expiry']\").textContent")
            assert "30 days" in expiry, expiry
            shot(driver, "07-gallery")

        step("the headshot in the gallery with before/after and days left", gallery)

        def export():
            errors = []
            t = threading.Thread(target=drive_save_dialog, args=(str(exported), errors))
            t.start()
            click(driver, "#outputs [data-action='export']")
            t.join(90)
            assert not errors, errors
            wait(driver, 30).until(lambda d: "Saved as my-headshot.png" in d.find_element(By.CSS_SELECTOR, "#outputs .output p[role='status']").text)
            data = exported.read_bytes()
            assert data.startswith(b"\x89PNG"), data[:8]
            shot(driver, "08-exported")

        step("export through the native save dialog", export)

        def pick_with_dialog():
            click(driver, "#tab-create")
            errors = []
            t = threading.Thread(target=drive_open_dialog, args=(str(PHOTO), errors))
            t.start()
            click(driver, "#pick")
            t.join(90)
            assert not errors, errors
            wait(driver, 30).until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#staged li")) == 1)
            # Read in one script: the list is re-rendered when the photo's preview arrives.
            title = "const e = document.querySelector('#staged li .name'); return e && e.title"
            wait(driver).until(lambda d: d.execute_script(title) == PHOTO.name, f"staged name: {driver.execute_script(title)}")

        step("choose a photo with the native open dialog", pick_with_dialog)

        def favourite_and_export_several():
            click(driver, "#tab-gallery")
            star = click(driver, "#outputs [data-action='favourite']")
            wait(driver).until(lambda d: d.find_element(By.CSS_SELECTOR, "#outputs li.output").get_attribute("class").find("favourite") >= 0)
            assert driver.execute_script("return document.querySelector(\"#outputs [data-action='favourite']\").getAttribute('aria-pressed')") == "true"
            for sel, value in [("export-format", "jpg"), ("export-size", "1024")]:
                # A native option menu that was just closed can leave the next select busy a moment.
                for attempt in range(5):
                    try:
                        el = driver.find_element(By.ID, sel)
                        driver.execute_script("arguments[0].scrollIntoView({block: 'center'})", el)
                        Select(el).select_by_value(value)
                        break
                    except ElementNotInteractableException:
                        if attempt == 4:
                            raise
                        time.sleep(0.3)
                assert driver.find_element(By.ID, sel).get_attribute("value") == value
            tpl = driver.find_element(By.ID, "export-template")
            tpl.clear()
            tpl.send_keys("e2e-{preset}-{n}")
            click(driver, "#select-all")
            wait(driver).until(lambda d: d.find_element(By.ID, "export-selected").is_enabled())
            shot(driver, "08b-gallery-favourite-export-options")
            with_dialog(driver, "#export-selected", "Export headshots to a folder", several_dir, folder=True)
            wait(driver, 30).until(lambda d: "Saved" in d.find_element(By.ID, "export-msg").text)
            files = sorted(p.name for p in several_dir.iterdir())
            assert files == ["e2e-portrait-1.jpg"], files
            assert (several_dir / files[0]).read_bytes()[:3] == b"\xff\xd8\xff"
            del star

        step("favourite a headshot; export several with format, size and name", favourite_and_export_several)

        def job_list(d):
            return d.execute_async_script(
                "const done = arguments[arguments.length - 1]; window.__TAURI__.core.invoke('list_jobs').then(j => done(j.map(x => ({id: x.id, state: x.state, cancel: x.cancel_requested, outputs: x.outputs.length}))))"
            )

        def cancel_job():
            click(driver, "#tab-create")
            b64 = base64.b64encode(PHOTO.read_bytes()).decode()
            for n in range(3):
                driver.execute_async_script(DROP_JS, b64, f"cancel-{n}.jpg")
            wait(driver).until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#staged li")) == 3)
            before = len(driver.execute_script("return [...document.querySelectorAll('#outputs li.output')]"))
            known = {j["id"] for j in job_list(driver)}
            # 4096 px: Real-ESRGAN enlarges each crop for minutes, so the job cannot end before the click.
            Select(driver.find_element(By.ID, "out-size")).select_by_value("4096")
            click(driver, "#start")
            wait(driver).until(lambda d: d.find_element(By.ID, "queue").is_displayed())
            job_id = wait(driver).until(lambda d: next((j["id"] for j in job_list(d) if j["id"] not in known), None))
            row = f'#jobs li.job[data-job="{job_id}"]'

            def state():
                return next((j for j in job_list(driver) if j["id"] == job_id), None)

            # A double-click, as an impatient user gives it: the first click cancels; the second may land
            # on the Delete that replaced Cancel, which must not delete the job it just cancelled.
            for attempt in range(5):
                try:
                    button = wait(driver).until(EC.element_to_be_clickable((By.CSS_SELECTOR, f"{row} button")))
                    ActionChains(driver).double_click(button).perform()
                    break
                except StaleElementReferenceException:
                    # Re-rendered before the pointer reached it: no click was made unless the job shows it.
                    s = state()
                    if attempt == 4 or (s and (s["cancel"] or s["state"] == "cancelled")):
                        break
            try:
                wait(driver, 120).until(lambda d: d.find_element(By.CSS_SELECTOR, row).get_attribute("data-state") == "cancelled")
            except Exception:
                shot(driver, "08c-queue-not-cancelled")
                rows = driver.execute_script("return [...document.querySelectorAll('#jobs li.job')].map(e => [e.dataset.job, e.dataset.state, e.textContent])")
                raise AssertionError(f"job {job_id} was not cancelled in 120 s; jobs: {job_list(driver)}; rows: {rows}")
            shot(driver, "08c-queue-cancelled")
            assert "Cancelled" in driver.execute_script(f"return document.querySelector('{row} .state').textContent")
            time.sleep(1)
            s = state()
            assert s is not None, "the second click of a double-click on Cancel deleted the job"
            assert s["outputs"] == 0, f"a cancelled job left {s['outputs']} outputs"
            click(driver, "#tab-gallery")
            after = count(driver, "#outputs li.output")
            assert after == before, (before, after)

            # Delete: a job without headshots goes at once; one with headshots asks first.
            click(driver, "#tab-queue")
            click(driver, f'{row} button[aria-label^="Delete job"]')
            wait(driver).until(lambda d: not d.find_elements(By.CSS_SELECTOR, row))
            assert state() is None
            done = next(j for j in job_list(driver) if j["state"] == "done" and j["outputs"] > 0)
            click(driver, f'#jobs li.job[data-job="{done["id"]}"] button[aria-label^="Delete job"]')
            wait(driver).until(lambda d: d.execute_script("return document.getElementById('confirm-job-delete').open"))
            body = driver.find_element(By.ID, "job-delete-body").text
            assert "headshot" in body and "cannot be undone" in body, body
            assert driver.execute_script("return document.activeElement.id") == "job-delete-no"
            shot(driver, "08c-queue-delete-confirm")
            driver.switch_to.active_element.send_keys(Keys.ENTER)
            wait(driver).until(lambda d: not d.execute_script("return document.getElementById('confirm-job-delete').open"))
            assert any(j["id"] == done["id"] for j in job_list(driver)), "Keep it deleted the job"
            click(driver, "#tab-gallery")
            assert count(driver, "#outputs li.output") == before
            click(driver, "#tab-create")
            Select(driver.find_element(By.ID, "out-size")).select_by_value("")

        step("cancel a job from the Queue by a double-click: cancelled, kept, no output; Delete asks first for headshots", cancel_job)

        def batch():
            click(driver, "#tab-batch")
            shot(driver, "08d-batch-empty")
            with_dialog(driver, "#batch-in", "Choose the folder of photos", batch_in, "08d-batch-folder-dialog", folder=True)
            wait(driver).until(lambda d: d.find_element(By.ID, "batch-in-name").text == batch_in.name)
            with_dialog(driver, "#batch-out", "Choose where the headshots go", batch_out, folder=True)
            wait(driver).until(lambda d: d.find_element(By.ID, "batch-out-name").text == batch_out.name)
            click(driver, "#batch-start")
            wait(driver).until(lambda d: d.find_element(By.ID, "batch-run").is_displayed())
            wait(driver, 60).until(lambda d: d.find_elements(By.CSS_SELECTOR, "#batch-files li[data-state='running'], #batch-files li[data-state='done']"))
            shot(driver, "08e-batch-running")
            wait(driver, 600).until(lambda d: "Finished" in d.find_element(By.ID, "batch-summary").text)
            summary = driver.find_element(By.ID, "batch-summary").text
            assert "3 made" in summary and "1 failed" in summary, summary
            assert "broken.jpg" in summary, summary
            shot(driver, "08f-batch-report")
            made = sorted(p.name for p in batch_out.iterdir() if p.suffix == ".png")
            assert made == ["a-square.png", "b-square.png", "c-square.png"], made
            assert any(p.name.startswith("likeness-report-") and p.suffix == ".csv" for p in batch_out.iterdir())
            assert any(p.name.startswith("likeness-report-") and p.suffix == ".json" for p in batch_out.iterdir())
            # Batch jobs stay on the Batch screen.
            click(driver, "#tab-gallery")
            assert count(driver, "#outputs li.output") == 1

        step("batch: a folder of 3 photos and a broken file, progress, report", batch)

        def models_and_prefs():
            click(driver, "#tab-models")
            wait(driver, 60).until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#model-list li[data-state='ok']")) >= 4)
            shot(driver, "08g-models")
            click(driver, "#model-list [data-action='license']")
            wait(driver).until(lambda d: d.execute_script("return document.getElementById('license').open"))
            assert "License" in driver.find_element(By.ID, "license-text").text
            shot(driver, "08h-license")
            click(driver, "#license-close")
            click(driver, "#tab-prefs")
            gpu = driver.find_element(By.ID, "device-gpu")
            assert not gpu.is_enabled(), "this build has no GPU support: the option is shown disabled"
            assert "CUDA" in driver.find_element(By.ID, "device-reason").text
            assert driver.find_element(By.ID, "device-cpu").is_selected()


        def import_model():
            click(driver, "#tab-models")
            wait(driver, 60).until(lambda d: d.find_elements(By.CSS_SELECTOR, "#model-list li"))
            assert driver.find_element(By.ID, "import-folder").is_enabled()
            with_dialog(driver, "#import-folder", "Choose a diffusers model folder", TINY_SD, "15-import-folder-dialog", folder=True)
            wait(driver, 120).until(lambda d: d.find_element(By.ID, "import-msg").get_attribute("data-done") == "tiny")
            msg = driver.find_element(By.ID, "import-msg").text
            assert "Imported “tiny”" in msg and "not a known official release" in msg, msg
            assert driver.find_element(By.ID, "import-progress").get_attribute("value") == "100"
            # The bar goes once the list and the Create options are refreshed.
            wait(driver, 30).until(lambda d: not d.find_element(By.ID, "import-run").is_displayed())
            wait(driver, 60).until(lambda d: d.find_elements(By.CSS_SELECTOR, "#model-list li[data-model='tiny'][data-state='ok']"))
            sha, actions = driver.execute_script(
                "const r = document.querySelector(\"#model-list li[data-model='tiny']\");"
                " return [r.querySelector(\"[data-role='sha']\").textContent, [...r.querySelectorAll('[data-action]')].map(b => b.dataset.action)]"
            )
            assert "unknown file" in sha, sha
            assert "remove" in actions and "verify" in actions, actions
            row = driver.find_element(By.CSS_SELECTOR, "#model-list li[data-model='tiny']")
            driver.execute_script("arguments[0].scrollIntoView({block: 'center'})", row)
            shot(driver, "15-models-imported")

        step("import the tiny diffusers model through the Models screen's native folder dialog", import_model)

        def generative_job():
            click(driver, "#tab-create")
            b64 = base64.b64encode(PHOTO.read_bytes()).decode()
            driver.execute_async_script(DROP_JS, b64, PHOTO.name)
            wait(driver).until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#staged li")) == 1)
            wait(driver, 30).until(lambda d: d.find_element(By.ID, "look-generative").is_enabled())
            click(driver, "#look-generative")
            wait(driver).until(lambda d: d.find_element(By.ID, "gen-fields").is_displayed())
            assert driver.find_element(By.ID, "gen-model").get_attribute("value") == "tiny"
            Select(driver.find_element(By.ID, "attire")).select_by_value("suit")
            Select(driver.find_element(By.ID, "lighting")).select_by_value("natural-window")
            assert driver.find_element(By.ID, "attire-preview").get_attribute("src").endswith("icons/attire-suit.svg")
            loaded = driver.execute_script("const i = document.getElementById('lighting-preview'); return i.complete && i.naturalWidth")
            assert loaded, "the lighting preview is shipped with the app"
            assert "384 px, 12 denoising steps" in driver.find_element(By.ID, "quality-help").text
            driver.execute_script("const v = document.getElementById('variants'); v.value = '2'; v.dispatchEvent(new Event('input'))")
            assert driver.find_element(By.ID, "variants-out").text == "2"
            # Restoration needs GFPGAN, not installed here: shown disabled with the reason.
            assert not driver.find_element(By.ID, "restore").is_enabled()
            assert "GFPGAN" in driver.find_element(By.ID, "restore-help").text
            # The output size applies to the generative look too (each variant is upscaled to it).
            assert driver.find_element(By.ID, "out-size").is_enabled()
            shot(driver, "16-create-generative")
            # Every Queue line that tells a denoising step is noted as it is shown.
            driver.execute_script(
                "window.__steps = []; new MutationObserver(() => document.querySelectorAll('#jobs [data-role=line]').forEach(l => {"
                " if (/step \\d+ of \\d+/.test(l.textContent)) window.__steps.push(l.textContent); })).observe(document.getElementById('jobs'), {subtree: true, childList: true, characterData: true})"
            )
            click(driver, "#start")
            wait(driver).until(lambda d: d.find_element(By.ID, "queue").is_displayed())
            row = "#jobs li.job:last-child"
            wait(driver, 240).until(lambda d: d.find_element(By.CSS_SELECTOR, row).get_attribute("data-state") in ("done", "failed"))
            state, text = driver.execute_script(f"const r = document.querySelector('{row}'); return [r.dataset.state, r.textContent]")
            assert state == "done", text
            seen = driver.execute_script("return window.__steps")
            assert any("Generating backdrop and attire, step" in s for s in seen), seen
            shot(driver, "17-queue-generative-done")
            job = driver.execute_script(f"return document.querySelector('{row}').dataset.job")
            click(driver, "#tab-gallery")
            css = f"#outputs li.output[data-job='{job}']"
            wait(driver, 30).until(lambda d: count(d, css) == 2)
            tags = driver.execute_script(f"return [...document.querySelectorAll(\"{css} .variant-tag\")].map(e => e.textContent).sort()")
            assert tags == ["Variant 1 of 2", "Variant 2 of 2"], tags
            wait(driver, 30).until(
                lambda d: d.execute_script(f"return [...document.querySelectorAll(\"{css} img.after\")].every(i => i.complete && i.naturalWidth > 0)")
            )
            # Side by side: the two variants share a row of the gallery grid.
            tops = driver.execute_script(f"return [...document.querySelectorAll(\"{css}\")].map(e => Math.round(e.getBoundingClientRect().top))")
            assert len(set(tops)) == 1, tops
            driver.execute_script(f"document.querySelector(\"{css}\").scrollIntoView({{block: 'start'}})")
            shot(driver, "18-gallery-variants")

        step("a generative job with 2 variants: steps in the Queue, both variants side by side in the Gallery", generative_job)

        step("models with state and license text; GPU shown disabled with the reason", models_and_prefs)

        def zoom_200():
            driver.execute_script("document.documentElement.style.zoom = '2'")
            try:
                screens = ["create", "queue", "gallery", "batch", "models", "prefs"]
                # Keyboard only: Home on the tab bar opens the first screen, ArrowRight the next.
                driver.execute_script("document.querySelector('[role=tab][aria-selected=true]').focus()")
                keys(driver, Keys.ARROW_RIGHT)
                keys(driver, Keys.HOME)
                for n, screen in enumerate(screens):
                    if n:
                        driver.execute_script("document.querySelector('[role=tab][aria-selected=true]').focus()")
                        keys(driver, Keys.ARROW_RIGHT)
                    wait(driver).until(lambda d: d.execute_script(f"return !document.getElementById('{screen}').hidden"))
                    assert driver.execute_script("return document.activeElement.id") == f"tab-{screen}"
                    time.sleep(0.4)
                    if screen == "models":
                        wait(driver, 60).until(lambda d: d.find_elements(By.CSS_SELECTOR, "#model-list li"))
                    overflow = driver.execute_script(OVERFLOW_JS)
                    assert max(overflow) <= 1, f"{screen}: horizontal overflow {overflow} at 200% zoom"
                    shot(driver, f"14-zoom200-{screen}")
                    keyboard_sweep(driver, screen)
            finally:
                driver.execute_script("document.documentElement.style.zoom = ''")

        step("200% zoom in 1024x700: no horizontal overflow, every control reachable by Tab with a focus ring", zoom_200)

        def delete_all():
            click(driver, "#tab-prefs")
            shot(driver, "10-preferences")
            click(driver, "#delete-all")
            wait(driver).until(lambda d: d.execute_script("return document.getElementById('confirm-delete').open"))
            shot(driver, "11-confirm-delete")
            click(driver, "#confirm-yes")
            wait(driver, 30).until(lambda d: "deleted" in d.find_element(By.ID, "delete-msg").text)
            click(driver, "#tab-gallery")
            wait(driver).until(lambda d: d.find_element(By.ID, "gallery-empty").is_displayed())
            assert not driver.find_elements(By.CSS_SELECTOR, "#outputs li")
            assert exported.is_file(), "exported files are the person's: delete all must not touch them"
            shot(driver, "12-after-delete-all")
            click(driver, "#tab-create")
            assert not driver.find_elements(By.CSS_SELECTOR, "#staged li"), "photos waiting for a job are data too"

        step("delete all my data, with confirmation", delete_all)
    finally:
        driver.quit()

    def restart():
        d2 = session(app)
        try:
            ready(d2)
            time.sleep(0.5)
            assert not d2.execute_script("return document.getElementById('privacy').open"), "notice shown again"
            assert not d2.find_elements(By.CSS_SELECTOR, "#jobs li")
            shot(d2, "13-restart")
        finally:
            d2.quit()

    step("restart: the notice stays acknowledged, the data stays deleted", restart)
    passed = sum(1 for _, ok, _ in results if ok)
    print(f"{passed} passed, {len(results) - passed} failed; screenshots in {SHOTS}")
    return 0 if passed == len(results) else 1


if __name__ == "__main__":
    app = Path(sys.argv[1] if len(sys.argv) > 1 else ROOT / "target" / "release" / "likeness-app").resolve()
    try:
        sys.exit(main(app))
    except Exception:
        print("E2E stopped at the first failure", flush=True)
        sys.exit(1)
