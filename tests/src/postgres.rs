//! A throwaway PostgreSQL cluster for tests: `initdb` and `pg_ctl` (Debian's `postgresql`
//! package, `/usr/lib/postgresql/<version>/bin`) in a temporary directory, listening on a free
//! loopback port and on a Unix socket in that directory, stopped and removed on drop.
//!
//! `initdb` refuses to run as root; as root the cluster runs as the `postgres` user
//! (`runuser`). Trust authentication: only local test processes reach it.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Command, Output};

/// Where Debian puts the server programs; the newest version present is used.
const PG_ROOT: &str = "/usr/lib/postgresql";

/// A running cluster.
pub struct Postgres {
    bin: PathBuf,
    dir: tempfile::TempDir,
    port: u16,
    as_postgres: bool,
}

/// The directory of `initdb` and `pg_ctl`, if PostgreSQL is installed.
pub fn binaries() -> Option<PathBuf> {
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir(PG_ROOT)
        .ok()?
        .filter_map(|e| {
            let e = e.ok()?;
            let version = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((version, bin))
        })
        .collect();
    versions.sort();
    versions.pop().map(|(_, bin)| bin)
}

impl Postgres {
    /// Starts a new cluster, or returns `None` (saying why on stderr) if the PostgreSQL
    /// binaries are not installed.
    ///
    /// # Panics
    /// If they are installed but the cluster does not start.
    pub fn start() -> Option<Self> {
        Self::start_with(|_| {})
    }

    /// Starts a new cluster that takes TCP connections over TLS only (`hostssl`), with a
    /// server certificate for 127.0.0.1 from a new CA; returns it and the CA's PEM file.
    /// `None` as for [`Postgres::start`].
    ///
    /// # Panics
    /// As [`Postgres::start`].
    pub fn start_tls() -> Option<(Self, PathBuf)> {
        let mut ca_file = PathBuf::new();
        let pg = Self::start_with(|pg| {
            let (ca_pem, cert_pem, key_pem) = tls_files();
            let data = pg.data();
            ca_file = pg.dir.path().join("ca.pem");
            std::fs::write(&ca_file, ca_pem).unwrap();
            pg.write_owned(&data.join("server.crt"), &cert_pem, 0o644);
            pg.write_owned(&data.join("server.key"), &key_pem, 0o600);
            let conf = data.join("postgresql.conf");
            let mut text = std::fs::read_to_string(&conf).unwrap();
            text.push_str(
                "\nssl = on\nssl_cert_file = 'server.crt'\nssl_key_file = 'server.key'\n",
            );
            pg.write_owned(&conf, &text, 0o600);
            pg.write_owned(
                &data.join("pg_hba.conf"),
                "local all all trust\nhostssl all all 127.0.0.1/32 trust\n",
                0o600,
            );
        })?;
        Some((pg, ca_file))
    }

    /// Writes `text` to `path`, owned by the server's user, with `mode`.
    fn write_owned(&self, path: &std::path::Path, text: &str, mode: u32) {
        use std::os::unix::fs::PermissionsExt;
        std::fs::write(path, text).unwrap();
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
        if self.as_postgres {
            let out = Command::new("chown")
                .arg("postgres:postgres")
                .arg(path)
                .output()
                .expect("chown runs");
            assert!(out.status.success(), "chown: {out:?}");
        }
    }

    /// [`Postgres::start`], with `configure` run between `initdb` and the server's start.
    fn start_with(configure: impl FnOnce(&Self)) -> Option<Self> {
        let Some(bin) = binaries() else {
            eprintln!(
                "SKIPPED: PostgreSQL is not installed (no {PG_ROOT}/*/bin/initdb); \
                 apt-get install postgresql"
            );
            return None;
        };
        let as_postgres = rustix_is_root();
        let dir = tempfile::Builder::new()
            .prefix("telework-pg-")
            .tempdir()
            .expect("a temporary directory");
        if as_postgres {
            let out = Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(dir.path())
                .output()
                .expect("chown runs");
            assert!(out.status.success(), "chown: {out:?}");
        }
        let mut pg = Self {
            bin,
            dir,
            port: 0,
            as_postgres,
        };
        let data = pg.data().to_owned();
        let out = pg.run(
            "initdb",
            &[
                "-D".as_ref(),
                data.as_os_str(),
                "-U".as_ref(),
                "postgres".as_ref(),
                "-A".as_ref(),
                "trust".as_ref(),
                "--no-sync".as_ref(),
                "-E".as_ref(),
                "UTF8".as_ref(),
            ],
        );
        assert!(out.status.success(), "initdb failed: {out:?}");
        configure(&pg);
        // A port taken between probing and binding makes pg_ctl fail: try a few.
        for _ in 0..5 {
            pg.port = free_port();
            if pg.pg_ctl_start() {
                return Some(pg);
            }
        }
        panic!("the PostgreSQL test cluster did not start");
    }

