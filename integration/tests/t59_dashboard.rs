//! The dashboard in a real browser: Debian's headless Chromium, driven over
//! WebDriver (chromium-driver), against a real cluster running a submitted job
//! with tasks, an actor, a placement group and output. Every view loads and
//! shows its rows, links lead to detail pages, the job page's log tail shows a
//! line printed after the page opened, and the stop button stops the job.
//! Screenshots of every view are saved under `target/dashboard-screenshots/`
//! (or `$MANTA_ARTIFACTS_DIR`).
//!
//! Without a session cookie every page redirects to the login form and every
//! API call is answered 401.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};
use manta_integration::{TestCluster, phase, scenarios_bin, wait_until};
use serde_json::{Value, json};

/// chromedriver, ended by pid when dropped.
struct Driver {
    child: Child,
    port: u16,
}

impl Driver {
    fn start() -> Driver {
        let program = ["/usr/bin/chromedriver", "/usr/lib/chromium/chromedriver"]
            .into_iter()
            .find(|path| std::path::Path::new(path).exists())
            .expect("chromedriver is not installed: `apt-get install chromium chromium-driver` (.ci/run does this)");
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let child = Command::new(program)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromedriver");
        wait_until("chromedriver listens", Duration::from_secs(20), || {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        Driver { child, port }
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn artifacts() -> PathBuf {
    let dir = std::env::var_os("MANTA_ARTIFACTS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/dashboard-screenshots"));
    std::fs::create_dir_all(&dir).expect("artifacts dir");
    dir
}

async fn browser(driver: &Driver) -> Client {
    let mut capabilities = serde_json::Map::new();
    let chrome = json!({
        "binary": "/usr/bin/chromium",
        "args": [
            "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            "--window-size=1440,1000", "--force-prefers-reduced-motion",
        ],
    });
    capabilities.insert("goog:chromeOptions".into(), chrome);
    ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(capabilities)
        .connect(&format!("http://127.0.0.1:{}", driver.port))
        .await
        .expect("a Chromium session")
}

/// Polls `condition` on the page's text until it holds.
async fn wait_for_text(client: &Client, what: &str, timeout: Duration, condition: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + timeout;
    loop {
        let text = client.find(Locator::Css("body")).await.expect("body").text().await.unwrap_or_default();
        if condition(&text) {
            return text;
        }
        assert!(Instant::now() < deadline, "timed out after {timeout:?} waiting until {what}; the page says:\n{text}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn visit(client: &Client, url: &str, name: &str, expect: &str) -> String {
    client.goto(url).await.expect("goto");
    let text = wait_for_text(client, &format!("{name} shows {expect:?}"), Duration::from_secs(20), |text| {
        text.contains(expect)
    })
    .await;
    let png = client.screenshot().await.expect("screenshot");
    std::fs::write(artifacts().join(format!("{name}.png")), png).expect("save screenshot");
    text
}

/// Clicks the first element matching `css`, again if a live refresh replaced it
/// between finding and clicking (a stale element).
async fn click(client: &Client, css: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let found = client.wait().at_most(Duration::from_secs(20)).for_element(Locator::Css(css)).await;
        let clicked = match found {
            Ok(element) => element.click().await.map_err(|error| error.to_string()),
            Err(error) => Err(error.to_string()),
        };
        match clicked {
            Ok(()) => return,
            Err(error) => assert!(Instant::now() < deadline, "could not click {css}: {error}"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn job_status(cluster: &TestCluster, id: &str) -> Value {
    let url = format!("{}/api/jobs/{id}", cluster.dashboard_url());
    let output = Command::new("curl")
        .args(["-s", "-H", &format!("Authorization: Bearer {}", cluster.token()), &url])
        .output()
        .expect("curl");
    serde_json::from_slice(&output.stdout).unwrap_or(Value::Null)
}

/// Submits the `dashboard` scenario as job `dash` and waits for its output.
fn start_dash_job(cluster: &TestCluster) {
    phase("a job with tasks, an actor, a placement group and output");
    let entrypoint = format!("{} dashboard", scenarios_bin().display());
    let output =
        cluster.manta_in_session(&["job", "submit", "--no-wait", "--submission-id", "dash", "--", &entrypoint]);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    wait_until("the job printed its first ticks", Duration::from_secs(120), || {
        let logs = cluster.manta_in_session(&["job", "logs", "dash"]);
        String::from_utf8_lossy(&logs.stdout).contains("tick 1")
    });
}

/// Opens `/jobs`, is sent to the login form, logs in with the token, and lands back on `/jobs`.
async fn log_in(client: &Client, cluster: &TestCluster) {
    let base = cluster.dashboard_url();
    client.goto(&format!("{base}/jobs")).await.unwrap();
    client.wait().at_most(Duration::from_secs(20)).for_element(Locator::Css("input[name=token]")).await.unwrap();
    assert!(client.current_url().await.unwrap().path() == "/login");
    client.find(Locator::Css("input[name=token]")).await.unwrap().send_keys(&cluster.token()).await.unwrap();
    click(client, "button[type=submit]").await;
    wait_for_text(client, "the jobs page after login", Duration::from_secs(20), |text| text.contains("dash")).await;
    assert_eq!(client.current_url().await.unwrap().path(), "/jobs");
}

/// The README's screenshot: `cargo test -p manta-integration --test t59_dashboard readme -- --ignored`
/// writes `docs/dashboard-overview.png` after half a minute of samples.
#[test]
#[ignore = "makes the README's screenshot"]
fn readme_screenshot() {
    let cluster = TestCluster::start(1);
    start_dash_job(&cluster);
    let run = cluster.scenario(&["chains"]);
    assert!(run.status.success());
    std::thread::sleep(Duration::from_secs(30));
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let driver = Driver::start();
    runtime.block_on(async {
        let client = browser(&driver).await;
        log_in(&client, &cluster).await;
        client.set_window_size(1280, 900).await.unwrap();
        client.goto(&cluster.dashboard_url()).await.unwrap();
        wait_for_text(&client, "the overview", Duration::from_secs(20), |text| text.contains("Recent errors")).await;
        let png = client.screenshot().await.unwrap();
        std::fs::write(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../docs/dashboard-overview.png"), png).unwrap();
        client.close().await.unwrap();
    });
}

#[test]
fn cluster_dashboard_views_in_a_real_browser() {
    let cluster = TestCluster::start(1);
    start_dash_job(&cluster);
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let driver = Driver::start();
    runtime.block_on(async {
        let client = browser(&driver).await;
        let base = cluster.dashboard_url();

        phase("login: a page without a session goes to the form; the token gets a session");
        log_in(&client, &cluster).await;

        phase("each view");
        let overview = visit(&client, &base, "overview", "Recent errors").await;
        assert!(overview.contains("dash") && overview.contains("alive"), "{overview}");
        let nodes = visit(&client, &format!("{base}/cluster"), "cluster", "ALIVE").await;
        assert_eq!(nodes.matches("127.0.0.1:").count(), 2, "two nodes: {nodes}");
        let actors = visit(&client, &format!("{base}/actors"), "actors", "dash-tally").await;
        assert!(actors.contains("Tally"), "{actors}");
        let tasks = visit(&client, &format!("{base}/tasks"), "tasks", "increment").await;
        assert!(tasks.contains("FINISHED"), "{tasks}");
        let failed = visit(&client, &format!("{base}/tasks?state=FAILED"), "tasks-failed", "fails").await;
        assert!(failed.contains("failed on purpose") && !failed.contains("increment"), "{failed}");
        let groups = visit(&client, &format!("{base}/placement-groups"), "placement-groups", "CREATED").await;
        assert!(groups.contains("PACK"), "{groups}");
        let metrics = visit(&client, &format!("{base}/charts"), "metrics", "Logical CPUs").await;
        assert!(metrics.contains("Tasks completed per second"), "{metrics}");
        assert!(client.find(Locator::Css("svg.chart polyline")).await.is_ok(), "charts are drawn");

        phase("links to detail pages");
        click(&client, "a[href='/cluster']").await;
        click(&client, "td a[href^='/cluster/']").await;
        wait_for_text(&client, "a node's page", Duration::from_secs(20), |text| {
            text.contains("Workers") && text.contains("Log files")
        })
        .await;
        let png = client.screenshot().await.unwrap();
        std::fs::write(artifacts().join("node.png"), png).unwrap();
        client.goto(&format!("{base}/actors")).await.unwrap();
        click(&client, "td a[href^='/actors/']").await;
        let actor = wait_for_text(&client, "the actor's page with its calls", Duration::from_secs(20), |text| {
            text.contains("Calls") && text.contains("Tally.add")
        })
        .await;
        assert!(actor.contains("dash-tally"), "{actor}");
        std::fs::write(artifacts().join("actor.png"), client.screenshot().await.unwrap()).unwrap();

        phase("logs: a node's files, then one file");
        let logs = visit(&client, &format!("{base}/logs"), "logs", "Choose a node").await;
        assert!(logs.contains("Actor id"), "{logs}");
        let option = client.find(Locator::Css("select[name=node_id] option:nth-child(2)")).await.unwrap();
        let node_id = option.attr("value").await.unwrap().expect("a node id");
        client.goto(&format!("{base}/logs?node_id={node_id}")).await.unwrap();
        wait_for_text(&client, "the node's files", Duration::from_secs(20), |text| text.contains(".out")).await;
        click(&client, "td a[href^='/logs/']").await;
        wait_for_text(&client, "a log file", Duration::from_secs(20), |text| text.contains("Follow")).await;
        std::fs::write(artifacts().join("log-file.png"), client.screenshot().await.unwrap()).unwrap();

        phase("the job page: its log tail shows a line printed after the page opened");
        client.goto(&format!("{base}/jobs")).await.unwrap();
        click(&client, "td a[href='/jobs/dash']").await;
        let page =
            wait_for_text(&client, "the job page's log", Duration::from_secs(20), |text| text.contains("tick ")).await;
        let newest =
            |text: &str| text.lines().filter_map(|line| line.strip_prefix("tick ")?.trim().parse::<u64>().ok()).max();
        let at_open = newest(&page).expect("ticks on the page");
        let later = wait_for_text(&client, "a tick printed after the page opened", Duration::from_secs(20), |text| {
            newest(text).is_some_and(|tick| tick > at_open + 2)
        })
        .await;
        assert!(later.contains("Driver log") && later.contains("Tasks") && later.contains("increment"), "{later}");
        std::fs::write(artifacts().join("job.png"), client.screenshot().await.unwrap()).unwrap();

        phase("the stop button stops the job");
        click(&client, "button[data-post$='/stop']").await;
        client.accept_alert().await.expect("the confirm dialog");
        wait_for_text(&client, "the job page shows STOPPED", Duration::from_secs(30), |text| text.contains("STOPPED"))
            .await;
        assert_eq!(job_status(&cluster, "dash")["status"], "STOPPED");
        client.close().await.unwrap();
    });
}

const FORM: &str = "application/x-www-form-urlencoded";

#[test]
fn cluster_dashboard_needs_a_login_and_the_api_a_token() {
    let cluster = TestCluster::start(0);
    let base = cluster.dashboard_url();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    runtime.block_on(async {
        let http = reqwest::Client::builder().no_proxy().redirect(reqwest::redirect::Policy::none()).build().unwrap();
        for page in [
            "/",
            "/jobs",
            "/jobs/x",
            "/cluster",
            "/actors",
            "/tasks",
            "/placement-groups",
            "/charts",
            "/logs",
            "/events",
        ] {
            let response = http.get(format!("{base}{page}")).send().await.unwrap();
            assert_eq!(response.status(), 303, "{page}");
            let location = response.headers()["location"].to_str().unwrap().to_string();
            assert!(location.starts_with("/login?next="), "{page} → {location}");
        }
        for api in ["nodes", "jobs", "actors", "tasks", "placement_groups", "objects", "logs?node_id=x"] {
            let response = http.get(format!("{base}/api/v0/{api}")).send().await.unwrap();
            assert_eq!(response.status(), 401, "{api}");
        }
        let forged =
            http.get(format!("{base}/api/v0/nodes")).header("Cookie", "manta_session=forged").send().await.unwrap();
        assert_eq!(forged.status(), 401, "a made-up session is no session");

        phase("a wrong token gets no session; the right one does, and the cookie is HttpOnly and SameSite=Strict");
        let wrong = http
            .post(format!("{base}/login"))
            .header("content-type", FORM)
            .body("token=wrong&next=%2F")
            .send()
            .await
            .unwrap();
        assert_eq!(wrong.status(), 403);
        assert!(wrong.headers().get("set-cookie").is_none());
        let token = cluster.token();
        let login = http
            .post(format!("{base}/login"))
            .header("content-type", FORM)
            .body(format!("token={token}&next=%2Ftasks"))
            .send()
            .await
            .unwrap();
        assert_eq!(login.status(), 303);
        assert_eq!(login.headers()["location"], "/tasks");
        let cookie = login.headers()["set-cookie"].to_str().unwrap().to_string();
        assert!(cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"), "{cookie}");
        assert!(!cookie.contains(&token), "the token never goes into the cookie");
        let session = cookie.split(';').next().unwrap().to_string();

        phase("with the session: pages and the state API answer; a change needs the dashboard's header");
        let page = http.get(format!("{base}/tasks")).header("Cookie", &session).send().await.unwrap();
        assert_eq!(page.status(), 200);
        let nodes: Value = http
            .get(format!("{base}/api/v0/nodes?filter_keys=state&filter_predicates=%3D&filter_values=ALIVE"))
            .header("Cookie", &session)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(nodes["result"], true, "{nodes}");
        assert_eq!(nodes["data"]["result"]["total"], 1, "{nodes}");
        let bad = http
            .get(format!("{base}/api/v0/tasks?filter=colour%3Dred"))
            .header("Cookie", &session)
            .send()
            .await
            .unwrap();
        assert_eq!(bad.status(), 400);
        let message: Value = bad.json().await.unwrap();
        assert!(message["msg"].as_str().unwrap().contains("colour"), "{message}");
        let stop = http.post(format!("{base}/api/jobs/x/stop")).header("Cookie", &session).send().await.unwrap();
        assert_eq!(stop.status(), 403, "a cross-site form cannot stop a job with the cookie alone");

        phase("logging out ends the session");
        let out = http
            .post(format!("{base}/logout"))
            .header("Cookie", &session)
            .header("x-manta-dashboard", "1")
            .send()
            .await
            .unwrap();
        assert_eq!(out.status(), 303);
        let after = http.get(format!("{base}/api/v0/nodes")).header("Cookie", &session).send().await.unwrap();
        assert_eq!(after.status(), 401);
    });
}
