//! The proxy's answer to CONNECT: any bytes, fed in pieces whose sizes the input chooses,
//! must give an answer or a precise error, never a panic, and the same result as feeding
//! everything at once.
#![no_main]
use libfuzzer_sys::fuzz_target;
use telework_protocol::http_connect::{ResponseParser, MAX_HEADER_BYTES};

fuzz_target!(|data: &[u8]| {
    let Some((&step, input)) = data.split_first() else {
        return;
    };
    let whole = ResponseParser::new().feed(input);
    let step = usize::from(step).max(1);
    let mut parser = ResponseParser::new();
    let mut pieces = Ok(None);
    let mut fed = 0;
    for chunk in input.chunks(step) {
        fed += chunk.len();
        pieces = parser.feed(chunk);
        if !matches!(pieces, Ok(None)) {
            break;
        }
    }
    match (&whole, &pieces) {
        (Ok(Some(a)), Ok(Some(b))) => {
            assert_eq!(
                (a.status, &a.reason, &a.auth_schemes),
                (b.status, &b.reason, &b.auth_schemes)
            );
            // What follows the header is reported, never lost.
            let header_len = input.len() - a.rest.len();
            assert!(header_len <= MAX_HEADER_BYTES);
            assert_eq!(&input[header_len..fed], &b.rest[..]);
        }
        (Err(a), Err(b)) => assert_eq!(a, b),
        (Ok(None), Ok(None)) => {}
        other => panic!("fed whole and in pieces differ: {other:?}"),
    }
});
