"""The end-to-end checks, through the published API and console ports, as a user of the stack would make them."""

from __future__ import annotations

import html.parser
import io
import json
import re
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import urljoin

import requests

from installer.smoke.engine import SmokeError

T = TypeVar("T")
MODEL = "smoke-iris"
# Streamlit's sign-in route, callback and cookies (streamlit/web/server/starlette/starlette_auth_routes.py).
LOGIN_ROUTE = "/auth/login"
CALLBACK_ROUTE = "/oauth2callback"
USER_COOKIE = "_streamlit_user"
TOKENS_COOKIE = "_streamlit_user_tokens"
# Iris rows (sepal length, sepal width, petal length, petal width): a setosa and a virginica.
ROWS = [[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]]


@dataclass(frozen=True)
class Api:
    """The API as published on the host, with an admin key."""

    base: str
    key: str

    def call(self, method: str, path: str, **kw: Any) -> requests.Response:
        """Send one request with the key; a connection error becomes a SmokeError naming the URL."""
        try:
            return requests.request(method, self.base + path, headers={"Authorization": f"Bearer {self.key}"},
                                    timeout=60, **kw)
        except requests.RequestException as exc:
            raise SmokeError(f"{method} {self.base + path}: {type(exc).__name__}: {exc}") from exc


def wait_for(what: str, probe: Callable[[], T | None], timeout_s: float, every_s: float = 1.0) -> T:
    """Call probe until it returns something other than None; raise SmokeError naming what did not happen."""
    deadline = time.monotonic() + timeout_s
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            value = probe()
            if value is not None:
                return value
        except (SmokeError, requests.RequestException, KeyError, ValueError) as exc:
            last = exc
        time.sleep(every_s)
    raise SmokeError(f"{what}: not within {timeout_s:.0f} s" + (f" (last error: {last})" if last else ""))


def ready(base: str) -> str:
    """Wait until the API's /readyz reports broker, repository and a cpu worker ready; return its checks."""
    def answer() -> str | None:
        resp = requests.get(base + "/readyz", timeout=10)
        return json.dumps(resp.json().get("checks"))[:300] if resp.status_code == 200 else None

    return wait_for("GET /readyz to answer 200", answer, 90, 1.0)


def iris_skops() -> bytes:
    """Return a scikit-learn LogisticRegression fitted on iris, saved with skops."""
    import skops.io as sio
    from sklearn.datasets import load_iris
    from sklearn.linear_model import LogisticRegression

    X, y = load_iris(return_X_y=True)
    return bytes(sio.dumps(LogisticRegression(max_iter=500).fit(X, y)))


def upload_model(api: Api) -> str:
    """Upload the iris model; return a line saying what was stored."""
    metadata = {"name": MODEL, "format": "skops", "pool": "cpu"}
    files = {"file": ("iris.skops", io.BytesIO(iris_skops())), "metadata": (None, json.dumps(metadata))}
    resp = api.call("POST", "/api/v1/models", files=files)
    if resp.status_code != 201:
        raise SmokeError(f"upload: POST /api/v1/models answered {resp.status_code}: {resp.text[:500]}")
    doc = resp.json()
    return f"{MODEL} version {doc.get('version')} ({doc.get('size')} bytes)"


def predict(api: Api) -> list[Any]:
    """Predict the iris rows synchronously; return the predictions (setosa = 0, virginica = 2)."""
    resp = api.call("POST", f"/api/v1/models/{MODEL}/predict", json={"inputs": ROWS})
    if resp.status_code != 200:
        raise SmokeError(f"predict: answered {resp.status_code}: {resp.text[:500]}")
    predictions = list(resp.json()["predictions"])
    if predictions != [0, 2]:
        raise SmokeError(f"predict: expected [0, 2] (setosa, virginica), got {predictions}")
    return predictions


def predict_async(api: Api) -> str:
    """Queue a prediction job with ?async=true and wait until it succeeds; return its id."""
    resp = api.call("POST", f"/api/v1/models/{MODEL}/predict?async=true", json={"inputs": ROWS})
    if resp.status_code != 202:
        raise SmokeError(f"async predict: answered {resp.status_code}: {resp.text[:500]}")
    job_id = str(resp.json()["job_id"])

    def done() -> dict[str, Any] | None:
        job = api.call("GET", f"/api/v1/jobs/{job_id}").json()
        if job["status"] in ("failed", "cancelled"):
            raise SmokeError(f"async predict: job {job_id} ended {job['status']}: {json.dumps(job)[:500]}")
        return job if job["status"] == "succeeded" else None

    job = wait_for(f"async predict: job {job_id} to succeed", done, 60, 0.5)
    if "[0, 2]" not in json.dumps(job.get("result")).replace("[0,2]", "[0, 2]"):
        raise SmokeError(f"async predict: job {job_id} result lacks [0, 2]: {json.dumps(job)[:500]}")
    return job_id


