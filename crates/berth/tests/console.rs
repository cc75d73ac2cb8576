//! The web console in a real browser: Debian's chromium, headless, driven over the DevTools
//! protocol. Sign-in (and a refused one), a deployed app, scaling from the page and seeing the
//! count change live, a log line appearing within a second, a rollback from the history, and a
//! viewer who sees but cannot change; screenshots of every page at desktop and phone widths.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use berth_testkit::{Platform, wait_until};
use chromiumoxide::browser::{Browser, BrowserConfig};
use chromiumoxide::cdp::browser_protocol::emulation::SetDeviceMetricsOverrideParams;
use chromiumoxide::page::{Page, ScreenshotParams};
use futures_util::StreamExt;
use serde_json::Value;

const BERTH: &str = env!("CARGO_BIN_EXE_berth");

fn chromium() -> Option<PathBuf> {
    ["/usr/bin/chromium", "/usr/bin/chromium-browser"].iter().map(PathBuf::from).find(|p| p.exists())
}

/// A headless chromium, or none (the test is skipped) where it is not installed and the run
/// does not require it (`.ci/run` installs it and requires it).
async fn browser(dir: &Path) -> Option<Browser> {
    let Some(path) = chromium() else {
        assert!(
            std::env::var_os("BERTH_REQUIRE_DOCKER").is_none(),
            "chromium is not installed (apt-get install chromium)"
        );
        eprintln!("skipped: chromium is not installed");
        return None;
    };
    let config = BrowserConfig::builder()
        .chrome_executable(path)
        .no_sandbox()
        .user_data_dir(dir.join("chromium"))
        .window_size(1280, 900)
        .arg("--disable-gpu")
        .arg("--disable-dev-shm-usage")
        .build()
        .expect("browser config");
    let (browser, mut handler) = Browser::launch(config).await.expect("launch chromium");
    tokio::spawn(async move { while handler.next().await.is_some() {} });
    Some(browser)
}

async fn eval<T: serde::de::DeserializeOwned>(page: &Page, js: &str) -> T {
    page.evaluate(js).await.unwrap_or_else(|e| panic!("evaluate {js}: {e}")).into_value().expect("value")
}

async fn url(page: &Page) -> String {
    page.url().await.expect("url").unwrap_or_default()
}

