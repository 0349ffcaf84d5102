//! A real HTTP proxy for tests: Debian's `tinyproxy`, started in the foreground on a free
//! loopback port with a generated configuration, and killed when dropped.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use tokio::process::{Child, Command};

/// How long tinyproxy may take to start listening.
const START_TIMEOUT: Duration = Duration::from_secs(10);

/// How a test's proxy is configured.
#[derive(Debug, Clone, Default)]
pub struct ProxyConfig {
    /// The only ports `CONNECT` may reach (tinyproxy refuses others with 403).
    pub connect_ports: Vec<u16>,
    /// `BasicAuth user password` (letters and digits: tinyproxy's syntax): without them
    /// the proxy answers 407.
    pub basic_auth: Option<(String, String)>,
}

/// A running tinyproxy.
pub struct Tinyproxy {
    /// Its port on 127.0.0.1.
    pub port: u16,
    child: Child,
    dir: tempfile::TempDir,
}

impl Tinyproxy {
    /// Starts tinyproxy with `config` and waits until it accepts connections.
    ///
    /// # Panics
    /// If tinyproxy is not installed (`apt-get install tinyproxy`) or does not start.
    pub async fn start(config: ProxyConfig) -> Self {
        let dir = tempfile::tempdir().unwrap();
        // A free port from the kernel; tinyproxy binds it again a moment later.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut text = format!(
            "Port {port}\nListen 127.0.0.1\nTimeout 30\nMaxClients 50\nAllow 127.0.0.1\n\
             LogLevel Connect\nLogFile \"{}\"\n",
            dir.path().join("tinyproxy.log").display()
        );
        for p in &config.connect_ports {
            text.push_str(&format!("ConnectPort {p}\n"));
        }
        if let Some((user, password)) = &config.basic_auth {
            text.push_str(&format!("BasicAuth {user} {password}\n"));
        }
        let conf = dir.path().join("tinyproxy.conf");
        std::fs::write(&conf, text).unwrap();
        let child = Command::new("tinyproxy")
            .arg("-d")
            .arg("-c")
            .arg(&conf)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("stderr")).unwrap())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot start tinyproxy ({e}): install it with 'apt-get install tinyproxy'")
            });
        let mut proxy = Self { port, child, dir };
        let deadline = tokio::time::Instant::now() + START_TIMEOUT;
        while tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err()
        {
            let exited = proxy.child.try_wait().unwrap();
            assert!(
                exited.is_none() && tokio::time::Instant::now() < deadline,
                "tinyproxy did not listen on {port} within {START_TIMEOUT:?} ({exited:?}): {}{}",
                std::fs::read_to_string(proxy.dir.path().join("stderr")).unwrap_or_default(),
                proxy.log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        proxy
    }

    /// `http://127.0.0.1:PORT`, with `user:password@` when given.
    pub fn url(&self, credentials: Option<(&str, &str)>) -> String {
        match credentials {
            Some((user, password)) => format!("http://{user}:{password}@127.0.0.1:{}", self.port),
            None => format!("http://127.0.0.1:{}", self.port),
        }
    }

    /// `127.0.0.1:PORT`, as telework names the proxy.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Its log so far (one line per connection and request).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// How many `CONNECT` requests for `target` it has logged.
    pub fn connects_to(&self, target: &str) -> usize {
        let needle = format!("CONNECT {target} HTTP/1.1");
        self.log().lines().filter(|l| l.contains(&needle)).count()
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("tinyproxy.log")
    }
}

impl Drop for Tinyproxy {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}
