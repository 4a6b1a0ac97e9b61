//! Browsers for login tests: a real headless Chromium driven through chromedriver, and the
//! HTML form parsing an HTTP client needs to sign in the way a browser would.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use fantoccini::Locator;
use serde_json::json;

use super::{free_port, require};

/// The browser the tests drive: Debian's `chromium` package, not whatever is on PATH.
pub const CHROMIUM: &str = "/usr/bin/chromium";

/// How long the browser may take to show an expected element.
pub const BROWSER_WAIT: Duration = Duration::from_secs(30);

/// chromedriver (a child process in its own process group, with the Chromium it starts) and a
/// WebDriver session on it.
pub struct Browser {
    pub client: fantoccini::Client,
    driver: Child,
    _profile: tempfile::TempDir,
}

impl Browser {
    /// `None` (after [`require`]'s notice) when Chromium or chromedriver is missing.
    pub async fn start() -> Option<Self> {
        if !require("chromedriver") || !require(CHROMIUM) {
            return None;
        }
        // chromedriver takes only a port number: reserved here, racy but bounded by the retry
        // below failing loudly.
        let port = free_port();
        let driver = {
            use std::os::unix::process::CommandExt as _;
            Command::new("chromedriver")
                .arg(format!("--port={port}"))
                .process_group(0)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap()
        };
        let profile = tempfile::tempdir().unwrap();
        let client = match Browser::connect(port, profile.path()).await {
            Ok(c) => c,
            Err(e) => {
                kill_group(&driver);
                panic!("no WebDriver session on chromedriver: {e}");
            }
        };
        Some(Browser {
            client,
            driver,
            _profile: profile,
        })
    }

    /// Navigates to `url` and waits for an element with id `id`; returns where the browser is.
    pub async fn visit_until(&self, url: &str, id: &str) -> String {
        self.client.goto(url).await.unwrap();
        self.client
            .wait()
            .at_most(BROWSER_WAIT)
            .for_element(Locator::Id(id))
            .await
            .unwrap();
        self.client.current_url().await.unwrap().into()
    }

    /// Signs `user` in on the dev IdP's login page, which the browser is on or is about to
    /// reach: waits for the form, types the user and the dev password, submits.
    pub async fn submit_dev_idp_login(&self, user: &str) {
        let c = &self.client;
        let login = c
            .wait()
            .at_most(BROWSER_WAIT)
            .for_element(Locator::Id("login"))
            .await
            .unwrap();
        login.clear().await.unwrap();
        login.send_keys(user).await.unwrap();
        c.find(Locator::Css("input[name=password]"))
            .await
            .unwrap()
            .send_keys(tollgate_devidp::DEV_PASSWORD)
            .await
            .unwrap();
        c.find(Locator::Css("button[type=submit]"))
            .await
            .unwrap()
            .click()
            .await
            .unwrap();
    }

    pub async fn close(mut self) {
        let client = self.client.clone();
        let _ = client.close().await;
        kill_group(&self.driver);
        let _ = self.driver.wait();
    }

    async fn connect(port: u16, profile: &Path) -> Result<fantoccini::Client, String> {
        use fantoccini::error::NewSessionError;
        let mut caps = serde_json::Map::new();
        caps.insert(
            "goog:chromeOptions".into(),
            json!({
                "binary": CHROMIUM,
                "args": [
                    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                    "--no-first-run", "--disable-background-networking",
                    "--disable-component-update", "--disable-sync",
                    format!("--user-data-dir={}", profile.display()),
                ],
            }),
        );
        let url = format!("http://127.0.0.1:{port}");
        // chromedriver takes a moment to listen: retry while the connection is refused (bounded).
        let mut last = String::new();
        for _ in 0..250 {
            let session = fantoccini::ClientBuilder::new(
                hyper_util::client::legacy::connect::HttpConnector::new(),
            )
            .capabilities(caps.clone())
            .connect(&url)
            .await;
            match session {
                Ok(c) => return Ok(c),
                Err(
                    e @ (NewSessionError::Failed(_)
                    | NewSessionError::FailedC(_)
                    | NewSessionError::Lost(_)),
                ) => {
                    last = e.to_string();
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(e) => return Err(e.to_string()),
            }
        }
        Err(format!("chromedriver never answered: {last}"))
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // After a failed assertion: chromedriver and its Chromium share the process group.
        if matches!(self.driver.try_wait(), Ok(None)) {
            kill_group(&self.driver);
            let _ = self.driver.wait();
        }
    }
}

fn kill_group(child: &Child) {
    let _ = Command::new("kill")
        .args(["-KILL", "--", &format!("-{}", child.id())])
        .status();
}

/// What a browser does with the dev IdP's login page (`html`, served from `idp_base`): posts its
/// form back with its hidden inputs, the login, the password and `extra` fields. The answer (a
/// redirect on success) is not followed.
pub async fn submit_login_form(
    http: &reqwest::Client,
    idp_base: &str,
    html: &str,
    login: &str,
    password: &str,
    extra: &[(&str, &str)],
) -> reqwest::Response {
    let marker = "<form method=\"post\" action=\"";
    let start = html.find(marker).expect("login form") + marker.len();
    let action = &html[start..start + html[start..].find('"').unwrap()];
    let mut form = hidden_inputs(html);
    form.push(("login".into(), login.into()));
    form.push(("password".into(), password.into()));
    form.extend(
        extra
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned())),
    );
    http.post(format!("{idp_base}{}", unescape(action)))
        .form(&form)
        .send()
        .await
        .unwrap()
}

/// The `(name, value)` pairs of a page's hidden inputs, HTML entities decoded: what a browser
/// posts back with a login form.
pub fn hidden_inputs(html: &str) -> Vec<(String, String)> {
    html.split("<input type=\"hidden\" ")
        .skip(1)
        .filter_map(|chunk| {
            let name = chunk.split("name=\"").nth(1)?.split('"').next()?;
            let value = chunk.split("value=\"").nth(1)?.split('"').next()?;
            Some((unescape(name), unescape(value)))
        })
        .collect()
}

/// Decodes the HTML entities the dev IdP's pages escape.
pub fn unescape(text: &str) -> String {
    text.replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&#39;", "'")
        .replace("&amp;", "&")
}