/// Runs `js`, which leads to another document (a form sent, a link followed), and waits until
/// that document has loaded: the old one's mark is gone and the new one is complete.
async fn navigate_by(page: &Page, js: &str) {
    let _: bool = eval(page, &format!("window.__old = true; {js}; true")).await;
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let done = page
            .evaluate("window.__old === undefined && document.readyState === 'complete'")
            .await
            .ok()
            .and_then(|r| r.into_value::<bool>().ok());
        if done == Some(true) {
            return;
        }
        assert!(Instant::now() < deadline, "the page did not move on after {js}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Loads `path` of the console and waits for it.
async fn open(page: &Page, base: &str, path: &str) {
    navigate_by(page, &format!("location.href = {}", serde_json::to_string(&format!("{base}{path}")).unwrap())).await;
}

/// Signs in with `token` on the sign-in form.
async fn sign_in(page: &Page, base: &str, token: &str) {
    open(page, base, "/ui/login").await;
    let js = format!(
        "document.querySelector('#token').value = {}; document.querySelector('form').submit()",
        serde_json::to_string(token).unwrap()
    );
    navigate_by(page, &js).await;
}

async fn text(page: &Page, selector: &str) -> String {
    let js =
        format!("(document.querySelector({}) || {{}}).textContent || ''", serde_json::to_string(selector).unwrap());
    eval(page, &js).await
}

/// Waits until `check` holds on the page, polling it (the page itself follows the store).
async fn until(page: &Page, what: &str, within: Duration, js: &str) {
    let deadline = Instant::now() + within;
    loop {
        let ok: bool = eval(page, js).await;
        if ok {
            return;
        }
        if Instant::now() >= deadline {
            let seen: String = eval(
                page,
                "`banner: ${(document.querySelector('#banner') || {}).textContent}; page: ${document.body.innerText.slice(0, 800)}`",
            )
            .await;
            panic!("timed out after {within:?} waiting for {what}; {seen}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn shoot(page: &Page, dir: &Path, name: &str) {
    for (label, width, height, mobile) in [("desktop", 1280, 900, false), ("phone", 390, 844, true)] {
        let metrics = SetDeviceMetricsOverrideParams::new(width, height, 1.0, mobile);
        page.execute(metrics).await.expect("set the width");
        tokio::time::sleep(Duration::from_millis(200)).await;
        let file = dir.join(format!("{name}-{label}.png"));
        page.save_screenshot(ScreenshotParams::builder().full_page(true).build(), &file).await.expect("screenshot");
        // The page fits the width: nothing wider than the screen but tables that scroll.
        let wide: i64 = eval(page, "document.documentElement.scrollWidth - window.innerWidth").await;
        assert!(wide <= 1, "{name} is {wide}px wider than a {width}px screen");
        if let Some(keep) = std::env::var_os("BERTH_CONSOLE_SHOTS").map(PathBuf::from)
            && label == "desktop"
            && (name == "overview" || name == "app")
        {
            std::fs::create_dir_all(&keep).expect("screenshot dir");
            std::fs::copy(&file, keep.join(format!("{name}.png"))).expect("keep the screenshot");
        }
    }
    let reset = SetDeviceMetricsOverrideParams::new(1280, 900, 1.0, false);
    page.execute(reset).await.expect("reset the width");
}

fn web(marker: &str) -> String {
    let bin = berth_testkit::image::testapp_binary();
    format!(
        "group: shop\nname: web\ndriver: exec\ninstances: 2\ncommand: [{}, --chatter-ms, '100']\n\
         environment: {{MARK: {marker}}}\nservices: [web.test]\nhealth:\n  http: /health\n  interval: 200ms\n\
         upgrade:\n  min_healthy_time: 0s\n",
        bin.display()
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn the_console_signs_in_shows_scales_follows_logs_rolls_back_and_keeps_viewers_to_reading() {
    // Samples twice a second, so that the charts have a line to draw within the test.
    let p = Platform::start_args(BERTH.as_ref(), "exec", &["--metrics-interval".into(), "500ms".into()]).await;
    let shots = tempfile::tempdir().expect("tempdir");
    let Some(mut browser) = browser(shots.path()).await else { return };
    let base = p.api.clone();
    let v1 = p.write("web.yaml", &web("one"));
    p.cli_ok(&["deploy", "-f", &v1, "--timeout", "30"]).await;
    let v2 = p.write("web2.yaml", &web("two"));
    p.cli_ok(&["deploy", "-f", &v2, "--timeout", "30"]).await;
    let page = browser.new_page("about:blank").await.expect("a page");

    // Without a session every page is the sign-in form; a wrong token gets no session.
    open(&page, &base, "/ui/apps").await;
    assert!(url(&page).await.ends_with("/ui/login"), "{}", url(&page).await);
    sign_in(&page, &base, "tok-nobody.wrong").await;
    assert!(text(&page, ".error").await.contains("unknown token"), "{}", page.content().await.unwrap());
    assert!(page.get_cookies().await.expect("cookies").iter().all(|c| c.name != "berth_session"));

    sign_in(&page, &base, &p.admin_token()).await;
    assert!(url(&page).await.ends_with("/ui/"), "{}", url(&page).await);
    let cookie = page.get_cookies().await.expect("cookies").into_iter().find(|c| c.name == "berth_session");
    let cookie = cookie.expect("a session cookie");
    assert!(cookie.http_only, "the session is out of the page's scripts' reach");
    assert!(text(&page, "main").await.contains("Capacity"));
    shoot(&page, shots.path(), "overview").await;

    // Live data moves nothing on the page. Its requests and latency charts start empty; then
    // requests go through the router, and tokens made elsewhere move the store's index so the
    // page fetches its live part again, until the charts are drawn. The browser's own record of
    // layout shifts must stay empty all along.
    open(&page, &base, "/ui/apps/shop/web").await;
    let drawn = |caption: &str| {
        format!(
            "[...document.querySelectorAll('figure.chart')].some(f => f.querySelector('figcaption').textContent.startsWith('{caption}') && !!f.querySelector('svg polyline'))"
        )
    };
    let empty: bool = eval(&page, &format!("!({})", drawn("requests"))).await;
    assert!(empty, "no request has gone through the router yet");
    let _: bool = eval(
        &page,
        "window.__shifts = []; new PerformanceObserver((l) => { for (const e of l.getEntries()) if (!e.hadRecentInput) \
         window.__shifts.push({value: e.value, nodes: e.sources.map(s => s.node ? (s.node.outerHTML || s.node.textContent || '').slice(0, 120) : '?')}); }) \
         .observe({type: 'layout-shift', buffered: true}); true",
    )
    .await;
    for _ in 0..60 {
        let (status, body) = p.via_router("web.test", "/").await.expect("the router answers");
        assert_eq!(status, 200, "{body}");
    }
    let traffic = wait_until("the routers' counts in the app's traffic", Duration::from_secs(20), || async {
        let t = p.get("/v1/apps/shop/web/traffic").await.ok()?;
        let steps = t["steps"].as_array()?;
        let requests: u64 = steps.iter().filter_map(|s| s["requests"].as_u64()).sum();
        (requests >= 60).then_some(t)
    })
    .await;
    assert_eq!(traffic["step_ms"], 10_000, "{traffic}");
    let latency = traffic["steps"].as_array().and_then(|s| s.iter().find_map(|s| s["latency_p95_ms"].as_f64()));
    assert!(latency.is_some_and(|ms| ms > 0.0), "p95 latency from the routers' histograms: {traffic}");
    let deadline = Instant::now() + Duration::from_secs(30);
    for round in 0.. {
        let ready: bool = eval(&page, &format!("{} && {}", drawn("requests"), drawn("latency"))).await;
        if ready {
            break;
        }
        assert!(Instant::now() < deadline, "the requests and latency charts were not drawn");
        let before: String = eval(&page, "document.querySelector('#live').dataset.index").await;
        p.cli_ok(&["token", "create", "--role", "viewer", "--name", &format!("bystander-{round}")]).await;
        let moved = format!("document.querySelector('#live').dataset.index !== '{before}'");
        until(&page, "the live part to follow the store", Duration::from_secs(10), &moved).await;
    }
    let shifts: Value = eval(&page, "window.__shifts").await;
    let score: f64 = shifts.as_array().expect("shifts").iter().filter_map(|s| s["value"].as_f64()).sum();
    assert!(score < 0.001, "the page moved as live data arrived (layout shift {score}): {shifts}");

    open(&page, &base, "/ui/apps").await;
    assert!(text(&page, "#live").await.contains("shop/web"));
    shoot(&page, shots.path(), "apps").await;

    // Scale from the page: the live part shows the new count without a reload.
    open(&page, &base, "/ui/apps/shop/web").await;
    assert_eq!(text(&page, "#desired").await, "2");
    let _: bool = eval(
        &page,
        "document.querySelector('#instances').value = '3'; document.querySelector('form[data-api$=\"/scale\"]').requestSubmit(); true",
    )
    .await;
    until(&page, "three instances running on the page", Duration::from_secs(20), "document.querySelector('#running') && document.querySelector('#running').textContent === '3' && document.querySelector('#desired').textContent === '3'").await;
    assert_eq!(p.status("web").await["desired"], 3, "the page's change reached the platform");
    // The session alone changes nothing: another site's page could send the cookie, never the
    // CSRF token.
    let status: i64 = eval(
        &page,
        "(async () => (await fetch('/v1/apps/shop/web/scale', {method: 'POST', headers: {'content-type': 'application/json'}, body: '{\"instances\": 5}'})).status)()",
    )
    .await;
    assert_eq!(status, 403, "a change without the CSRF token is refused");

    // A line the app prints is on the page within a second: the newest line's own time.
    let fresh_within = |ms: i64| {
        format!(
            "(() => {{ const t = [...document.querySelectorAll('#log-lines div')].map(d => +(/ at (\\d+)$/.exec(d.textContent) || [0, 0])[1]); \
             return t.length > 0 && Date.now() - Math.max(...t) < {ms}; }})()"
        )
    };
    until(&page, "a log line printed under a second ago", Duration::from_secs(10), &fresh_within(1000)).await;

    // The keyboard alone: the first Tab reaches the skip link, Enter moves to the content, Tab
    // goes on to the history's rollback button, which keeps the focus while the page follows
    // the store, and Enter there rolls back.
    open(&page, &base, "/ui/apps/shop/web").await;
    let body = page.find_element("body").await.expect("the body");
    body.press_key("Tab").await.expect("tab");
    let first: String = eval(&page, "document.activeElement.className").await;
    assert_eq!(first, "skip", "the first stop is the skip link");
    let shown: f64 = eval(&page, "document.activeElement.getBoundingClientRect().left").await;
    assert!(shown >= 0.0, "the skip link is on screen when focused: {shown}");
    body.press_key("Enter").await.expect("enter");
    until(&page, "the content focused", Duration::from_secs(2), "document.activeElement.id === 'main'").await;
    let mut stops = Vec::new();
    for _ in 0..60 {
        body.press_key("Tab").await.expect("tab");
        let at: String = eval(&page, "(e => e.dataset.rollback || e.id || e.tagName)(document.activeElement)").await;
        stops.push(at.clone());
        if at == "1" {
            break;
        }
    }
    assert!(stops.contains(&"instances".to_string()), "the scale field is reachable: {stops:?}");
    assert_eq!(stops.last().map(String::as_str), Some("1"), "the rollback to v1 is reachable: {stops:?}");
    let before: String = eval(&page, "document.querySelector('#live').dataset.index").await;
    p.cli_ok(&["token", "create", "--role", "viewer", "--name", "bystander-focus"]).await;
    let moved = format!("document.querySelector('#live').dataset.index !== '{before}'");
    until(&page, "the live part to follow the store", Duration::from_secs(10), &moved).await;
    let kept: String = eval(&page, "document.activeElement.dataset.rollback || document.activeElement.tagName").await;
    assert_eq!(kept, "1", "the focus stays where it was as the page follows the store");

    // Roll back to v1 from the history, by the keyboard (the confirmation answered yes).
    let _: bool = eval(&page, "window.confirm = () => true; true").await;
    body.press_key("Enter").await.expect("enter");
    let status = wait_until("the rollback to v1", Duration::from_secs(30), || async {
        let s = p.status("web").await;
        (s["version"] == 3 && s["spec"]["environment"]["MARK"] == "one").then_some(s)
    })
    .await;
    assert_eq!(status["version"], 3, "a rollback is a new version");
    // The agents' samples are charted too, per instance.
    until(&page, "the cpu chart", Duration::from_secs(20), &drawn("cpu")).await;
    until(&page, "the memory chart", Duration::from_secs(5), &drawn("memory")).await;
    shoot(&page, shots.path(), "app").await;
    let audit = p.cli_ok(&["audit", "--since", "5m"]).await;
    assert!(
        audit.contains("app.rollback") && audit.contains("app.scale"),
        "changes from the console are audited: {audit}"
    );

    // Rules: a script that does not compile is refused at its line, which the editor selects;
    // a good one is saved for every router.
    let set_script = |script: &str| {
        format!(
            "document.querySelector('#rules-script').value = {}; document.querySelector('form[data-raw]').requestSubmit(); true",
            serde_json::to_string(script).unwrap()
        )
    };
    let _: bool = eval(&page, &set_script("-- deny deletes\nif req.method == then\nend\n")).await;
    until(
        &page,
        "the error at its line",
        Duration::from_secs(10),
        "document.querySelector('#banner').textContent.startsWith('line 2:')",
    )
    .await;
    let selected: String = eval(
        &page,
        "(() => { const a = document.querySelector('#rules-script'); return a.value.substring(a.selectionStart, a.selectionEnd); })()",
    )
    .await;
    assert_eq!(selected, "if req.method == then", "the editor selects the line at fault");
    let good = "if req.method == \"DELETE\" then return deny(403, \"no\") end\n";
    let _: bool = eval(&page, &set_script(good)).await;
    until(
        &page,
        "the rules saved",
        Duration::from_secs(10),
        "document.querySelector('#banner').textContent.startsWith('rules saved')",
    )
    .await;
    assert_eq!(p.get("/v1/apps/shop/web/rules").await.expect("the rules")["source"], good);

    // A job run from its page: a manual run appears in its runs and succeeds.
    let bin = berth_testkit::image::testapp_binary();
    let job = format!(
        "kind: job\ngroup: shop\nname: nightly\ndriver: exec\ncommand: [{}, --crash-after-ms, '100', --exit-code, '0']\nschedule: R/2030-01-01T02:00:00Z/P1D\n",
        bin.display()
    );
    let job = p.write("nightly.yaml", &job);
    p.cli_ok(&["deploy", "-f", &job]).await;
    open(&page, &base, "/ui/jobs/shop/nightly").await;
    let _: bool = eval(&page, "document.querySelector('form[data-api$=\"/run\"]').requestSubmit(); true").await;
    until(&page, "the manual run to succeed on the page", Duration::from_secs(20), "[...document.querySelectorAll('#runs tbody tr')].some(r => r.textContent.includes('manual') && r.textContent.includes('succeeded'))").await;

    // Drain the node from its page, then make it eligible again.
    open(&page, &base, &format!("/ui/nodes/{}", p.node_id)).await;
    let _: bool = eval(
        &page,
        "window.confirm = () => true; document.querySelector('form[data-api$=\"/drain\"]').requestSubmit(); true",
    )
    .await;
    until(&page, "the node shown draining", Duration::from_secs(15), "document.querySelector('#live').textContent.includes('draining') && !!document.querySelector('form[data-api$=\"/eligibility\"]')").await;
    let _: bool = eval(&page, "document.querySelector('form[data-api$=\"/eligibility\"]').requestSubmit(); true").await;
    until(
        &page,
        "the node shown ready",
        Duration::from_secs(15),
        "!!document.querySelector('form[data-api$=\"/drain\"]')",
    )
    .await;

    // The events page filters as one types.
    open(&page, &base, "/ui/events").await;
    let shown: i64 = eval(
        &page,
        "(() => { const f = document.querySelector('#event-filter'); f.value = 'rollback'; f.dispatchEvent(new Event('input', {bubbles: true})); \
         const rows = [...document.querySelectorAll('table.events tbody tr')]; \
         return rows.every(r => r.hidden || r.textContent.toLowerCase().includes('rollback')) ? rows.filter(r => !r.hidden).length : -1; })()",
    )
    .await;
    assert!(shown > 0, "the filter keeps the rollback's events and hides the rest: {shown}");

    for (name, path) in [("nodes", "/ui/nodes"), ("jobs", "/ui/jobs"), ("events", "/ui/events")] {
        open(&page, &base, path).await;
        assert!(text(&page, "h1").await.len() > 2, "{name}");
        shoot(&page, shots.path(), name).await;
    }

    // A viewer sees the app but has no actions, and the API refuses one sent anyway.
    let made =
        p.cli_ok(&["token", "create", "--role", "viewer", "--group", "shop", "--name", "watcher", "-o", "json"]).await;
    let made: Value = serde_json::from_str(&made).expect("token json");
    let viewer = made["token"].as_str().expect("the token").to_string();
    navigate_by(&page, "document.querySelector('form.who').submit()").await;
    assert!(url(&page).await.ends_with("/ui/login"));
    sign_in(&page, &base, &viewer).await;
    open(&page, &base, "/ui/apps/shop/web").await;
    assert!(text(&page, "#live").await.contains("Instances"));
    let actions: i64 = eval(&page, "document.querySelectorAll('section.actions, button[data-rollback]').length").await;
    assert_eq!(actions, 0, "a viewer is offered no change");
    let status: i64 = eval(
        &page,
        "(async () => (await fetch('/v1/apps/shop/web/scale', {method: 'POST', headers: {'content-type': 'application/json', 'x-berth-csrf': document.querySelector('meta[name=berth-csrf]').content}, body: '{\"instances\": 9}'})).status)()",
    )
    .await;
    assert_eq!(status, 403, "the API refuses a viewer's change");
    assert_eq!(p.status("web").await["desired"], 3);

    // A revoked token's sessions end with it.
    p.cli_ok(&["token", "revoke", made["id"].as_str().expect("the token's id")]).await;
    open(&page, &base, "/ui/apps/shop/web").await;
    assert!(url(&page).await.ends_with("/ui/login"), "{}", url(&page).await);

    for name in ["overview", "apps", "app", "nodes", "jobs", "events"] {
        for width in ["desktop", "phone"] {
            let file = shots.path().join(format!("{name}-{width}.png"));
            assert!(std::fs::metadata(&file).map(|m| m.len() > 1000).unwrap_or(false), "{}", file.display());
        }
    }
    // The server gone: the page says so, it does not go blank or stale in silence.
    sign_in(&page, &base, &p.admin_token()).await;
    open(&page, &base, "/ui/apps/shop/web").await;
    let mut p = p;
    p.kill9().await;
    until(&page, "the page to say the server is gone", Duration::from_secs(40), "!document.querySelector('#banner').hidden && document.querySelector('#banner').textContent.includes('cannot be reached')").await;
    assert!(text(&page, "#live").await.contains("Instances"), "what it last showed stays on the page");
    browser.close().await.ok();
}