    /// Starts the server on `self.port`; whether it started (the log is printed if not).
    fn pg_ctl_start(&self) -> bool {
        let data = self.data();
        let options = format!(
            "-p {} -c listen_addresses=127.0.0.1 -k {} -F -c max_connections=200",
            self.port,
            self.dir.path().display()
        );
        let log = self.dir.path().join("postgres.log");
        let out = self.run(
            "pg_ctl",
            &[
                "start".as_ref(),
                "-w".as_ref(),
                "-t".as_ref(),
                "60".as_ref(),
                "-D".as_ref(),
                data.as_os_str(),
                "-l".as_ref(),
                log.as_os_str(),
                "-o".as_ref(),
                options.as_ref(),
            ],
        );
        if !out.status.success() {
            eprintln!(
                "pg_ctl start failed on port {}: {}",
                self.port,
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        }
        out.status.success()
    }

    /// Stops the server at once (`pg_ctl stop -m immediate`: connections are cut, as when
    /// the database machine fails); [`Postgres::start_again`] brings it back.
    pub fn stop(&self) {
        let out = self.pg_ctl_stop();
        assert!(out.status.success(), "pg_ctl stop: {out:?}");
    }

    /// `pg_ctl stop -m immediate`, waiting for the server to be gone.
    fn pg_ctl_stop(&self) -> Output {
        let data = self.data();
        self.run(
            "pg_ctl",
            &[
                "stop".as_ref(),
                "-m".as_ref(),
                "immediate".as_ref(),
                "-w".as_ref(),
                "-D".as_ref(),
                data.as_os_str(),
            ],
        )
    }

    /// Starts the stopped server again on the same port, with its data.
    ///
    /// # Panics
    /// If it does not start.
    pub fn start_again(&self) {
        assert!(
            self.pg_ctl_start(),
            "the PostgreSQL test cluster did not start again"
        );
    }

    /// Its URL, for `--database`: user `postgres`, database `postgres`, over TCP.
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// Creates database `name` and returns its URL (several registries in one cluster).
    ///
    /// # Panics
    /// If `createdb` fails.
    pub fn create_database(&self, name: &str) -> String {
        let port = self.port.to_string();
        let out = self.run(
            "createdb",
            &[
                "-h".as_ref(),
                "127.0.0.1".as_ref(),
                "-p".as_ref(),
                port.as_ref(),
                "-U".as_ref(),
                "postgres".as_ref(),
                name.as_ref(),
            ],
        );
        assert!(out.status.success(), "createdb {name}: {out:?}");
        format!("postgres://postgres@127.0.0.1:{}/{name}", self.port)
    }

    /// Its port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn run(&self, program: &str, args: &[&std::ffi::OsStr]) -> Output {
        let path = self.bin.join(program);
        let mut command = if self.as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(&path);
            c
        } else {
            Command::new(&path)
        };
        command
            .args(args)
            .current_dir(self.dir.path())
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("running {}: {e}", path.display()))
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let _ = self.pg_ctl_stop();
        // The TempDir removes the files (root may; as another user they are ours).
    }
}

/// A new CA's certificate, and a certificate and key it signed for 127.0.0.1 (PEM).
fn tls_files() -> (String, String, String) {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca = rcgen::CertificateParams::new(Vec::new()).unwrap();
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(rcgen::DnType::CommonName, "telework test database CA");
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let server = rcgen::CertificateParams::new(vec!["127.0.0.1".into(), "localhost".into()])
        .unwrap()
        .signed_by(&key, &ca_cert, &ca_key)
        .unwrap();
    (ca_cert.pem(), server.pem(), key.serialize_pem())
}

fn rustix_is_root() -> bool {
    rustix::process::geteuid().is_root()
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}
