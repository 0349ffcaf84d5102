//! The settings' checks and merging.

use super::*;

#[test]
fn full_file_parses_and_flags_win() {
    let file = Settings::from_toml(
        r#"
        listen = "127.0.0.1:4433"
        data_dir = "/var/lib/telework-relay"
        registration = "token"
        hostnames = ["relay.example.com"]
        max_connections = 500
        shutdown_grace_secs = 30
        per_address_limits = false
        global_failures_per_sec = 2.5
        audit_days = 30
        "#,
    )
    .unwrap();
    let flags = Settings {
        listen: Some("127.0.0.1:9000".into()),
        ..Default::default()
    };
    let cfg = file.overridden_by(flags).validate().unwrap();
    assert_eq!(cfg.listen.port(), 9000);
    assert_eq!(cfg.registration, Registration::Token);
    assert_eq!(cfg.max_connections, 500);
    assert_eq!(cfg.shutdown_grace, Duration::from_secs(30));
    assert!(!cfg.per_address_limits);
    assert_eq!(cfg.global_failures.per_sec, 2.5);
    assert_eq!(cfg.global_failures.burst, 150.0);
    assert_eq!(cfg.audit_days, 30);
    assert_eq!(cfg.options().audit_days, 30);
    let limited = Settings {
        data_dir: Some("/d".into()),
        global_failures_per_sec: Some(2.5),
        ..Default::default()
    };
    let limits = limited.validate().unwrap().options().limits;
    assert_eq!(limits.global_failures.per_sec, 2.5);
    assert_eq!(limits.failures, crate::limits::Limits::default().failures);
    assert!(cfg.options().limits.lookups.burst > 1e6);
}

#[test]
fn unknown_keys_and_bad_values_are_named() {
    let err = Settings::from_toml("listne = \"x\"").unwrap_err();
    assert!(err.contains("listne"), "{err}");
    let err = Settings::from_toml("registration = \"closed\"").unwrap_err();
    assert!(
        err.contains("registration") || err.contains("closed"),
        "{err}"
    );
    let bad_listen = Settings {
        listen: Some("nope".into()),
        data_dir: Some("/d".into()),
        ..Default::default()
    };
    assert!(bad_listen
        .validate()
        .unwrap_err()
        .to_string()
        .contains("listen"));
    let half_cert = Settings {
        cert: Some("c".into()),
        data_dir: Some("/d".into()),
        ..Default::default()
    };
    assert!(half_cert
        .validate()
        .unwrap_err()
        .to_string()
        .contains("cert/key"));
    let zero = Settings {
        max_connections: Some(0),
        data_dir: Some("/d".into()),
        ..Default::default()
    };
    assert!(zero
        .validate()
        .unwrap_err()
        .to_string()
        .contains("max_connections"));
    for bad in [0.0, -1.0, f64::NAN, f64::INFINITY] {
        let s = Settings {
            global_failures_per_sec: Some(bad),
            data_dir: Some("/d".into()),
            ..Default::default()
        };
        assert!(s
            .validate()
            .unwrap_err()
            .to_string()
            .contains("global_failures_per_sec"));
    }
    let no_audit = Settings {
        audit_days: Some(0),
        data_dir: Some("/d".into()),
        ..Default::default()
    };
    assert!(no_audit
        .validate()
        .unwrap_err()
        .to_string()
        .contains("audit_days"));
    assert!(Settings::default()
        .validate()
        .unwrap_err()
        .to_string()
        .contains("data_dir"));
}

#[test]
fn the_admin_listener_needs_tls_off_loopback() {
    let with = |listen: &str, tls: Option<AdminTls>| Settings {
        data_dir: Some("/d".into()),
        admin_listen: Some(listen.into()),
        admin_tls: tls,
        ..Default::default()
    };
    let admin = with("127.0.0.1:0", None).validate().unwrap().admin.unwrap();
    assert!(!admin.tls);
    let admin = with("0.0.0.0:9480", None)
        .validate()
        .unwrap()
        .admin
        .unwrap();
    assert!(admin.tls);
    let err = with("0.0.0.0:9480", Some(AdminTls::Off))
        .validate()
        .unwrap_err()
        .to_string();
    assert!(err.contains("not a loopback address"), "{err}");
    assert!(with("[::1]:1", Some(AdminTls::Off)).validate().is_ok());
    let default = Settings {
        data_dir: Some("/d".into()),
        ..Default::default()
    };
    let admin = default.validate().unwrap().admin.unwrap();
    assert_eq!(admin.listen.to_string(), "127.0.0.1:9480");
    let off = Settings {
        data_dir: Some("/d".into()),
        admin: Some(false),
        ..Default::default()
    };
    assert!(off.validate().unwrap().admin.is_none());
}

#[test]
fn a_database_url_is_postgres_or_refused() {
    let file = Settings::from_toml(
        "data_dir = \"/d\"\ndatabase_url = \"postgres://relay@db.internal/telework\"",
    )
    .unwrap();
    let cfg = file.clone().validate().unwrap();
    assert_eq!(
        cfg.database_url.as_ref().map(DatabaseUrl::as_str),
        Some("postgres://relay@db.internal/telework")
    );
    assert!(!format!("{cfg:?}").contains("db.internal"));
    assert_eq!(
        Settings::default().overridden_by(file).database_url,
        cfg.database_url
    );
    let bad = Settings {
        data_dir: Some("/d".into()),
        database_url: Some(DatabaseUrl::from("mysql://x".to_owned())),
        ..Default::default()
    };
    let err = bad.validate().unwrap_err().to_string();
    assert!(err.contains("database_url"), "{err}");
}

#[test]
fn fixture_files_parse_or_fail_as_expected() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata");
    Settings::from_file(&dir.join("relay-valid.toml"))
        .unwrap()
        .validate()
        .unwrap();
    let err = Settings::from_file(&dir.join("relay-invalid.toml"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("relay-invalid.toml"), "{err}");
}