def predictions_counted(api: Api) -> float:
    """Return modeldeck_predict_requests_total for the model's successes, as /metrics reports it."""
    text = api.call("GET", "/metrics").text
    total = 0.0
    for line in text.splitlines():
        if line.startswith("modeldeck_predict_requests_total{") and f'model="{MODEL}"' in line and 'outcome="success"' in line:
            total += float(line.rsplit(" ", 1)[1])
    return total


def metrics_sum_workers(api: Api, expected: int, by_pid: Callable[[], dict[str, float]]) -> str:
    """See every /metrics scrape count all `expected` predictions, which both gunicorn workers served."""
    wait_for(f"/metrics to count {expected} predictions", lambda: True if predictions_counted(api) == expected else None, 30)
    # Each scrape may land on either worker: all must show the sum, not one process's share.
    counts = {predictions_counted(api) for _ in range(10)}
    if counts != {float(expected)}:
        raise SmokeError(f"/metrics: expected {expected} predictions on every scrape, got {sorted(counts)}")
    shares = by_pid()
    if len(shares) < 2 or sum(shares.values()) != expected:
        raise SmokeError(f"/metrics: expected {expected} predictions counted by 2 gunicorn workers, their files hold {shares}")
    split = " + ".join(f"{n:.0f} (pid {pid})" for pid, n in sorted(shares.items()))
    return f"{expected} on 10 of 10 scrapes = {split}"


def predict_many(api: Api, count: int, parallel: int) -> str:
    """Send `count` synchronous predictions, `parallel` at a time (so both gunicorn workers take some)."""
    with ThreadPoolExecutor(parallel) as pool:
        results = list(pool.map(lambda _: predict(api), range(count)))
    return f"{len(results)} answered {results[0]}"


def cpu_workers(api: Api) -> list[dict[str, Any]]:
    """Return the workers GET /api/v1/runtimes lists as serving pool cpu and not lost."""
    pools = api.call("GET", "/api/v1/runtimes").json()["pools"]
    cpu = next((p for p in pools if p["name"] == "cpu"), {"workers": []})
    return [w for w in cpu["workers"] if w.get("state") != "lost"]


def describe_workers(workers: list[dict[str, Any]]) -> str:
    """Name workers by host and pid."""
    return ", ".join(f"{w.get('hostname', w.get('host', '?'))}/{w.get('pid')} ({w.get('state')})" for w in workers)


def console_page(base: str) -> str:
    """Load the console's page and Streamlit's health endpoint over HTTP."""
    health = requests.get(base + "/_stcore/health", timeout=10)
    if health.status_code != 200 or health.text.strip() != "ok":
        raise SmokeError(f"console: /_stcore/health answered {health.status_code}: {health.text[:200]}")
    page = requests.get(base + "/", timeout=10)
    if page.status_code != 200 or not re.search(r"<title>.*</title>", page.text, flags=re.DOTALL) or "<script" not in page.text:
        raise SmokeError(f"console: / answered {page.status_code} without Streamlit's page: {page.text[:300]}")
    return f"/ {page.status_code} ({len(page.text)} bytes of Streamlit's page), /_stcore/health ok"


@dataclass(frozen=True)
class SignIn:
    """A console sign-in to make: the public URLs a browser uses and the stand-in's user."""

    console: str  # MODELDECK_CONSOLE_PUBLIC_URL: the redirect URI's origin, so the browser's cookies come back
    keycloak: str  # KEYCLOAK_PUBLIC_URL: where the login page must be
    api: str
    username: str
    password: str
    cookie_secret: str  # MODELDECK_CONSOLE_COOKIE_SECRET: signs st.login's provider token and the console's cookies


