//! `cargo bench -p berth --bench console`: how fast the console's pages load in a real browser
//! with 100 apps and 1,000 instances, beside the API answer with the same data.
//!
//! `berth up` (exec driver, shipped defaults, in its own session) runs 100 apps of 10 instances
//! of `sleep`; headless chromium signs in and loads each page `BERTH_BENCH_ROUNDS` times (default
//! 20); a page's time is its navigation timing from start to the load event. Beside each, in the
//! same browser and run, the `/v1` request a script would make for the same data (`fetch` until
//! the JSON is parsed). Prints a Markdown table for docs/benchmarks.md.

use std::time::Duration;

use berth_testkit::{Platform, wait_until};
use chromiumoxide::browser::{Browser, BrowserConfig};
use chromiumoxide::page::Page;
use futures_util::StreamExt;

const BERTH: &str = env!("CARGO_BIN_EXE_berth");

async fn eval<T: serde::de::DeserializeOwned>(page: &Page, js: &str) -> T {
    page.evaluate(js).await.unwrap_or_else(|e| panic!("evaluate {js}: {e}")).into_value().expect("value")
}

/// Loads `url` and returns its navigation time (start to the load event), in ms.
async fn load(page: &Page, url: &str) -> f64 {
    let _: bool =
        eval(page, &format!("window.__old = true; location.href = {}; true", serde_json::to_string(url).unwrap()))
            .await;
    loop {
        let ms = page
            .evaluate("window.__old === undefined && document.readyState === 'complete' && performance.getEntriesByType('navigation')[0].loadEventEnd > 0 ? performance.getEntriesByType('navigation')[0].loadEventEnd : -1")
            .await
            .ok()
            .and_then(|r| r.into_value::<f64>().ok());
        if let Some(ms) = ms.filter(|ms| *ms > 0.0) {
            return ms;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Fetches `path` of the API from the page (its session) and parses it; the time, in ms.
async fn fetch_json(page: &Page, path: &str) -> f64 {
    let js = format!(
        "(async () => {{ const t = performance.now(); const r = await fetch({}); await r.json(); return performance.now() - t; }})()",
        serde_json::to_string(path).unwrap()
    );
    eval(page, &js).await
}

fn median(mut v: Vec<f64>) -> (f64, f64) {
    v.sort_by(f64::total_cmp);
    let p95 = v[((v.len() as f64 * 0.95).ceil() as usize).clamp(1, v.len()) - 1];
    (v[v.len() / 2], p95)
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let rounds: usize = std::env::var("BERTH_BENCH_ROUNDS").ok().and_then(|v| v.parse().ok()).unwrap_or(20);
    // A port for each of the 1,000 exec instances.
    let p = Platform::start_in_own_session(BERTH.as_ref(), "exec", (21000, 22999)).await;
    for i in 0..100 {
        let spec =
            format!("group: bench\nname: app-{i}\ndriver: exec\ninstances: 10\ncommand: [/bin/sleep, '86399']\n");
        let file = p.write(&format!("app-{i}.yaml"), &spec);
        p.cli_ok(&["deploy", "-f", &file, "--no-wait"]).await;
    }
    wait_until("1,000 instances running", Duration::from_secs(300), || async {
        let apps = p.get("/v1/apps").await.ok()?;
        let running: u64 = apps.as_array()?.iter().filter_map(|a| a["counts"]["running"].as_u64()).sum();
        (running == 1000).then_some(())
    })
    .await;

    let dir = tempfile::tempdir().expect("tempdir");
    let config = BrowserConfig::builder()
        .chrome_executable("/usr/bin/chromium")
        .no_sandbox()
        .user_data_dir(dir.path().join("chromium"))
        .window_size(1280, 900)
        .arg("--disable-gpu")
        .arg("--disable-dev-shm-usage")
        .build()
        .expect("browser config");
    let (mut browser, mut handler) = Browser::launch(config).await.expect("launch chromium");
    tokio::spawn(async move { while handler.next().await.is_some() {} });
    let page = browser.new_page("about:blank").await.expect("a page");
    load(&page, &format!("{}/ui/login", p.api)).await;
    let token = serde_json::to_string(&p.admin_token()).unwrap();
    let _: bool = eval(&page, &format!("window.__old = true; document.querySelector('#token').value = {token}; document.querySelector('form').submit(); true")).await;
    wait_until("signed in", Duration::from_secs(10), || async {
        let url = page.url().await.ok()??;
        url.ends_with("/ui/").then_some(())
    })
    .await;

    let pages = [
        ("overview `/ui/`", "/ui/", "/v1/apps"),
        ("apps `/ui/apps`", "/ui/apps", "/v1/apps"),
        ("an app `/ui/apps/bench/app-7`", "/ui/apps/bench/app-7", "/v1/apps/bench/app-7"),
        ("nodes `/ui/nodes`", "/ui/nodes", "/v1/nodes"),
        ("events `/ui/events`", "/ui/events", "/v1/events?limit=200"),
    ];
    println!("\n100 apps, 1,000 instances; {rounds} loads each, ms:\n");
    println!("| page | median | p95 | the API's JSON for it, median | page / API (median) |");
    println!("|---|---|---|---|---|");
    for (label, path, api) in pages {
        let (mut page_ms, mut api_ms) = (Vec::new(), Vec::new());
        // One warm-up of each, then rounds that alternate which goes first.
        load(&page, &format!("{}{path}", p.api)).await;
        fetch_json(&page, api).await;
        for round in 0..rounds {
            if round % 2 == 0 {
                page_ms.push(load(&page, &format!("{}{path}", p.api)).await);
                api_ms.push(fetch_json(&page, api).await);
            } else {
                api_ms.push(fetch_json(&page, api).await);
                page_ms.push(load(&page, &format!("{}{path}", p.api)).await);
            }
        }
        let ((pm, p95), (am, _)) = (median(page_ms), median(api_ms));
        println!("| {label} | {pm:.0} | {p95:.0} | {am:.0} | {:.2} |", pm / am.max(0.1));
    }
    browser.close().await.ok();
    // Instances outlive Berth: the sleeps go with the bench.
    for i in 0..100 {
        p.cli_ok(&["app", &format!("app-{i}"), "destroy", "--yes", "--no-wait"]).await;
    }
    wait_until("every instance to stop", Duration::from_secs(120), || async {
        let apps = p.get("/v1/apps").await.ok()?;
        apps.as_array()?.is_empty().then_some(())
    })
    .await;
}
