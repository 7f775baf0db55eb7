//! Fuzzes the PCP decoders, a server's (requests) and a client's
//! (responses): they must never panic; what they accept re-encodes to a
//! message that decodes the same, and every request a server answers with
//! an error yields a response a client can read back with that result.

#![no_main]

use libfuzzer_sys::fuzz_target;
use proto::pcp::{self, RequestError};

fuzz_target!(|data: &[u8]| {
    match pcp::decode_request(data) {
        Ok(req) => {
            let again = pcp::encode_request(&req);
            assert_eq!(pcp::decode_request(&again), Ok(req));
        }
        Err(RequestError::Answer(code)) => {
            let out = pcp::encode_error_response(data, code, 0, 1);
            assert_eq!(pcp::decode_response(&out).map(|r| r.result), Ok(code));
        }
        Err(RequestError::Drop(_)) => {}
    }
    if let Ok(resp) = pcp::decode_response(data) {
        let again = pcp::decode_response(&pcp::encode_response(&resp)).expect("re-encoded response decodes");
        assert_eq!(again.result, resp.result);
        assert_eq!(again.map, resp.map);
    }
});
