use super::*;
use crate::registry::AuditFilter;

fn pc(id: &str) -> ComputerId {
    id.parse().unwrap()
}

fn addr() -> SocketAddr {
    "192.0.2.10:40000".parse().unwrap()
}

#[test]
fn events_become_rows_with_stable_columns() {
    let online = AuditEvent::AgentOnline {
        id: pc("pc-1"),
        address: addr(),
        transport: "QUIC".into(),
    }
    .row(1000);
    assert_eq!(online.kind, "agent_online");
    assert_eq!(online.computer_id.as_deref(), Some("pc-1"));
    assert_eq!(online.address.as_deref(), Some("192.0.2.10:40000"));
    assert_eq!(online.detail, json!({ "transport": "QUIC" }));

    let removed = AuditEvent::Removed {
        id: pc("pc-1"),
        by: Actor::Operator("alice".into()),
    }
    .row(1000);
    assert_eq!(removed.actor.as_deref(), Some("alice"));
    assert_eq!(removed.detail, json!({ "via": "console" }));

    let summary = AuditEvent::LookupsRefused {
        address: None,
        minute_start: 960,
        count: 3,
        kinds: RefusalCounts {
            unknown_id: 3,
            ..Default::default()
        },
    }
    .row(1000);
    assert_eq!(summary.at, 960, "a summary is dated by its minute");
    assert_eq!(summary.detail["other_addresses"], json!(true));
    assert_eq!(summary.detail["kinds"]["unknown_id"], json!(3));
    for kind in KINDS {
        assert!(!kind.is_empty());
    }

    let wake = AuditEvent::WakeRequested {
        id: pc("pc-tanaka-01"),
        client: addr(),
        wakers: vec!["ws-01".into()],
        result: "sent".into(),
    };
    assert!(KINDS.contains(&wake.kind()));
    let row = wake.row(1000);
    assert_eq!(row.kind, "wake_requested");
    assert_eq!(row.computer_id.as_deref(), Some("pc-tanaka-01"));
    assert_eq!(row.address, Some(addr().to_string()));
    assert_eq!(row.detail, json!({ "wakers": ["ws-01"], "result": "sent" }));
}

#[tokio::test]
async fn the_writer_stores_events_and_this_minutes_refusals_on_flush() {
    let registry = Arc::new(Registry::in_memory().unwrap());
    let audit = Audit::new(registry.clone());
    audit.record(AuditEvent::Enrolled {
        id: pc("pc-1"),
        address: addr(),
        with_token: true,
    });
    for _ in 0..100 {
        audit.lookup_refused(addr().ip(), Refusal::UnknownId);
    }
    assert!(audit.flush(Duration::from_secs(10)));
    let rows = registry.audit_rows(&AuditFilter::default()).await.unwrap();
    let kinds: Vec<&str> = rows.iter().map(|r| r.kind.as_str()).collect();
    assert!(kinds.contains(&"enrolled"), "{kinds:?}");
    let refused: Vec<_> = rows
        .iter()
        .filter(|r| r.kind == "lookups_refused")
        .collect();
    assert_eq!(refused.len(), 1, "{rows:?}");
    assert_eq!(refused[0].detail["count"], json!(100));
    assert_eq!(refused[0].address.as_deref(), Some("192.0.2.10"));
}

#[tokio::test]
async fn a_full_queue_counts_what_it_drops_in_a_row() {
    let registry = Registry::in_memory().unwrap();
    let (audit, rx) = Audit::unstarted(4);
    for _ in 0..10 {
        audit.record(AuditEvent::Dropped { count: 0 });
    }
    let (dropped, refusals) = (audit.dropped.clone(), audit.refusals.clone());
    drop(audit);
    write_loop(&registry, &rx, &dropped, &refusals);
    let rows = registry.audit_rows(&AuditFilter::default()).await.unwrap();
    assert_eq!(rows.len(), 5, "{rows:?}");
    let counts: Vec<_> = rows.iter().map(|r| r.detail["count"].clone()).collect();
    assert!(counts.contains(&json!(6)), "{counts:?}");
}

#[test]
fn ages_parse_or_say_what_is_expected() {
    assert_eq!(parse_age("90m"), Ok(Duration::from_secs(5400)));
    assert_eq!(parse_age("24h"), Ok(Duration::from_secs(86_400)));
    assert_eq!(parse_age("7d"), Ok(Duration::from_secs(7 * 86_400)));
    for bad in ["", "h", "24", "24x", "-1h", "1.5h", "24 h"] {
        let err = parse_age(bad).unwrap_err();
        assert!(err.contains("like 90m, 24h or 7d"), "{bad}: {err}");
    }
    assert!(parse_age("99999999999999999999d").is_err());
}

#[test]
fn retention_is_at_least_a_day() {
    assert_eq!(retention(0), Duration::from_secs(86_400));
    assert_eq!(retention(90), Duration::from_secs(90 * 86_400));
}
