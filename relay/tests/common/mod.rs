//! A relay with its admin listener, in process, and an operator to sign in as.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use telework_relay::admin::{self, AdminOptions};
use telework_tests::TestRelay;
use tokio::sync::oneshot;

/// The operator every console test signs in as.
pub const OPERATOR: &str = "alice";
/// Alice's password.
pub const PASSWORD: &str = "correct horse battery";

/// A relay, its admin listener and an HTTP client that does not follow redirects.
pub struct Console {
    pub relay: TestRelay,
    pub addr: SocketAddr,
    pub base: String,
    pub http: reqwest::Client,
    stop: Option<oneshot::Sender<()>>,
}

impl Console {
    /// Plain HTTP on loopback.
    pub async fn start() -> Self {
        Self::start_with(AdminOptions::default()).await
    }

    /// With TLS (the relay's self-signed certificate).
    pub async fn start_tls() -> Self {
        let relay = TestRelay::start().await;
        let id = telework_relay::identity::self_signed(relay.dir.path(), &[]).unwrap();
        let tls = admin::cli::http_tls(id.chain, id.key).unwrap();
        Self::with_relay(
            relay,
            AdminOptions {
                tls: Some(Arc::new(tls)),
                ..AdminOptions::default()
            },
        )
        .await
    }

    pub async fn start_with(options: AdminOptions) -> Self {
        Self::with_relay(TestRelay::start().await, options).await
    }

    pub async fn with_relay(relay: TestRelay, options: AdminOptions) -> Self {
        relay
            .relay
            .registry
            .set_operator(OPERATOR, PASSWORD)
            .await
            .unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let scheme = if options.tls.is_some() {
            "https"
        } else {
            "http"
        };
        let (stop, stopped) = oneshot::channel::<()>();
        tokio::spawn(admin::serve(
            relay.relay.clone(),
            listener,
            options,
            async move {
                let _ = stopped.await;
            },
        ));
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .danger_accept_invalid_certs(true)
            .timeout(Duration::from_secs(20))
            .build()
            .unwrap();
        Self {
            relay,
            addr,
            base: format!("{scheme}://{addr}"),
            http,
            stop: Some(stop),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Signs in as `name`; returns the response to the form post and the sign-in cookie.
    pub async fn try_sign_in(&self, name: &str, password: &str) -> reqwest::Response {
        let form = self.http.get(self.url("/signin")).send().await.unwrap();
        let cookie = set_cookie(&form, "telework_signin").unwrap();
        let html = form.text().await.unwrap();
        let csrf = hidden_csrf(&html);
        self.http
            .post(self.url("/signin"))
            .header("cookie", format!("telework_signin={cookie}"))
            .form(&[("name", name), ("password", password), ("csrf", &csrf)])
            .send()
            .await
            .unwrap()
    }

    /// Signs in as the operator; returns the session cookie (`name=value`) and the CSRF token.
    pub async fn sign_in(&self) -> Signed {
        let response = self.try_sign_in(OPERATOR, PASSWORD).await;
        assert_eq!(response.status(), 303, "sign-in redirects");
        let cookie = format!(
            "telework_admin={}",
            set_cookie(&response, "telework_admin").unwrap()
        );
        let page = self
            .http
            .get(self.url("/machines"))
            .header("cookie", &cookie)
            .send()
            .await
            .unwrap();
        assert_eq!(page.status(), 200);
        let csrf = hidden_csrf(&page.text().await.unwrap());
        Signed { cookie, csrf }
    }
}

impl Drop for Console {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// A signed-in operator's cookie header value and CSRF token.
pub struct Signed {
    pub cookie: String,
    pub csrf: String,
}

/// The value of cookie `name` that `response` sets.
pub fn set_cookie(response: &reqwest::Response, name: &str) -> Option<String> {
    set_cookie_line(response, name).map(|line| {
        line.split(';')
            .next()
            .unwrap()
            .split_once('=')
            .unwrap()
            .1
            .to_owned()
    })
}

/// The whole `Set-Cookie` line for cookie `name`.
pub fn set_cookie_line(response: &reqwest::Response, name: &str) -> Option<String> {
    response
        .headers()
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap().to_owned())
        .find(|v| v.starts_with(&format!("{name}=")))
}

/// The first hidden CSRF field's value in a page.
pub fn hidden_csrf(html: &str) -> String {
    let at = html
        .find("name=\"csrf\" value=\"")
        .expect("a CSRF field in the page");
    let rest = &html[at + "name=\"csrf\" value=\"".len()..];
    rest[..rest.find('"').unwrap()].to_owned()
}

/// Sends SIGTERM to a `telework-relay` process and waits (at most 30 s) for its graceful stop;
/// returns how it exited.
pub fn stop_gracefully(child: &mut std::process::Child) -> std::process::ExitStatus {
    std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let started = std::time::Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the relay did not stop on SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}
