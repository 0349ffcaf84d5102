//! A curious relay operator records every byte the relay forwards. Neither the connection
//! password nor any plaintext desktop byte may be in the recording, nor in the relay's files.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::{Arc, Mutex};

use telework_relay::RelayOptions;
use telework_tests::on_both_transports;
use telework_tests::{TestClient, TestRelay};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const PASSWORD: &str = "Curious-Operator-Must-Not-See-This";

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

on_both_transports! {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn relay_sees_neither_password_nor_desktop_bytes() {
        let recording = Arc::new(Mutex::new(Vec::<u8>::new()));
        let tap = recording.clone();
        let options = RelayOptions {
            splice_tap: Some(Arc::new(move |bytes: &[u8]| {
                tap.lock().unwrap().extend_from_slice(bytes)
            })),
            ..Default::default()
        };
        let relay = TestRelay::start_with(options).await;
        let (_desktop, _agent) = relay.office_pc("pc-secret", PASSWORD).await;

        // A wrong try first, so the recording holds a failed login too.
        assert!(relay
            .login("pc-secret", "Curious-Operator-Wrong-Guess")
            .await
            .is_err());
        let client = TestClient::serve(relay.login("pc-secret", PASSWORD).await.unwrap()).await;

        // "Desktop" bytes with a recognisable pattern, sent and echoed back.
        let marker = b"DESKTOP-PIXELS:confidential-payroll-spreadsheet;";
        let plaintext: Vec<u8> = marker.iter().copied().cycle().take(256 * 1024).collect();
        let mut conn = TcpStream::connect(client.local).await.unwrap();
        conn.write_all(&plaintext).await.unwrap();
        conn.shutdown().await.unwrap();
        let mut back = Vec::new();
        conn.read_to_end(&mut back).await.unwrap();
        assert_eq!(back, plaintext);
        client.stop().await.unwrap();

        let recorded = recording.lock().unwrap().clone();
        assert!(
            recorded.len() > 2 * plaintext.len(),
            "the tap saw the session ({} bytes)",
            recorded.len()
        );
        assert!(
            !contains(&recorded, PASSWORD.as_bytes()),
            "password crossed the relay"
        );
        assert!(
            !contains(&recorded, b"Curious-Operator"),
            "part of a password crossed the relay"
        );
        // No 12-byte run of the plaintext appears anywhere.
        for w in marker.windows(12) {
            assert!(
                !contains(&recorded, w),
                "plaintext {:?} crossed the relay",
                String::from_utf8_lossy(w)
            );
        }
        // The password is not in the relay's files either.
        for entry in std::fs::read_dir(relay.dir.path()).unwrap() {
            let bytes = std::fs::read(entry.unwrap().path()).unwrap();
            assert!(!contains(&bytes, PASSWORD.as_bytes()));
        }
    }
}