class _PasswordForm(html.parser.HTMLParser):
    """Collect the fields of the login page's form that has a password input."""

    def __init__(self) -> None:
        super().__init__()
        self.forms: list[dict[str, str]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "form":
            self.forms.append({})
        elif tag == "input" and self.forms and a.get("name"):
            self.forms[-1][str(a["name"])] = a.get("value") or ""

    def fields(self) -> dict[str, str] | None:
        return next((f for f in self.forms if "password" in f), None)


def _answer(step: str, resp: requests.Response, expected: str) -> SmokeError:
    """Say which step of the sign-in got what instead of what was expected."""
    where = f", Location {resp.headers['location']}" if "location" in resp.headers else ""
    # An HTML page's text (the login form's "Invalid username or password."), not its style sheet.
    text = re.sub(r"<[^>]+>", " ", re.sub(r"<(style|script)\b.*?</\1>", " ", resp.text, flags=re.DOTALL | re.IGNORECASE))
    body = " ".join(text.split())[:300]
    return SmokeError(f"{step}: {resp.request.method} {resp.url} answered {resp.status_code}{where}, "
                      f"expected {expected}; body: {body!r}")


def _visit(browser: requests.Session, step: str, method: str, url: str, **kw: Any) -> requests.Response:
    """Send one of the browser's requests, following no redirect; a connection error names the step."""
    try:
        return browser.request(method, url, allow_redirects=False, timeout=60, **kw)
    except requests.RequestException as exc:
        raise SmokeError(f"{step}: {method} {url}: {type(exc).__name__}: {exc}") from exc


def _console_cookie(browser: requests.Session, name: str, secret: str) -> dict[str, Any]:
    """Read one of the console's signed cookies (itsdangerous under the cookie secret; large ones come in chunks)."""
    from itsdangerous import BadSignature, URLSafeTimedSerializer

    def value(cookie: str) -> str:
        raw = browser.cookies.get(cookie)
        if raw is None:
            raise SmokeError(f"after the callback: the console set no {cookie} cookie")
        try:
            return str(URLSafeTimedSerializer(secret, salt=cookie).loads(raw))
        except BadSignature as exc:
            raise SmokeError(f"after the callback: cookie {cookie} does not verify under the console's cookie secret") from exc

    text = value(name)
    if (chunks := re.fullmatch(r"chunks-(\d+)", text)) is not None:
        text = "".join(value(f"{name}_{i}") for i in range(1, int(chunks.group(1)) + 1))
    return dict(json.loads(text))


def console_sign_in(s: SignIn) -> str:
    """Sign in to the console through Keycloak the way a browser does; check the cookie and the token it holds."""
    import jwt  # PyJWT, a test extra, as `modeldeck compose smoke` installs them

    browser = requests.Session()
    # st.login's button hands the browser /auth/login?provider=<a short-lived HS256 token under the cookie secret>;
    # without a websocket client, the smoke signs that token itself.
    provider = jwt.encode({"provider": "keycloak", "exp": int(time.time()) + 120}, s.cookie_secret, algorithm="HS256")
    start = "start (Streamlit's auth route)"
    login = _visit(browser, start, "GET", f"{s.console}{LOGIN_ROUTE}", params={"provider": provider})
    realm = f"{s.keycloak}/realms/modeldeck/protocol/openid-connect/auth"
    if login.status_code != 302 or not login.headers.get("location", "").startswith(realm + "?"):
        raise _answer(start, login, f"302 to the login page {realm}")
    page = _visit(browser, "login page", "GET", login.headers["location"])
    fields = _PasswordForm()
    fields.feed(page.text)
    form = fields.fields()
    if page.status_code != 200 or form is None:
        raise _answer("login page", page, "200 with a username/password form")
    form.update(username=s.username, password=s.password)
    # The form posts to its own URL (action=""), the authorization request's query included.
    submitted = _visit(browser, "submit the credentials", "POST", page.url, data=form)
    callback = submitted.headers.get("location", "")
    if submitted.status_code != 302 or not callback.startswith(f"{s.console}{CALLBACK_ROUTE}?code="):
        raise _answer("submit the credentials", submitted, f"302 to {s.console}{CALLBACK_ROUTE}?code=...")
    # The console's server redeems the code at the back-channel token endpoint and verifies the ID token.
    step = "callback (the console redeems the code)"
    back = _visit(browser, step, "GET", callback)
    home = urljoin(callback, back.headers.get("location", ""))
    if back.status_code != 302 or home != f"{s.console}/" or USER_COOKIE not in back.cookies:
        raise _answer(step, back,
                      f"302 to {s.console}/ setting {USER_COOKIE} (none set: the token exchange failed; see the console's log)")
    landing = _visit(browser, "the console's page after sign-in", "GET", home)
    if landing.status_code != 200 or "<script" not in landing.text:
        raise _answer("the console's page after sign-in", landing, "200 with Streamlit's page")
    user = _console_cookie(browser, USER_COOKIE, s.cookie_secret)
    if user.get("is_logged_in") is not True or user.get("preferred_username") != s.username:
        raise SmokeError(f"after the callback: cookie {USER_COOKIE} holds {sorted(user)} for "
                         f"{user.get('preferred_username')!r}, expected {s.username!r} signed in")
    access = _console_cookie(browser, TOKENS_COOKIE, s.cookie_secret).get("access_token")
    if not access:
        raise SmokeError(f"after the callback: cookie {TOKENS_COOKIE} holds no access token")
    # The console calls the API with this token: the API must take it (issuer = the public URL, keys in-network).
    api = Api(s.api, str(access))
    me = api.call("GET", "/api/v1/me")
    if me.status_code != 200 or me.json().get("role") != "admin":
        raise _answer("the console's access token at the API", me, "200 with role admin")
    models = api.call("GET", "/api/v1/models")
    if models.status_code != 200:
        raise _answer("the console's access token at the API", models, "200")
    return (f"{s.username} signed in at {s.keycloak}, {USER_COOKIE} set, {s.console}/ 200; its access token: "
            f"GET /api/v1/me role {me.json()['role']} ({me.json().get('method')}), GET /api/v1/models 200")
